"""
Profile this checkout's server with cProfile while something else loads it.

    .venv/bin/python benchmarks/profile_server.py PORT OUT.pstats [server options]

Runs the same service as C{benchmarks/serve.sh} (limits lifted) under
cProfile until SIGINT or SIGTERM, then writes the stats to OUT.pstats and
prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str]) -> None:
    port, out, *extra = argv
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    from twisted.application.app import startApplication
    from twisted.application.service import Application
    from twisted.internet import reactor

    from chatroulette.tap import Options, makeService

    options = Options()
    options.parseOptions(
        [
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
            "--message-rate", "0", "--request-rate", "0", "--frame-rate", "0",
            "--max-handshake-rate", "0", "--max-connections-per-ip", "0",
            *extra,
        ]
    )
    application = Application("chatroulette")
    makeService(options).setServiceParent(application)
    startApplication(application, False)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))  # type: ignore[attr-defined]
    profiler = cProfile.Profile()
    profiler.runcall(reactor.run)  # type: ignore[attr-defined]
    profiler.dump_stats(out)
    stats = pstats.Stats(out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main(sys.argv[1:])
