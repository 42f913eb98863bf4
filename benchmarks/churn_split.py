#!/usr/bin/env python3
"""
Churn, A/B style: user and system CPU per pairing, websockets and this server in turn.

    python3 benchmarks/churn_split.py [--rounds 3] [-- extra server options]

Runs the churn load of this repository's harness (C{run.py}: 400 clients, 6 s,
C{peers/loadgen.js}) against the C{websockets} reference peer and against this
checkout's server (C{benchmarks/serve.sh}), alternately, and prints each
server's user and system CPU time per pairing over the generator's measured
window.  Quicker than C{compare.py} for judging one change, and it splits the
cost: system time is mostly C{send}/C{recv}, user time mostly Python.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (benchmarks/run.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("server_options", nargs="*", help="extra options for this server")
    args = parser.parse_args()
    harness.setup()
    servers = {
        "websockets": harness.SERVERS["websockets"],
        "chatroulette": [*harness.SERVERS["chatroulette"], *args.server_options],
    }
    for i in range(args.rounds):
        row = {}
        for name, argv in servers.items():
            result = harness.run_server(name, argv, ["churn"], f"churn-split-{i}")
            if "error" in result or "server_user_us_per_pairing" not in result["churn"]:
                raise SystemExit(f"{name}: {result}")
            row[name] = result["churn"]
        for name, r in row.items():
            print(f"{name:13s} {r['pairings_per_s']:6.0f} pairings/s  "
                  f"user {r['server_user_us_per_pairing']:5.1f} us  "
                  f"sys {r['server_sys_us_per_pairing']:5.1f} us  "
                  f"total {r['server_us_per_pairing']:5.1f} us/pairing")
        ratio = row["chatroulette"]["server_us_per_pairing"] / row["websockets"]["server_us_per_pairing"]
        print(f"ratio {ratio:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
