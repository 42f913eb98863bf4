"""
A fast path through Autobahn for the frames a chat server sees most.

Almost every frame a chat client sends is one small, complete, masked text
frame.  Autobahn handles every case of RFC 6455 in one general state machine
that costs tens of microseconds per frame in Python.  L{FastTextFrames}
handles just the common case itself and hands everything else (control
frames, fragments, partial frames, extended lengths, anything unusual or
invalid) to Autobahn unchanged, so Autobahn still decides every error and
close code.  It relies on Autobahn's internal parser state, through
L{chatroulette.internals}; a factory whose hooks say C{fast=False} gets
Autobahn's own C{dataReceived}.  See C{benchmarks/RESULTS.md} for what it
gains.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol

from .internals import Hooks, autobahn_feed, autobahn_idle
from .outbound import FrameWriter

_OPEN = WebSocketProtocol.STATE_OPEN
_FIN_TEXT = 0x81


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR C{payload} with the repeating 4-byte C{mask} (RFC 6455 section 5.3)."""
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FastTextFrames(WebSocketServerProtocol):
    """
    Receive complete masked text frames and send text frames without
    Autobahn's general machinery; fall back to it for everything else.

    The factory provides C{hooks} (L{Hooks}) and C{writer} (L{FrameWriter}).
    Subclasses implement L{on_text}, which must return C{False} (having done
    nothing) when the payload should rather go through Autobahn, for example
    because it may not be valid UTF-8: Autobahn then fails the connection with
    the right close code.  They may also implement L{outgoing} (account for
    what is queued for the client).
    """

    factory: Any
    maxFramePayloadSize: int
    # Once set, everything the client sends is dropped unparsed.
    discarding = False

    def on_text(self, payload: bytes) -> bool:
        raise NotImplementedError()

    def dataReceived(self, data: bytes) -> None:
        if self.discarding:
            return
        if not self.factory.hooks.fast:
            super().dataReceived(data)
            return
        if not autobahn_idle(self):
            autobahn_feed(self, data)
            return
        self.parse_frames(data)

    def parse_frames(self, data: bytes) -> None:
        """Handle the complete small text frames at the start of C{data}; Autobahn the rest."""
        limit = self.maxFramePayloadSize
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


__all__ = ["FastTextFrames", "FrameWriter", "Hooks", "unmask"]
