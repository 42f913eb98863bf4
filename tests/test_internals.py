"""
The private-attribute hooks (L{chatroulette.internals}): the start-up
self-check, the public-API fallback, and the two guards of write-through
(TLS after C{startTLS}, and nothing written after C{abortConnection}) over
real loopback sockets, which the in-memory tests never reach.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable, cast

import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, ITCPTransport, ITLSTransport, ITransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chatroulette import internals
from chatroulette.internals import Hooks, self_check, write_through
from chatroulette.outbound import WriteBatcher
from chatroulette.settings import Settings

from .certs import make_certificate
from .lobbies import RecordingPeer, open_lobby
from .loopback import RawClient
from .memory import MemoryServer


class SelfCheckTests(SynchronousTestCase):
    def test_tested_versions_pass(self) -> None:
        """On the pinned Twisted and Autobahn, the self-check finds nothing and every hook is on."""
        self.assertEqual(self_check.__wrapped__(), ())
        self.assertEqual(Hooks.detect(), Hooks(fast=True, clock=True, close_frame=True, exit_signal=True))

    def test_missing_autobahn_attribute_found(self) -> None:
        """An Autobahn that renamed its frame parser is reported by name."""
        self.patch(WebSocketProtocol, "_dataReceived", None)
        problems = self_check.__wrapped__()
        self.assertTrue(any("_dataReceived" in p for p in problems), problems)

    def test_changed_twisted_shape_found(self) -> None:
        """A Twisted whose TCP transport lost an attribute we read is reported by name."""
        from twisted.internet import tcp

        self.patch(tcp.Server, "_aborting", None)
        problems = self_check.__wrapped__()
        self.assertTrue(any("_aborting" in p for p in problems), problems)

    def test_changed_txredisapi_packing_found(self) -> None:
        """A txredisapi that packs commands differently from hiredis is reported by name."""
        import txredisapi

        self.patch(txredisapi.BaseRedisProtocol, "_build_command", lambda self, *args, **kwargs: b"*0\r\n")
        problems = self_check.__wrapped__()
        self.assertTrue(any("_build_command" in p for p in problems), problems)

    def test_redis_lobby_on_public_txredisapi(self) -> None:
        """Without the fast hooks, the Redis lobby sends commands as txredisapi packs them, and still pairs and relays."""
        lobby, _, close = open_lobby(on_redis=True, fast=False)
        self.addCleanup(close)
        a, b = RecordingPeer("a"), RecordingPeer("b")
        for p in (a, b):
            lobby.connect(p)
            lobby.find(p, ["\u00e9t\u00e9"])
        self.assertIs(lobby.partner_of(a), b)
        self.assertEqual([e[2] for e in a.events if e[0] == "paired"], [["\u00e9t\u00e9"]])

    def test_failed_check_turns_everything_off_with_one_warning(self) -> None:
        """A failed check gives public APIs only, and one warning however many servers start."""
        self.patch(internals, "self_check", lambda: ("Something.changed",))
        self.patch(internals, "_warned", False)
        warnings: list[str] = []

        def observer(event: dict[str, object]) -> None:
            if event.get("log_level") == LogLevel.warn and "fast path off" in str(event.get("log_format")):
                warnings.append(str(event.get("problems")))

        globalLogPublisher.addObserver(cast(ILogObserver, observer))
        self.addCleanup(globalLogPublisher.removeObserver, cast(ILogObserver, observer))
        self.assertEqual(Hooks.detect(), Hooks.public_only())
        self.assertEqual(Hooks.detect(fast_path=True), Hooks.public_only())
        self.assertEqual(warnings, ["Something.changed"])

    def test_no_fast_path_option(self) -> None:
        """--no-fast-path (Settings.fast_path=False) turns the speed hooks off, and only those."""
        server = MemoryServer(Settings(fast_path=False))
        self.assertEqual(server.factory.hooks, Hooks(fast=False))
        self.assertIsNone(server.factory.writer.batcher)


class PublicOnlyTests(SynchronousTestCase):
    """A server whose self-check failed still chats, closes and limits correctly."""

    def setUp(self) -> None:
        self.server = MemoryServer(Settings(message_rate=1, message_burst=1))
        factory = self.server.factory
        factory.hooks = Hooks.public_only()
        factory.writer.fast = False
        factory.writer.batcher = None

    def test_chat(self) -> None:
        """Messages are relayed through Autobahn's own parser and sender."""
        a, b = self.server.pair()
        a.send_json(type="message", text="hello")
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "message", "text": "hello"}])

    def test_flood_close_falls_back_to_1000(self) -> None:
        """Without sendCloseFrame a flooding client is still closed, with 1000 and the reason."""
        a, b = self.server.pair()
        for _ in range(10):
            a.send_json(type="message", text="spam")
        self.server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1:], (1000, "Too many requests."))
        self.assertEqual(b.last("partner_left")["type"], "partner_left")


