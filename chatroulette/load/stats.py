"""
The load tool's bookkeeping, without I/O: probe texts, delivery accounting,
percentiles, the report and its rendering.

Nothing here imports Twisted or Autobahn; time is always passed in.  The
network side is L{chatroulette.load.client} and L{chatroulette.load.scenarios}.

How messages are tracked: every chat message the tool sends is a I{probe},
C{"<sender>:<seq>:<sent-at>:"} padded with C{x} to the wanted size.  Sender
and receiver live in the same process, so one monotonic clock gives the
delivery latency, and the receiver can tell loss, duplication, reordering and
misrouting apart.  A message the server refused with C{not_chatting} (it was
sent while the sender still believed it was paired, but the partner had
already left) is I{refused}, not lost; every other message sent while paired
that has not arrived when the run (and its drain period) ends is I{lost}.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

PROBE_PAD = "x"


def encode_probe(sender: str, seq: int, sent_at: float, size: int = 0) -> str:
    """
    The text of one tracked message, padded with C{x} to C{size} characters
    (never truncated: a probe is at least as long as its header).
    """
    text = f"{sender}:{seq}:{sent_at:.6f}:"
    if len(text) < size:
        text += PROBE_PAD * (size - len(text))
    return text


@dataclass(frozen=True)
class Probe:
    """A decoded probe: who sent it, its sequence number, when it was sent."""

    sender: str
    seq: int
    sent_at: float


def decode_probe(text: str) -> Probe | None:
    """The probe in C{text}, or L{None} when the text is not one of ours."""
    parts = text.split(":", 3)
    if len(parts) != 4:
        return None
    sender, seq, sent_at, padding = parts
    if not sender or padding.strip(PROBE_PAD):
        return None
    try:
        return Probe(sender, int(seq), float(sent_at))
    except ValueError:
        return None


def percentile(ordered: Sequence[float], q: float) -> float:
    """
    The C{q}-th percentile (0 < q <= 100) of already sorted values, by the
    nearest-rank method: the smallest value with at least C{q}% of the values
    at or below it.  Always one of the values, never an interpolation.

    @raise ValueError: when there are no values or C{q} is out of range.
    """
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Summary:
    """Count and percentiles of a sample (milliseconds in reports); L{None}s when empty."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


def summarize(values: Iterable[float], scale: float = 1.0) -> Summary:
    """Summarize C{values}, each multiplied by C{scale} (1000 turns seconds into ms)."""
    ordered = sorted(v * scale for v in values)
    if not ordered:
        return Summary()
    return Summary(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        max=ordered[-1],
    )


class Ledger:
    """
    Every probe sent and received in one run, and what became of it.

    Senders call L{sent}; receivers call L{received} with their current chat
    id; a sender told C{not_chatting} calls L{refused}.  Messages are
    identified by (sender, seq); a sender's sequence numbers only grow.
    """

    def __init__(self) -> None:
        # (sender, seq) -> (chat it was sent in, send time)
        self._outstanding: dict[tuple[str, int], tuple[str, float]] = {}
        self._last_seen: dict[tuple[str, str], int] = {}
        self.sent = 0
        self.delivered = 0
        self.refused = 0
        self.duplicated = 0
        self.reordered = 0
        self.misrouted = 0
        self.foreign = 0
        self.latencies: list[float] = []

    def send(self, sender: str, seq: int, chat: str, now: float) -> None:
        """A probe left C{sender} while it was paired in C{chat}."""
        self.sent += 1
        self._outstanding[(sender, seq)] = (chat, now)

    def receive(self, receiver: str, chat: str | None, text: str, now: float) -> None:
        """C{receiver}, paired in C{chat}, got a C{message} event with C{text}."""
        probe = decode_probe(text)
        if probe is None:
            self.foreign += 1
            return
        key = (probe.sender, probe.seq)
        entry = self._outstanding.pop(key, None)
        if entry is None:
            # Not outstanding: delivered before (or never sent by this run).
            self.duplicated += 1
            return
        self.delivered += 1
        sent_chat, sent_at = entry
        self.latencies.append(now - sent_at)
        if sent_chat != chat:
            self.misrouted += 1
        pair = (receiver, probe.sender)
        last = self._last_seen.get(pair)
        if last is not None and probe.seq < last:
            self.reordered += 1
        else:
            self._last_seen[pair] = probe.seq

    def refuse(self) -> None:
        """The server refused one of a sender's probes: its partner had already left."""
        self.refused += 1

    @property
    def unsettled(self) -> int:
        """Probes neither delivered nor refused (yet): lost if the run ends now."""
        return max(0, self.sent - self.delivered - self.refused)


