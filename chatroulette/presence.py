"""
The live online count: clients on the start screen (idle) and in the queue
(waiting, or waiting on an invite) hear how many people are online when it
has changed, at most every C{interval} seconds, from one timer for all.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Listener(Protocol):
    def send_online(self, count: int) -> None: ...


class OnlineAnnouncer:
    """
    Runs while anyone is connected: every C{interval} seconds, jittered by up
    to a fifth either way so that many servers (or many restarts) do not
    tick together, it compares the count with the one last announced and,
    if it differs, tells the current C{listeners()}.  A tick costs one
    comparison when nothing changed, and one pass over the listeners when
    it did.  C{interval} 0 turns it off.
    """

    def __init__(
        self,
        clock: IReactorTime,
        count: Callable[[], int],
        listeners: Callable[[], Iterable[Listener]],
        interval: float = 5.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._count = count
        self._listeners = listeners
        self.interval = interval
        self._jitter = jitter
        self._call: IDelayedCall | None = None
        self.announced: int | None = None

    def connected(self, online: int) -> None:
        """Someone connected and was welcomed with C{online}: make sure the timer runs."""
        if self.announced is None:
            self.announced = online
        if self._call is None and self.interval:
            self._call = self._clock.callLater(self._delay(), self._tick)

    def stop(self) -> None:
        """Cancel the timer (it starts again with the next connection)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.announced = None

    def _delay(self) -> float:
        return self.interval * (0.8 + 0.4 * self._jitter())

    def _tick(self) -> None:
        self._call = None
        count = self._count()
        if count == 0:
            self.announced = None
            return  # nobody left to tell: the next connection starts the timer
        if count != self.announced:
            self.announced = count
            for listener in list(self._listeners()):
                listener.send_online(count)
        self._call = self._clock.callLater(self._delay(), self._tick)
