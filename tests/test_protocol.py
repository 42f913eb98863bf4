"""
The WebSocket protocol through the real C{Site}, in memory: what a client sees.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from .memory import MemoryServer, also_without_fast_path


class ProtocolTestCase(SynchronousTestCase):
    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(fast_path=self.fast_path)


class ChatTests(ProtocolTestCase):
    def test_welcome_counts_online(self) -> None:
        """Each new connection is welcomed with the number of people online."""
        a = self.server.connect()
        b = self.server.connect()
        self.assertEqual(a.events, [{"type": "welcome", "online": 1}])
        self.assertEqual(b.events, [{"type": "welcome", "online": 2}])

    def test_pair_and_chat_both_ways(self) -> None:
        """Two strangers are paired and exchange messages and typing signals both ways."""
        a, b = self.server.connect(), self.server.connect()
        a.send_json(type="find")
        self.server.flush()
        self.assertEqual(a.events[-1], {"type": "waiting"})
        b.send_json(type="find", interests=[])
        self.server.flush()
        pa, pb = a.last("paired"), b.last("paired")
        self.assertEqual(pa, pb)
        self.assertEqual(pa["interests"], [])
        a.take(), b.take()
        a.send_json(type="typing", active=True)
        a.send_json(type="message", text="hi <script>")
        b.send_json(type="message", text="héllo 👋")
        self.server.flush()
        self.assertEqual(
            b.take(),
            [{"type": "typing", "active": True}, {"type": "message", "text": "hi <script>"}],
        )
        self.assertEqual(a.take(), [{"type": "message", "text": "héllo 👋"}])

    def test_shared_interests_announced(self) -> None:
        """Paired strangers are told the interests they share, normalised."""
        a, b = self.server.connect(), self.server.connect()
        a.send_json(type="find", interests=["Music", "chess"])
        b.send_json(type="find", interests=["  MUSIC  ", "go"])
        self.server.flush()
        self.assertEqual(a.last("paired")["interests"], ["music"])
        self.assertEqual(b.last("paired")["interests"], ["music"])

    def test_leave_and_next(self) -> None:
        """leave and find-while-chatting end the chat; the partner gets partner_left with the chat id."""
        a, b = self.server.pair()
        chat = a.chat
        self.assertIsNotNone(chat)
        a.send_json(type="leave")
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "partner_left", "chat": chat}])
        self.assertEqual(a.take(), [])
        c, d = self.server.pair()
        c.send_json(type="find")
        self.server.flush()
        self.assertEqual(d.take()[0]["type"], "partner_left")
        self.assertEqual(c.take(), [{"type": "waiting"}])

    def test_disconnect_tells_partner(self) -> None:
        """A partner who drops the connection is reported as gone at once."""
        a, b = self.server.pair()
        a.dropConnection(abort=False)
        self.server.flush()
        self.assertEqual(b.take()[-1]["type"], "partner_left")
        self.assertEqual(self.server.lobby.online, 1)

    def test_invite_flow(self) -> None:
        """An invite code answers the inviter and pairs the friend who uses it."""
        a, b, c = self.server.connect(), self.server.connect(), self.server.connect()
        a.send_json(type="invite")
        self.server.flush()
        code = a.last("invite")["code"]
        self.assertGreaterEqual(len(code), 8)
        c.send_json(type="find")
        b.send_json(type="find", invite=code)
        self.server.flush()
        self.assertEqual(a.last("paired")["chat"], b.last("paired")["chat"])
        self.assertEqual(c.events[-1], {"type": "waiting"})
        c.send_json(type="find", invite=code)
        self.server.flush()
        self.assertEqual(c.events[-1]["code"], "invite_invalid")

    def test_invite_expiry_told(self) -> None:
        """An inviter whose code expires unused is told so."""
        a = self.server.connect()
        a.send_json(type="invite")
        self.server.flush()
        code = a.last("invite")["code"]
        self.server.advance(600)
        self.assertEqual(a.events[-1], {"type": "invite_expired", "code": code})

    def test_report(self) -> None:
        """A report ends the chat and keeps the two apart after the cooldown."""
        a, b = self.server.pair()
        a.send_json(type="report", reason="rude")
        self.server.flush()
        self.assertEqual(b.take()[-1]["type"], "partner_left")
        a.send_json(type="find")
        b.send_json(type="find")
        self.server.advance(60)
        self.assertEqual(a.events[-1], {"type": "waiting"})
        self.assertEqual(b.events[-1], {"type": "waiting"})


class CompressionTests(ProtocolTestCase):
    def test_compression_offer_declined(self) -> None:
        """A client offering permessage-deflate (as browsers do) connects, uncompressed."""
        from autobahn.websocket.compress import PerMessageDeflateOffer

        client = self.server.connect(offers=[PerMessageDeflateOffer()])
        self.assertTrue(client.opened)
        self.assertEqual(client.events, [{"type": "welcome", "online": 1}])
        self.assertIsNone(client._perMessageCompress)


class RefusalTests(ProtocolTestCase):
    """A refused request gets an error, changes nothing and disturbs nobody."""

    def assertRefusedWithoutHarm(self, payload: bytes, code: str) -> None:
        a, b = self.server.pair()
        a.sendMessage(payload)
        self.server.flush()
        [event] = a.take()
        self.assertEqual(event["type"], "error")
        self.assertEqual(event["code"], code)
        self.assertIsInstance(event["message"], str)
        self.assertEqual(b.take(), [])
        a.send_json(type="message", text="still here")
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "message", "text": "still here"}])
        self.assertEqual(self.server.factory.errors[code], 1)

    def test_not_json(self) -> None:
        """Garbage is a bad request."""
        self.assertRefusedWithoutHarm(b"hello", "bad_request")

    def test_not_object(self) -> None:
        """A JSON array is a bad request."""
        self.assertRefusedWithoutHarm(b'["message","hi"]', "bad_request")

    def test_unknown_type(self) -> None:
        """An unknown type is a bad request."""
        self.assertRefusedWithoutHarm(b'{"type":"shout"}', "bad_request")

    def test_blank_text(self) -> None:
        """Whitespace-only text is a bad request."""
        self.assertRefusedWithoutHarm(b'{"type":"message","text":"   "}', "bad_request")

    def test_too_long(self) -> None:
        """Over 2000 characters is text_too_long, and nothing is relayed."""
        payload = json.dumps({"type": "message", "text": "x" * 2001}).encode()
        self.assertRefusedWithoutHarm(payload, "text_too_long")

    def test_bad_interests(self) -> None:
        """Bad interests are refused and the current chat goes on."""
        self.assertRefusedWithoutHarm(b'{"type":"find","interests":[""]}', "bad_request")

    def test_bad_invite_keeps_chat(self) -> None:
        """An unknown invite code is refused and the current chat goes on."""
        self.assertRefusedWithoutHarm(b'{"type":"find","invite":"nope"}', "invite_invalid")

    def test_not_chatting(self) -> None:
        """A message without a partner is refused with not_chatting."""
        a = self.server.connect()
        a.take()
        a.send_json(type="message", text="anyone?")
        self.server.flush()
        self.assertEqual(a.take()[0]["code"], "not_chatting")


class CloseCodeTests(ProtocolTestCase):
    """Frames the server cannot accept close the connection with a precise code."""

    def assertClosedWith(self, payload: bytes, is_binary: bool, code: int) -> None:
        a, b = self.server.pair()
        a.sendMessage(payload, isBinary=is_binary)
        self.server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1], code)
        self.assertEqual(b.take()[-1]["type"], "partner_left")
        self.assertEqual(self.server.lobby.online, 1)

    def test_binary(self) -> None:
        """A binary frame is closed with 1003."""
        self.assertClosedWith(b'{"type":"leave"}', True, 1003)

    def test_invalid_utf8(self) -> None:
        """Invalid UTF-8 in a text frame is closed with 1007."""
        self.assertClosedWith(b'{"type":"message","text":"\xff"}', False, 1007)

    def test_oversized(self) -> None:
        """A message over 32 KiB is closed with 1009."""
        self.assertClosedWith(b"x" * (32 * 1024 + 1), False, 1009)


class HttpTests(ProtocolTestCase):
    def get(self, path: bytes) -> tuple[DummyRequest, bytes]:
        request = DummyRequest([path])
        resource = self.server.site.getResourceFor(request)
        body = resource.render(request)
        assert isinstance(body, bytes)
        return request, body

    def test_healthz(self) -> None:
        """/healthz reports status and the lobby's counts as JSON."""
        self.server.pair()
        self.server.connect().send_json(type="find")
        self.server.connect()
        self.server.flush()
        request, body = self.get(b"healthz")
        self.assertEqual(
            json.loads(body), {"status": "ok", "online": 4, "waiting": 1, "chatting": 2}
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])

    def test_metrics(self) -> None:
        """/metrics exposes counters in Prometheus text format, without chat text."""
        a, b = self.server.pair()
        a.send_json(type="message", text="secret words")
        a.sendMessage(b"junk")
        a.send_json(type="report")
        self.server.flush()
        _, body = self.get(b"metrics")
        text = body.decode()
        for line in [
            "chatroulette_connections 2.0",
            "chatroulette_connections_total 2.0",
            "chatroulette_waiting 0.0",
            "chatroulette_pairs 0.0",
            "chatroulette_pairings_total 1.0",
            "chatroulette_messages_relayed_total 1.0",
            "chatroulette_reports_total 1.0",
            'chatroulette_errors_total{code="bad_request"} 1.0',
            'chatroulette_errors_total{code="not_chatting"} 0.0',
        ]:
            self.assertIn(line + "\n", text)
        self.assertNotIn("secret", text)


class UpgradeTests(SynchronousTestCase):
    def test_upgrade_request_freed_at_once(self) -> None:
        """
        After the WebSocket upgrade, the HTTP request is freed by reference
        counting, not left in a cycle for the garbage collector (thousands
        of handshakes would otherwise make its full passes slow).
        """
        server = MemoryServer()
        requests: list[weakref.ref[Any]] = []
        make_request = server.site.requestFactory

        def recording(*args: Any, **kwargs: Any) -> Any:
            request = make_request(*args, **kwargs)
            requests.append(weakref.ref(request))
            return request

        server.site.requestFactory = recording  # type: ignore[assignment]
        gc.disable()
        self.addCleanup(gc.enable)
        client = server.connect()
        self.assertEqual(client.types(), ["welcome"])
        self.assertEqual(len(requests), 1)
        self.assertIsNone(requests[0]())


also_without_fast_path(globals())
