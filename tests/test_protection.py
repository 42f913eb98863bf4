"""
Protections driven by hostile clients, in memory (real Site and Autobahn on
both ends, iosim pumps, a Clock): rate limits, Origin, per-address caps,
dead peers, slow readers, request deadlines, bans, logging, shutdown.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.interfaces import IPushProducer
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.moderation import Moderation
from chatroulette.protocol import CUT_OFF_GRACE
from chatroulette.settings import Settings
from chatroulette.service import ChatService

from .hostile import (
    RawClient,
    SilentClient,
    connect_as,
    handshake,
    masked_frame,
    raw_connect,
    server_side,
)
from .memory import MemoryClient, MemoryServer, also_without_fast_path

REMOTE = "203.0.113.7"


class ProtectionTestCase(SynchronousTestCase):
    settings = Settings()
    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings, fast_path=self.fast_path)

    def pair_from(self, a_host: str, b_host: str) -> tuple[MemoryClient, MemoryClient]:
        """Two clients from these addresses, paired through an invite."""
        a, b = connect_as(self.server, a_host), connect_as(self.server, b_host)
        a.send_json(type="invite")
        self.server.flush()
        b.send_json(type="find", invite=a.last("invite")["code"])
        self.server.flush()
        assert a.chat is not None and a.chat == b.chat, (a.events, b.events)
        a.take()
        b.take()
        return a, b

    def raw(self, request: bytes, host: str = REMOTE) -> RawClient:
        client, pump = raw_connect(self.server, host)
        pump.clientIO.write(request)
        self.server.flush()
        return client


class MessageRateTests(ProtectionTestCase):
    def test_burst_then_rate_limited(self) -> None:
        """A burst of 12 messages: 10 relayed, 2 refused with rate_limited, the chat goes on."""
        a, b = self.server.pair()
        for i in range(12):
            a.send_json(type="message", text=f"m{i}")
        self.server.flush()
        self.assertEqual([e["text"] for e in b.take()], [f"m{i}" for i in range(10)])
        self.assertEqual([e["code"] for e in a.take()], ["rate_limited"] * 2)
        self.assertIsNone(a.closed)
        self.server.advance(1)
        for i in range(5):
            a.send_json(type="message", text=f"later{i}")
        self.server.flush()
        self.assertEqual(len(b.take()), 5)
        self.assertEqual(a.take(), [])

    def test_flood_closed_1008(self) -> None:
        """Three times the burst at once closes the flooder with 1008; the partner is told at once."""
        a, b = self.server.pair()
        for i in range(30):
            a.send_json(type="message", text="spam")
        self.server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1008)
        self.assertEqual(b.types(), ["message"] * 10 + ["partner_left"])
        self.assertEqual(self.server.factory.errors["flood"], 1)
        self.assertEqual(self.server.lobby.online, 1)

    def test_a_little_too_fast_is_not_closed(self) -> None:
        """A client at 6 messages a second for a minute is refused now and then, never closed."""
        a, b = self.server.pair()
        for i in range(360):
            a.send_json(type="message", text="hi")
            self.server.advance(1 / 6)
        self.assertIsNone(a.closed)
        relayed = len(b.take())
        self.assertGreaterEqual(relayed, 300)
        self.assertLess(relayed, 360)
        self.assertEqual(set(e["code"] for e in a.take()), {"rate_limited"})

    def test_typing_has_a_looser_bucket(self) -> None:
        """20 typing signals at once are all relayed, and do not use up the message bucket."""
        a, b = self.server.pair()
        for i in range(20):
            a.send_json(type="typing", active=i % 2 == 0)
        a.send_json(type="message", text="done")
        self.server.flush()
        self.assertEqual(b.types(), ["typing"] * 20 + ["message"])
        self.assertEqual(a.take(), [])

    def test_find_storm_limited(self) -> None:
        """find/next beyond the request burst is refused with rate_limited and changes nothing."""
        a = self.server.connect()
        a.take()
        for _ in range(10):
            a.send_json(type="find")
        self.server.flush()
        self.assertEqual(a.types(), ["waiting"] * 10)
        a.take()
        a.send_json(type="find", interests=["new"])
        a.send_json(type="leave")
        self.server.flush()
        self.assertEqual([e["code"] for e in a.take()], ["rate_limited", "rate_limited"])
        self.assertEqual(self.server.lobby.waiting, 1)

    def test_garbage_flood_closed(self) -> None:
        """Malformed frames share the request bucket: a garbage flood is refused, then closed 1008."""
        a = self.server.connect()
        a.take()
        for _ in range(30):
            a.sendMessage(b"not json")
        self.server.flush()
        codes = [e["code"] for e in a.events]
        self.assertEqual(codes, ["bad_request"] * 10 + ["rate_limited"] * 19)
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1008)


class UnlimitedTests(ProtectionTestCase):
    settings = Settings(message_rate=0, typing_rate=0, request_rate=0)

    def test_zero_rate_disables(self) -> None:
        """With the rates set to 0, nothing is rate limited."""
        a, b = self.server.pair()
        for i in range(200):
            a.send_json(type="message", text=str(i))
        a.send_json(type="find")
        self.server.flush()
        self.assertEqual(b.types(), ["message"] * 200 + ["partner_left"])
        self.assertNotIn("error", a.types())


class OriginTests(ProtectionTestCase):
    settings = Settings(allowed_origins=("https://chat.example.com",))

    def test_cross_site_page_refused_403(self) -> None:
        """A page from another site is refused with HTTP 403 at the handshake."""
        client = self.raw(handshake(origin="https://evil.example"))
        self.assertEqual(client.status(), 403)
        self.assertTrue(client.lost)
        self.assertEqual(self.server.lobby.online, 0)
        self.assertEqual(self.server.factory.refused["origin"], 1)

    def test_other_port_and_null_refused(self) -> None:
        """Another port on the same host and the opaque origin null are other sites."""
        self.assertEqual(self.raw(handshake(origin="http://localhost:9999")).status(), 403)
        self.assertEqual(self.raw(handshake(origin="null")).status(), 403)

    def test_same_origin_and_no_origin_accepted(self) -> None:
        """The page's own origin (the Host header) and clients without Origin get in."""
        for origin in [None, "http://localhost:8080", "https://localhost:8080"]:
            client = connect_as(self.server, REMOTE, origin=origin)
            self.assertTrue(client.opened, origin)
        self.assertEqual(self.server.lobby.online, 3)

    def test_allowed_origin_with_or_without_default_port(self) -> None:
        """--allowed-origin matches with or without the explicit default port."""
        for origin in ["https://chat.example.com", "https://chat.example.com:443"]:
            self.assertTrue(connect_as(self.server, REMOTE, origin=origin).opened, origin)
        self.assertEqual(self.raw(handshake(origin="http://chat.example.com")).status(), 403)


