"""
Connections counted from the TCP accept to the close, in memory: the
per-address cap in the HTTP phase (half-sent requests), the global
--max-connections cap, the slots kept for new addresses, and cheap refusals.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from chatroulette.refusal import MAX_REFUSING, REFUSAL_GRACE, RefusedConnection
from chatroulette.settings import Settings

from .hostile import RawClient, connect_as, handshake, raw_connect
from .memory import MemoryClient, MemoryServer, also_without_fast_path

REMOTE = "203.0.113.7"
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\nX-Trickle: "


class CapsTestCase(SynchronousTestCase):
    settings = Settings()

    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings, fast_path=self.fast_path)
        self.addresses = self.server.factory.admission.addresses

    def half_sent(self, host: str) -> RawClient:
        """A connection from C{host} that has sent part of a request and waits (a slow client)."""
        client, pump = raw_connect(self.server, host)
        pump.clientIO.write(PARTIAL)
        self.server.flush()
        return client

    def chat(self, a_host: str, b_host: str) -> tuple[MemoryClient, MemoryClient]:
        """Two clients from these addresses who find each other and exchange a message."""
        a, b = connect_as(self.server, a_host), connect_as(self.server, b_host)
        a.send_json(type="find")
        b.send_json(type="find")
        self.server.flush()
        a.send_json(type="message", text="hello")
        self.server.flush()
        self.assertEqual(b.last("message")["text"], "hello")
        return a, b

    def metrics(self) -> bytes:
        request = DummyRequest([b"metrics"])
        body = self.server.site.getResourceFor(request).render(request)
        assert isinstance(body, bytes)
        return body


class HttpPhaseCapTests(CapsTestCase):
    settings = Settings(max_connections_per_ip=3, handshake_rate=0)

    def test_half_sent_requests_capped_per_address(self) -> None:
        """An address holding 3 half-sent requests gets 429 on its 4th connection before sending a byte."""
        slow = [self.half_sent(REMOTE) for _ in range(3)]
        refused, _ = raw_connect(self.server, REMOTE)
        self.server.flush()
        self.assertEqual(refused.status(), 429)
        self.assertTrue(refused.lost)
        self.assertFalse(any(c.lost for c in slow))
        self.assertEqual(self.server.factory.refused["connections"], 1)
        self.assertFalse(self.half_sent("198.51.100.1").lost)

    def test_loopback_exempt(self) -> None:
        """Loopback peers are not capped in the HTTP phase either."""
        clients = [self.half_sent("127.0.0.1") for _ in range(20)]
        self.assertFalse(any(c.lost or c.received for c in clients))

    def test_websocket_counted_once(self) -> None:
        """A connection that becomes a WebSocket is the same connection: 3 WebSockets fit a cap of 3."""
        clients = [connect_as(self.server, REMOTE) for _ in range(3)]
        self.assertTrue(all(c.opened for c in clients))
        self.assertEqual((self.addresses.total, self.addresses.connections), (3, {REMOTE: 3}))
        refused, _ = raw_connect(self.server, REMOTE)
        self.server.flush()
        self.assertEqual(refused.status(), 429)
        clients[0].sendClose()
        self.server.flush()
        self.assertEqual(self.addresses.connections, {REMOTE: 2})
        self.assertTrue(connect_as(self.server, REMOTE).opened)

    def test_http_and_websocket_share_the_count(self) -> None:
        """Half-sent requests and WebSockets from one address count against one cap."""
        self.half_sent(REMOTE)
        self.assertTrue(connect_as(self.server, REMOTE).opened)
        self.half_sent(REMOTE)
        self.assertEqual(self.addresses.connections, {REMOTE: 3})
        self.assertFalse(connect_as(self.server, REMOTE).opened)

    def test_released_at_close_in_every_phase(self) -> None:
        """Closed in the HTTP phase, refused at the handshake, or closed as a WebSocket: nothing stays counted."""
        upgraded, pump = raw_connect(self.server, REMOTE)
        pump.clientIO.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.server.flush()
        pump.clientIO.write(handshake())
        self.server.flush()
        self.assertEqual(upgraded.received.count(b"HTTP/1.1 "), 2)
        self.assertEqual(self.addresses.connections, {REMOTE: 1})
        pump.clientIO.loseConnection()
        forbidden, pump = raw_connect(self.server, REMOTE)
        pump.clientIO.write(handshake(origin="https://evil.example"))
        self.server.flush()
        self.assertEqual(forbidden.status(), 403)
        slow = self.half_sent(REMOTE)
        self.server.advance(self.settings.open_handshake_timeout)
        self.assertTrue(slow.lost)
        connect_as(self.server, REMOTE).sendClose()
        self.server.advance(60)
        self.assertTrue(upgraded.lost and forbidden.lost)
        self.assertEqual((self.addresses.total, self.addresses.connections), (0, {}))


class GlobalCapTests(CapsTestCase):
    settings = Settings(max_connections=16, max_connections_per_ip=0, handshake_rate=0)

    def test_trickling_address_leaves_room_for_new_ones(self) -> None:
        """One address trickling requests gets all but the last eighth: a new pair still chats."""
        self.assertEqual(self.addresses.reserve, 2)
        trickling = [self.half_sent("127.0.0.1") for _ in range(15)]
        self.assertEqual([c.status() for c in trickling], [None] * 14 + [503])
        self.assertIn(b"Server busy", trickling[-1].received)
        self.assertEqual(self.server.factory.refused["reserved"], 1)
        self.chat("198.51.100.1", "198.51.100.2")

    def test_global_cap_503(self) -> None:
        """Past --max-connections a new address is answered 503 and closed; a slot freed lets the next one in."""
        slow = [self.half_sent(f"198.51.100.{i}") for i in range(16)]
        self.assertFalse(any(c.lost for c in slow))
        refused, _ = raw_connect(self.server, "198.51.100.99")
        self.server.flush()
        self.assertEqual(refused.status(), 503)
        self.assertIn(b"Server full", refused.received)
        self.assertTrue(refused.lost)
        self.assertEqual(self.server.factory.refused["max_connections"], 1)
        self.server.advance(self.settings.open_handshake_timeout)
        self.assertTrue(all(c.lost for c in slow))
        self.assertTrue(connect_as(self.server, "198.51.100.99").opened)

    def test_refusal_is_a_fixed_response(self) -> None:
        """A refused connection gets one fixed response and is closed; what it sends is never parsed."""
        for i in range(16):
            self.half_sent(f"198.51.100.{i}")
        refused, pump = raw_connect(self.server, "198.51.100.99")
        pump.clientIO.write(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10000)
        self.server.flush()
        self.assertEqual(
            refused.received,
            b"HTTP/1.1 503 Server full\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 12\r\nConnection: close\r\nRetry-After: 10\r\n\r\nServer full\n",
        )
        self.assertEqual(self.server.site.refusals.in_flight, 0)

    def test_refusals_in_flight_bounded(self) -> None:
        """While MAX_REFUSING refused connections are still taking their response, more are cut without one."""
        for i in range(16):
            self.half_sent(f"198.51.100.{i}")
        refused = [raw_connect(self.server, "203.0.113.1")[0] for _ in range(MAX_REFUSING + 5)]
        self.assertEqual(self.server.site.refusals.in_flight, MAX_REFUSING)
        self.server.flush()
        self.assertEqual([c.status() for c in refused], [503] * MAX_REFUSING + [None] * 5)
        self.assertTrue(all(c.lost for c in refused))
        self.assertEqual(self.server.site.refusals.in_flight, 0)
        self.assertEqual(self.server.factory.refused["max_connections"], MAX_REFUSING + 5)

    def test_refusal_not_taken_is_cut(self) -> None:
        """A refused connection that does not take its response (TLS unfinished, no reading) is cut."""
        for i in range(16):
            self.half_sent(f"198.51.100.{i}")
        site = self.server.site
        protocol = site.buildProtocol(IPv4Address("TCP", "203.0.113.1", 5000))
        assert isinstance(protocol, RefusedConnection)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.server.clock.advance(REFUSAL_GRACE - 0.1)
        self.assertFalse(transport.disconnected)
        self.server.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(site.refusals.in_flight, 0)

    def test_refusals_logged_sparingly_without_addresses(self) -> None:
        """Refusals at accept are logged at most once a second per reason, with the address hashed."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        for i in range(16):
            self.half_sent(f"198.51.100.{i}")
        for _ in range(20):
            raw_connect(self.server, "203.0.113.99")
        self.server.flush()
        refused = [e for e in events if e.get("event") == "refused"]
        self.assertEqual(len(refused), 1)
        self.assertNotIn("203.0.113.99", repr(events))
        self.assertRegex(formatEvent(refused[0]) or "", r"^refused connection from [0-9a-f]{10}: max_connections")

    def test_metrics(self) -> None:
        """/metrics shows open connections, the cap and the new refusal reasons."""
        for i in range(3):
            self.half_sent(f"198.51.100.{i}")
        body = self.metrics()
        self.assertIn(b"chatroulette_open_connections 3.0", body)
        self.assertIn(b"chatroulette_max_connections 16.0", body)
        for reason in [b"max_connections", b"reserved", b"connections"]:
            self.assertIn(b'chatroulette_refused_total{reason="' + reason + b'"} 0.0', body)


