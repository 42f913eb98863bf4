#!/usr/bin/env python3
"""
Side-by-side benchmarks of this server and reference peers, from this checkout alone.

    python benchmarks/run.py all                 # every figure in RESULTS.md's latest section
    python benchmarks/run.py compare [--runs 3]  # rate, relay, churn, idle against the peers
    python benchmarks/run.py big [--runs 3]      # 19,000 connections (9,500 pairs, 1 msg/s each)
    python benchmarks/run.py setup               # install the peers' dependencies only

Each server is started as its own process on a free loopback port and driven
by C{peers/loadgen.js} (Node, C{ws} client).  The server's CPU time (user and
system, from /proc, summed over its process tree) is read when the generator
enters and leaves its measured window, and its memory (RSS) at the end of it;
figures per message and per pairing are that CPU time over what was delivered.
Ratios are given against a baseline server measured in the same run, and the
order of the servers alternates from run to run.  Raw rows (one JSON object per
server per run) go to C{benchmarks/results/}.

Servers:

    chatroulette         this checkout via benchmarks/serve.sh: production options with the
                         per-connection rate limits and per-address caps lifted (the saturation
                         and churn scenarios exceed them by design, all from one address)
    chatroulette-twistd  this checkout under twistd with production defaults:
                         twistd -n chatroulette --listen tcp:PORT:interface=127.0.0.1
    chatroulette-untuned the same with the collector left as CPython sets it (gcprobe.py
                         --untuned: chatroulette/tuning.py's collector settings skipped)
    node-ws              peers/node_ws.js (Node, ws)
    websockets           peers/py_websockets.py (Python, websockets)

Setup (done by every command, idempotent): C{npm ci} in C{benchmarks/peers}
(the npm registry), and a virtualenv C{benchmarks/peers/.venv} with
C{peers/requirements.txt} (PyPI).  This server runs from the checkout with the
project's own C{.venv} (C{PYTHON} overrides it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")
RESULTS = os.path.join(HERE, "results")
PEER_VENV = os.path.join(PEERS, ".venv")
PEER_PYTHON = os.path.join(PEER_VENV, "bin", "python")
PYTHON = os.environ.get("PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))
LOADGEN = os.path.join(PEERS, "loadgen.js")
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

US = "chatroulette"
SERVERS: dict[str, list[str]] = {
    "node-ws": ["node", os.path.join(PEERS, "node_ws.js"), "{port}"],
    "websockets": [PEER_PYTHON, os.path.join(PEERS, "py_websockets.py"), "{port}"],
    "chatroulette": [os.path.join(HERE, "serve.sh"), "{port}"],
    "chatroulette-twistd": [
        os.path.join(os.path.dirname(PYTHON), "twistd"), "-n", "--pidfile=", "chatroulette",
        "--listen", "tcp:{port}:interface=127.0.0.1",
    ],
}
# The same under gcprobe.py --untuned: the collector as CPython sets it (before tuning.py).
SERVERS["chatroulette-untuned"] = [
    PYTHON, os.path.join(HERE, "gcprobe.py"), "chatroulette-untuned.gc.json", "--untuned", "--",
    *SERVERS["chatroulette-twistd"][1:],
]

# The loads, as loadgen.js arguments.
SCENARIOS: dict[str, list[str]] = {
    "rate": ["--mode", "rate", "--pairs", "1000", "--rate", "2.5", "--duration", "6", "--warmup", "2"],
    "relay": ["--mode", "relay", "--pairs", "100", "--window", "8", "--duration", "6"],
    "churn": ["--mode", "churn", "--clients", "400", "--duration", "6"],
    "idle": ["--mode", "idle", "--clients", "5000", "--hold", "4"],
    # 19,000 connections from 19,000 loopback addresses, as 19,000 users would come.
    "big": [
        "--mode", "rate", "--pairs", "9500", "--rate", "1", "--duration", "20", "--warmup", "5",
        "--sources", "19000",
    ],
}


# Set-up -----------------------------------------------------------------------


def setup() -> None:
    """Install the peers' dependencies (idempotent) and lift this process's open-file limit."""
    modules = os.path.join(PEERS, "node_modules", ".package-lock.json")
    lock = os.path.join(PEERS, "package-lock.json")
    if not os.path.exists(modules) or os.path.getmtime(modules) < os.path.getmtime(lock):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=PEERS, check=True)
    if not os.path.exists(PEER_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
        subprocess.run(
            [PEER_PYTHON, "-m", "pip", "install", "-q", "-r", os.path.join(PEERS, "requirements.txt")],
            check=True,
        )
    if not os.path.exists(PYTHON):
        raise SystemExit(f"{PYTHON} not found: make the project's venv first (README.md)")
    os.makedirs(RESULTS, exist_ok=True)
    # Children inherit it: every server and the generator get the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def tree(pid: int) -> list[int]:
    """C{pid} and its descendants."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                out += tree(int(child))
    except OSError:
        pass
    return out