class AddressCapTests(ProtectionTestCase):
    settings = Settings(max_connections_per_ip=5, handshake_rate=0)

    def test_concurrent_cap_429(self) -> None:
        """The 6th concurrent connection from one address is refused with 429, others are not."""
        clients = [connect_as(self.server, REMOTE) for _ in range(5)]
        self.assertTrue(all(c.opened for c in clients))
        self.assertEqual(self.raw(handshake()).status(), 429)
        self.assertTrue(connect_as(self.server, "198.51.100.1").opened)
        clients[0].sendClose()
        self.server.flush()
        self.assertTrue(connect_as(self.server, REMOTE).opened)
        self.assertEqual(self.server.factory.refused["connections"], 1)

    def test_loopback_exempt(self) -> None:
        """Loopback peers without proxy headers (a local proxy, a load test) are not capped."""
        clients = [self.server.connect() for _ in range(20)]
        self.assertTrue(all(c.opened for c in clients))

    def test_ipv6_grouped_by_64(self) -> None:
        """Addresses of one IPv6 /64 share a cap; another /64 does not."""
        for i in range(5):
            self.assertTrue(connect_as(self.server, f"2001:db8:0:1::{i + 1}").opened)
        self.assertEqual(self.raw(handshake(), host="2001:db8:0:1:ffff::9").status(), 429)
        self.assertTrue(connect_as(self.server, "2001:db8:0:2::1").opened)

    def test_forwarded_headers_ignored_unless_trusted(self) -> None:
        """Without --trust-proxy-headers, X-Forwarded-For is ignored (loopback stays exempt)."""
        for _ in range(8):
            client = connect_as(self.server, headers={"X-Forwarded-For": REMOTE})
            self.assertTrue(client.opened)


