"""
Property-based fuzzing of the frame parser and of the whole server with
arbitrary JSON and bytes: never an unhandled exception, always a defined
reply (an event of a known type, an error with a known code, or a known
close code).
"""

from __future__ import annotations

import json
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.messages import ERROR_CODES, ClientFrame, ProtocolError, parse_client_frame

from .hostile import close_code, handshake, masked_frame, raw_connect
from .memory import MemoryServer

KNOWN_ERRORS = set(ERROR_CODES)
KNOWN_EVENTS = {
    "welcome",
    "waiting",
    "paired",
    "message",
    "typing",
    "partner_left",
    "signal",
    "invite",
    "invite_expired",
    "online",
    "error",
}
KNOWN_CLOSES = {1000, 1002, 1003, 1007, 1008, 1009}
TYPES = ["find", "message", "typing", "leave", "report", "invite", "signal", "shout", "", None]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={
        "text": st.one_of(st.text(max_size=30), st.text(min_size=1999, max_size=2001), json_values),
        "active": json_values,
        "interests": st.one_of(st.lists(st.text(max_size=40), max_size=12), json_values),
        "invite": st.one_of(st.text(max_size=70), json_values),
        "reason": st.one_of(st.text(max_size=210), json_values),
        "mode": st.one_of(st.sampled_from(["text", "video", "Video", ""]), json_values),
        "data": json_values,
    },
)
payloads = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


class ParserFuzzTests(SynchronousTestCase):
    @given(payloads)
    def test_parser_returns_a_request_or_refuses(self, payload: bytes) -> None:
        """Any payload parses into a request or raises ProtocolError with a known code, nothing else."""
        try:
            frame: ClientFrame = parse_client_frame(payload)
        except ProtocolError as e:
            self.assertIn(e.code, KNOWN_ERRORS)
            self.assertIsInstance(e.message, str)
        else:
            self.assertIn(type(frame).__name__, {"Find", "Message", "Typing", "Leave", "Report", "Invite", "Signal"})


def no_errors_logged(test: SynchronousTestCase) -> list[dict[str, Any]]:
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failures.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return failures


class ServerFuzzTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(payloads, st.booleans()), min_size=1, max_size=8))
    def test_any_frames_get_defined_replies(self, frames: list[tuple[bytes, bool]]) -> None:
        """Arbitrary frames from one of two paired clients: known events, known errors or a known close; never a crash."""
        failures = no_errors_logged(self)
        server = MemoryServer()
        a, b = server.pair()
        for payload, binary in frames:
            if a.closed is None:
                a.sendMessage(payload, isBinary=binary)
                server.flush()
        for client in (a, b):
            for event in client.events:
                self.assertIn(event["type"], KNOWN_EVENTS)
                if event["type"] == "error":
                    self.assertIn(event["code"], KNOWN_ERRORS)
        if a.closed is not None:
            self.assertIn(a.closed[1], KNOWN_CLOSES)
            self.assertEqual(b.events[-1]["type"], "partner_left")
        self.assertIsNone(b.closed)
        self.assertEqual(failures, [])

    @settings(max_examples=80, deadline=None)
    @given(st.binary(min_size=1, max_size=300), st.booleans())
    def test_any_wire_bytes_after_handshake(self, data: bytes, valid_first: bool) -> None:
        """Arbitrary bytes on the wire after the handshake: the server stays up, closes with a known code or keeps waiting."""
        failures = no_errors_logged(self)
        server = MemoryServer()
        client, pump = raw_connect(server, "203.0.113.7")
        pump.clientIO.write(handshake())
        server.flush()
        if valid_first:
            pump.clientIO.write(masked_frame(b'{"type":"find"}'))
        pump.clientIO.write(data)
        server.flush()
        server.advance(10)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101"))

        code = close_code(client.received)
        if code is not None:
            self.assertIn(code, KNOWN_CLOSES)
        self.assertEqual(failures, [])
        other = server.connect()
        self.assertTrue(other.opened)