# Real sockets -------------------------------------------------------------------


class Server(protocol.Protocol):
    """Runs C{on_connect(transport)} once connected; C{lost} fires when the connection ends."""

    def __init__(self, on_connect: Callable[[ITransport], None]) -> None:
        self.on_connect = on_connect
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.on_connect(self.transport)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)


class ServerFactory(protocol.Factory):
    def __init__(self, on_connect: Callable[[ITransport], None]) -> None:
        self.on_connect = on_connect
        self.connected: defer.Deferred[Server] = defer.Deferred()

    def buildProtocol(self, addr: object) -> Server:
        server = Server(self.on_connect)
        self.connected.callback(server)
        return server


async def listen(factory: ServerFactory) -> IListeningPort:
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(factory)
    return port


@pytest_twisted.ensureDeferred
async def test_write_through_after_start_tls_is_encrypted(tmp_path: Path) -> None:
    """After startTLS, write-through goes through TLS: a TLS client reads the text intact."""
    key, cert = make_certificate(tmp_path)
    # cryptography objects, not pyOpenSSL ones (which pyOpenSSL deprecates);
    # Twisted's annotations predate pyOpenSSL taking them.
    server_options = ssl.CertificateOptions(
        privateKey=cast(Any, serialization.load_pem_private_key(key.read_bytes(), None)),
        certificate=cast(Any, x509.load_pem_x509_certificate(cert.read_bytes())),
    )
    client_options = ssl.optionsForClientTLS(
        "localhost", trustRoot=ssl.Certificate.loadPEM(cert.read_bytes())
    )

    def start_tls_then_write(transport: ITransport) -> None:
        cast(ITLSTransport, transport).startTLS(server_options)
        write_through(transport, b"only over TLS")

    port = await listen(ServerFactory(start_tls_then_write))
    try:
        client = RawClient()
        endpoint = endpoints.wrapClientTLS(
            client_options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", cast(IPv4Address, port.getHost()).port)
        )
        await endpoint.connect(protocol.Factory.forProtocol(lambda: client))
        await client.arrived.addTimeout(5, reactor)
        assert client.received == b"only over TLS"
        assert client.transport is not None
        client.transport.loseConnection()
        await client.lost
    finally:
        await defer.maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_nothing_written_after_abort() -> None:
    """After abortConnection, neither write-through nor frames a WriteBatcher holds reach the socket."""
    batcher = WriteBatcher(reactor)

    class Owner:
        def __init__(self, transport: ITransport) -> None:
            self.transport = transport

    def abort_then_write(transport: ITransport) -> None:
        batcher.add(Owner(transport), b"held frame")
        cast(ITCPTransport, transport).abortConnection()
        write_through(transport, b"late write")

    factory = ServerFactory(abort_then_write)
    port = await listen(factory)
    raw = socket.create_connection(("127.0.0.1", cast(IPv4Address, port.getHost()).port))
    try:
        server = await factory.connected.addTimeout(5, reactor)
        await server.lost.addTimeout(5, reactor)
        # The batcher flushed in the reactor turn after the abort, before the
        # connection was lost.  Data sent before a reset stays readable on
        # Linux: had anything been written, recv would return it here.
        raw.setblocking(False)
        try:
            received = raw.recv(1024)
        except (ConnectionResetError, BlockingIOError):
            received = b""
        assert received == b""
    finally:
        raw.close()
        await defer.maybeDeferred(port.stopListening)
