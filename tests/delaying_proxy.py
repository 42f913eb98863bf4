"""
A TCP proxy on the test's reactor that holds back, for a while, what the
server sends on the connections that sent it a given command: to make the
answers on one of a node's two Redis connections arrive after what came on
the other, on purpose.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


class _Upstream(Protocol):
    """The proxy's connection to the server, for one client."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.from_server(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.client.drop()


class _UpstreamFactory(Factory):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def buildProtocol(self, addr: object) -> _Upstream:
        return _Upstream(self.client)


class _Client(Protocol):
    """One client's connection to the proxy."""

    def __init__(self, proxy: DelayingProxy) -> None:
        self.proxy = proxy
        self.slow = False
        self.held: deque[bytes] = deque()
        self.waiting: list[bytes] = []
        self.upstream: _Upstream | None = None

    def connectionMade(self) -> None:
        self.proxy.clients.append(self)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.server_port)
        d = endpoint.connect(_UpstreamFactory(self))
        d.addCallbacks(self._up, lambda _: self.drop())

    def _up(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        for data in self.waiting:
            self._to_server(data)
        self.waiting.clear()

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is None:
            self.waiting.append(data)
        else:
            self._to_server(data)

    def _to_server(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        if self.proxy.after in data:
            self.slow = True
        self.upstream.transport.write(data)

    def from_server(self, data: bytes) -> None:
        if not self.slow:
            self._write(data)
            return
        self.held.append(data)
        clock: Any = reactor
        clock.callLater(self.proxy.hold, self._release)

    def _release(self) -> None:
        if self.held:
            self._write(self.held.popleft())

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def drop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()
        if self.upstream is not None and self.upstream.transport is not None:
            upstream: Any = self.upstream.transport
            upstream.abortConnection()


class DelayingProxy(Factory):
    """
    Forwards 127.0.0.1:C{port} to the server on 127.0.0.1:C{server_port};
    what the server sends on a connection that sent C{after} waits C{hold}
    seconds (in order).
    """

    def __init__(self, server_port: int, hold: float, after: bytes) -> None:
        self.server_port = server_port
        self.hold = hold
        self.after = after
        self.clients: list[_Client] = []
        tcp: Any = reactor
        self.listening: Any = tcp.listenTCP(0, self, interface="127.0.0.1")
        self.port: int = self.listening.getHost().port

    def buildProtocol(self, addr: object) -> _Client:
        return _Client(self)

    def drop_all(self) -> None:
        """Abort every connection through the proxy (its clients see the server gone)."""
        clients, self.clients = self.clients, []
        for client in clients:
            client.drop()

    def close(self) -> None:
        self.drop_all()
        self.listening.stopListening()