class TrustedProxyReserveTests(CapsTestCase):
    settings = Settings(
        max_connections=16, max_connections_per_ip=10, handshake_rate=0, trust_proxy_headers=True
    )

    def test_forwarded_client_counted_once_and_reserve_applies(self) -> None:
        """Behind a trusted proxy a WebSocket moves to its client's count; the reserve applies there."""
        heavy = {"X-Forwarded-For": REMOTE}
        clients = [connect_as(self.server, headers=heavy) for _ in range(8)]
        self.assertTrue(all(c.opened for c in clients))
        self.assertEqual((self.addresses.total, self.addresses.connections), (8, {REMOTE: 8}))
        for _ in range(6):
            self.half_sent("127.0.0.1")
        self.assertEqual(self.addresses.connections, {REMOTE: 8})
        refused, pump = raw_connect(self.server)
        pump.clientIO.write(handshake(extra=heavy))
        self.server.flush()
        self.assertEqual(refused.status(), 503)
        self.assertEqual(self.server.factory.refused["reserved"], 1)
        self.assertTrue(connect_as(self.server, headers={"X-Forwarded-For": "198.51.100.1"}).opened)
        self.assertEqual(self.addresses.total, 15)


class ProtocolNegotiationTests(SynchronousTestCase):
    def test_only_http_1_1_offered(self) -> None:
        """TLS never negotiates HTTP/2, whose channel would bypass the guarded, counted HTTP/1.1 one."""
        self.assertEqual(MemoryServer().site.acceptableProtocols(), [b"http/1.1"])


also_without_fast_path(globals())
