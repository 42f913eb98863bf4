"""
The real plugin as a child process (twistd or twist), on an ephemeral
loopback port, optionally under a lowered open-file limit.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import cast

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
_RUN_TWISTD = "from twisted.scripts.twistd import run; run()"
TWISTD = [sys.executable, "-c", _RUN_TWISTD, "-n", "--pidfile=", "--logfile=-"]
TWIST = [sys.executable, "-m", "twisted"]


def twistd_with_open_files(limit: int) -> list[str]:
    """
    L{TWISTD}, with the child's open-file limits (C{ulimit -n}, soft and
    hard: the server raises its soft limit to the hard one) set to C{limit}
    before it starts.
    """
    code = (
        "import resource; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        + _RUN_TWISTD
    )
    return [sys.executable, "-c", code, *TWISTD[3:]]


class ServerProcess(ProcessProtocol):
    """The server as a child process; fires C{port} once it listens and C{ended} with its exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"Site starting on (\d+)", self.output)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(cast(ProcessTerminated, reason.value).exitCode)


async def start(command: list[str], *options: str) -> tuple[ServerProcess, IProcessTransport, int]:
    """Start C{command chatroulette} on an ephemeral loopback port; wait until it listens."""
    process = ServerProcess()
    args = [*command, "chatroulette", "--listen", "tcp:0:interface=127.0.0.1", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    transport = reactor.spawnProcess(process, args[0], args, env=env, path=str(ROOT))
    process.port.addTimeout(20, reactor)
    return process, transport, await process.port
