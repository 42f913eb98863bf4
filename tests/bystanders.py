"""
Bystanders for the attack tests over loopback: a normal pair of people
chatting while an attack runs, whose messages must all arrive, once, in
order and promptly.

    pair = await ChattingPair.start(service)
    ...  # the attack
    await pair.finish()  # fails the test, with the numbers, if the pair suffered

Each side sends a message every C{interval} (50 ms: 20 messages a second
each way, four times the default C{--message-rate}), so a service the pair
chats on needs C{--message-rate} raised: start it with L{PAIR_ARGS}.  That
limit applies to valid C{message} frames only; refused frames (blank text,
garbage) are counted against the request bucket, which stays at its default.

Client and server share one reactor here, so the latency measured is the
whole round through the server while the attack is served by the same
process: a reactor turn blocked by the attack shows up in it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, cast

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IReactorTime

from .loopback import QueueClient, RunningService, open_client

PAIR_ARGS = ("--message-rate", "40")
"""Service options the pair needs: room for 20 messages a second per connection (default 5)."""

MAX_LATENCY = 0.5
"""Seconds a message may take from one side of the pair to the other."""

_clock = cast(IReactorTime, reactor)


async def _within(awaitable: defer.Deferred[Any] | Coroutine[Any, Any, Any], seconds: float) -> Any:
    """Wait for C{awaitable}, failing after C{seconds}."""
    d = defer.ensureDeferred(awaitable)
    d.addTimeout(seconds, _clock)
    return await d


class Chatter(QueueClient):
    """
    One side of the pair.  Until L{record} is called its events queue up
    like any L{QueueClient}'s; from then on, the partner's timestamped
    messages are recorded as they arrive, and anything else is unexpected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "?"
        self.recording = False
        self.sent = 0
        self.received: list[int] = []
        """Sequence numbers of the partner's messages, in arrival order."""
        self.latencies: list[float] = []
        self.unexpected: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.has_closed = False
        self.on_arrival: Callable[[], None] = lambda: None
        self._wanted: tuple[int, defer.Deferred[None]] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self.recording:
            super().onMessage(payload, isBinary)
            return
        arrived = time.monotonic()
        event = json.loads(payload)
        fields = event["text"].split(" ") if event.get("type") == "message" else []
        if len(fields) != 3:
            self.unexpected.append(event)
            return
        _, seq, sent = fields
        self.received.append(int(seq))
        self.latencies.append(arrived - float(sent))
        self._check_wanted()
        self.on_arrival()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.has_closed = True
        self.close_code = code
        super().onClose(wasClean, code, reason)
        if self._wanted is not None:
            _, d = self._wanted
            self._wanted = None
            if not d.called:
                d.callback(None)  # nothing more will arrive: let finish() report

    def record(self) -> None:
        self.recording = True

    def send_next(self) -> None:
        """Send the next timestamped message: C{<name> <seq> <monotonic time>}."""
        if self.state == self.STATE_OPEN:
            self.send_json(type="message", text=f"{self.name} {self.sent} {time.monotonic():.6f}")
            self.sent += 1

    def received_count(self, count: int) -> defer.Deferred[None]:
        """Fires once C{count} messages have arrived, or the connection closed."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.has_closed or len(self.received) >= count:
            d.callback(None)
        else:
            self._wanted = (count, d)
        return d

    def _check_wanted(self) -> None:
        if self._wanted is not None and len(self.received) >= self._wanted[0]:
            _, d = self._wanted
            self._wanted = None
            if not d.called:  # cancelled by a timeout meanwhile
                d.callback(None)


@dataclass(frozen=True)
class Direction:
    """What one side sent and the other received."""

    sender: str
    sent: int
    received: int
    in_order_once: bool
    max_latency: float

    def __str__(self) -> str:
        order = "in order, each once" if self.in_order_once else "NOT in order exactly once"
        return (
            f"{self.sender}: sent {self.sent}, received {self.received} ({order}), "
            f"max latency {self.max_latency * 1000:.0f} ms"
        )


@dataclass(frozen=True)
class Health:
    """The pair's numbers at the end, one L{Direction} each way."""

    directions: tuple[Direction, Direction]

    def __str__(self) -> str:
        return "; ".join(str(d) for d in self.directions)


