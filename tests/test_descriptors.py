"""
The real twistd process under an open-file limit of 1024, flooded with more
half-sent requests than it has file descriptors: new users are still served,
the global cap answers 503, and the log stays small.

Every client here is on loopback (exempt from per-address caps), so the
attack is one address, 127.0.0.1, and new users come from other loopback
addresses (127.0.0.0/8 all reaches the server); the reserve for new
addresses tells them apart.
"""

from __future__ import annotations

import re
import resource
from typing import Any, cast

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory

from .loopback import QueueClient, RawClient
from .process import start, twistd_with_open_files

OPEN_FILES = 1024
ATTACK = 1100  # more connections than the server has file descriptors
MAX_CONNECTIONS = OPEN_FILES - 128  # the default for that limit
RESERVE = MAX_CONNECTIONS // 8  # the last eighth, for addresses holding fewer than 8


async def within(d: defer.Deferred[Any], seconds: float = 5) -> Any:
    d.addTimeout(seconds, reactor)
    return await d


async def probe(port: int, source: str, send: bytes = b"") -> RawClient:
    """A raw connection to the server from the loopback address C{source}, sending C{send} at once."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    client = cast(RawClient, await within(endpoint.connect(Factory.forProtocol(RawClient))))
    if send:
        assert client.transport is not None
        client.transport.write(send)
    return client


async def websocket(port: int, source: str) -> QueueClient:
    """A chat client from the loopback address C{source}, its handshake done."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    factory.protocol = QueueClient
    factory.setProtocolOptions(failByDrop=False)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    client = cast(QueueClient, await within(endpoint.connect(factory)))
    await within(client.opened)
    return client


def _enough_open_files() -> None:
    """This test process holds every attacking socket: make sure it may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * ATTACK
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


@pytest_twisted.ensureDeferred
async def test_trickling_flood_under_1024_open_files() -> None:
    """1,100 trickling connections, 1,024 open files: a new pair chats, the cap answers 503, no EMFILE."""
    _enough_open_files()
    process, server, port = await start(twistd_with_open_files(OPEN_FILES), "--handshake-timeout", "30")
    attackers: list[RawClient] = []
    others: list[RawClient] = []
    chatters: list[QueueClient] = []

    def trickle_a_byte() -> None:
        for attacker in attackers:
            if attacker.transport is not None:
                attacker.transport.write(b"x")

    trickle = task.LoopingCall(trickle_a_byte)
    try:
        for _ in range(ATTACK // 44):
            # In batches that fit the listen backlog (50). Those the server
            # refuses may be reset before their connect completes.
            batch = await defer.DeferredList(
                [defer.ensureDeferred(probe(port, "127.0.0.1", b"GET / HTTP/1.1\r\nX: ")) for _ in range(44)],
                consumeErrors=True,
            )
            attackers += [client for ok, client in batch if ok]
        trickle.start(1.0)

        # A new pair of users, from addresses of their own, while the attack is on.
        a, b = await websocket(port, "127.0.0.2"), await websocket(port, "127.0.0.3")
        chatters += [a, b]
        a.send_json(type="find")
        b.send_json(type="find")
        await a.next("paired")
        await b.next("paired")
        a.send_json(type="message", text="still here")
        assert (await b.next("message"))["text"] == "still here"

        # New addresses take what is left (the reserve: about RESERVE - 2
        # slots), then the global cap answers 503.
        for i in range(MAX_CONNECTIONS + 1):
            source = f"127.0.{1 + i // 250}.{1 + i % 250}"
            other = await probe(port, source, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            others.append(other)
            await within(other.arrived)
            if other.status() != 200:
                break
        assert other.status() == 503 and b"Server full" in other.received, other.received
        await within(other.lost)
        # Free a slot (the server closes this one), then read the metrics.
        assert others[0].transport is not None
        others[0].transport.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await within(others[0].lost)
        metrics = await probe(port, "127.0.9.1", b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        others.append(metrics)
        await within(metrics.lost)
        counts = dict(re.findall(rb'chatroulette_refused_total\{reason="(\w+)"\} (\d+)', metrics.received))
        assert int(counts[b"max_connections"]) >= 1, metrics.received
        assert int(counts[b"reserved"]) >= 1, metrics.received
        assert b"chatroulette_open_connections %d.0" % MAX_CONNECTIONS in metrics.received
    finally:
        if trickle.running:
            trickle.stop()
        for client in [*attackers, *others]:
            if client.transport is not None:
                cast(ITCPTransport, client.transport).abortConnection()
        for chatter in chatters:
            chatter.dropConnection(abort=True)
        server.signalProcess("TERM")
        try:
            await within(process.ended, 10)
        finally:
            if not process.ended.called:
                server.signalProcess("KILL")
    log = process.output
    assert b"EMFILE" not in log and b"Too many open files" not in log, log[-2000:]
    assert len(log) < 200_000, len(log)
