"""
Video mode through the real C{Site}, in memory: modes, the initiator, ICE
servers in C{paired}, and the C{signal} relay with every refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from chatroulette.ice import IceConfig

from .memory import MemoryClient, MemoryServer, also_without_fast_path
from .test_http_security import capture_log, dump

SECRET = b"coturn-shared-secret"
ICE = IceConfig(
    ("stun:stun.example.com:3478", "turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"),
    SECRET,
    turn_ttl=600,
)
OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 192.0.2.44\r\n"}}


class VideoTestCase(SynchronousTestCase):
    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(fast_path=self.fast_path, ice=ICE)

    def errors(self, client: MemoryClient) -> list[str]:
        return [e["code"] for e in client.take() if e["type"] == "error"]


class VideoPairingTests(VideoTestCase):
    def test_text_and_video_never_paired(self) -> None:
        """A text client and a video client both wait; each is paired with its own mode."""
        text, video = self.server.connect(), self.server.connect()
        text.send_json(type="find")
        video.send_json(type="find", mode="video")
        self.server.advance(60)
        # Neither is paired in a minute (the online count they hear meanwhile aside).
        for client in (text, video):
            self.assertEqual([t for t in client.types() if t != "online"], ["welcome", "waiting"])
        text2, video2 = self.server.connect(), self.server.connect()
        video2.send_json(type="find", mode="video")
        text2.send_json(type="find", mode="text")
        self.server.flush()
        self.assertEqual(video.last("paired")["chat"], video2.last("paired")["chat"])
        self.assertEqual(text.last("paired")["chat"], text2.last("paired")["chat"])

    def test_text_paired_unchanged_but_for_mode(self) -> None:
        """A text chat's paired event says mode "text" and carries no video fields."""
        a, b = self.server.pair()
        self.assertEqual(a.chat, b.chat)
        # pair() took the events; look at a fresh chat.
        a.send_json(type="leave")
        self.server.flush()
        c = self.server.connect()
        a.send_json(type="find")
        self.server.flush()
        c.send_json(type="find")
        self.server.flush()
        self.assertEqual(
            c.last("paired"), {"type": "paired", "chat": c.chat, "interests": [], "mode": "text"}
        )
        self.assertEqual(a.last("paired"), c.last("paired"))

    def test_exactly_one_initiator_the_waiter(self) -> None:
        """In a video chat exactly one side has initiator true: the one who was waiting."""
        waiter, newcomer = self.server.connect(), self.server.connect()
        waiter.send_json(type="find", mode="video", interests=["chess"])
        self.server.flush()
        newcomer.send_json(type="find", mode="video", interests=["Chess"])
        self.server.flush()
        one, other = waiter.last("paired"), newcomer.last("paired")
        self.assertEqual((one["initiator"], other["initiator"]), (True, False))
        for paired in (one, other):
            self.assertEqual((paired["mode"], paired["interests"], paired["chat"]), ("video", ["chess"], waiter.chat))

    def test_ice_servers_in_paired(self) -> None:
        """Each side of a video chat gets the STUN server, and the TURN servers with its own fresh credentials."""
        self.server.clock.advance(1_700_000_000)
        a, b = self.server.connect(), self.server.connect()
        a.send_json(type="find", mode="video")
        b.send_json(type="find", mode="video")
        self.server.flush()
        turn_users = []
        for client in (a, b):
            paired = client.last("paired")
            self.assertEqual(paired["ice_transport_policy"], "all")
            stun, turn = paired["ice_servers"]
            self.assertEqual(stun, {"urls": ["stun:stun.example.com:3478"]})
            self.assertEqual(set(turn), {"urls", "username", "credential"})
            self.assertEqual(
                turn["urls"], ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
            )
            expiry, _, _ = turn["username"].partition(":")
            self.assertEqual(int(expiry), 1_700_000_600)
            digest = hmac.new(SECRET, turn["username"].encode(), hashlib.sha1).digest()
            self.assertEqual(turn["credential"], base64.b64encode(digest).decode())
            turn_users.append(turn["username"])
        self.assertNotEqual(turn_users[0], turn_users[1])

    def test_no_ice_servers_by_default(self) -> None:
        """Without ICE options a video chat gets an empty server list and the "all" policy."""
        server = MemoryServer(fast_path=self.fast_path)
        a, b = server.connect(), server.connect()
        a.send_json(type="find", mode="video")
        b.send_json(type="find", mode="video")
        server.flush()
        paired = b.last("paired")
        self.assertEqual((paired["ice_servers"], paired["ice_transport_policy"]), ([], "all"))

    def test_relay_only_policy(self) -> None:
        """With --ice-relay-only both sides are told the "relay" policy."""
        server = MemoryServer(
            fast_path=self.fast_path, ice=IceConfig(("turn:t.example",), SECRET, relay_only=True)
        )
        a, b = server.connect(), server.connect()
        for client in (a, b):
            client.send_json(type="find", mode="video")
        server.flush()
        self.assertEqual([c.last("paired")["ice_transport_policy"] for c in (a, b)], ["relay", "relay"])

    def test_invite_in_the_inviters_mode(self) -> None:
        """An invite pairs in the inviter's mode, whatever mode the friend sends; the inviter initiates."""
        a, b = self.server.connect(), self.server.connect()
        a.send_json(type="invite", mode="video")
        self.server.flush()
        b.send_json(type="find", invite=a.last("invite")["code"], mode="text")
        self.server.flush()
        self.assertEqual([a.last("paired")["mode"], b.last("paired")["mode"]], ["video", "video"])
        self.assertEqual([a.last("paired")["initiator"], b.last("paired")["initiator"]], [True, False])
        c, d = self.server.connect(), self.server.connect()
        c.send_json(type="invite")
        self.server.flush()
        d.send_json(type="find", invite=c.last("invite")["code"], mode="video")
        self.server.flush()
        self.assertEqual(d.last("paired")["mode"], "text")
        self.assertNotIn("initiator", d.last("paired"))

    def test_bad_mode_refused(self) -> None:
        """A mode other than "text" or "video" is a bad request that changes nothing."""
        a, b = self.server.connect(), self.server.connect()
        a.send_json(type="find")
        self.server.flush()
        a.take()
        b.send_json(type="find", mode="audio")
        b.send_json(type="invite", mode=True)
        self.server.flush()
        self.assertEqual(self.errors(b), ["bad_request", "bad_request"])
        self.assertEqual(a.take(), [])
        self.assertEqual(self.server.lobby.waiting, 1)

    def test_video_chats_counted(self) -> None:
        """/metrics counts video chats apart, among all chats started."""
        self.server.pair()
        self.server.pair("video")
        text = metrics(self.server)
        self.assertIn("chatroulette_pairings_total 2.0\n", text)
        self.assertIn("chatroulette_video_chats_total 1.0\n", text)


class SignalRelayTests(VideoTestCase):
    def test_relayed_verbatim_both_ways(self) -> None:
        """A signal reaches the partner as the same object, in order, both ways."""
        a, b = self.server.pair("video")
        candidate = {"candidate": {"candidate": "candidate:1 1 udp 2122260223 192.0.2.44 54400 typ host", "sdpMid": "0"}}
        a.send_json(type="signal", data=OFFER)
        a.send_json(type="signal", data=candidate)
        b.send_json(type="signal", data={"description": {"type": "answer", "sdp": "v=0\r\n"}, "é": [1, 2.5, None, True]})
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "signal", "data": OFFER}, {"type": "signal", "data": candidate}])
        self.assertEqual(
            a.take(),
            [{"type": "signal", "data": {"description": {"type": "answer", "sdp": "v=0\r\n"}, "é": [1, 2.5, None, True]}}],
        )

    def test_not_chatting(self) -> None:
        """Idle, waiting, or after the partner left: not_chatting, and nothing relayed."""
        idle = self.server.connect()
        waiting = self.server.connect()
        # Waiting for a shared interest, so that the pair below is not given it.
        waiting.send_json(type="find", mode="video", interests=["knitting"])
        a, b = self.server.pair("video")
        b.send_json(type="leave")
        self.server.flush()
        a.take()
        for client in (idle, waiting, a, b):
            client.take()
            client.send_json(type="signal", data=OFFER)
            self.server.flush()
            self.assertEqual(self.errors(client), ["not_chatting"])
        self.assertEqual(self.server.lobby.stats.signals, 0)

    def test_bad_request_in_a_text_chat(self) -> None:
        """A signal in a text chat is a bad request; the partner hears nothing."""
        a, b = self.server.pair()
        a.send_json(type="signal", data=OFFER)
        self.server.flush()
        self.assertEqual(self.errors(a), ["bad_request"])
        self.assertEqual(b.take(), [])

    def test_data_not_an_object(self) -> None:
        """Data missing, a string, a list or null is a bad request; nothing is relayed."""
        a, b = self.server.pair("video")
        a.send_json(type="signal")
        for data in ["offer", [OFFER], None, 1]:
            a.send_json(type="signal", data=data)
        self.server.flush()
        self.assertEqual(self.errors(a), ["bad_request"] * 5)
        self.assertEqual(b.take(), [])

    def test_data_too_big(self) -> None:
        """Data of exactly 16,384 bytes of compact JSON is relayed; one byte more is a bad request."""
        a, b = self.server.pair("video")
        fits = {"sdp": "x" * (16384 - len('{"sdp":""}'))}
        a.send_json(type="signal", data=fits)
        a.send_json(type="signal", data={"sdp": fits["sdp"] + "x"})
        self.server.flush()
        self.assertEqual(self.errors(a), ["bad_request"])
        self.assertEqual(b.take(), [{"type": "signal", "data": fits}])

    def test_sixty_candidates_at_once_all_arrive(self) -> None:
        """60 ICE candidates sent in one burst all reach the partner, none refused."""
        a, b = self.server.pair("video")
        for i in range(60):
            a.send_json(type="signal", data={"candidate": {"candidate": f"candidate:{i}", "sdpMid": "0"}})
        self.server.flush()
        self.assertEqual(self.errors(a), [])
        received = [e["data"]["candidate"]["candidate"] for e in b.take()]
        self.assertEqual(received, [f"candidate:{i}" for i in range(60)])
        self.assertIsNone(a.closed)

    def test_far_more_are_rate_limited(self) -> None:
        """250 signals at once: the burst of 100 is relayed, the rest refused rate_limited, the chat goes on."""
        a, b = self.server.pair("video")
        for i in range(250):
            a.send_json(type="signal", data={"n": i})
        self.server.flush()
        self.assertEqual(self.errors(a), ["rate_limited"] * 150)
        self.assertEqual([e["data"]["n"] for e in b.take()], list(range(100)))
        self.assertIsNone(a.closed)
        self.server.advance(1)
        a.send_json(type="signal", data={"n": "later"})
        a.send_json(type="message", text="still here")
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "signal", "data": {"n": "later"}}, {"type": "message", "text": "still here"}])

    def test_own_bucket(self) -> None:
        """Signalling does not use up the message bucket: ten messages still pass after a burst of signals."""
        a, b = self.server.pair("video")
        for i in range(100):
            a.send_json(type="signal", data={"n": i})
        for i in range(10):
            a.send_json(type="message", text=f"m{i}")
        self.server.flush()
        self.assertEqual(self.errors(a), [])
        self.assertEqual(len(b.take()), 110)

    def test_counted_in_metrics(self) -> None:
        """/metrics counts signals relayed and signals refused by code."""
        a, b = self.server.pair("video")
        idle = self.server.connect()
        t1, t2 = self.server.pair()
        a.send_json(type="signal", data=OFFER)
        a.send_json(type="signal", data="nope")
        idle.send_json(type="signal", data=OFFER)
        t1.send_json(type="signal", data=OFFER)
        for _ in range(101):
            b.send_json(type="signal", data={})
        self.server.flush()
        text = metrics(self.server)
        for line in [
            "chatroulette_signals_relayed_total 101.0",
            'chatroulette_signals_refused_total{code="bad_request"} 2.0',
            'chatroulette_signals_refused_total{code="not_chatting"} 1.0',
            'chatroulette_signals_refused_total{code="rate_limited"} 1.0',
            'chatroulette_signals_refused_total{code="flood"} 0.0',
        ]:
            self.assertIn(line + "\n", text)

    def test_payload_never_logged(self) -> None:
        """Nothing of a signal's data (addresses in the SDP) reaches the log, relayed or refused, at debug level."""
        events = capture_log(self)
        a, b = self.server.pair("video")
        a.send_json(type="signal", data=OFFER)
        a.send_json(type="signal", data={"x": "192.0.2.44" + "y" * 20000})
        t1, t2 = self.server.pair()
        t1.send_json(type="signal", data=OFFER)
        self.server.flush()
        self.assertEqual(b.take(), [{"type": "signal", "data": OFFER}])
        self.assertNotIn("192.0.2.44", dump(events))


def metrics(server: MemoryServer) -> str:
    request = DummyRequest([b"metrics"])
    body: Any = server.site.getResourceFor(request).render(request)
    assert isinstance(body, bytes)
    return body.decode()


also_without_fast_path(globals())
