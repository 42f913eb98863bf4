"""
Process-wide tuning for a server run as a program (twistd or twist), not when
the service is embedded or built by tests: the open-file soft limit raised to
the hard limit, and the garbage collector set for many long-lived connections.

Why the collector (benchmarks/RESULTS.md has the figures): every connection
keeps about a hundred container objects alive for as long as it is open, and a
full (generation 2) collection walks all of them.  At 19,000 connections one
full pass stopped the reactor for about 190 ms, and with the default
thresholds one came every 20-25 s while the server relayed 19,000 messages a
second, which alone made the 99th percentile of delivery latency.  Here:

- C{gc.freeze()} once the reactor runs moves everything made at start-up
  (modules, classes, the site, the options) out of the collector's reach for
  good: none of it is ever garbage, and no pass walks it again.
- A first threshold of 10,000 instead of 700 lets the young generation hold
  more before a pass, so far fewer objects live just long enough (a message
  in flight, a pending write) to be promoted into the older generations; the
  full passes that promotion triggers come several times less often.  Young
  passes stay short (a few milliseconds at most) and cyclic garbage is still
  found, just a little later.

Nothing is switched off: every generation is still collected.
"""

from __future__ import annotations

import gc
from typing import Callable, Protocol

GC_THRESHOLD = (10_000, 10, 10)


class _RLimits(Protocol):
    RLIMIT_NOFILE: int
    RLIM_INFINITY: int

    def getrlimit(self, resource: int, /) -> tuple[int, int]: ...

    def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None: ...


def running_as_program(options: object) -> bool:
    """
    True when C{options} were parsed as the C{chatroulette} subcommand of
    twistd or twist (which set C{parent}), False when built directly (tests,
    an application that embeds the service and owns its process settings).
    """
    return getattr(options, "parent", None) is not None


def raise_open_file_limit(limits: _RLimits | None = None) -> tuple[int, int] | None:
    """
    Raise the open-file soft limit (C{ulimit -n}) to the hard limit: every
    connection is a descriptor, and the soft limit (often 1,024) is what
    C{--max-connections} defaults from.  Returns the soft limit before and
    after, or None where there are no such limits (not POSIX) or the change
    was refused.
    """
    if limits is None:
        try:
            import resource
        except ImportError:  # not POSIX
            return None
        limits = resource
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    if soft == hard or soft == limits.RLIM_INFINITY:
        return soft, soft
    try:
        limits.setrlimit(limits.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return None
    return soft, hard


def tune_collector(
    threshold: tuple[int, int, int] = GC_THRESHOLD,
    collect: Callable[[], int] = gc.collect,
    freeze: Callable[[], None] = gc.freeze,
    set_threshold: Callable[..., None] = gc.set_threshold,
) -> None:
    """
    Once start-up is over: collect what start-up left behind, freeze the rest
    (out of every later pass), and set the thresholds.  Call it once the
    reactor runs (C{reactor.callWhenRunning}).
    """
    collect()
    freeze()
    set_threshold(*threshold)
