"""
Hostile clients over real loopback sockets, against the service as
makeService builds it: slowloris, megabytes of headers, a client that never
reads, floods (of messages, of pings and empty continuation frames, of
pongs it never reads), cross-site pages, too many connections from one
address.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, cast

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent

from chatroulette.service import ChatService

from .hostile import close_code, handshake, masked_frame, server_frames
from .loopback import QueueClient, RunningService, open_client, read_body

clock = cast(IReactorTime, reactor)


class RawSocket(Protocol):
    """A TCP client that does whatever the test says, and records what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred[float] = defer.Deferred()
        self.got_data: defer.Deferred[None] = defer.Deferred()
        self._close_frame: defer.Deferred[int] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.got_data.called:
            self.got_data.callback(None)
        if self._close_frame is not None and close_code(self.received) is not None:
            d, self._close_frame = self._close_frame, None
            d.callback(cast(int, close_code(self.received)))

    def next_data(self) -> defer.Deferred[None]:
        """Fires when more bytes arrive."""
        self.got_data = defer.Deferred()
        return self.got_data

    def close_frame(self) -> defer.Deferred[int]:
        """The code of the server's close frame, when it arrives."""
        self._close_frame = defer.Deferred()
        return self._close_frame

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(time.monotonic())

    def status(self) -> int | None:
        return int(self.received[9:12]) if self.received.startswith(b"HTTP/1.1 ") else None


async def raw_socket(service: RunningService) -> RawSocket:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", service.port)
    protocol = await endpoint.connect(Factory.forProtocol(RawSocket))
    return cast(RawSocket, protocol)


async def within(d: defer.Deferred[Any], seconds: float) -> Any:
    """Wait for C{d}, failing the test after C{seconds}."""
    d.addTimeout(seconds, reactor)
    return await d


async def open_as(url: str, headers: dict[str, str] | None = None) -> QueueClient:
    """Like L{open_client}, with extra handshake headers."""
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = QueueClient
    factory.setProtocolOptions(failByDrop=False)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, factory.host, factory.port)
    client = cast(QueueClient, await endpoint.connect(factory))
    await within(client.opened, 5)
    return client


async def pair(url: str) -> tuple[QueueClient, QueueClient]:
    a, b = await open_client(url), await open_client(url)
    await a.next("welcome")
    await b.next("welcome")
    a.send_json(type="find")
    b.send_json(type="find")
    await a.next("paired")
    await b.next("paired")
    return a, b


@pytest.fixture(params=["fast path", "no fast path"])
def mode(request: pytest.FixtureRequest) -> list[str]:
    """Every attack runs against the fast path and against public APIs only (--no-fast-path)."""
    return [] if request.param == "fast path" else ["--no-fast-path"]


@pytest_twisted.async_yield_fixture()
async def service(mode: list[str]) -> AsyncIterator[RunningService]:
    running = await RunningService.start("--handshake-timeout", "2", *mode)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_slowloris_cut_off_without_hurting_others(service: RunningService) -> None:
    """A handshake trickling a byte every 0.2 s is cut off at the timeout; a chat meanwhile is unaffected."""
    slow = await raw_socket(service)
    request = handshake()
    started = time.monotonic()
    transport = cast(ITCPTransport, slow.transport)
    trickle = task.LoopingCall(transport.write, request[:1])
    trickle.start(0.2)
    try:
        a, b = await pair(service.url)
        a.send_json(type="message", text="unaffected")
        assert (await b.next()) == {"type": "message", "text": "unaffected"}
        lost_at = await within(slow.lost, 5)
    finally:
        trickle.stop()
    assert 1.5 < lost_at - started < 3.5
    assert slow.received == b""
    for client in (a, b):
        client.sendClose()
        await within(client.closed, 5)


