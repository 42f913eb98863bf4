#!/usr/bin/env python3
"""
The side-by-side comparison of C{benchmarks/RESULTS.md}'s older sections, on
this repository's harness (C{run.py}, with its reference peers in C{peers/}).

Runs every server N times in one go (this checkout's server started by
C{benchmarks/serve.sh}), then prints the medians and the ratios of our server
to the baselines as Markdown.

    python3 benchmarks/compare.py [--runs 3] [--out table.md]

C{--server NAME=CMD} adds another server to every run (e.g. an older
checkout's C{serve.sh}), and C{--baselines} chooses the servers to give our
ratios against (the median of the same-run ratios, with each run's ratio).
Raw results (one JSON line per server per run) go to C{--raw} if given.
C{python3 benchmarks/run.py compare} is the same comparison with run.py's
own tables; this script keeps the older sections' table layout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run as harness  # noqa: E402  (benchmarks/run.py)

US = "chatroulette"
BASELINES = ("websockets", "node-ws")

# (scenario, key, column title, lower is better)
METRICS = [
    ("rate", "server_us_per_msg", "CPU us/msg @5k msg/s", True),
    ("rate", "p99_ms", "p99 ms @5k", True),
    ("relay", "msgs_per_s", "relay msg/s (sat.)", False),
    ("relay", "server_us_per_msg", "CPU us/msg (sat.)", True),
    ("churn", "pairings_per_s", "pairings/s", False),
    ("churn", "server_us_per_pairing", "CPU us/pairing", True),
    ("idle", "rss_bytes_per_conn", "RSS B/idle conn", True),
]
# The ones with targets, as ratios to the baselines.
RATIOS = [
    ("rate", "server_us_per_msg", "CPU per relayed message (rate)"),
    ("rate", "p99_ms", "p99 delivery latency (rate)"),
    ("relay", "server_us_per_msg", "CPU per relayed message (saturation)"),
    ("churn", "server_us_per_pairing", "CPU per pairing (churn)"),
    ("idle", "rss_bytes_per_conn", "RSS per idle connection"),
]


def run_bench(
    only: str | None, scenarios: str, servers: list[str] = [], run: int = 0
) -> list[dict[str, Any]]:
    """One run of every server through the scenarios (in run.py's processes and loads)."""
    chosen = dict(harness.SERVERS)
    chosen.pop("chatroulette-twistd")
    for spec in servers:
        name, _, cmd = spec.partition("=")
        chosen[name] = shlex.split(cmd)
    if only:
        chosen = {k: v for k, v in chosen.items() if k in only.split(",")}
    names = list(chosen) if run % 2 == 0 else list(reversed(chosen))
    return [
        harness.run_server(name, chosen[name], scenarios.split(","), f"compare-{run}")
        for name in names
    ]


def medians(runs: list[list[dict[str, Any]]]) -> dict[str, dict[tuple[str, str], float]]:
    """server -> (scenario, key) -> median over the runs that produced a figure."""
    samples: dict[str, dict[tuple[str, str], list[float]]] = {}
    for rows in runs:
        for row in rows:
            per = samples.setdefault(row["server"], {})
            for scenario, key, _, _ in METRICS:
                v = harness.figure(row, scenario, key)
                if v is not None:
                    per.setdefault((scenario, key), []).append(v)
    return {
        server: {k: statistics.median(vs) for k, vs in per.items()} for server, per in samples.items()
    }


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ).stdout.strip()


def table(
    med: dict[str, dict[tuple[str, str], float]],
    runs: int,
    commit: str,
    baselines: tuple[str, ...] = BASELINES,
    raw: list[list[dict[str, Any]]] | None = None,
) -> str:
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "chatroulette"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    ).stdout.strip()
    today = datetime.date.today().isoformat()
    lines = [
        f"Commit `{commit}`{' (with uncommitted changes in chatroulette/)' if dirty else ''}, "
        f"{today}, CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of {runs} runs.",
        "",
        "Ratios of chatroulette to each baseline (lower is better; 1.00 = the same cost):",
        "",
        "| measure | vs " + " | vs ".join(baselines) + " |",
        "|---|" + "---|" * len(baselines),
    ]
    ours = med.get(US, {})
    for scenario, key, title in RATIOS:
        cells = []
        for base in baselines:
            # With the raw runs: the median of the same-run ratios, and each run's ratio.
            each = harness.same_run_ratios(raw, US, base, scenario, key) if raw else []
            if each:
                cells.append(
                    f"{statistics.median(each):.2f} ("
                    + ", ".join(f"{r:.2f}" for r in each) + ")"
                )
                continue
            a, b = ours.get((scenario, key)), med.get(base, {}).get((scenario, key))
            cells.append(f"{a / b:.2f}" if a is not None and b else "-")
        if any(c != "-" for c in cells):  # leave out scenarios that were not run
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Medians:",
        "",
        "| server | " + " | ".join(m[2] for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for server in sorted(med, key=lambda s: (s == US, s)):
        cells = [fmt(med[server].get((scenario, key))) for scenario, key, _, _ in METRICS]
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated servers (default: all peers and chatroulette)")
    parser.add_argument("--scenarios", default="relay,rate,churn,idle")
    parser.add_argument(
        "--server", action="append", default=[], metavar="NAME=CMD",
        help="one more server (repeatable, a command with {port}), e.g. another checkout's serve.sh",
    )
    parser.add_argument(
        "--baselines", default=",".join(BASELINES),
        help="comma-separated servers to give chatroulette's ratios against",
    )
    parser.add_argument("--out", help="also write the Markdown table to this file")
    parser.add_argument("--raw", help="append the raw JSON lines to this file")
    parser.add_argument("--from-raw", help="no runs: build the table from a --raw file")
    args = parser.parse_args()
    runs: list[list[dict[str, Any]]] = []
    commit = head_commit()  # the code measured is the code at the start
    if args.from_raw:
        by_run: dict[int, list[dict[str, Any]]] = {}
        with open(args.from_raw) as f:
            for line in f:
                row = json.loads(line)
                by_run.setdefault(row.pop("run", 0), []).append(row)
        runs = list(by_run.values())
    else:
        harness.setup()
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}...", file=sys.stderr, flush=True)
            rows = run_bench(args.only, args.scenarios, args.server, i)
            runs.append(rows)
            if args.raw:
                with open(args.raw, "a") as f:
                    for row in rows:
                        f.write(json.dumps({"run": i, **row}) + "\n")
    end = head_commit()
    if end != commit:
        commit = f"{commit}..{end}"
    baselines = tuple(b for b in args.baselines.split(",") if b)
    text = table(medians(runs), len(runs), commit, baselines, runs)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