def usage(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds and RSS bytes of C{pid}'s process tree."""
    user = system = 0.0
    rss = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
        user += int(fields[11]) / CLK
        system += int(fields[12]) / CLK
    return user, system, rss


class Server:
    """One server process on a free port; stopped with SIGTERM to its process group."""

    def __init__(self, name: str, argv: list[str], log: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        env = dict(os.environ, PYTHONPATH=ROOT)  # this checkout's code and twisted/plugins
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [a.replace("{port}", str(self.port)) for a in argv],
                stdout=out, stderr=subprocess.STDOUT, cwd=RESULTS, env=env, start_new_session=True,
            )
        if not wait_port(self.port):
            self.stop()
            raise RuntimeError(f"{name} did not listen on {self.port}; see {log}")
        time.sleep(0.3)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def drive(server: Server, scenario: str, timeout: float = 600) -> dict[str, Any]:
    """Run one scenario against C{server}; the generator's result plus the server's costs."""
    gen = subprocess.Popen(
        ["node", LOADGEN, "--url", server.url, *SCENARIOS[scenario]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PEERS,
    )
    assert gen.stderr is not None and gen.stdout is not None
    marks: dict[str, tuple[float, float, float, int, float]] = {}
    before = usage(server.process.pid)
    for line in gen.stderr:
        mark = line.strip()
        if mark == "READY":  # idle: all paired; let the heap settle, then read it
            time.sleep(1.5)
        if mark in ("MEASURE-START", "MEASURE-END", "READY"):
            g = usage(gen.pid)
            marks[mark] = (time.time(), *usage(server.process.pid), g[0] + g[1])
    out, _ = gen.communicate(timeout=timeout)
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": out[-500:]}
    if "MEASURE-START" in marks and "MEASURE-END" in marks:
        (t0, u0, s0, _, g0), (t1, u1, s1, rss, g1) = marks["MEASURE-START"], marks["MEASURE-END"]
        seconds = t1 - t0
        cpu = (u1 - u0) + (s1 - s0)
        result.update(
            window_start=t0, window_end=t1,
            server_cpu_pct=round(100 * cpu / seconds, 1),
            server_user_s=round(u1 - u0, 3), server_sys_s=round(s1 - s0, 3),
            server_rss_mb=round(rss / 2**20, 1),
            generator_cpu_pct=round(100 * (g1 - g0) / seconds, 1),
        )
        if result.get("msgs_per_s"):
            result["server_us_per_msg"] = round(1e6 * cpu / (result["msgs_per_s"] * seconds), 1)
        if result.get("pairings_per_s"):
            pairings = result["pairings_per_s"] * seconds
            result["server_us_per_pairing"] = round(1e6 * cpu / pairings, 1)
            result["server_user_us_per_pairing"] = round(1e6 * (u1 - u0) / pairings, 1)
            result["server_sys_us_per_pairing"] = round(1e6 * (s1 - s0) / pairings, 1)
    if "READY" in marks:
        rss = marks["READY"][3]
        result["rss_mb_at_hold"] = round(rss / 2**20, 1)
        result["rss_bytes_per_conn"] = round((rss - before[2]) / max(1, result.get("connected", 1)))
    return result


def run_server(
    name: str, argv: list[str], scenarios: list[str], tag: str
) -> dict[str, Any]:
    """One server through C{scenarios} in one process: one row."""
    row: dict[str, Any] = {"server": name}
    log = os.path.join(RESULTS, f"{tag}-{name}.log")
    probe = os.path.join(RESULTS, argv[2]) if argv[1].endswith("gcprobe.py") else None
    if probe and os.path.exists(probe):
        os.remove(probe)
    try:
        server = Server(name, argv, log)
    except RuntimeError as e:
        return {**row, "error": str(e)}
    try:
        for scenario in scenarios:
            row[scenario] = drive(server, scenario)
    finally:
        server.stop()
    if probe and os.path.exists(probe):
        with open(probe) as f:
            row["gc"] = collector_summary(json.load(f), row[scenarios[-1]])
    return row


def collector_summary(probe: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The probe's collections and reactor stalls inside the measured window."""
    t0, t1 = result.get("window_start", 0), result.get("window_end", float("inf"))
    out: dict[str, Any] = {"threshold": probe["ended"].get("threshold"),
                           "frozen": probe["ended"].get("frozen")}
    for gen in (0, 1, 2):
        ms = [c[2] for c in probe["collections"] if t0 <= c[0] <= t1 and c[1] == gen]
        out[f"gen{gen}"] = {"count": len(ms), "total_ms": round(sum(ms), 1),
                            "max_ms": round(max(ms), 1) if ms else 0}
    full = [c for c in probe["collections"] if c[1] == 2]
    out["gen2_all_run"] = [[round(c[0] - t0, 2), round(c[2], 1)] for c in full]
    stalls = [s[1] for s in probe["stalls"] if t0 <= s[0] <= t1]
    out["stalls_over_20ms"] = len(stalls)
    out["stall_max_ms"] = round(max(stalls), 1) if stalls else 0
    return out


# Reports ----------------------------------------------------------------------


def figure(row: dict[str, Any], scenario: str, key: str) -> float | None:
    v = row.get(scenario, {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def same_run_ratios(
    runs: list[list[dict[str, Any]]], ours: str, base: str, scenario: str, key: str
) -> list[float]:
    out = []
    for rows in runs:
        by = {r["server"]: r for r in rows}
        if ours in by and base in by:
            a, b = figure(by[ours], scenario, key), figure(by[base], scenario, key)
            if a is not None and b:
                out.append(a / b)
    return out


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def median_table(
    runs: list[list[dict[str, Any]]], columns: list[tuple[str, str, str]], order: list[str]
) -> list[str]:
    lines = [
        "| server | " + " | ".join(c[2] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in order:
        cells = []
        for scenario, key, _ in columns:
            vs = [v for rows in runs for r in rows if r["server"] == name
                  if (v := figure(r, scenario, key)) is not None]
            cells.append(fmt(statistics.median(vs)) if vs else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ratio_table(
    runs: list[list[dict[str, Any]]], ours: str, bases: list[str],
    measures: list[tuple[str, str, str]],
) -> list[str]:
    lines = [
        f"| {ours} / baseline (same run; median, then each run) | " + " | ".join(bases) + " |",
        "|---|" + "---|" * len(bases),
    ]
    for scenario, key, title in measures:
        cells = []
        for base in bases:
            each = same_run_ratios(runs, ours, base, scenario, key)
            cells.append(
                f"{statistics.median(each):.2f} ({', '.join(f'{r:.2f}' for r in each)})" if each else "-"
            )
        if any(c != "-" for c in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def header(runs: int) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "chatroulette"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout.strip()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return (
        f"Commit `{commit}`{' (uncommitted changes in chatroulette/)' if dirty else ''}, "
        f"{datetime.date.today().isoformat()}, CPython {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average at the end {load}; medians of {runs} runs."
    )


def save(rows: list[dict[str, Any]], path: str | None, run: int) -> None:
    if path:
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps({"run": run, **row}) + "\n")


def load(path: str) -> list[list[dict[str, Any]]]:
    by: dict[int, list[dict[str, Any]]] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            by.setdefault(row.pop("run", 0), []).append(row)
    return [by[k] for k in sorted(by)]


# Commands ---------------------------------------------------------------------

COMPARE_COLUMNS = [
    ("rate", "server_us_per_msg", "CPU us/msg @5k msg/s"),
    ("rate", "p99_ms", "p99 ms @5k"),
    ("relay", "msgs_per_s", "relay msg/s (sat.)"),
    ("relay", "server_us_per_msg", "CPU us/msg (sat.)"),
    ("churn", "pairings_per_s", "pairings/s"),
    ("churn", "server_us_per_pairing", "CPU us/pairing"),
    ("idle", "rss_bytes_per_conn", "RSS B/idle conn"),
]
COMPARE_RATIOS = [
    ("rate", "server_us_per_msg", "CPU per relayed message (rate)"),
    ("rate", "p99_ms", "p99 delivery latency (rate)"),
    ("relay", "server_us_per_msg", "CPU per relayed message (saturation)"),
    ("churn", "server_us_per_pairing", "CPU per pairing (churn)"),
    ("idle", "rss_bytes_per_conn", "RSS per idle connection"),
]
BIG_COLUMNS = [
    ("big", "connected", "connected"),
    ("big", "paired", "paired"),
    ("big", "msgs_per_s", "delivered msg/s"),
    ("big", "p50_ms", "p50 ms"),
    ("big", "p99_ms", "p99 ms"),
    ("big", "max_ms", "max ms"),
    ("big", "server_cpu_pct", "server CPU %"),
    ("big", "server_rss_mb", "server RSS MB"),
    ("big", "generator_cpu_pct", "generator CPU %"),
    ("big", "gen_send_lag_p99_ms", "generator send lag p99 ms"),
]


def servers_named(names: str, extra: list[str]) -> dict[str, list[str]]:
    chosen = {}
    for spec in extra:
        name, _, cmd = spec.partition("=")
        SERVERS[name] = shlex.split(cmd)
    for name in names.split(","):
        if name not in SERVERS:
            raise SystemExit(f"unknown server {name!r}: one of {', '.join(SERVERS)}")
        chosen[name] = SERVERS[name]
    return chosen


def runs_of(
    servers: dict[str, list[str]], scenarios: list[str], runs: int, raw: str | None, tag: str
) -> list[list[dict[str, Any]]]:
    out = []
    for i in range(runs):
        names = list(servers) if i % 2 == 0 else list(reversed(servers))  # alternate the order
        rows = []
        for name in names:
            print(f"run {i + 1}/{runs}: {name} {','.join(scenarios)}", file=sys.stderr, flush=True)
            row = run_server(name, servers[name], scenarios, f"{tag}-{i}")
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        save(rows, raw, i)
        out.append(rows)
    return out


def compare(args: argparse.Namespace) -> str:
    servers = servers_named(args.only, args.server)
    raw = args.raw or os.path.join(RESULTS, "compare.jsonl")
    runs = load(args.from_raw) if args.from_raw else runs_of(
        servers, args.scenarios.split(","), args.runs, raw, "compare"
    )
    bases = [b for b in args.baselines.split(",") if b and b != args.ours]
    return "\n".join([
        header(len(runs)), "",
        *ratio_table(runs, args.ours, bases, COMPARE_RATIOS), "",
        *median_table(runs, COMPARE_COLUMNS, list(servers)),
    ])


def big(args: argparse.Namespace) -> str:
    if args.duration:
        SCENARIOS["big"][SCENARIOS["big"].index("--duration") + 1] = str(args.duration)
    if args.pairs:
        i = SCENARIOS["big"].index("--pairs")
        SCENARIOS["big"][i + 1] = str(args.pairs)
        SCENARIOS["big"][SCENARIOS["big"].index("--sources") + 1] = str(2 * args.pairs)
    servers = servers_named(args.only, args.server)
    if args.gc_probe:
        probe = [PYTHON, os.path.join(HERE, "gcprobe.py")]
        for name, argv in servers.items():
            if os.path.basename(argv[0]) == "twistd":
                servers[name] = [*probe, f"{name}.gc.json", *args.probe_options, "--", *argv[1:]]
    raw = args.raw or os.path.join(RESULTS, "big.jsonl")
    runs = load(args.from_raw) if args.from_raw else runs_of(servers, ["big"], args.runs, raw, "big")
    lines = [header(len(runs)), "", *median_table(runs, BIG_COLUMNS, list(servers)), ""]
    bases = [b for b in args.baselines.split(",") if b and b != args.ours]
    lines += ratio_table(runs, args.ours, bases, [
        ("big", "p50_ms", "p50 latency"), ("big", "p99_ms", "p99 latency"), ("big", "max_ms", "max latency"),
        ("big", "server_us_per_msg", "CPU per relayed message"),
    ])
    lines += ["", "Each run (p50 / p99 / max ms):", ""]
    for i, rows in enumerate(runs):
        cells = [
            f"{r['server']} {fmt(figure(r, 'big', 'p50_ms'))} / {fmt(figure(r, 'big', 'p99_ms'))}"
            f" / {fmt(figure(r, 'big', 'max_ms'))}" for r in rows
        ]
        lines.append(f"- run {i + 1}: " + "; ".join(cells))
    probed = [(i, r) for i, rows in enumerate(runs) for r in rows if "gc" in r]
    if probed:
        lines += [
            "", "Collector and reactor (gcprobe.py), in the measured window unless said:", "",
            "| run | server | thresholds | frozen objects | gen0 passes (max ms) | gen1 passes (max ms) "
            "| gen2 passes (ms each) | reactor stalls > 20 ms (max ms) | gen2 passes, whole run (s from window start: ms) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in probed:
            g = r["gc"]
            window = [f"{ms:.0f}" for t, ms in g["gen2_all_run"] if 0 <= t <= r["big"]["window_end"] - r["big"]["window_start"]]
            whole = ", ".join(f"{t:+.0f}: {ms:.0f}" for t, ms in g["gen2_all_run"])
            lines.append(
                f"| {i + 1} | {r['server']} | {tuple(g['threshold'])} | {g['frozen']} "
                f"| {g['gen0']['count']} ({g['gen0']['max_ms']}) | {g['gen1']['count']} ({g['gen1']['max_ms']}) "
                f"| {g['gen2']['count']} ({', '.join(window) or '-'}) "
                f"| {g['stalls_over_20ms']} ({g['stall_max_ms']}) | {whole} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install the peers' dependencies")
    everything = sub.add_parser("all", help="compare and big, 3 runs each: RESULTS.md's latest figures")
    everything.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("compare", help="rate, relay, churn and idle against the peers")
    p.add_argument("--only", default="node-ws,websockets,chatroulette")
    p.add_argument("--scenarios", default="rate,relay,churn,idle")
    p.add_argument("--baselines", default="websockets,node-ws")
    q = sub.add_parser("big", help="19,000 connections, 1 msg/s each, production defaults")
    q.add_argument("--only", default="chatroulette-twistd,node-ws")
    q.add_argument("--baselines", default="node-ws")
    q.add_argument("--pairs", type=int, help="pairs instead of 9,500 (to try the harness)")
    q.add_argument("--duration", type=int, help="measured seconds instead of 20")
    q.add_argument("--gc-probe", action="store_true",
                   help="run our twistd servers under gcprobe.py (GC and stall timings, in results/)")
    q.add_argument("--probe-option", dest="probe_options", action="append", default=[],
                   help="passed to gcprobe.py (e.g. --untuned)")
    for c in (p, q):
        c.add_argument("--runs", type=int, default=3)
        c.add_argument("--server", action="append", default=[], metavar="NAME=CMD",
                       help="one more server (a command with {port}), to name in --only")
        c.add_argument("--raw", help="append the raw rows to this file (default results/NAME.jsonl)")
        c.add_argument("--from-raw", help="no runs: build the tables from a raw file")
        c.add_argument("--ours", default=None)
    args = parser.parse_args()
    setup()
    if args.command == "setup":
        return
    if args.command == "all":
        for name in ("compare.jsonl", "big.jsonl"):
            if os.path.exists(os.path.join(RESULTS, name)):
                os.rename(os.path.join(RESULTS, name), os.path.join(RESULTS, f"{name}.{int(time.time())}"))
        args = argparse.Namespace(
            runs=args.runs, server=[], raw=None, from_raw=None, ours=None, gc_probe=True,
            probe_options=[], only=None, baselines=None, scenarios="rate,relay,churn,idle", pairs=None,
            duration=None,
        )
        text = compare(argparse.Namespace(**{**vars(args), "only": "node-ws,websockets,chatroulette",
                                             "baselines": "websockets,node-ws", "ours": US}))
        text += "\n\n" + big(argparse.Namespace(**{**vars(args),
                                                   "only": "chatroulette-twistd,node-ws,chatroulette-untuned",
                                                   "baselines": "node-ws,chatroulette-untuned",
                                                   "ours": "chatroulette-twistd"}))
    elif args.command == "compare":
        args.ours = args.ours or US
        text = compare(args)
    else:
        args.ours = args.ours or "chatroulette-twistd"
        text = big(args)
    print(text)
    with open(os.path.join(RESULTS, f"{args.command if hasattr(args, 'command') else 'all'}.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