class TrustedProxyTests(ProtectionTestCase):
    settings = Settings(max_connections_per_ip=2, handshake_rate=0, trust_proxy_headers=True)

    def test_nearest_forwarded_address_is_capped(self) -> None:
        """Behind a trusted proxy the nearest forwarded address is the client, and it is capped."""
        headers = {"X-Forwarded-For": "10.0.0.9, " + REMOTE}
        self.assertTrue(connect_as(self.server, headers=headers).opened)
        self.assertTrue(connect_as(self.server, headers={"X-Forwarded-For": REMOTE}).opened)
        refused = self.raw(handshake(extra={"X-Forwarded-For": REMOTE}), host="127.0.0.1")
        self.assertEqual(refused.status(), 429)
        self.assertTrue(connect_as(self.server, headers={"X-Forwarded-For": "10.0.0.9"}).opened)
        self.assertTrue(connect_as(self.server, headers={"X-Forwarded-For": "127.0.0.1"}).opened)


class HandshakeRateTests(ProtectionTestCase):
    settings = Settings(max_connections_per_ip=0, handshake_rate=20, handshake_burst=50)

    def test_handshake_rate_429(self) -> None:
        """50 handshakes at once pass, the 51st is refused with 429; a second later 20 more pass."""
        for _ in range(50):
            connect_as(self.server, REMOTE).sendClose()
        self.server.flush()
        self.assertEqual(self.raw(handshake()).status(), 429)
        self.server.advance(1)
        opened = [connect_as(self.server, REMOTE).opened for _ in range(21)]
        self.assertEqual(opened.count(True), 20)


class DeadPeerTests(ProtectionTestCase):
    settings = Settings(ping_interval=25, ping_timeout=10)

    def test_peer_that_never_answers_pings_is_dropped(self) -> None:
        """A peer that stops answering pings is dropped after interval + timeout; its partner is told."""
        silent = connect_as(self.server, client_class=SilentClient)
        alive = self.server.connect()
        silent.send_json(type="find")
        alive.send_json(type="find")
        self.server.flush()
        alive.take()
        self.server.advance(25)
        self.assertIsNone(silent.closed)
        self.server.advance(10)
        self.assertEqual(alive.take(), [{"type": "partner_left", "chat": silent.chat}])
        self.assertEqual(self.server.lobby.online, 1)
        self.assertEqual(self.server.factory.errors["ping_timeout"], 1)

    def test_live_peer_stays(self) -> None:
        """A peer that answers pings stays connected through many of them."""
        a, b = self.server.pair()
        for _ in range(20):
            self.server.advance(10)
        self.assertIsNone(a.closed)
        self.assertIsNone(b.closed)
        self.assertEqual(self.server.lobby.chatting, 2)


def transport_producer(server: MemoryServer, client: MemoryClient) -> IPushProducer:
    """The producer the server registered with a client's transport (what TCP pauses)."""
    producer = cast(FakeTransport, server_side(server, client).transport).producer
    assert IPushProducer.providedBy(producer)
    return producer


