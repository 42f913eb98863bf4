"""
The wire format: client frames parsed and validated, server events encoded.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chatroulette import messages
from chatroulette.messages import (
    Find,
    Invite,
    Leave,
    Message,
    ProtocolError,
    Report,
    Signal,
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

    def test_mode(self) -> None:
        """find and invite take an optional mode: text (also when absent or null) or video."""
        self.assertEqual(parse_client_frame('{"type":"find","mode":"video"}'), Find(mode="video"))
        self.assertEqual(parse_client_frame('{"type":"find","mode":"text"}'), Find())
        self.assertEqual(parse_client_frame('{"type":"find","mode":null}'), Find())
        self.assertEqual(parse_client_frame('{"type":"invite","mode":"video"}'), Invite("video"))
        self.assertEqual(
            parse_client_frame('{"type":"find","invite":"abc","mode":"video"}'), Find((), "abc", "video")
        )
        for mode in ['"Video"', '"audio"', '""', "1", "true", "[]", '{"video":1}']:
            self.assertRefused(f'{{"type":"find","mode":{mode}}}')
            self.assertRefused(f'{{"type":"invite","mode":{mode}}}')

    def test_signal(self) -> None:
        """A signal's data object is kept as compact JSON, whatever its spacing."""
        frame = parse_client_frame('{"type":"signal","data": {"sdp" : "v=0\\r\\n", "n": [1, 2.5, null]}}')
        self.assertEqual(frame, Signal(b'{"sdp":"v=0\\r\\n","n":[1,2.5,null]}'))
        self.assertEqual(parse_client_frame('{"type":"signal","data":{}}'), Signal(b"{}"))

    def test_signal_data_must_be_an_object(self) -> None:
        """Data that is missing or not an object is a bad request, marked as a signal's."""
        for data in ["", ',"data":null', ',"data":"x"', ',"data":[]', ',"data":1']:
            with self.assertRaises(ProtocolError) as e:
                parse_client_frame(f'{{"type":"signal"{data}}}')
            self.assertEqual((e.exception.code, e.exception.kind), ("bad_request", "signal"))

    def test_signal_size_limit(self) -> None:
        """Data of up to 16,384 bytes of compact UTF-8 JSON passes; one byte more is a bad request."""
        padding = 16384 - len(b'{"x":""}')
        self.assertIsInstance(parse_client_frame(json.dumps({"type": "signal", "data": {"x": "a" * padding}})), Signal)
        self.assertRefused(json.dumps({"type": "signal", "data": {"x": "a" * (padding + 1)}}))
        # Bytes, not characters: "é" is two bytes of UTF-8 however it was escaped.
        self.assertIsInstance(parse_client_frame(json.dumps({"type": "signal", "data": {"x": "é" * (padding // 2)}})), Signal)
        self.assertRefused(json.dumps({"type": "signal", "data": {"x": "é" * (padding // 2 + 1)}}))
        # Spacing does not count: the limit is on the compact form.
        spaced = json.dumps({"type": "signal", "data": {"x": "a" * padding}}, indent=100)
        self.assertIsInstance(parse_client_frame(spaced), Signal)

    def test_signal_nested_too_deeply(self) -> None:
        """Data nested deeper than can be written back is a bad request, not a crash."""
        self.assertRefused('{"type":"signal","data":{"x":' + "[" * 300 + "]" * 300 + "}}")

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


# Characters that show nothing: whitespace, format characters (Unicode
# category Cf) and the Hangul fillers.
FORMAT_CHARACTERS = "\u00ad\u061c\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2060\u2064\u2066\u206f\ufeff\U000e0001\U000e0041"
HANGUL_FILLERS = "\u115f\u1160\u3164\uffa0"
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
BLANK = FORMAT_CHARACTERS + HANGUL_FILLERS + WHITESPACE
blank_text = st.text(alphabet=st.sampled_from(BLANK) | st.characters(categories=["Cf"]), max_size=40)
visible_character = st.characters(
    exclude_categories=["Cs", "Cf", "Cc", "Zs", "Zl", "Zp"], exclude_characters=HANGUL_FILLERS
)


def message_frame(text: str) -> str:
    return json.dumps({"type": "message", "text": text})


class InvisibleTextTests(SynchronousTestCase):
    def refusal(self, payload: str) -> tuple[str, str]:
        with self.assertRaises(ProtocolError) as e:
            parse_client_frame(payload)
        return e.exception.code, e.exception.message

    def test_invisible_messages_refused_as_empty(self) -> None:
        """Messages of only zero-width, format or Hangul filler characters are refused like an empty one."""
        empty = self.refusal(message_frame(""))
        for text in [*BLANK, "\u200b" * 2000, " \u200b\n\u3164\ufeff ", "\u2060\u2060", "\U000e0020"]:
            self.assertEqual(self.refusal(message_frame(text)), empty, ascii(text))

    def test_visible_text_kept_unchanged(self) -> None:
        """Text with visible characters among invisible ones is accepted exactly as sent."""
        for text in ["a\u200bb", "\u200bhi", "\ufeffhello\u2060", "\U0001f468\u200d\U0001f469", "\u3164x", "\u0600\u0661"]:
            self.assertEqual(parse_client_frame(message_frame(text)), Message(text), ascii(text))

    def test_invisible_interests_refused_as_empty(self) -> None:
        """An interest of only invisible characters is refused like an empty one; one with visible ones is kept."""
        empty = self.refusal(json.dumps({"type": "find", "interests": [""]}))
        for interest in ["\u200b", "\u3164", " \ufeff ", "\u115f\u1160", "\uffa0"]:
            self.assertEqual(self.refusal(json.dumps({"type": "find", "interests": [interest]})), empty)
        frame = parse_client_frame(json.dumps({"type": "find", "interests": ["Mu\u200bsic"]}))
        self.assertEqual(frame, Find(("mu\u200bsic",)))

    @settings(max_examples=300)
    @given(blank_text)
    def test_blank_text_always_refused(self, text: str) -> None:
        """Any text made only of whitespace, format characters and Hangul fillers is refused as empty."""
        self.assertEqual(self.refusal(message_frame(text)), self.refusal(message_frame("")))

    @settings(max_examples=300)
    @given(blank_text, visible_character, blank_text)
    def test_one_visible_character_is_enough(self, before: str, visible: str, after: str) -> None:
        """Any visible character among invisible ones makes the message valid, and it is relayed unchanged."""
        text = before + visible + after
        self.assertEqual(parse_client_frame(message_frame(text)), Message(text))


class EncodeTests(SynchronousTestCase):
    def test_events(self) -> None:
        """Server events encode to the documented JSON objects."""
        cases = {
            messages.welcome(3): {"type": "welcome", "online": 3},
            messages.waiting(): {"type": "waiting"},
            messages.paired("c1", ["b", "a"]): {"type": "paired", "chat": "c1", "interests": ["a", "b"], "mode": "text"},
            messages.paired("c1", [], "text", True, {"ice_servers": []}): {
                "type": "paired", "chat": "c1", "interests": [], "mode": "text"
            },
            messages.paired("c1", [], "video", True, {"ice_servers": [], "ice_transport_policy": "all"}): {
                "type": "paired",
                "chat": "c1",
                "interests": [],
                "mode": "video",
                "initiator": True,
                "ice_servers": [],
                "ice_transport_policy": "all",
            },
            messages.signal(b'{"sdp":"x"}'): {"type": "signal", "data": {"sdp": "x"}},
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
