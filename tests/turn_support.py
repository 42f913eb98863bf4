"""
A real coturn TURN server for the browser tests: Debian's C{turnserver}, on
loopback ports, configured from a temporary directory for the TURN REST API
credentials (C{use-auth-secret}) that the chat server hands out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .browser_support import free_port

TURNSERVER = "/usr/bin/turnserver"
RELAY_PORTS = 10


def free_udp_range(count: int) -> int:
    """The first of C{count} consecutive loopback UDP ports that were all free a moment ago."""
    for base in range(49200, 65000 - count, count * 7):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free range of UDP ports")


class Coturn:
    """C{turnserver} in a temporary directory; listening on C{port}, relaying on a few ports."""

    def __init__(self, secret: str, realm: str = "chatroulette.test") -> None:
        self.secret = secret
        self.realm = realm
        self.port = free_port()
        self.url = f"turn:127.0.0.1:{self.port}"
        self._directory = tempfile.TemporaryDirectory(prefix="coturn-")
        self.directory = Path(self._directory.name)
        self.log_file = self.directory / "turnserver.log"
        self.pid_file = self.directory / "turnserver.pid"
        self._process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The configuration: loopback only, time-limited credentials from the shared secret."""
        min_port = free_udp_range(RELAY_PORTS)
        return "\n".join(
            [
                f"listening-port={self.port}",
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"min-port={min_port}",
                f"max-port={min_port + RELAY_PORTS - 1}",
                "use-auth-secret",
                f"static-auth-secret={self.secret}",
                f"realm={self.realm}",
                # Both browsers are on this machine: let the relay talk to loopback peers.
                "allow-loopback-peers",
                "no-cli",
                "no-tls",
                "no-dtls",
                "no-multicast-peers",
                "fingerprint",
                "verbose",
                f"log-file={self.log_file}",
                "simple-log",
                f"pidfile={self.pid_file}",
                "",
            ]
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start coturn and wait until it accepts TCP connections on its listening port."""
        assert self._process is None, "already running"
        config = self.directory / "turnserver.conf"
        config.write_text(self.config())
        self._process = subprocess.Popen(
            [TURNSERVER, "-c", str(config)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"turnserver exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"turnserver did not come up:\n{self.log()}")
            time.sleep(0.05)  # polling interval while waiting for the port to answer

    def stop(self) -> None:
        """Stop coturn by its PID (SIGTERM, then SIGKILL if it hangs) and remove its directory."""
        process, self._process = self._process, None
        if process is not None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._directory.cleanup()

    def log(self) -> str:
        """What coturn logged so far (it may add a date to the log file's name)."""
        texts = [
            path.read_text(errors="replace")
            for path in sorted(self.directory.glob("turnserver*.log"))
        ]
        return "".join(texts)
