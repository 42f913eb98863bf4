"""
The live online count: idle and waiting clients hear it when it changed, at
most every --online-interval seconds, from one timer for all.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.presence import OnlineAnnouncer
from chatroulette.settings import Settings

from .memory import MemoryClient, MemoryServer


class Listener:
    def __init__(self) -> None:
        self.counts: list[int] = []

    def send_online(self, count: int) -> None:
        self.counts.append(count)


class AnnouncerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.count = 1
        self.listeners = [Listener(), Listener()]
        self.announcer = OnlineAnnouncer(
            self.clock, lambda: self.count, lambda: self.listeners, 5.0, jitter=lambda: 0.5
        )

    def test_told_only_when_changed(self) -> None:
        """A tick with the count unchanged sends nothing; a changed count goes to every listener once."""
        self.announcer.connected(1)
        self.clock.advance(5)
        self.assertEqual([l.counts for l in self.listeners], [[], []])
        self.count = 3
        self.clock.advance(5)
        self.assertEqual([l.counts for l in self.listeners], [[3], [3]])
        self.clock.advance(5)
        self.assertEqual([l.counts for l in self.listeners], [[3], [3]])

    def test_one_timer_for_all(self) -> None:
        """However many connect, one timer runs; it ends when nobody is left."""
        for n in range(1, 100):
            self.announcer.connected(n)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.count = 0
        self.clock.advance(5)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitter_bounds(self) -> None:
        """Ticks come 4 to 6 seconds apart for an interval of 5."""
        for jitter, delay in [(0.0, 4.0), (1.0, 6.0)]:
            clock = Clock()
            announcer = OnlineAnnouncer(clock, lambda: 1, lambda: [], 5.0, jitter=lambda: jitter)
            announcer.connected(1)
            (call,) = clock.getDelayedCalls()
            self.assertAlmostEqual(call.getTime() - clock.seconds(), delay)

    def test_interval_zero_is_off(self) -> None:
        """--online-interval 0 never starts a timer."""
        announcer = OnlineAnnouncer(self.clock, lambda: 1, lambda: self.listeners, 0)
        announcer.connected(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LiveCountTests(SynchronousTestCase):
    """Over the real protocol, in memory."""

    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(Settings(online_interval=5.0), fast_path=self.fast_path)

    def onlines(self, client: MemoryClient) -> list[int]:
        return [e["count"] for e in client.take() if e["type"] == "online"]

    def test_idle_and_waiting_hear_chatting_do_not(self) -> None:
        """When the count changes, idle and waiting clients get online within 6 s; chatting ones never."""
        a, b = self.server.pair()
        idle = self.server.connect()
        waiting = self.server.connect()
        waiting.send_json(type="find", interests=["rare"])
        self.server.flush()
        for client in (a, b, idle, waiting):
            client.take()
        self.server.connect()  # a fifth person
        self.server.advance(6)
        self.assertEqual(self.onlines(idle), [5])
        self.assertEqual(self.onlines(waiting), [5])
        self.assertEqual(self.onlines(a) + self.onlines(b), [])
        self.server.advance(6)
        self.assertEqual(self.onlines(idle), [])  # unchanged: nothing sent

    def test_no_timer_once_everyone_left(self) -> None:
        """The timer stops when the last client disconnects."""
        client = self.server.connect()
        client.sendClose()
        self.server.flush()
        self.server.advance(10)
        self.assertEqual([c for c in self.server.clock.getDelayedCalls() if c.active()], [])


class LiveCountNoFastPathTests(LiveCountTests):
    fast_path = False
