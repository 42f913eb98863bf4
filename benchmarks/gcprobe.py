#!/usr/bin/env python3
"""
Run C{twistd} with a probe of the garbage collector and of reactor stalls.

    python benchmarks/gcprobe.py OUT.json [--untuned] -- [twistd arguments]

The probe times every collection through C{gc.callbacks} (generation, wall
time of the pass, objects collected) and every reactor turn that ran late: a
C{LoopingCall} every 10 ms notes each overshoot over 20 ms.  At exit it writes
OUT.json: the C{time.time()} stamp, generation, milliseconds and objects
collected of every collection, the stalls, and the collector's thresholds and
frozen-object count once started.  C{run.py big --gc-probe} filters them to
the measured window.  The callbacks cost a clock read per collection and the
timer 100 wake-ups a second: small next to thousands of messages a second.

C{--threshold=A,B,C} tries other thresholds in the same tuning (experiments).
C{--untuned} replaces L{chatroulette.tuning.tune_collector} with a no-op, so
the same checkout shows the collector as it was before that tuning.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
import time
from typing import Any


def install(out: str) -> None:
    collections: list[tuple[float, int, float, int]] = []
    stalls: list[tuple[float, float]] = []
    started: dict[str, Any] = {}
    pending: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            pending["t"] = time.perf_counter()
        elif "t" in pending:
            ms = 1000 * (time.perf_counter() - pending.pop("t"))
            collections.append((time.time(), info["generation"], ms, info["collected"]))

    gc.callbacks.append(on_gc)

    def watch_reactor() -> None:
        from twisted.internet import reactor, task

        last = [time.perf_counter()]

        def tick() -> None:
            t = time.perf_counter()
            late = 1000 * (t - last[0]) - 10
            if late > 20:
                stalls.append((time.time(), late))
            last[0] = t

        def begin() -> None:
            started.update(
                threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), at=time.time()
            )
            task.LoopingCall(tick).start(0.01)

        reactor.callWhenRunning(begin)  # type: ignore[attr-defined]

    def dump() -> None:
        with open(out, "w") as f:
            ended = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
            json.dump(
                {"started": started, "ended": ended, "collections": collections, "stalls": stalls}, f
            )

    atexit.register(dump)
    # After twistd has installed its reactor: the first reactor import happens
    # while the service is made, so hook in then.
    import twisted.application.app as app

    original = app.ApplicationRunner.run

    def run(self: Any) -> None:
        watch_reactor()
        original(self)

    app.ApplicationRunner.run = run  # type: ignore[method-assign]


def main() -> None:
    args = sys.argv[1:]
    out = args.pop(0)
    untuned = False
    threshold = None
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--untuned":
            untuned = True
        elif flag.startswith("--threshold="):
            threshold = tuple(int(t) for t in flag.split("=", 1)[1].split(","))
        else:
            raise SystemExit(f"unknown option {flag}")
    if args:
        args.pop(0)
    if untuned:
        import chatroulette.tuning

        chatroulette.tuning.tune_collector = lambda *a, **k: None  # type: ignore[assignment]
    if threshold is not None:
        import chatroulette.tuning

        chatroulette.tuning.GC_THRESHOLD = threshold  # type: ignore[assignment]
        chatroulette.tuning.tune_collector.__defaults__ = (threshold, gc.collect, gc.freeze, gc.set_threshold)
    install(out)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *args]
    run()


if __name__ == "__main__":
    main()
