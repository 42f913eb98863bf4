"""
Per-connection rate limits, without I/O: one token bucket per kind of
client frame, and what to do when one runs dry.
"""

from __future__ import annotations

import enum

from . import messages
from .limits import TokenBucket
from .settings import Settings


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer rate_limited, change nothing
    CLOSE = "close"  # flooding: close with 1008


class ConnectionLimits:
    """
    The buckets of one connection: chat messages, typing signals, and
    requests (find, invite, report, leave, and malformed frames, which cost
    parsing and a reply).  A rate of 0 is no limit.
    """

    __slots__ = ("messages", "typing", "requests", "warned")

    def __init__(self, settings: Settings, now: float) -> None:
        self.messages = _bucket(settings.message_rate, settings.message_burst, now)
        self.typing = _bucket(settings.typing_rate, settings.typing_burst, now)
        self.requests = _bucket(settings.request_rate, settings.request_burst, now)
        # Has this connection been told about a rate limit yet (logged once)?
        self.warned = False

    def bucket_for(self, frame: messages.ClientFrame | None) -> TokenBucket | None:
        """The bucket a frame (None: a malformed one) takes from."""
        kind = frame.__class__
        if kind is messages.Message:
            return self.messages
        if kind is messages.Typing:
            return self.typing
        return self.requests

    def check(self, frame: messages.ClientFrame | None, now: float) -> Verdict:
        """Take a token for C{frame}, or say what to do instead."""
        bucket = self.bucket_for(frame)
        if bucket is None or bucket.take(now):
            return Verdict.ALLOW
        return Verdict.CLOSE if bucket.flooding else Verdict.REFUSE


def _bucket(rate: float, burst: int, now: float) -> TokenBucket | None:
    return TokenBucket(rate, burst, now) if rate else None