class SlowReaderTests(ProtectionTestCase):
    settings = Settings(max_buffer_bytes=50_000, message_rate=0)

    def test_reader_that_stopped_is_closed(self) -> None:
        """Past max-buffer-bytes queued for a client the transport paused, it is closed 1008."""
        slow, fast = self.server.pair()
        producer = transport_producer(self.server, slow)
        for _ in range(30):
            # What a TCP transport does on every write once its buffer is full.
            producer.pauseProducing()
            fast.send_json(type="message", text="x" * 2000)
            self.server.flush()
        # Cut off: the close frame is sent, the client no longer read, and
        # the connection dropped a grace period later.
        self.assertIsNone(slow.closed)
        self.server.advance(CUT_OFF_GRACE)
        assert slow.closed is not None
        self.assertEqual(slow.closed[1], 1008)
        frame_size = len(json.dumps({"type": "message", "text": "x" * 2000}, separators=(",", ":")))
        self.assertEqual(len(slow.take()), 50_000 // frame_size)
        self.assertEqual(fast.take()[0], {"type": "partner_left", "chat": fast.chat})
        self.assertEqual(self.server.factory.errors["slow_reader"], 1)

    def test_reader_that_catches_up_is_kept(self) -> None:
        """A reader that resumes before the limit is not closed, and the count starts over."""
        slow, fast = self.server.pair()
        producer = transport_producer(self.server, slow)
        for _ in range(3):
            producer.pauseProducing()
            for _ in range(20):
                fast.send_json(type="message", text="x" * 2000)
            self.server.flush()
            producer.resumeProducing()
        self.assertIsNone(slow.closed)
        self.assertEqual(len(slow.take()), 60)


class PipelinedFrameTests(ProtectionTestCase):
    def test_frame_sent_with_the_handshake_is_not_lost(self) -> None:
        """A frame sent in the same packet as the handshake is processed, not dropped."""
        client = self.raw(handshake() + masked_frame(b'{"type":"find"}'))
        self.assertEqual(client.status(), 101)
        self.assertIn(b'{"type":"waiting"}', client.received)
        self.assertEqual(self.server.lobby.waiting, 1)


class RequestDeadlineTests(ProtectionTestCase):
    def test_slowloris_cut_off(self) -> None:
        """A request trickling in a byte a second is cut off at the handshake timeout."""
        request = handshake()
        client, pump = raw_connect(self.server, REMOTE)
        for i in range(4):
            pump.clientIO.write(request[i : i + 1])
            self.server.advance(1)
        self.assertFalse(client.lost)
        for i in range(4, 7):
            pump.clientIO.write(request[i : i + 1])
            self.server.advance(1)
        self.assertTrue(client.lost)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.server.factory.refused["request_timeout"], 1)

    def test_huge_headers_refused(self) -> None:
        """More than 16 KiB of headers is answered 400 and the connection closed."""
        request = handshake(extra={f"X-Pad-{i}": "y" * 1000 for i in range(40)})
        client = self.raw(request)
        self.assertEqual(client.status(), 400)
        self.assertTrue(client.lost)

    def test_request_body_refused(self) -> None:
        """A request declaring a large body is answered 413 at once."""
        client = self.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"z" * 1000)
        self.assertEqual(client.status(), 413)
        self.assertTrue(client.lost)

    def test_chunked_body_refused(self) -> None:
        """A chunked body past the limit is answered 413."""
        chunk = b"%x\r\n%s\r\n" % (8192, b"z" * 8192)
        client = self.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 10)
        self.assertEqual(client.status(), 413)

    def test_keepalive_requests_still_served(self) -> None:
        """Normal requests on a kept-alive connection are served, each within its own deadline."""
        client, pump = raw_connect(self.server, REMOTE)
        pump.clientIO.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.server.flush()
        self.assertEqual(client.status(), 200)
        self.server.advance(4)
        pump.clientIO.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.server.advance(4)
        self.assertEqual(client.received.count(b"HTTP/1.1 200"), 2)
        self.assertFalse(client.lost)

    def test_websocket_outlives_deadline(self) -> None:
        """An open WebSocket is not touched by the HTTP request deadline."""
        a, b = self.server.pair()
        self.server.advance(60)
        a.send_json(type="message", text="still here")
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "message", "text": "still here"}])


