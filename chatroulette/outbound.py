"""
How frames reach a client's socket: batched per reactor turn and written
through to the socket (the fast path), or through Autobahn's public
C{sendMessage} (without it).  The server's protocol owns one
L{FrameWriter} per factory, shared by its connections.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from zope.interface import implementer

from .internals import can_send_direct, is_plain_tcp, write_through

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying C{payload} (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return bytes((_FIN_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big") + payload


class _HasTransport(Protocol):
    @property
    def transport(self) -> ITransport | None: ...


class WriteBatcher:
    """
    Hold the frames for plain TCP connections until the reactor has handled
    every event of this turn, then write each connection's frames with one
    C{send}.

    A busy chat server sends a connection several frames in one reactor turn
    (C{partner_left} then C{paired}, a message then C{partner_left}...); most
    of the cost of a small C{send} is per call and per packet, not per byte.
    Nothing waits for a timer: the flush is a C{callLater(0)}, which the
    reactor runs before it next polls for events.  Frames held for a
    connection that is aborted meanwhile are dropped (see L{write_through}).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: dict[_HasTransport, list[bytes]] = {}
        self._call: IDelayedCall | None = None

    def add(self, owner: _HasTransport, frame: bytes) -> None:
        frames = self._pending.get(owner)
        if frames is not None:
            frames.append(frame)
            return
        self._pending[owner] = [frame]
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write everything held (in order, per connection)."""
        self._call = None
        pending, self._pending = self._pending, {}
        for owner, frames in pending.items():
            _write(owner, frames)

    def flush_one(self, owner: _HasTransport) -> None:
        """Write what is held for C{owner} now, ahead of anything it writes next."""
        frames = self._pending.pop(owner, None)
        if frames is not None:
            _write(owner, frames)


def _write(owner: _HasTransport, frames: list[bytes]) -> None:
    write_through(owner.transport, frames[0] if len(frames) == 1 else b"".join(frames))


class FrameWriter:
    """
    Sends text messages for the connections of one factory: with C{fast},
    built here and batched or written through; otherwise by Autobahn.
    """

    def __init__(self, clock: IReactorTime, fast: bool, batch: bool = True) -> None:
        self.fast = fast
        self.batcher = WriteBatcher(clock) if fast and batch else None

    def send(self, protocol: Any, payload: bytes) -> None:
        """
        Send C{payload} as one text message, unless the protocol's
        C{outgoing} refuses its bytes (Autobahn's own writes are counted in
        C{sendData}).
        """
        if self.fast and can_send_direct(protocol):
            frame = text_frame(payload)
            if not protocol.outgoing(len(frame)):
                return
            batcher = self.batcher
            if batcher is not None and is_plain_tcp(protocol.transport):
                batcher.add(protocol, frame)
            else:
                write_through(protocol.transport, frame)
            return
        protocol.sendMessage(payload)

    def before_write(self, protocol: Any) -> None:
        """Autobahn is about to write for C{protocol}: what we hold goes first."""
        if self.batcher is not None:
            self.batcher.flush_one(protocol)


@implementer(IPushProducer)
class SlowReader:
    """
    Slow-reader accounting for one connection, as its transport's producer:
    the transport pauses it when its buffer is full (the client stopped
    reading); from then on, every byte queued for the client counts, whoever
    writes it (our frames, and Autobahn's pongs, pings, close frames and
    fragments through C{sendData}), until the transport drains and resumes
    it.  L{queued} says when the client must be cut off.
    """

    __slots__ = ("limit", "paused", "pending")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.pending = 0

    def queued(self, n: int) -> bool:
        """Count C{n} bytes queued; is the client now over its limit?"""
        if not self.paused:
            return False
        self.pending += n
        return self.pending > self.limit

    def pauseProducing(self) -> None:
        # TCP transports call this again on every write while over their
        # buffer size: count from the first call only.
        if not self.paused:
            self.paused = True
            self.pending = 0

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass
