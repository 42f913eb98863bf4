#!/usr/bin/env python3
"""
Churn, A/B style: user and system CPU per pairing, websockets and this server in turn.

    python3 benchmarks/churn_split.py --bench /path/to/bench.py [--rounds 3] [-- extra server options]

Runs the side-by-side harness's load generator in its churn mode (400 clients,
6 s) against the C{websockets} reference peer and against this checkout's
server (C{benchmarks/serve.sh}), alternately, and prints each server's user and
system CPU time per pairing over the generator's measured window.  Quicker than
C{compare.py} for judging one change, and it splits the cost: system time is
mostly C{send}/C{recv}, user time mostly Python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process C{pid}."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def churn(bench: Any, argv: list[str]) -> dict[str, float]:
    port = bench.free_port()
    server = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.path.dirname(HERE),
    )
    try:
        if not bench.wait_port(port):
            raise SystemExit(f"{argv[0]} did not listen")
        time.sleep(0.3)
        generator = subprocess.Popen(
            ["node", os.path.join(bench.HERE, "loadgen.js"), "--url", f"ws://127.0.0.1:{port}/ws",
             "--mode", "churn", "--clients", "400", "--duration", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert generator.stderr is not None
        marks = {}
        for line in generator.stderr:
            if line.startswith("MEASURE-"):
                marks[line.strip()] = (time.time(), *cpu(server.pid))
        out = json.loads(generator.communicate()[0].strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait()
    (t0, u0, s0), (t1, u1, s1) = marks["MEASURE-START"], marks["MEASURE-END"]
    pairings = out["pairings_per_s"] * (t1 - t0)
    return {
        "pairings_per_s": out["pairings_per_s"],
        "user_us": 1e6 * (u1 - u0) / pairings,
        "sys_us": 1e6 * (s1 - s0) / pairings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default=os.environ.get("CHATROULETTE_BENCH"), help="path to bench.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("server_options", nargs="*", help="extra options for this server")
    args = parser.parse_args()
    if not args.bench:
        parser.error("--bench (or CHATROULETTE_BENCH) is required")
    spec = importlib.util.spec_from_file_location("bench", args.bench)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.setup()
    servers = {
        "websockets": [bench.PY, os.path.join(bench.HERE, "peers", "py_websockets.py"), "{port}"],
        "chatroulette": [os.path.join(HERE, "serve.sh"), "{port}", *args.server_options],
    }
    for _ in range(args.rounds):
        row = {name: churn(bench, argv) for name, argv in servers.items()}
        for name, r in row.items():
            print(f"{name:13s} {r['pairings_per_s']:6.0f} pairings/s  user {r['user_us']:5.1f} us  "
                  f"sys {r['sys_us']:5.1f} us  total {r['user_us'] + r['sys_us']:5.1f} us/pairing")
        ours, theirs = row["chatroulette"], row["websockets"]
        ratio = (ours["user_us"] + ours["sys_us"]) / (theirs["user_us"] + theirs["sys_us"])
        print(f"ratio {ratio:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
