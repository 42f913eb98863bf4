"""
A real HAProxy for tests: Debian's C{haproxy} running the shipped
C{deploy/haproxy.cfg} exactly as it is, in front of nodes the test started,
on free loopback ports, stopped by its PID.

The shipped file reads its addresses from the environment
(C{CHATROULETTE_FRONTEND}, C{CHATROULETTE_NODE_1}, C{CHATROULETTE_NODE_2}),
so nothing in it is rewritten.  A second file, loaded after it, adds what
only tests need and changes nothing the shipped one says:

  - a stats socket in the temporary directory, to read which nodes HAProxy
    takes for up (L{HAProxy.states});
  - a second frontend, C{proxied}, that takes the PROXY protocol in front of
    the same backend: a test connecting there says which address it comes
    from (L{proxy_line}), standing in for clients on other machines, so the
    nodes' per-address limits can be seen to apply to the address HAProxy
    forwarded.

    with HAProxy(node_ports) as proxy:
        client = await open_client(proxy.url)
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Sequence

from .children import stop_by_pid
from .ports import free_port, free_port_range

HAPROXY = "/usr/sbin/haproxy"
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "haproxy.cfg"
BACKEND = "chatroulette_nodes"
# The server lines of the shipped file, in order, and the variables naming them.
NODES = ("node1", "node2")
NODE_VARIABLES = ("CHATROULETTE_NODE_1", "CHATROULETTE_NODE_2")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_TEST_ADDITIONS = """\
# Test-only additions to the shipped deploy/haproxy.cfg (loaded after it).
global
    stats socket {socket} mode 600 level admin

frontend proxied
    bind 127.0.0.1:{proxied_port} accept-proxy
    default_backend {backend}
"""


def environment(frontend_port: int, node_ports: Sequence[int]) -> dict[str, str]:
    """The variables the shipped configuration reads: where it listens and where the nodes are."""
    if len(node_ports) != len(NODE_VARIABLES):
        raise ValueError(f"the shipped configuration has {len(NODE_VARIABLES)} nodes, not {len(node_ports)}")
    addresses = {name: f"127.0.0.1:{port}" for name, port in zip(NODE_VARIABLES, node_ports)}
    return {"CHATROULETTE_FRONTEND": f"127.0.0.1:{frontend_port}", **addresses}


def check_config(path: Path = CONFIG, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """C{haproxy -c -f path}: HAProxy's own check of a configuration file."""
    return subprocess.run(
        [HAPROXY, "-c", "-f", str(path)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def proxy_line(source: str, port: int) -> bytes:
    """The PROXY protocol (v1) header that makes HAProxy take C{source} as the client's address."""
    return f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode()


class HAProxy:
    """HAProxy in front of two nodes on loopback, for the duration of a C{with} block."""

    def __init__(self, node_ports: Sequence[int]) -> None:
        self.node_ports = list(node_ports)
        self.port = 0
        self.proxied_port = 0
        self.directory = Path()
        self.process: subprocess.Popen[bytes] | None = None
        self._temp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def socket_path(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def log(self) -> str:
        """What HAProxy wrote (its alerts and the nodes' state changes)."""
        path = self.directory / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        self._temp = tempfile.TemporaryDirectory(prefix="haproxy-")
        self.directory = Path(self._temp.name)
        self.port = free_port()
        self.proxied_port = free_port_range(1, exclude=range(self.port, self.port + 1))
        additions = self.directory / "test-additions.cfg"
        additions.write_text(
            _TEST_ADDITIONS.format(socket=self.socket_path, proxied_port=self.proxied_port, backend=BACKEND)
        )
        with open(self.directory / "haproxy.log", "wb") as log:
            self.process = subprocess.Popen(
                # -db: in the foreground, one process, not a daemon: the PID we
                # started is HAProxy's (a pidfile is only written when it forks).
                [HAPROXY, "-db", "-f", str(CONFIG), "-f", str(additions)],
                cwd=self.directory,
                env={**os.environ, **environment(self.port, self.node_ports)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """
        Until HAProxy accepts connections on both frontends and has checked
        every node once (before that it counts them as up, unchecked).
        """
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}: {self.log[-3000:]}")
            try:
                for port in (self.port, self.proxied_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                # "* INI": the first check is running, not done.
                if all(row["check_status"].lstrip("* ") != "INI" for row in self.stats().values()):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy not ready within {START_TIMEOUT} s: {self.log[-3000:]}")
            time.sleep(0.02)

    def command(self, line: str) -> str:
        """One command on the stats socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """C{show stat} for the nodes: each server's row (C{status}, C{scur} sessions now...) by name."""
        text = self.command("show stat").lstrip("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == BACKEND and row["svname"] in NODES
        }

    def states(self) -> dict[str, str]:
        """Each node's health as HAProxy sees it: C{UP}, C{DOWN}, or a transition (C{UP 1/2}...)."""
        return {name: row["status"] for name, row in self.stats().items()}

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it does not end; the temporary directory goes too."""
        process, self.process = self.process, None
        stop_by_pid(process, timeout=STOP_TIMEOUT)
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
