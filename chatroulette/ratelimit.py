"""
Per-connection rate limits, without I/O: one token bucket per kind of
client frame, and what to do when one runs dry; the frame budget, one
bucket that every frame of any kind takes from; and L{FrameHeaders}, which
finds where frames begin in a client's bytes for it.
"""

from __future__ import annotations

from typing import Callable

from . import messages
from .limits import TokenBucket
from .settings import Settings


_MESSAGE, _TYPING, _SIGNAL = messages.Message, messages.Typing, messages.Signal


class ConnectionLimits:
    """
    The buckets of one connection: chat messages, typing signals, video
    signalling, and requests (find, invite, report, leave, and malformed frames, which cost
    parsing and a reply).  A rate of 0 is no limit.
    """

    __slots__ = ("messages", "typing", "signals", "requests", "frames", "warned")

    def __init__(self, settings: Settings, now: float) -> None:
        self.messages = _bucket(settings.message_rate, settings.message_burst, now)
        self.typing = _bucket(settings.typing_rate, settings.typing_burst, now)
        self.signals = _bucket(settings.signal_rate, settings.signal_burst, now)
        self.requests = _bucket(settings.request_rate, settings.request_burst, now)
        # The frame budget: every frame, of any kind, whole or a fragment.
        self.frames = _bucket(settings.frame_rate, settings.frame_burst, now)
        # Has this connection been told about a rate limit yet (logged once)?
        self.warned = False

    def bucket_for(self, frame: messages.ClientFrame | None) -> TokenBucket | None:
        """The bucket a frame (None: a malformed one) takes from."""
        kind = frame.__class__
        if kind is _MESSAGE:
            return self.messages
        if kind is _TYPING:
            return self.typing
        if kind is _SIGNAL:
            return self.signals
        return self.requests

    def allow(self, frame: messages.ClientFrame | None, now: float) -> bool:
        """Take a token for C{frame} (the per-frame hot path: no allocation)."""
        bucket = self.bucket_for(frame)
        return bucket is None or bucket.take(now)

    def flooding(self, frame: messages.ClientFrame | None) -> bool:
        """
        After L{allow} refused C{frame}: is the client flooding (close it
        1008), rather than a little too fast (answer C{rate_limited})?
        """
        bucket = self.bucket_for(frame)
        return bucket is not None and bucket.flooding


def _bucket(rate: float, burst: int, now: float) -> TokenBucket | None:
    return TokenBucket(rate, burst, now) if rate else None


class FrameHeaders:
    """
    Where frames begin in one client's byte stream, however it is split into
    reads, from their headers alone (RFC 6455 section 5.2): the frame
    budget's count of the frames Autobahn will parse, on public APIs only.

    Autobahn's parser decides whether a frame is valid; this only needs the
    lengths, so it stays in step with Autobahn on every stream Autobahn
    keeps parsing.  O(1) per frame, whatever its payload size; a header
    split across reads is kept (at most 13 bytes) until it is complete.
    """

    __slots__ = ("_skip", "_partial")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a header that the next read completes

    def scan(self, data: bytes, take: Callable[[], bool]) -> int:
        """
        Call C{take} for each frame whose header completes in C{data}.
        Return C{len(data)}, or, at the first C{take} that says no, the offset
        in C{data} where that frame begins (0 if it began in an earlier read):
        the bytes before it may be parsed, the rest must not.
        """
        n = len(data)
        partial = self._partial
        if partial:
            base = len(partial)
            buf = partial + data
            pos = 0
        else:
            if self._skip >= n:
                self._skip -= n
                return n
            base = 0
            buf = data
            pos = self._skip
        end = len(buf)
        while pos + 2 <= end:
            second = buf[pos + 1]
            length = second & 0x7F
            header = 6 if second & 0x80 else 2
            if length == 126:
                header += 2
                if pos + header > end:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                header += 8
                if pos + header > end:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            elif pos + header > end:
                break
            if not take():
                return pos - base if pos > base else 0
            pos += header + length
        if pos >= end:
            self._skip = pos - end
            self._partial = b""
        else:
            self._skip = 0
            self._partial = buf[pos:]
        return n
