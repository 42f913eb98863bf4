"""
The real process: graceful restarts (on SIGTERM from twistd or SIGINT from
twist every client is closed with 1001 and the process exits 0), and which
log levels each runner writes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from .loopback import open_client

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=-"]
TWIST = [sys.executable, "-m", "twisted"]


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


async def start(
    command: list[str], plugin_args: tuple[str, ...] = ()
) -> tuple[ServerProcess, IProcessTransport, int]:
    process = ServerProcess()
    args = [*command, "chatroulette", "--listen", "tcp:0:interface=127.0.0.1", *plugin_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    transport = reactor.spawnProcess(process, args[0], args, env=env, path=str(ROOT))
    process.port.addTimeout(20, reactor)
    return process, transport, await process.port


@pytest.mark.parametrize("command, signal", [(TWISTD, "TERM"), (TWIST, "INT")])
@pytest_twisted.ensureDeferred
async def test_clients_told_going_away_and_exit_0(command: list[str], signal: str) -> None:
    """Every client (chatting or waiting) gets close code 1001 and the process exits 0."""
    process, transport, port = await start(command)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        a, b, c = [await open_client(url) for _ in range(3)]
        a.send_json(type="find")
        b.send_json(type="find")
        await a.next("paired")
        c.send_json(type="find")
        await c.next("waiting")
        transport.signalProcess(signal)
        for client in (a, b, c):
            client.closed.addTimeout(5, reactor)
            assert (await client.closed) == 1001
        process.ended.addTimeout(10, reactor)
        assert (await process.ended) == 0, (process.reason, process.output.decode(errors="replace"))
    finally:
        if not process.ended.called:
            transport.signalProcess("KILL")
    # twistd logs text, twist JSON when not on a terminal: either way, one shutdown event.
    assert re.search(
        rb"closing 3 connections: going away|\"count\": 3, \"connections\": \"connections\", \"event\": \"shutdown\"",
        process.output,
    )


@pytest.mark.parametrize(
    "command, plugin_args, signal, logged",
    [
        (TWISTD, (), "TERM", False),
        (TWISTD, ("--log-level", "debug"), "TERM", True),
        (TWIST + ["--log-format", "text"], ("--log-level", "debug"), "INT", False),
        (TWIST + ["--log-format", "text", "--log-level", "debug"], (), "INT", False),
        (TWIST + ["--log-format", "text", "--log-level", "debug"], ("--log-level", "debug"), "INT", True),
    ],
)
@pytest_twisted.ensureDeferred
async def test_chat_starts_logged_at_debug(
    command: list[str], plugin_args: tuple[str, ...], signal: str, logged: bool
) -> None:
    """Chat starts (debug) are written only with the plugin's --log-level debug, and under twist with its own too."""
    process, transport, port = await start(command, plugin_args)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        a, b = [await open_client(url) for _ in range(2)]
        a.send_json(type="find")
        b.send_json(type="find")
        chat = (await a.next("paired"))["chat"]
        transport.signalProcess(signal)
        process.ended.addTimeout(10, reactor)
        assert (await process.ended) == 0, (process.reason, process.output.decode(errors="replace"))
    finally:
        if not process.ended.called:
            transport.signalProcess("KILL")
    output = process.output.decode()
    assert re.search(r"client #\d+@[0-9a-f]{10} connected", output), output
    assert (f"paired in chat {chat}" in output) is logged, output