@pytest_twisted.ensureDeferred
async def test_megabytes_of_headers_refused(service: RunningService) -> None:
    """Megabytes of headers are answered 400 and the connection closed long before they end."""
    raw = await raw_socket(service)
    assert raw.transport is not None
    raw.transport.write(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n")
    raw.transport.write((b"X-Pad: " + b"y" * 1000 + b"\r\n") * 4000)
    await within(raw.lost, 5)
    assert raw.status() == 400
    code, _, body = await get(service.http + "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_cross_site_page_refused(service: RunningService) -> None:
    """A handshake from another site's page is refused with HTTP 403; the same origin gets in."""
    raw = await raw_socket(service)
    assert raw.transport is not None
    raw.transport.write(handshake(f"127.0.0.1:{service.port}", origin="https://evil.example"))
    await within(raw.lost, 5)
    assert raw.status() == 403
    ok = await raw_socket(service)
    assert ok.transport is not None
    ok.transport.write(handshake(f"127.0.0.1:{service.port}", origin=f"http://127.0.0.1:{service.port}"))
    await within(ok.got_data, 5)
    assert ok.status() == 101
    ok.transport.loseConnection()
    await within(ok.lost, 5)


@pytest_twisted.async_yield_fixture()
async def proxied(mode: list[str]) -> AsyncIterator[RunningService]:
    running = await RunningService.start("--trust-proxy-headers", "--max-connections-per-ip", "3", *mode)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_connections_per_address_capped(proxied: RunningService) -> None:
    """Behind a trusted proxy, a 4th connection from one client address gets 429; others are fine."""
    service = proxied
    headers = {"X-Forwarded-For": "203.0.113.50"}
    clients = [await open_as(service.url, headers) for _ in range(3)]
    raw = await raw_socket(service)
    assert raw.transport is not None
    raw.transport.write(handshake(f"127.0.0.1:{service.port}", extra=headers))
    await within(raw.lost, 5)
    assert raw.status() == 429
    other = await open_as(service.url, {"X-Forwarded-For": "203.0.113.51"})
    clients[0].sendClose()
    await within(clients[0].closed, 5)
    again = await open_as(service.url, headers)
    for client in [*clients[1:], other, again]:
        client.sendClose()
        await within(client.closed, 5)


@pytest_twisted.ensureDeferred
async def test_flood_closed_1008(service: RunningService) -> None:
    """A client flooding messages is refused, then closed with 1008; its partner is told at once."""
    a, b = await pair(service.url)
    for _ in range(40):
        a.send_json(type="message", text="spam")
    assert (await within(a.closed, 5)) == 1008
    events = [await b.next() for _ in range(11)]
    assert [e["type"] for e in events] == ["message"] * 10 + ["partner_left"]
    b.sendClose()
    await within(b.closed, 5)


@pytest_twisted.ensureDeferred
async def test_bad_frames_close_codes(service: RunningService) -> None:
    """Binary frames close with 1003, invalid UTF-8 with 1007, oversized frames with 1009."""
    for frame, expected in [
        (masked_frame(b"\x00\x01", opcode=2), 1003),
        (masked_frame(b'{"type":"message","text":"\xc3\x28"}'), 1007),
        (masked_frame(b" " * (32 * 1024 + 1)), 1009),
    ]:
        raw = await raw_socket(service)
        assert raw.transport is not None
        raw.transport.write(handshake(f"127.0.0.1:{service.port}"))
        await within(raw.got_data, 5)
        closing = raw.close_frame()
        raw.transport.write(frame)
        assert (await within(closing, 5)) == expected
        raw.transport.loseConnection()
        await within(raw.lost, 5)


@pytest_twisted.ensureDeferred
async def test_frames_before_a_close_arrive_before_it(service: RunningService) -> None:
    """
    What the server sent in the turn it closes a connection arrives, in
    order, before the close frame (frames are batched per turn; closes are not).
    """
    raw = await raw_socket(service)
    assert raw.transport is not None
    raw.transport.write(handshake(f"127.0.0.1:{service.port}"))
    await within(raw.got_data, 5)
    closing = raw.close_frame()
    raw.transport.write(
        masked_frame(b'{"type":"find"}')
        + masked_frame(b'{"type":"message","text":"nobody"}')
        + masked_frame(b" " * (32 * 1024 + 1))
    )
    assert (await within(closing, 5)) == 1009
    frames = [(op, json.loads(p)["type"] if op == 1 else None) for op, p in server_frames(raw.received)]
    assert frames == [(1, "welcome"), (1, "waiting"), (1, "error"), (8, None)]
    raw.transport.loseConnection()
    await within(raw.lost, 5)


async def get(url: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    response = await Agent(reactor).request(b"GET", url.encode())
    body = await read_body(response)
    return response.code, dict(response.headers.getAllRawHeaders()), body


async def stalled_socket(running: RunningService) -> socket.socket:
    """
    A WebSocket client on a plain non-blocking socket with a small receive
    window, past the handshake, that never calls recv() again: the kernel
    buffers fill, then the server's; only the latter is ours to bound.
    """
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    stalled.connect_ex(("127.0.0.1", running.port))
    await task.deferLater(reactor, 0.05, lambda: None)
    stalled.send(handshake(f"127.0.0.1:{running.port}"))
    response = b""
    while b"\r\n\r\n" not in response:  # the 101; nothing is read after it
        await task.deferLater(reactor, 0.01, lambda: None)
        try:
            response += stalled.recv(1024)
        except BlockingIOError:
            pass
    assert response.startswith(b"HTTP/1.1 101")
    return stalled


def factory_of(running: RunningService) -> Any:
    return next(s for s in running.service if isinstance(s, ChatService)).factory


def cpu_seconds() -> float:
    """CPU time of this process so far (the service runs in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest_twisted.ensureDeferred
async def test_client_that_never_reads_is_closed(mode: list[str]) -> None:
    """A client that stops reading is closed once its backlog passes --max-buffer-bytes; its partner is told."""
    # The partner floods: no message rate limit, and no frame budget.
    running = await RunningService.start(
        "--max-buffer-bytes", "262144", "--message-rate", "0", "--frame-rate", "0", *mode
    )
    stalled = await stalled_socket(running)
    try:
        stalled.send(masked_frame(b'{"type":"find"}'))
        partner = await raw_socket(running)
        transport = cast(ITCPTransport, partner.transport)
        transport.write(handshake(f"127.0.0.1:{running.port}"))
        await within(partner.got_data, 5)
        transport.write(masked_frame(b'{"type":"find"}'))
        while b'"paired"' not in partner.received:
            await within(partner.next_data(), 5)
        burst = masked_frame(json.dumps({"type": "message", "text": "\u20ac" * 2000}).encode()) * 50
        deadline = time.monotonic() + 20
        while b'"partner_left"' not in partner.received:
            assert time.monotonic() < deadline, "the stalled client was never closed"
            transport.write(burst)
            await task.deferLater(reactor, 0.001, lambda: None)
        _, _, body = await get(running.http + "/metrics")
        assert b'chatroulette_errors_total{code="slow_reader"} 1.0' in body
        transport.loseConnection()
        await within(partner.lost, 5)
    finally:
        stalled.close()
        await running.stop()


PING = masked_frame(b"p" * 125, opcode=9)
OPEN_MESSAGE = masked_frame(b'{"type":', fin=False)  # a text message, never finished
EMPTY_CONTINUATION = masked_frame(b"", opcode=0, fin=False)


@pytest_twisted.ensureDeferred
async def test_unread_pongs_cut_off(mode: list[str]) -> None:
    """A never-reading client flooding pings inside an unfinished message is cut off once its pongs pass --max-buffer-bytes."""
    # The frame budget is off, or it would cut the flood off first.
    running = await RunningService.start("--max-buffer-bytes", "65536", "--frame-rate", "0", *mode)
    factory = factory_of(running)
    stalled = await stalled_socket(running)
    try:
        partner = await open_client(running.url)
        partner.send_json(type="find")
        stalled.send(masked_frame(b'{"type":"find"}') + OPEN_MESSAGE)
        chat = (await partner.next("paired"))["chat"]
        flood, pending = PING * 500, b""
        started = time.monotonic()
        dropped = None
        while dropped is None:
            elapsed = time.monotonic() - started
            assert elapsed < 8, f"not cut off after {elapsed:.1f} s ({factory.errors})"
            try:
                # Whole frames only: the kernel may take part of a send.
                pending = pending or flood
                pending = pending[stalled.send(pending) :]
            except BlockingIOError:
                pass  # the server stopped reading: its buffers and ours are full
            except OSError:  # reset: the server dropped the connection
                dropped = elapsed
            await task.deferLater(reactor, 0.001, lambda: None)
        assert factory.errors["slow_reader"] == 1
        assert (await partner.next()) == {"type": "partner_left", "chat": chat}
        partner.sendClose()
        await within(partner.closed, 5)
    finally:
        stalled.close()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_frame_flood_cut_off_while_a_chat_goes_on(mode: list[str]) -> None:
    """Continuation and ping floods are cut off with 1008 at once; a chat alongside stays fast and the CPU time low."""
    running = await RunningService.start(*mode)
    try:
        a, b = await pair(running.url)
        flood = EMPTY_CONTINUATION * 4000 + PING * 100
        cpu_before = cpu_seconds()
        attackers: list[tuple[RawSocket, defer.Deferred[int], task.LoopingCall]] = []
        for _ in range(8):
            raw = await raw_socket(running)
            transport = cast(ITCPTransport, raw.transport)
            transport.write(handshake(f"127.0.0.1:{running.port}"))
            await within(raw.got_data, 5)
            closing = raw.close_frame()
            transport.write(OPEN_MESSAGE)
            writer = task.LoopingCall(transport.write, flood)
            writer.start(0.01)
            attackers.append((raw, closing, writer))
        started = time.monotonic()
        latencies: list[float] = []
        try:
            for i in range(12):
                a.send_json(type="message", text=f"{i} {time.monotonic()}")
                event = await b.next()
                number, sent = event["text"].split()
                assert (event["type"], number) == ("message", str(i))
                latencies.append(time.monotonic() - float(sent))
                await task.deferLater(reactor, 0.2, lambda: None)
            for raw, closing, _ in attackers:
                assert (await within(closing, 1)) == 1008
                lost_at = await within(raw.lost, 2)
                assert lost_at - started < 3
        finally:
            for _, _, writer in attackers:
                if writer.running:
                    writer.stop()
        cpu = cpu_seconds() - cpu_before
        wall = time.monotonic() - started
        print(f"flood: {wall:.2f} s wall, {cpu:.2f} CPU-seconds, chat latency max {max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 0.5, latencies
        assert cpu < 0.5 * wall, (cpu, wall)
        assert factory_of(running).errors["frame_flood"] == 8
        for client in (a, b):
            client.sendClose()
            await within(client.closed, 5)
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_ban_survives_restart(tmp_path: Path, mode: list[str]) -> None:
    """An address reported by three others is banned, and still banned after a restart."""
    args = ["--trust-proxy-headers", "--state-dir", str(tmp_path), *mode]
    running = await RunningService.start(*args)
    target_address = {"X-Forwarded-For": "203.0.113.66"}
    try:
        for i in range(3):
            target = await open_as(running.url, target_address)
            reporter = await open_as(running.url, {"X-Forwarded-For": f"198.51.100.{i + 1}"})
            target.send_json(type="invite")
            code = (await target.next("invite"))["code"]
            reporter.send_json(type="find", invite=code)
            await reporter.next("paired")
            reporter.send_json(type="report", reason="rude")
            await target.next("partner_left")
            for client in (target, reporter):
                client.sendClose()
                await within(client.closed, 5)
    finally:
        await running.stop()
    assert (tmp_path / "chatroulette-bans.sqlite3").exists()
    again = await RunningService.start(*args)
    try:
        banned = await open_as(again.url, target_address)
        banned.send_json(type="find")
        assert (await banned.next("error"))["code"] == "banned"
        other = await open_as(again.url, {"X-Forwarded-For": "198.51.100.1"})
        other.send_json(type="find")
        assert (await other.next()) == {"type": "welcome", "online": 2}
        assert (await other.next()) == {"type": "waiting"}
        for client in (banned, other):
            client.sendClose()
            await within(client.closed, 5)
    finally:
        await again.stop()