class BanTests(ProtectionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server.factory.moderation = Moderation(threshold=3, window=3600, ban_seconds=600)

    def report_by(self, reporter_host: str, target_host: str) -> MemoryClient:
        target, reporter = self.pair_from(target_host, reporter_host)
        reporter.send_json(type="report", reason="rude")
        self.server.flush()
        return target

    def test_three_reporters_ban_the_address(self) -> None:
        """Reported by three addresses: that address's find and invite get banned and change nothing."""
        targets = [self.report_by(f"198.51.100.{i}", REMOTE) for i in range(1, 4)]
        targets[0].take()
        targets[0].send_json(type="find")
        targets[0].send_json(type="invite")
        self.server.flush()
        events = targets[0].take()
        self.assertEqual([e["code"] for e in events], ["banned", "banned"])
        self.assertIn("reported", events[0]["message"])
        newcomer = connect_as(self.server, REMOTE)
        newcomer.send_json(type="find")
        self.server.flush()
        self.assertEqual(newcomer.events[-1]["code"], "banned")
        self.assertEqual(self.server.lobby.waiting, 0)
        other = connect_as(self.server, "198.51.100.9")
        other.send_json(type="find")
        self.server.flush()
        self.assertEqual(other.events[-1], {"type": "waiting"})

    def test_ban_takes_waiting_clients_out_of_the_queue(self) -> None:
        """A client waiting when its address is banned leaves the queue at once, told banned; nobody meets it."""
        waiting = connect_as(self.server, REMOTE)
        inviting = connect_as(self.server, REMOTE)
        for i in range(1, 3):
            self.report_by(f"198.51.100.{i}", REMOTE)
        waiting.send_json(type="find", interests=["nobody else"])
        inviting.send_json(type="invite")
        self.server.flush()
        code = inviting.last("invite")["code"]
        waiting.take()
        inviting.take()
        self.report_by("198.51.100.3", REMOTE)  # the third report: banned
        for client in (waiting, inviting):
            self.assertEqual([e["code"] for e in client.take()], ["banned"])
        self.assertEqual(self.server.lobby.waiting, 0)
        newcomer = connect_as(self.server, "198.51.100.9")
        newcomer.send_json(type="find", interests=["nobody else"])
        joiner = connect_as(self.server, "198.51.100.10")
        joiner.send_json(type="find", invite=code)
        self.server.flush()
        self.assertEqual(newcomer.events[-1], {"type": "waiting"})
        self.assertEqual(joiner.events[-1]["code"], "invite_invalid")

    def test_ban_ends(self) -> None:
        """After the ban's duration the address can chat again."""
        for i in range(1, 4):
            self.report_by(f"198.51.100.{i}", REMOTE)
        self.server.advance(600)
        client = connect_as(self.server, REMOTE)
        client.send_json(type="find")
        self.server.flush()
        self.assertEqual(client.events[-1], {"type": "waiting"})

    def test_one_reporter_counts_once(self) -> None:
        """Many reports from one address are one reporter."""
        for _ in range(4):
            self.report_by("198.51.100.1", REMOTE)
        client = connect_as(self.server, REMOTE)
        client.send_json(type="find")
        self.server.flush()
        self.assertEqual(client.events[-1], {"type": "waiting"})

    def test_loopback_not_banned(self) -> None:
        """Loopback without proxy headers is never banned (it may be a proxy for everyone)."""
        for i in range(1, 4):
            self.report_by(f"198.51.100.{i}", "127.0.0.1")
        client = self.server.connect()
        client.send_json(type="find")
        self.server.flush()
        self.assertEqual(client.events[-1], {"type": "waiting"})

    def test_banned_in_metrics(self) -> None:
        """The banned code is in the metrics error label set."""
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b"metrics"])
        body = self.server.site.getResourceFor(request).render(request)
        assert isinstance(body, bytes)
        self.assertIn(b'chatroulette_errors_total{code="banned"} 0.0', body)
        self.assertIn(b'chatroulette_refused_total{reason="origin"} 0.0', body)


