"""
Connections refused as they are accepted (past --max-connections, the
reserve or the per-address cap): a fixed response and the close, nothing
read or parsed, so that refusing costs next to nothing and holds a file
descriptor as briefly as possible.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from .admission import REFUSALS

REFUSAL_GRACE = 2.0
"""Seconds a refused connection has to take its response before it is cut."""
MAX_REFUSING = 32
"""
Refused connections still taking their response; past this many, the next
are cut without one, so refusals never hold more than a few file descriptors.
"""


def _fixed_response(status: int, phrase: str) -> bytes:
    body = phrase.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 10\r\n\r\n"
    )
    return head.encode() + body


RESPONSES = {reason: _fixed_response(status, phrase) for reason, (status, phrase) in REFUSALS.items()}
"""The whole response to a connection refused for each reason, built once."""


class Refusals:
    """One site's refused connections, and how many are still taking their response."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.in_flight = 0

    def protocol(self, reason: str) -> RefusedConnection:
        """The protocol for a connection refused for C{reason} (a key of L{RESPONSES})."""
        return RefusedConnection(self, RESPONSES[reason])


class RefusedConnection(Protocol):
    """
    A refused connection: its fixed response, then the close.  Cut if the
    response is not taken within L{REFUSAL_GRACE} (a TLS handshake never
    finished, a client that does not read), and cut at once, without a
    response, while L{MAX_REFUSING} others are still taking theirs.
    """

    _deadline: IDelayedCall | None = None

    def __init__(self, refusals: Refusals, response: bytes) -> None:
        self.refusals = refusals
        self.response = response

    def connectionMade(self) -> None:
        transport = cast(ITCPTransport, self.transport)
        refusals = self.refusals
        if refusals.in_flight >= MAX_REFUSING:
            transport.abortConnection()
            return
        refusals.in_flight += 1
        transport.write(self.response)
        transport.loseConnection()
        self._deadline = refusals.clock.callLater(REFUSAL_GRACE, transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self.refusals.in_flight -= 1
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
