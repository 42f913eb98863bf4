"""
One log budget for the whole server, in front of the log observers.

A client can make the server log: every malformed or refused request is a
line (Autobahn's handshake failures quote up to 15 KB of the request), and
per-address limits come too late to help, since the lines are written
before or while they apply, and loopback and proxied clients are exempt.
L{LogBudget} sees every event, whoever logs it.  Events about refused or
malformed requests (L{about_client_requests}) share one budget of lines and
bytes per second for the whole server; those over it are dropped and
counted, and a summary line says how many.  Their text fields are capped
(L{client_text}).  Every other event passes untouched and is never dropped.

No I/O here: the observers behind it and the clock are given.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, Logger, formatEvent
from zope.interface import implementer

DEFAULT_LINES_PER_SECOND = 20.0
DEFAULT_BYTES_PER_SECOND = 16 * 1024
CLIENT_TEXT_LIMIT = 200
"""Characters (escaped) of client-chosen text one field may put in a line."""
MESSAGE_LIMIT = 1000
"""A capped event whose message is still longer is cut to L{CLIENT_TEXT_LIMIT} as a whole."""
SUMMARY_INTERVAL = 1.0
"""Seconds between the first dropped line and the summary of the drops."""

# Namespaces whose every event is about a request or connection a client
# made: Autobahn's handshake failures and connection drops, Twisted's HTTP
# channel and request (timeouts, odd requests).
CLIENT_NAMESPACES = ("autobahn.", "twisted.web.http.", "twisted.web.server.")
# Our own events (the "event" field) about refused or malformed requests.
CLIENT_EVENTS = frozenset({"refused", "limit", "malformed"})
# Fields that are the event's frame, not its content: never altered.
_FRAME_FIELDS = frozenset({"log_format", "log_namespace"})

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def client_text(value: str | bytes, limit: int = CLIENT_TEXT_LIMIT, escape: str = "") -> str:
    """
    Text a client chose, safe for one log line: backslashes, control and
    other non-printable characters (and any in C{escape}) escaped
    (C{\\n}, C{\\x1b}, C{\\u202e}; undecodable bytes as C{\\xff}), and at
    most C{limit} characters of it, then C{[... N more characters]}.  Past
    decoding bytes, costs O(C{limit}) however long the text.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        if not escape or not any(ch in text for ch in escape):
            return text
    pieces: list[str] = []
    used = 0
    shown = 0
    for ch in text:
        if ch in escape:
            piece = "\\" + ch
        elif ch.isprintable() and ch != "\\":
            piece = ch
        else:
            piece = _escape(ch)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
        shown += 1
    rest = len(text) - shown
    if rest:
        pieces.append(f"[... {rest} more characters]")
    return "".join(pieces)


def about_client_requests(event: Mapping[str, Any]) -> bool:
    """
    Is this event about a refused or malformed request, or another thing a
    client made happen: anything Autobahn or Twisted's web server logs, our
    events C{refused}, C{limit} and C{malformed}, and access-log lines of
    4xx answers?
    """
    kind = event.get("event")
    if kind is not None:
        if kind in CLIENT_EVENTS:
            return True
        if kind == "access":
            status = event.get("status")
            return isinstance(status, int) and 400 <= status < 500
    namespace = event.get("log_namespace")
    return isinstance(namespace, str) and namespace.startswith(CLIENT_NAMESPACES)


def capped_event(event: Mapping[str, Any], limit: int = CLIENT_TEXT_LIMIT) -> tuple[dict[str, Any], str]:
    """
    A copy of C{event} safe to write however a client chose its text, and
    its message: every text field through L{client_text}; if the message
    is still long or unprintable (text in other kinds of fields), the
    message is replaced by the original one, itself capped to C{limit}.
    """
    capped = {
        key: value if key in _FRAME_FIELDS or not isinstance(value, (str, bytes)) else client_text(value, limit)
        for key, value in event.items()
    }
    message = formatEvent(capped)
    if len(message) > MESSAGE_LIMIT or not message.isprintable():
        message = client_text(formatEvent(dict(event)), limit)
        capped["log_format"] = "{log_capped}"
        capped["log_capped"] = message
    return capped, message


class _Allowance:
    """Tokens refilled at C{rate} a second, up to one second's worth; rate 0: no limit."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = now

    def has(self, cost: float, now: float) -> bool:
        if not self.rate:
            return True
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.rate, self.tokens + elapsed * self.rate)
            self.stamp = now
        return self.tokens >= cost

    def take(self, cost: float) -> None:
        if self.rate:
            self.tokens -= cost


@implementer(ILogObserver)
class LogBudget:
    """
    An observer in front of C{observer}: events L{about_client_requests}
    are capped (L{capped_event}) and share C{lines_per_second} lines and
    C{bytes_per_second} bytes of message a second (token buckets holding
    one second's worth; 0: no limit).  Those over budget are dropped and
    counted; L{SUMMARY_INTERVAL} after the first of them, one summary event
    (C{event} C{log_budget}, warn level) tells how many, sent to
    C{summary_observer} (default C{observer}).  All other events go to
    C{observer} unchanged.

    Events about clients come from the reactor thread (Twisted's web server,
    Autobahn, the chat protocol); others may come from any thread and touch
    no state here.
    """

    def __init__(
        self,
        observer: ILogObserver,
        clock: IReactorTime,
        lines_per_second: float = DEFAULT_LINES_PER_SECOND,
        bytes_per_second: float = DEFAULT_BYTES_PER_SECOND,
        summary_observer: ILogObserver | None = None,
    ) -> None:
        self._observer = observer
        self._clock = clock
        now = clock.seconds()
        self._lines = _Allowance(lines_per_second, now)
        self._bytes = _Allowance(bytes_per_second, now)
        self._summary_log = Logger(
            namespace=__name__, observer=summary_observer if summary_observer is not None else observer
        )
        self.dropped = 0
        """Lines dropped since the last summary."""
        self.dropped_total = 0
        self._dropping_since = 0.0
        self._summary: IDelayedCall | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not about_client_requests(event):
            self._observer(event)
            return
        now = self._clock.seconds()
        if not self._lines.has(1, now):
            self._drop(now)
            return
        capped, message = capped_event(event)
        size = len(message.encode("utf-8", "surrogatepass"))
        if not self._bytes.has(size, now):
            self._drop(now)
            return
        self._lines.take(1)
        self._bytes.take(size)
        self._observer(capped)

    def _drop(self, now: float) -> None:
        self.dropped += 1
        self.dropped_total += 1
        if self._summary is None:
            self._dropping_since = now
            self._summary = self._clock.callLater(SUMMARY_INTERVAL, self.summarise)

    def summarise(self) -> None:
        """Log the summary of the lines dropped since the last one, if any, now."""
        if self._summary is not None:
            if self._summary.active():
                self._summary.cancel()
            self._summary = None
        count, self.dropped = self.dropped, 0
        if count:
            self._summary_log.warn(
                "{count} log lines about refused or malformed requests dropped "
                "in the last {seconds:.1f} seconds (log budget)",
                count=count,
                seconds=self._clock.seconds() - self._dropping_since,
                event="log_budget",
            )
