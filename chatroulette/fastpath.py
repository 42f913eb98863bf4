"""
A fast path through Autobahn for the frames a chat server sees most.

Almost every frame a chat client sends is one small, complete, masked text
frame.  Autobahn handles every case of RFC 6455 in one general state machine
that is costly per frame in Python (benchmarks/RESULTS.md).  L{FastTextFrames}
handles just the common case itself and hands everything else (control
frames, fragments, partial frames, extended lengths, anything unusual or
invalid) to Autobahn unchanged, so Autobahn still decides every error and
close code.  It relies on Autobahn's internal parser state, through
L{chatroulette.internals}; a factory whose hooks say C{fast=False} gets
Autobahn's own C{dataReceived}.  See C{benchmarks/RESULTS.md} for what it
gains.

Both paths count every frame against the connection's frame budget before
its payload is handled: the fast path its own frames, Autobahn's parser
through L{CountedFrames} (with the fast path's hooks) or, without them,
L{FrameHeaders} reading the headers of what Autobahn is about to parse.
Over budget, the rest of the input is discarded unparsed.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from .internals import CountedFrames, autobahn_feed, autobahn_idle
from .limits import TokenBucket
from .ratelimit import FrameHeaders

_OPEN = WebSocketProtocol.STATE_OPEN
_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_END_OF_HEADERS = b"\r\n\r\n"
_FIN_TEXT = 0x81


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR C{payload} with the repeating 4-byte C{mask} (RFC 6455 section 5.3)."""
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FastTextFrames(CountedFrames):
    """
    Receive complete masked text frames and send text frames without
    Autobahn's general machinery; fall back to it for everything else.

    The factory provides C{hooks} (L{chatroulette.internals.Hooks}) and
    C{writer} (L{chatroulette.outbound.FrameWriter}),
    and C{clock} once a frame budget is set (L{count_frames}).
    Subclasses implement L{on_text}, which must return C{False} (having done
    nothing) when the payload should rather go through Autobahn, for example
    because it may not be valid UTF-8: Autobahn then fails the connection with
    the right close code.  They may also implement L{over_frame_budget} (cut
    the client off) and L{outgoing} (account for what is queued for it).
    """

    factory: Any
    maxFramePayloadSize: int
    # Every frame the client sends takes a token from this bucket (None: no budget).
    frame_budget: TokenBucket | None = None
    # Once set, everything the client sends is dropped unparsed.
    discarding = False
    # Without the fast path's hooks: where frames begin in what Autobahn gets.
    _headers: FrameHeaders | None = None
    # Without them, during the opening handshake: its last 3 bytes so far.
    _handshake_tail = b""

    def on_text(self, payload: bytes) -> bool:
        raise NotImplementedError()

    def count_frames(self, budget: TokenBucket | None) -> None:
        """
        From now on (call it in C{onOpen}), every frame takes a token from
        C{budget}, on whichever path it is parsed.
        """
        self.frame_budget = budget
        if budget is not None and not self.factory.hooks.fast:
            self._headers = FrameHeaders()

    def take_frame(self) -> bool:
        """Take a frame's token from the budget, if there is one (no other effect)."""
        budget = self.frame_budget
        return budget is None or budget.take(self.factory.clock.seconds())

    def frame_begins(self) -> bool:
        # Autobahn is about to handle a frame (see CountedFrames).
        if self.discarding:
            return False
        if self.take_frame():
            return True
        self.over_frame_budget()
        return False

    def over_frame_budget(self) -> None:
        """The client sent more frames than its budget: stop parsing its input."""
        self.discarding = True

    def dataReceived(self, data: bytes) -> None:
        if self.discarding:
            return
        if not self.factory.hooks.fast:
            self._public_data_received(data)
            return
        if not autobahn_idle(self):
            autobahn_feed(self, data)
            return
        self.parse_frames(data)

    def _public_data_received(self, data: bytes) -> None:
        """
        Without the fast path's hooks: Autobahn parses everything, and
        L{FrameHeaders} counts the frames in each read before Autobahn gets it.
        """
        if self.state == _CONNECTING:
            # Hand Autobahn the opening handshake on its own, so that the
            # frames after it (in the same read, or an HTTP body) are counted.
            seen = self._handshake_tail + data
            end = seen.find(_END_OF_HEADERS)
            if end < 0:
                self._handshake_tail = seen[-3:]
                super().dataReceived(data)
                return
            end += len(_END_OF_HEADERS) - len(self._handshake_tail)
            self._handshake_tail = b""
            super().dataReceived(data[:end])
            data = data[end:]
            if not data or self.discarding:
                return
        headers = self._headers
        if headers is None:
            super().dataReceived(data)
            return
        end = headers.scan(data, self.take_frame)
        if end:
            super().dataReceived(data[:end] if end < len(data) else data)
        if end < len(data) and not self.discarding:
            self.over_frame_budget()

    def parse_frames(self, data: bytes) -> None:
        """Handle the complete small text frames at the start of C{data}; Autobahn the rest."""
        limit = self.maxFramePayloadSize
        budget = self.frame_budget
        now = self.factory.clock.seconds() if budget is not None else 0.0
        pos, end_of_data = 0, len(data)
        while pos + 6 <= end_of_data:
            if data[pos] != _FIN_TEXT:
                break
            length = data[pos + 1] ^ 0x80  # the mask bit must be set
            if length < 126:
                head = pos + 2
            elif length == 126 and pos + 8 <= end_of_data:
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not minimally encoded: Autobahn decides
                head = pos + 4
            else:
                break  # unmasked (length >= 128), 64-bit length, or incomplete header
            if limit and length > limit:
                break
            frame_end = head + 4 + length
            if frame_end > end_of_data:
                break
            # The frame's token, before its payload is even unmasked.  (A
            # frame on_text hands back, as maybe invalid UTF-8, is counted
            # again by Autobahn: once per connection, which then closes.)
            if budget is not None and not budget.take(now):
                self.over_frame_budget()
                return
            payload = unmask(data[head + 4 : frame_end], data[head : head + 4])
            if not self.on_text(payload):
                break
            pos = frame_end
            if self.state != _OPEN:
                break
        if pos < end_of_data and not self.discarding:
            autobahn_feed(self, data[pos:] if pos else data)

    def send_text(self, payload: bytes) -> None:
        """Send one text message (UTF-8 C{payload}) if the connection is open."""
        if self.state == _OPEN:
            self.factory.writer.send(self, payload)

    def outgoing(self, size: int) -> bool:
        """
        C{size} more bytes are about to be queued for the client, by us or by
        Autobahn: may they be?  (C{False}: they are dropped.)
        """
        return True

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes (close frames, pongs, pings, fragmented
        # messages) counts towards what is queued for the client, and goes
        # after the frames already held for this connection.
        if not self.outgoing(len(data)):
            return
        self.factory.writer.before_write(self)
        super().sendData(data, sync, chopsize)

