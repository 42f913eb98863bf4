"""
The wire format: client frames parsed and validated, server events encoded.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from chatroulette import messages
from chatroulette.messages import (
    Find,
    Invite,
    Leave,
    Message,
    ProtocolError,
    Report,
    Typing,
    parse_client_frame,
)


class ParseTests(SynchronousTestCase):
    def assertRefused(self, payload: bytes | str, code: str = "bad_request") -> None:
        with self.assertRaises(ProtocolError) as e:
            parse_client_frame(payload)
        self.assertEqual(e.exception.code, code)
        self.assertTrue(e.exception.message)

    def test_each_type(self) -> None:
        """Every client frame type parses into its request."""
        self.assertEqual(parse_client_frame('{"type":"find"}'), Find())
        self.assertEqual(parse_client_frame('{"type":"message","text":"hi"}'), Message("hi"))
        self.assertEqual(parse_client_frame('{"type":"typing","active":true}'), Typing(True))
        self.assertEqual(parse_client_frame('{"type":"leave"}'), Leave())
        self.assertEqual(parse_client_frame('{"type":"report"}'), Report(""))
        self.assertEqual(parse_client_frame('{"type":"report","reason":"spam"}'), Report("spam"))
        self.assertEqual(parse_client_frame('{"type":"invite"}'), Invite())
        self.assertEqual(parse_client_frame('{"type":"find","invite":"abc"}'), Find((), "abc"))

    def test_unknown_fields_ignored(self) -> None:
        """Extra fields are ignored, for forward compatibility."""
        self.assertEqual(parse_client_frame('{"type":"leave","x":1}'), Leave())

    def test_not_an_object(self) -> None:
        """Non-JSON and non-object frames are bad requests."""
        for payload in [b"", b"nonsense", b"[]", b"1", b'"find"', b"null", b"{", b"[" * 100000]:
            self.assertRefused(payload)

    def test_unknown_type(self) -> None:
        """A missing or unknown type is a bad request."""
        for payload in ['{}', '{"type":"dance"}', '{"type":1}', '{"type":null}']:
            self.assertRefused(payload)

    def test_message_text_rules(self) -> None:
        """Text must be a non-blank string of at most 2000 characters."""
        for payload in [
            '{"type":"message"}',
            '{"type":"message","text":5}',
            '{"type":"message","text":""}',
            '{"type":"message","text":"  \\n\\t "}',
            '{"type":"message","text":"\\ud800"}',
        ]:
            self.assertRefused(payload)
        self.assertRefused(json.dumps({"type": "message", "text": "x" * 2001}), "text_too_long")
        exactly = "é" * 2000
        self.assertEqual(parse_client_frame(json.dumps({"type": "message", "text": exactly})), Message(exactly))

    def test_escaped_maximum_fits_frame_limit(self) -> None:
        """A 2000-character message escaped as \\uXXXX fits in the default 32 KiB frame."""
        payload = json.dumps({"type": "message", "text": "\u00e9" * 2000}, ensure_ascii=True)
        self.assertLess(len(payload.encode()), 32 * 1024)
        self.assertEqual(parse_client_frame(payload), Message("\u00e9" * 2000))

    def test_typing_needs_boolean(self) -> None:
        """typing.active must be a JSON boolean."""
        for payload in ['{"type":"typing"}', '{"type":"typing","active":1}', '{"type":"typing","active":"true"}']:
            self.assertRefused(payload)

    def test_interests_normalised(self) -> None:
        """Interests are trimmed, lower-cased, whitespace-collapsed, deduplicated and sorted."""
        frame = parse_client_frame(
            json.dumps({"type": "find", "interests": ["  Music ", "rock\t n  ROLL", "music"]})
        )
        self.assertEqual(frame, Find(("music", "rock n roll")))
        self.assertEqual(parse_client_frame('{"type":"find","interests":null}'), Find())

    def test_interests_refused(self) -> None:
        """Bad interests are bad requests."""
        for interests in ["music", [1], [""], ["   "], ["x" * 33], [str(i) for i in range(11)], [None]]:
            self.assertRefused(json.dumps({"type": "find", "interests": interests}))
        self.assertEqual(
            parse_client_frame(json.dumps({"type": "find", "interests": ["x" * 32]})), Find(("x" * 32,))
        )

    def test_invite_field(self) -> None:
        """The invite code must be a short string."""
        self.assertRefused('{"type":"find","invite":7}')
        self.assertRefused(json.dumps({"type": "find", "invite": "x" * 65}))

    def test_report_reason(self) -> None:
        """The report reason is optional and at most 200 characters."""
        self.assertEqual(parse_client_frame('{"type":"report","reason":null}'), Report(""))
        self.assertRefused(json.dumps({"type": "report", "reason": "x" * 201}))
        self.assertRefused('{"type":"report","reason":[]}')


class EncodeTests(SynchronousTestCase):
    def test_events(self) -> None:
        """Server events encode to the documented JSON objects."""
        cases = {
            messages.welcome(3): {"type": "welcome", "online": 3},
            messages.waiting(): {"type": "waiting"},
            messages.paired("c1", ["b", "a"]): {"type": "paired", "chat": "c1", "interests": ["a", "b"]},
            messages.message("<b>é</b>"): {"type": "message", "text": "<b>é</b>"},
            messages.typing(True): {"type": "typing", "active": True},
            messages.typing(False): {"type": "typing", "active": False},
            messages.partner_left("c1"): {"type": "partner_left", "chat": "c1"},
            messages.invite("abc"): {"type": "invite", "code": "abc"},
            messages.invite_expired("abc"): {"type": "invite_expired", "code": "abc"},
            messages.online(5): {"type": "online", "count": 5},
            messages.error("bad_request", "no"): {"type": "error", "code": "bad_request", "message": "no"},
        }
        for encoded, expected in cases.items():
            self.assertEqual(json.loads(encoded.decode("utf-8")), expected)
