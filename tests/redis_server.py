"""
A real C{redis-server} for the tests: on a free loopback port (and a Unix
socket) in a temporary directory, nothing saved to disk, stopped by PID.

L{RedisServer.restart} stops it and starts an empty one on the same port and
socket: what nodes see when Redis restarts without persistence.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .children import stop_by_pid
from .certs import make_certificate
from .ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 15.0


class RedisServer:
    def __init__(
        self, password: str | None = None, user: tuple[str, str] | None = None, tls: bool = False
    ) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.socket = str(self.dir / "redis.sock")
        self.password = password
        self.user = user
        self.tls = tls
        self.key: Path | None = None
        self.cert: Path | None = None
        if tls:
            self.key, self.cert = make_certificate(self.dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A redis:// URL (rediss:// with the test CA, if TLS) with the password or user, database 0."""
        if self.user:
            auth = f"{self.user[0]}:{self.user[1]}@"
        else:
            auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0?ssl_ca_certs={self.cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}?db=0"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        if self.tls:
            port_args = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            port_args = ["--port", str(self.port)]
        args = [
            REDIS_SERVER,
            *port_args,
            "--bind", "127.0.0.1",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.user:
            name, password = self.user
            args += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            try:
                with self._connect() as s:
                    s.sendall(b"PING\r\n")
                    answer = s.recv(64)
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.02)  # polling a child process's readiness, not synchronising tests
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s: {self.log()}")

    def _connect(self) -> socket.socket:
        plain = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if not self.tls:
            return plain
        context = ssl.create_default_context(cafile=str(self.cert))
        return context.wrap_socket(plain, server_hostname="localhost")

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self._process = self._process, None
        stop_by_pid(process, sig)

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections open and answers nothing (a hung server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop, then start again empty on the same port and socket."""
        self.stop(signal.SIGKILL)
        self.start()

    def command(self, *args: str) -> bytes:
        """One command over a plain socket, for checks from outside the nodes (RESP, first reply line)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with self._connect() as s:
            if self.password:
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(self.password), self.password.encode()))
                s.recv(64)
            s.sendall(b"".join(parts))
            return s.recv(65536)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
