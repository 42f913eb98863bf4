"""
Every frame a client sends costs it, and every byte queued for it counts,
in memory (real Site and Autobahn, iosim pumps, a Clock), with and without
the fast path: the frame budget cuts off continuation, ping and text floods
before their payloads are handled; pongs and every other write of Autobahn's
count towards --max-buffer-bytes; only an answer to our ping keeps a client
alive.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.protocol import CUT_OFF_GRACE
from chatroulette.ratelimit import FrameHeaders
from chatroulette.settings import Settings

from .hostile import RawClient, close_code, handshake, masked_frame, raw_connect, server_frames
from .memory import MemoryServer

PING = masked_frame(b"p" * 125, opcode=9)
OPEN_MESSAGE = masked_frame(b'{"type":', fin=False)  # a text message, never finished
EMPTY_CONTINUATION = masked_frame(b"", opcode=0, fin=False)
CLOSE, PONG = 8, 10


def pongs(client: RawClient) -> int:
    return [opcode for opcode, _ in server_frames(client.received)].count(PONG)


class FloodCase(SynchronousTestCase):
    settings = Settings()

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings)
        # With the fast path, Autobahn's frames are counted through its onFrameBegin hook.
        self.assertEqual(self.server.factory.hooks.fast, self.settings.fast_path)

    def attacker(self, server: MemoryServer | None = None) -> tuple[RawClient, IOPump]:
        """A raw client past the handshake, paired with a normal client (C{self.partner})."""
        server = server or self.server
        self.partner = server.connect()
        self.partner.send_json(type="find")
        client, pump = raw_connect(server)
        pump.clientIO.write(handshake() + masked_frame(b'{"type":"find"}'))
        server.flush()
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101"))
        self.assertEqual(self.partner.events[-1]["type"], "paired")
        return client, pump

    def send(self, pump: IOPump, data: bytes) -> None:
        pump.clientIO.write(data)
        self.server.flush()

    def assert_cut_off(self, client: RawClient, counter: str, server: MemoryServer | None = None) -> None:
        """Closed 1008, partner told at once, dropped (unanswered) after the grace period."""
        server = server or self.server
        self.assertEqual(close_code(client.received), 1008)
        self.assertEqual(server.factory.errors[counter], 1)
        self.assertEqual(self.partner.events[-1]["type"], "partner_left")
        server.advance(CUT_OFF_GRACE * 0.99)
        self.assertFalse(client.lost)
        server.advance(CUT_OFF_GRACE * 0.01)
        self.assertTrue(client.lost)


class FrameBudgetTests(FloodCase):
    """With the fast path: its own frames counted in parse_frames, Autobahn's through onFrameBegin."""

    def test_continuation_flood_cut_off(self) -> None:
        """Empty continuation frames of an unfinished message: the 301st frame cuts the client off with 1008."""
        client, pump = self.attacker()
        self.send(pump, OPEN_MESSAGE + EMPTY_CONTINUATION * 298)  # with the find: 300 frames
        self.assertIsNone(close_code(client.received))
        self.send(pump, EMPTY_CONTINUATION)
        self.assert_cut_off(client, "frame_flood")

    def test_ping_flood_cut_off(self) -> None:
        """A ping flood gets a pong for each frame of the budget, then 1008, and nothing more."""
        client, pump = self.attacker()
        self.send(pump, OPEN_MESSAGE + PING * 400)
        self.assertEqual(pongs(client), 298)  # 300 frames: the find, the fragment, 298 pings
        self.assertEqual(server_frames(client.received)[-1][0], CLOSE)
        self.assert_cut_off(client, "frame_flood")

    def test_input_after_cut_off_is_not_parsed(self) -> None:
        """After the cut-off nothing the client sends is parsed: no pong, no message, no find."""
        client, pump = self.attacker()
        self.send(pump, OPEN_MESSAGE + PING * 299)
        received = client.received
        self.assertEqual(close_code(received), 1008)
        online = self.server.lobby.online
        self.send(pump, masked_frame(b'"find"}', opcode=0) + PING + masked_frame(b'{"type":"find"}'))
        self.assertEqual(client.received, received)
        self.assertEqual(self.server.lobby.online, online)
        self.assertEqual(self.server.lobby.waiting, 0)

    def test_text_frames_counted(self) -> None:
        """Complete text frames count too: with no per-type limit, the 301st frame is not relayed."""
        server = MemoryServer(replace(self.settings, message_rate=0))
        a, b = server.pair()  # a's find was its first frame
        assert a.transport is not None
        a.transport.write(masked_frame(json.dumps({"type": "message", "text": "x"}).encode()) * 301)
        server.flush()
        events = b.take()
        self.assertEqual(len(events), 300)
        self.assertEqual(events[-2:], [{"type": "message", "text": "x"}, {"type": "partner_left", "chat": b.chat}])
        self.assertEqual(server.factory.errors["frame_flood"], 1)

    def test_frames_sent_with_the_handshake_counted(self) -> None:
        """Frames in the handshake's own read, even as an HTTP body of the upgrade request, are counted."""
        body = PING * 400
        for request in [handshake() + body, handshake(extra={"Content-Length": str(len(body))}) + body]:
            client, pump = raw_connect(self.server)
            pump.clientIO.write(request)
            self.server.flush()
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101"), client.received[:40])
            self.assertEqual(pongs(client), 300)
            self.assertEqual(close_code(client.received), 1008)

    def test_rate_refills_the_budget(self) -> None:
        """90 frames a second (pings and chat) for 20 s are fine; 200 a second are cut off once the burst is spent."""
        a, b = self.server.pair()
        assert a.transport is not None
        for second in range(20):
            for _ in range(10):
                a.transport.write(PING * 8 + masked_frame(b'{"type":"typing","active":true}'))
                self.server.advance(0.1)
            a.send_json(type="message", text=f"second {second}")
        self.server.flush()
        self.assertIsNone(a.closed)
        self.assertEqual([e["text"] for e in b.events if e["type"] == "message"], [f"second {i}" for i in range(20)])
        # Net 100 frames a second over the rate: the 300 of the burst last 3 s.
        start = self.server.clock.seconds()
        while a.closed is None and self.server.clock.seconds() - start < 10:
            a.transport.write(PING * 20)
            self.server.advance(0.1)
        self.assertAlmostEqual(self.server.clock.seconds() - start, 3 + CUT_OFF_GRACE, delta=0.25)
        assert a.closed is not None
        self.assertEqual(a.closed[1], 1008)
        self.assertEqual(self.server.factory.errors["frame_flood"], 1)

    def test_burst_and_rate_zero(self) -> None:
        """--frame-burst sets the budget; --frame-rate 0 turns it off."""
        for frame_rate, frame_burst, expected in [(100.0, 50, 48), (0.0, 50, 400)]:
            server = MemoryServer(replace(self.settings, frame_rate=frame_rate, frame_burst=frame_burst))
            client, pump = self.attacker(server)
            pump.clientIO.write(OPEN_MESSAGE + PING * 400)
            server.flush()
            self.assertEqual(pongs(client), expected)
            self.assertEqual(close_code(client.received), 1008 if frame_rate else None)


