"""
The frame fast path agrees with Autobahn on every byte stream.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.fastpath import unmask
from chatroulette.outbound import WriteBatcher, text_frame
from chatroulette.settings import Settings

from .hostile import masked_frame
from .memory import MemoryClient, MemoryServer


def write(client: MemoryClient, data: bytes) -> None:
    """Write raw bytes on the client's side of the in-memory connection."""
    assert client.transport is not None
    client.transport.write(data)


def message(text: str) -> bytes:
    return json.dumps({"type": "message", "text": text}).encode()


class UnitTests(SynchronousTestCase):
    @given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
    def test_unmask_is_xor(self, payload: bytes, mask: bytes) -> None:
        """unmask XORs with the repeating mask, for every length."""
        self.assertEqual(unmask(payload, mask), bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def test_text_frame_lengths(self) -> None:
        """Server frames use the minimal length encoding at each boundary."""
        self.assertEqual(text_frame(b"x" * 125)[:2], b"\x81\x7d")
        self.assertEqual(text_frame(b"x" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(text_frame(b"x" * 65536)[:10], b"\x81\x7f" + (65536).to_bytes(8, "big"))


class RecordingTransport(StringTransport):
    """Counts writes: the batcher's point is how many there are."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class Owner:
    def __init__(self) -> None:
        self.transport = RecordingTransport()


class WriteBatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.batcher = WriteBatcher(self.clock)
        self.a, self.b = Owner(), Owner()

    def test_one_write_per_connection_per_turn(self) -> None:
        """Frames are held until the reactor's next turn, then written once per connection, in order."""
        for frame in [b"1", b"2", b"3"]:
            self.batcher.add(self.a, frame)
        self.batcher.add(self.b, b"x")
        self.assertEqual((self.a.transport.writes, self.b.transport.writes), ([], []))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 0)
        self.clock.advance(0)
        self.assertEqual(self.a.transport.writes, [b"123"])
        self.assertEqual(self.b.transport.writes, [b"x"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_next_turn(self) -> None:
        """After a flush, the next frames wait for the turn after."""
        self.batcher.add(self.a, b"1")
        self.clock.advance(0)
        self.batcher.add(self.a, b"2")
        self.assertEqual(self.a.transport.writes, [b"1"])
        self.clock.advance(0)
        self.assertEqual(self.a.transport.writes, [b"1", b"2"])

    def test_flush_one(self) -> None:
        """One connection's frames can be written at once (before a close frame); the rest wait."""
        self.batcher.add(self.a, b"1")
        self.batcher.add(self.a, b"2")
        self.batcher.add(self.b, b"x")
        self.batcher.flush_one(self.a)
        self.batcher.flush_one(self.a)  # nothing more held: no write
        self.assertEqual(self.a.transport.writes, [b"12"])
        self.assertEqual(self.b.transport.writes, [])
        self.clock.advance(0)
        self.assertEqual(self.a.transport.writes, [b"12"])
        self.assertEqual(self.b.transport.writes, [b"x"])


MAX_FRAMES = 12

frames = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.text(min_size=1, max_size=200).filter(str.strip)),
        st.tuples(st.just("ping"), st.binary(max_size=20).map(lambda b: b.hex())),
        st.tuples(st.just("fragmented"), st.text(min_size=2, max_size=200).filter(str.strip)),
        st.tuples(st.just("noise"), st.sampled_from(["[]", '{"type":"nope"}', '{"type":"message"}'])),
    ),
    min_size=1,
    max_size=MAX_FRAMES,
)

# The stream property is about framing, not rate limits: up to MAX_FRAMES
# messages (or malformed frames) sent at one instant must never meet the
# per-connection buckets (default burst 10), whatever hypothesis draws.
# The buckets stay on the path, with room to spare.
ROOMY = replace(
    Settings(),
    message_burst=10 * MAX_FRAMES,
    typing_burst=10 * MAX_FRAMES,
    request_burst=10 * MAX_FRAMES,
)


class StreamTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(frames, st.lists(st.integers(0, 10_000), max_size=8))
    @example([("text", "0")] * MAX_FRAMES, [])  # more messages than the default burst
    @example([("noise", "[]")] * MAX_FRAMES, [])  # more malformed frames than the default burst
    def test_any_split_same_result(self, spec: list[tuple[str, str]], cuts: list[int]) -> None:
        """However frames are mixed and split across reads, the partner gets every message in order."""
        server = MemoryServer(ROOMY)
        a, b = server.pair()
        stream, expected, errors = b"", [], 0
        for kind, value in spec:
            if kind == "text":
                stream += masked_frame(message(value))
                expected.append(value)
            elif kind == "ping":
                stream += masked_frame(bytes.fromhex(value), opcode=9)
            elif kind == "noise":
                stream += masked_frame(value.encode())
                errors += 1
            else:
                payload = message(value)
                middle = len(payload) // 2
                stream += masked_frame(payload[:middle], fin=False) + masked_frame(payload[middle:], opcode=0)
                expected.append(value)
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for start, end in zip(points, points[1:]):
            write(a, stream[start:end])
            server.flush()
        self.assertEqual([e["text"] for e in b.events if e["type"] == "message"], expected)
        self.assertEqual(len([e for e in a.events if e["type"] == "error"]), errors)
        self.assertIsNone(a.closed)

    def test_invalid_utf8_still_1007(self) -> None:
        """A complete, small, masked text frame with invalid UTF-8 still closes with 1007."""
        server = MemoryServer()
        a, b = server.pair()
        write(a, masked_frame(b'{"type":"message","text":"\xc3\x28"}'))
        server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1007)
        self.assertEqual(b.events[-1]["type"], "partner_left")

    def test_unmasked_client_frame_refused(self) -> None:
        """An unmasked client frame is a protocol error, decided by Autobahn (1002)."""
        server = MemoryServer()
        a, _ = server.pair()
        write(a, b"\x81\x02{}")
        server.flush()
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1002)

    def test_large_message_in_pieces(self) -> None:
        """A 2000-character message with a 16-bit length arrives byte by byte and is relayed once."""
        server = MemoryServer()
        a, b = server.pair()
        text = "é" + os.urandom(999).hex()[:1999]
        frame = masked_frame(message(text))
        for i in range(len(frame)):
            write(a, frame[i : i + 1])
            server.flush()
        self.assertEqual(b.events, [{"type": "message", "text": text}])
