"""
Helpers for tests over real loopback sockets: start the service the way
twistd does (Options + makeService), WebSocket clients that queue events,
and reading an HTTP response body.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, reactor
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from chatroulette.listening import ListeningService
from chatroulette.tap import Options, makeService


def listeners(service: MultiService) -> list[ListeningService]:
    """The listening services of a service tree, one per --listen, in order."""
    return [s for s in service if isinstance(s, ListeningService)]


class RunningService:
    """The chatroulette service started in-process on an ephemeral loopback port."""

    def __init__(self, service: MultiService, port: int, scratch: str | None = None) -> None:
        self.service = service
        self.port = port
        self._scratch = scratch
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.http = f"http://127.0.0.1:{port}"

    @classmethod
    async def start(cls, *args: str) -> RunningService:
        """
        Start it with these options, on an ephemeral loopback port and, unless
        C{args} say otherwise, with its bans file in a fresh temporary
        directory (never the checkout, where a ban would outlive the test).
        """
        options = Options()
        defaults = ["--listen", "tcp:0:interface=127.0.0.1"]
        scratch = None
        if "--state-dir" not in args:
            scratch = tempfile.mkdtemp(prefix="chatroulette-test-")
            defaults += ["--state-dir", scratch]
        options.parseOptions([*defaults, *args])
        service = makeService(options)
        service.startService()
        port = await listeners(service)[0].when_listening()
        return cls(service, port.getHost().port, scratch)  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await defer.maybeDeferred(self.service.stopService)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


class QueueClient(WebSocketClientProtocol):
    """A WebSocket client whose received events can be awaited one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[int | None] = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.queue.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason))
        self.closed.callback(code)

    def send_json(self, **frame: Any) -> None:
        self.sendMessage(json.dumps(frame).encode())

    async def next(self, type: str | None = None) -> dict[str, Any]:
        """The next event (of this type, skipping others), failing after 5 seconds."""
        while True:
            d = self.queue.get()
            d.addTimeout(5, reactor)
            event: dict[str, Any] = await d
            if type is None or event["type"] == type:
                return event


async def open_client(
    url: str,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    client_class: type[QueueClient] = QueueClient,
) -> QueueClient:
    """
    Connect a L{QueueClient} (or C{client_class}) to C{url} over a real
    socket, sending any extra handshake C{headers}, and wait for the handshake.
    """
    factory = WebSocketClientFactory(url, origin=origin, headers=headers)
    factory.protocol = client_class
    factory.setProtocolOptions(failByDrop=False)
    host, port = factory.host, factory.port
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port)
    client = cast(QueueClient, await endpoint.connect(factory))
    await client.opened
    return client


class _Body(Protocol):
    """Collects a response body and fires with it once the response is complete."""

    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


def read_body(response: IResponse) -> defer.Deferred[bytes]:
    """
    The whole body of an L{Agent} response.

    C{twisted.web.client.readBody} does the same, but warns (a
    DeprecationWarning) on every L{Agent} response: the transport that
    L{HTTP11ClientProtocol} gives the body protocol is a proxy without
    C{abortConnection}, which readBody wants only so that cancelling the
    read can abort the connection.  These tests never cancel a read; any
    ending but a complete body (a lost connection, a truncated body) fails.
    """
    done: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_Body(done))
    return done


class RawClient(Protocol):
    """
    A raw TCP client over loopback that records everything the server sends.
    C{arrived} fires on the first bytes, C{answered} once a whole HTTP
    response head is in, C{lost} when the connection ends; the first two
    also fire then, if they had not (L{status} tells what, if anything, came).
    """

    def __init__(self) -> None:
        self.received = b""
        self.arrived: defer.Deferred[None] = defer.Deferred()
        self.answered: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.arrived.called:
            self.arrived.callback(None)
        if b"\r\n\r\n" in self.received and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for waiting in (self.arrived, self.answered):
            if not waiting.called:
                waiting.callback(None)
        self.lost.callback(None)

    def status(self) -> int | None:
        """The HTTP status code of the response, if one arrived."""
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", self.received)
        return int(match.group(1)) if match else None

    def abort(self) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()


async def exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send C{request} over a real loopback socket; return everything until the server closes."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    raw = cast(RawClient, await endpoint.connect(Factory.forProtocol(RawClient)))
    assert raw.transport is not None
    raw.transport.write(request)
    raw.lost.addTimeout(timeout, reactor)
    await raw.lost
    return raw.received