def server_producer(server: MemoryServer, client: object) -> IPushProducer:
    """The producer the server registered with a client's transport (what TCP pauses)."""
    for pump in server.pumps:
        if pump.client is client:
            producer = cast(FakeTransport, pump.serverIO).producer
            assert IPushProducer.providedBy(producer)
            return producer
    raise LookupError(client)


class QueuedBytesTests(FloodCase):
    """Every byte queued for a client that stopped reading counts, whoever writes it (fast path)."""

    settings = Settings(max_buffer_bytes=10_000)

    def test_pongs_count(self) -> None:
        """Pongs queued for a client that stopped reading count: past max-buffer-bytes it is cut off."""
        client, pump = self.attacker()
        self.send(pump, OPEN_MESSAGE)
        server_producer(self.server, client).pauseProducing()
        before = len(client.received)
        self.send(pump, PING * 100)
        pong = 2 + 125
        self.assertEqual(pongs(client), 10_000 // pong)
        self.assertLess(len(client.received) - before, 10_000 + 64)
        self.assert_cut_off(client, "slow_reader")

    def test_our_frames_and_autobahns_count_together(self) -> None:
        """Chat frames (ours) and pongs (Autobahn's) add up towards the same limit."""
        slow, fast = self.server.pair()
        server_producer(self.server, slow).pauseProducing()
        for _ in range(3):
            fast.send_json(type="message", text="x" * 2000)  # about 6 KB
        assert slow.transport is not None
        slow.transport.write(PING * 20)  # 2.5 KB: not yet over
        self.server.flush()
        self.assertIsNone(slow.closed)
        slow.transport.write(PING * 20)
        self.server.flush()
        self.server.advance(CUT_OFF_GRACE)
        assert slow.closed is not None
        self.assertEqual(slow.closed[1], 1008)
        self.assertEqual(self.server.factory.errors["slow_reader"], 1)
        self.assertEqual(fast.events[-1]["type"], "partner_left")


class LivenessTests(FloodCase):
    """With the fast path: what keeps a client from being dropped as dead."""

    settings = Settings(ping_interval=25, ping_timeout=10)

    def test_only_an_answer_to_our_ping_keeps_a_client(self) -> None:
        """A client that never answers pings is dropped, though it sends a continuation frame every 2 s."""
        server = self.server
        client, pump = self.attacker()
        pump.clientIO.write(OPEN_MESSAGE)
        for _ in range(30):
            pump.clientIO.write(EMPTY_CONTINUATION)
            server.advance(2)
            if client.lost:
                break
        self.assertTrue(client.lost)
        self.assertLessEqual(server.clock.seconds(), 25 + 10 + 2)
        self.assertEqual(server.factory.errors["ping_timeout"], 1)



class PublicFrameBudgetTests(FrameBudgetTests):
    """Without the fast path: Autobahn parses everything, FrameHeaders counts."""

    settings = Settings(fast_path=False)


class PublicQueuedBytesTests(QueuedBytesTests):
    """Without the fast path: Autobahn writes every frame, through sendData."""

    settings = Settings(fast_path=False, max_buffer_bytes=10_000)


class PublicLivenessTests(LivenessTests):
    """Without the fast path."""

    settings = Settings(fast_path=False, ping_interval=25, ping_timeout=10)


def frame(opcode: int, size: int, masked: bool) -> bytes:
    """A final frame of C{size} zero bytes (the mask is not applied: only headers matter here)."""
    second = 0x80 if masked else 0
    if size < 126:
        header = bytes((0x80 | opcode, second | size))
    elif size < 65536:
        header = bytes((0x80 | opcode, second | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, second | 127)) + size.to_bytes(8, "big")
    return header + (b"mask" if masked else b"") + bytes(size)


frame_specs = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 9, 10]),
        st.sampled_from([0, 1, 5, 125, 126, 127, 300, 65535, 65536]),
        st.booleans(),
    ),
    min_size=1,
    max_size=10,
)


class FrameHeadersTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(frame_specs, st.lists(st.integers(0, 700_000), max_size=12), st.integers(0, 10))
    def test_any_split(self, specs: list[tuple[int, int, bool]], cuts: list[int], refuse: int) -> None:
        """However a stream is split, each frame is found once, and a refusal points at its frame's first byte."""
        frames = [frame(*spec) for spec in specs]
        stream = b"".join(frames)
        starts = [sum(len(f) for f in frames[:i]) for i in range(len(frames))]
        headers = FrameHeaders()
        taken = 0

        def take() -> bool:
            nonlocal taken
            if taken == refuse:
                return False
            taken += 1
            return True

        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        stopped_at = None
        for start, end in zip(points, points[1:]):
            offset = headers.scan(stream[start:end], take)
            if offset < end - start:
                # 0 when the refused frame's header began in an earlier read.
                stopped_at = start + offset
                self.assertEqual(stopped_at, max(start, starts[refuse]))
                break
            self.assertEqual(offset, end - start)
        self.assertEqual(taken, min(refuse, len(frames)))
        self.assertEqual(stopped_at is None, refuse >= len(frames))

    def test_refused_at_its_first_byte(self) -> None:
        """In one read, a refusal returns exactly where the refused frame begins."""
        data = masked_frame(b"a") + PING + masked_frame(b"", opcode=0)
        answers = iter([True, True, False])
        self.assertEqual(FrameHeaders().scan(data, lambda: next(answers)), len(masked_frame(b"a") + PING))
