"""
Floods aimed at one connection, in memory (real Site and Autobahn, iosim
pumps, a Clock), with and without the fast path: pongs and every other write
of Autobahn's count towards --max-buffer-bytes; only an answer to our ping
keeps a client alive.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IPushProducer
from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.protocol import CUT_OFF_GRACE
from chatroulette.settings import Settings

from .hostile import RawClient, close_code, handshake, masked_frame, raw_connect, server_frames
from .memory import MemoryServer

PING = masked_frame(b"p" * 125, opcode=9)
OPEN_MESSAGE = masked_frame(b'{"type":', fin=False)  # a text message, never finished
EMPTY_CONTINUATION = masked_frame(b"", opcode=0, fin=False)
PONG = 10


def pongs(client: RawClient) -> int:
    return [opcode for opcode, _ in server_frames(client.received)].count(PONG)


class FloodCase(SynchronousTestCase):
    settings = Settings()

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings)
        # The fast path is on exactly when the test class asks for it.
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



class PublicQueuedBytesTests(QueuedBytesTests):
    """Without the fast path: Autobahn writes every frame, through sendData."""

    settings = Settings(fast_path=False, max_buffer_bytes=10_000)


class PublicLivenessTests(LivenessTests):
    """Without the fast path."""

    settings = Settings(fast_path=False, ping_interval=25, ping_timeout=10)