class LoggingTests(ProtectionTestCase):
    def capture(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    def chat_with_secrets(self) -> list[dict[str, Any]]:
        events = self.capture()
        self.server.site.doStart()  # opens the access log, as listening does
        self.addCleanup(self.server.site.doStop)
        a, b = self.pair_from(REMOTE, "198.51.100.23")
        a.send_json(type="message", text="my secret is hunter2")
        b.send_json(type="typing", active=True)
        b.send_json(type="message", text="whisper quietly")
        b.send_json(type="report", reason="asked for my password")
        for _ in range(30):
            a.send_json(type="message", text="hunter2 again")
        self.server.flush()
        self.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", host=REMOTE)
        self.server.advance(60)
        return events

    def dump(self, events: list[dict[str, Any]]) -> str:
        return "\n".join(
            (formatEvent(e) or "") + repr(sorted((k, repr(v)) for k, v in e.items()))
            for e in events
        )

    def test_chat_text_never_logged(self) -> None:
        """Connect, pair, report and limit events are logged; chat text and report reasons never are."""
        events = self.chat_with_secrets()
        kinds = {e.get("event") for e in events}
        self.assertTrue({"connect", "pair", "report", "limit", "disconnect"} <= kinds, kinds)
        text = self.dump(events)
        for secret in ["hunter2", "whisper", "password"]:
            self.assertNotIn(secret, text)

    def test_pair_event(self) -> None:
        """A chat start is one event, readable as text and with its fields for structured logs."""
        events = self.capture()
        a, b = self.pair_from(REMOTE, "198.51.100.23")
        pairs = [e for e in events if e.get("event") == "pair"]
        self.assertEqual(len(pairs), 1)
        (pair,) = pairs
        self.assertEqual(pair["chat"], a.chat)
        self.assertRegex(pair["client"], r"^#\d+(@[0-9a-f]{10})?$")
        self.assertRegex(pair["partner"], r"^#\d+(@[0-9a-f]{10})?$")
        self.assertNotEqual(pair["client"], pair["partner"])
        self.assertEqual(pair["shared"], 0)
        self.assertEqual(pair["log_namespace"], "chatroulette.protocol.ChatServerFactory")
        self.assertEqual(pair["log_level"], LogLevel.debug)
        self.assertEqual(
            formatEvent(pair),
            f"clients {pair['client']} and {pair['partner']} paired in chat {a.chat}",
        )

    def test_addresses_hashed(self) -> None:
        """By default an address appears only hashed, never in the clear."""
        text = self.dump(self.chat_with_secrets())
        self.assertNotIn(REMOTE, text)
        self.assertNotIn("198.51.100.23", text)
        self.assertRegex(text, r"client #\d+@[0-9a-f]{10}")
        self.assertRegex(text, r'"[0-9a-f]{10}" - - \[.*\] "GET /healthz HTTP/1.1" 200')


class NoAddressLoggingTests(LoggingTests):
    settings = Settings(log_addresses=False)

    def test_addresses_hashed(self) -> None:
        """With --log-addresses=no no address appears, not even hashed."""
        text = self.dump(self.chat_with_secrets())
        self.assertNotIn(REMOTE, text)
        self.assertNotRegex(text, r"#\d+@")
        self.assertRegex(text, r"client #\d+ ")
        self.assertIn('"-" - - ', text)


class ShutdownTests(ProtectionTestCase):
    def test_everyone_told_going_away(self) -> None:
        """Stopping the service closes every client with 1001 and fires when they are gone."""
        a, b = self.server.pair()
        c = self.server.connect()
        service = ChatService(self.server.factory, self.server.clock, shutdown_timeout=5)
        service.startService()
        done = service.stopService()
        self.server.flush()
        for client in (a, b, c):
            assert client.closed is not None
            self.assertEqual(client.closed[1], 1001)
        self.successResultOf(done)
        self.assertEqual(self.server.lobby.online, 0)
        late_client = self.raw(handshake())
        self.assertEqual(late_client.status(), 503)

    def test_unresponsive_client_dropped_at_deadline(self) -> None:
        """A client that never answers the close is dropped at the shutdown deadline."""
        client, pump = raw_connect(self.server, REMOTE)
        pump.clientIO.write(handshake())
        self.server.flush()
        self.assertEqual(client.status(), 101)
        service = ChatService(self.server.factory, self.server.clock, shutdown_timeout=2)
        service.startService()
        done = service.stopService()
        self.server.flush()
        self.assertNoResult(done)
        self.assertIn(b"\x88", client.received)
        self.server.advance(2)
        self.successResultOf(done)
        self.assertTrue(client.lost)


class FrameLimitTests(ProtectionTestCase):
    settings = Settings(max_frame_bytes=24_064)

    def test_max_frame_bytes_setting(self) -> None:
        """The frame limit follows the setting: one byte over closes with 1009."""
        a, b = self.server.pair()
        a.sendMessage(json.dumps({"type": "message", "text": "x" * 2000}).encode())
        self.server.flush()
        self.assertEqual(len(b.take()), 1)
        a.sendMessage(b" " * 24_065)
        self.server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1009)
        self.assertEqual(b.take()[-1]["type"], "partner_left")

    def test_escaped_longest_message_fits(self) -> None:
        """The longest message with every character escaped as a surrogate pair still fits."""
        a, b = self.server.pair()
        frame = '{"type":"message","text":"' + "\\ud83d\\ude00" * 2000 + '"}'
        self.assertLess(len(frame), 24_064)
        a.sendMessage(frame.encode())
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "message", "text": "\U0001f600" * 2000}])


also_without_fast_path(globals())