class ChattingPair:
    """Two real WebSocket clients paired with each other, chatting on a timer."""

    def __init__(self, a: Chatter, b: Chatter, interval: float) -> None:
        self.a, self.b = a, b
        self._ticks = 0
        self._enough: tuple[int, defer.Deferred[None]] | None = None
        self._arrivals: list[defer.Deferred[None]] = []
        a.on_arrival = b.on_arrival = self._arrived
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = _clock
        self._interval = interval

    @classmethod
    async def start(
        cls,
        service: RunningService,
        addresses: tuple[str, str] | None = None,
        interval: float = 0.05,
        timeout: float = 5.0,
    ) -> ChattingPair:
        """
        Connect two clients to C{service}, pair them with each other (by an
        invite, so that no one else can take either of them) and start
        chatting.  C{addresses}: the X-Forwarded-For each one sends, for a
        service behind a trusted proxy.
        """
        a = await cls._connect(service, addresses[0] if addresses else None, "a", timeout)
        try:
            b = await cls._connect(service, addresses[1] if addresses else None, "b", timeout)
        except BaseException:
            a.dropConnection(abort=True)
            raise
        pair = cls(a, b, interval)
        try:
            await _within(a.next("welcome"), timeout)
            await _within(b.next("welcome"), timeout)
            a.send_json(type="invite")
            code = (await _within(a.next("invite"), timeout))["code"]
            b.send_json(type="find", invite=code)
            await _within(a.next("paired"), timeout)
            await _within(b.next("paired"), timeout)
        except BaseException:
            pair.close()
            raise
        a.record()
        b.record()
        pair._loop.start(interval, now=True)
        return pair

    @staticmethod
    async def _connect(service: RunningService, address: str | None, name: str, timeout: float) -> Chatter:
        headers = {"X-Forwarded-For": address} if address is not None else None
        client = cast(
            Chatter, await _within(open_client(service.url, headers=headers, client_class=Chatter), timeout)
        )
        client.name = name
        return client

    def delivered(self, timeout: float = 2.0) -> defer.Deferred[None]:
        """
        Fires when the next message of the pair arrives (either way): an
        attack that waits for it between rounds is spread over the chat
        instead of running between two of its messages.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._arrivals.append(d)
        d.addTimeout(timeout, _clock)
        return d

    def _arrived(self) -> None:
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            if not d.called:  # timed out meanwhile
                d.callback(None)

    def _tick(self) -> None:
        self.a.send_next()
        self.b.send_next()
        self._ticks += 1
        if self._enough is not None and self._ticks >= self._enough[0]:
            _, d = self._enough
            self._enough = None
            d.callback(None)

    async def finish(self, min_messages: int = 10, timeout: float = 3.0) -> Health:
        """
        Stop chatting (after at least C{min_messages} each way), wait for
        what is in flight, and assert that every message arrived exactly
        once, in order, within L{MAX_LATENCY}; then close both clients.
        """
        try:
            if self._ticks < min_messages and self._loop.running:
                enough: defer.Deferred[None] = defer.Deferred()
                self._enough = (min_messages, enough)
                await _within(enough, min_messages * self._interval + timeout)
            self._stop_sending()
            arrivals = [self.b.received_count(self.a.sent), self.a.received_count(self.b.sent)]
            try:
                await _within(defer.DeferredList(arrivals, consumeErrors=True), timeout)
            except defer.TimeoutError:
                pass  # what did arrive is judged below, with the numbers
            health = Health((self._direction(self.a, self.b), self._direction(self.b, self.a)))
            problems = [
                f"{c.name} closed with {c.close_code}" for c in (self.a, self.b) if c.has_closed
            ] + [f"{c.name} got {e}" for c in (self.a, self.b) for e in c.unexpected]
            assert not problems, f"{problems}; {health}"
            for d in health.directions:
                assert d.sent >= min_messages and d.in_order_once, str(health)
                assert d.max_latency < MAX_LATENCY, str(health)
            for client in (self.a, self.b):
                client.recording = False  # the close is not a chat event
                client.sendClose()
                await _within(client.closed, timeout)
            return health
        finally:
            self.close()

    def _direction(self, sender: Chatter, receiver: Chatter) -> Direction:
        return Direction(
            sender=f"{sender.name}->{receiver.name}",
            sent=sender.sent,
            received=len(receiver.received),
            in_order_once=receiver.received == list(range(sender.sent)),
            max_latency=max(receiver.latencies, default=float("inf")),
        )

    def _stop_sending(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def close(self) -> None:
        """Stop chatting and drop both connections, whatever state they are in (idempotent)."""
        self._stop_sending()
        for client in (self.a, self.b):
            client.dropConnection(abort=True)  # does nothing once closed