@dataclass
class UrlCounts:
    """What became of the clients sent to one of the run's URLs."""

    clients: int = 0
    """Clients this URL was given (round robin over the run's URLs)."""
    opened: int = 0
    failed: int = 0
    dropped: int = 0
    paired: int = 0
    """Clients opened here that were paired at least once (with a partner anywhere)."""


@dataclass
class Report:
    """What one load run saw; L{problems} says whether it passed."""

    scenario: str
    url: str
    """The server's URL; with several, all of them, separated by ", "."""
    clients: int
    duration_s: float = 0.0
    connections_opened: int = 0
    connections_failed: int = 0
    connections_dropped: int = 0
    clients_paired: int = 0
    pairings: int = 0
    pairings_per_s: float = 0.0
    messages_sent: int = 0
    messages_delivered: int = 0
    messages_lost: int = 0
    messages_refused: int = 0
    messages_duplicated: int = 0
    messages_reordered: int = 0
    messages_misrouted: int = 0
    messages_per_s: float = 0.0
    latency_ms: Summary = field(default_factory=Summary)
    pairing_wait_ms: Summary = field(default_factory=Summary)
    errors: dict[str, int] = field(default_factory=dict)
    connection_errors: dict[str, int] = field(default_factory=dict)
    """Why connections failed to open, by exception type."""
    per_url: dict[str, UrlCounts] = field(default_factory=dict)
    """The connection counts of each URL, in the order given."""

    def error_count(self) -> int:
        """Server error events, failed connections and unexpected drops, all together."""
        return sum(self.errors.values()) + self.connections_failed + self.connections_dropped

    def problems(self, max_errors: int = 0) -> list[str]:
        """Why this run failed, in words; empty when it passed."""
        found = []
        if self.messages_lost:
            found.append(f"{self.messages_lost} messages lost")
        if self.messages_duplicated:
            found.append(f"{self.messages_duplicated} messages duplicated")
        if self.messages_reordered:
            found.append(f"{self.messages_reordered} messages out of order")
        if self.messages_misrouted:
            found.append(f"{self.messages_misrouted} messages delivered to the wrong chat")
        if self.error_count() > max_errors:
            found.append(f"{self.error_count()} errors (more than {max_errors} allowed)")
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def count_errors(codes: Iterable[str]) -> dict[str, int]:
    """Error codes to a sorted code -> count mapping."""
    return dict(sorted(Counter(codes).items()))


def _per_url_lines(report: Report) -> list[str]:
    """One line per URL when the run had several (with one, the connections line says it all)."""
    if len(report.per_url) < 2:
        return []
    return [
        f"  {'per URL' if i == 0 else '':12} {url}: {c.clients} clients, opened {c.opened}, "
        f"failed {c.failed}, dropped {c.dropped}, paired {c.paired}"
        for i, (url, c) in enumerate(report.per_url.items())
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_report(report: Report, max_errors: int = 0) -> str:
    """The human-readable summary printed at the end of a run."""
    lat, wait = report.latency_ms, report.pairing_wait_ms
    errors = ", ".join(f"{code} {n}" for code, n in report.errors.items()) or "none"
    why = ", ".join(f"{kind} {n}" for kind, n in report.connection_errors.items())
    problems = report.problems(max_errors)
    lines = [
        f"{report.scenario} against {report.url}: {report.clients} clients, "
        f"{report.duration_s:.1f} s measured",
        f"  connections  opened {report.connections_opened}, failed {report.connections_failed}, "
        f"dropped {report.connections_dropped}" + (f" ({why})" if why else ""),
        *_per_url_lines(report),
        f"  pairing      {report.clients_paired} clients paired, {report.pairings} pairings "
        f"({report.pairings_per_s:.1f}/s), wait p50 {_ms(wait.p50)} ms, p99 {_ms(wait.p99)} ms",
        f"  messages     sent {report.messages_sent}, delivered {report.messages_delivered} "
        f"({report.messages_per_s:.1f}/s), lost {report.messages_lost}, "
        f"refused {report.messages_refused}, duplicated {report.messages_duplicated}, "
        f"reordered {report.messages_reordered}, misrouted {report.messages_misrouted}",
        f"  latency ms   p50 {_ms(lat.p50)}, p95 {_ms(lat.p95)}, p99 {_ms(lat.p99)}, "
        f"max {_ms(lat.max)} ({lat.count} samples)",
        f"  errors       {errors}",
        "  result       " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Progress:
    """A snapshot for the live progress line."""

    elapsed: float
    connected: int
    paired: int
    delivered: int
    msgs_per_s: float
    errors: int

    def line(self) -> str:
        return (
            f"{self.elapsed:6.1f}s  connected {self.connected}  paired {self.paired}  "
            f"delivered {self.delivered}  {self.msgs_per_s:.0f} msg/s  errors {self.errors}"
        )
