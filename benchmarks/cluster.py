"""
What the shared lobby (C{--redis}) costs: CPU per relayed message and per
pairing of two nodes and their C{redis-server}, as ratios to the in-memory
single process, all measured in the same run.

    .venv/bin/python benchmarks/cluster.py [--runs 3] [--pairs 1000] [--rate 3]
        [--duration 20] [--churn-clients 400] [--kinds relay,churn] [--raw raw.jsonl]

It starts everything it measures itself, on free loopback ports, from this
checkout (C{twistd -n chatroulette --listen tcp:PORT:interface=127.0.0.1},
with and without C{--redis}, and a C{redis-server} in a temporary directory),
and drives them with the in-repo load tool (L{chatroulette.load}, in this
process).  Each run measures:

  - C{a} relay and C{a} churn: one process, the in-memory lobby (the baseline);
  - C{b1} relay, two nodes + Redis, every pair on node 1 (node 2 idle): what
    the shared lobby costs a node's own chats, the process count aside;
  - C{b} relay, two nodes + Redis, both clients of every pair on the same node
    (half the pairs on each node);
  - C{c} relay, two nodes + Redis, every pair across the nodes;
  - C{d} churn (find, paired, one message, next) on two nodes + Redis, the
    clients spread over both (whoever meets whom: about half the chats cross).

Who is paired with whom in relay is arranged with one interest per pair
(C{--interest-timeout} is raised so no waiter falls back to "anyone"), then
checked twice: both clients of a pair must report the same chat id, and each
node's C{chatroulette_cross_node_messages_total} (C{/metrics}) must stay at 0
for C{b1} and C{b} and grow by about every message for C{c}.

CPU is user + system time from C{/proc/PID/stat}, summed over every server
process and C{redis-server}, over the window in which the load was offered
(relay: from the first message to the last delivered; churn: a steady window
after every client connected).  The load is a fixed offered rate, the same
for every configuration, so the servers do the same work in each; the load
tool's own CPU and the whole machine's are reported beside it, to show
whether the tool (or the neighbours) limited anything.

Configurations take turns inside each run (the order is rotated from run to
run); the table shows, per configuration, the median of the runs' ratios to
C{a} of the same run and every run's ratio.  Figures on a shared machine are
noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

ROOT = Path(__file__).resolve().parent.parent
# The load tool from this checkout, not an installed copy.
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

from chatroulette.load import ClientConfig  # noqa: E402
from chatroulette.load.client import REQUEST, LoadClient, now  # noqa: E402
from chatroulette.load.scenarios import Run  # noqa: E402

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
TARGETS = {"b1": 1.1, "b": 1.1, "c": 2.5, "d": 3.0}


# Processes ----------------------------------------------------------------


def raise_open_files() -> int:
    """Lift this process's open-file soft limit to the hard one (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds of one process, from C{/proc/PID/stat}."""
    user, system = user_system_seconds(pid)
    return user + system


def user_system_seconds(pid: int | str) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of one process, from C{/proc/PID/stat}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICK, int(fields[12]) / CLOCK_TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from C{/proc/stat}."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICK, total / CLOCK_TICK


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Redis:
    """A C{redis-server} on a free loopback port, nothing saved, in its own temporary directory."""

    def __init__(self, workdir: Path, unix: bool = False) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.unix = unix
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the nodes find it: loopback TCP, or (C{--unix}) its Unix socket."""
        if self.unix:
            return f"unix://{self.dir / 'redis.sock'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--unixsocket", str(self.dir / "redis.sock"), "--unixsocketperm", "700",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited, see {self.dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def commandstats(self) -> dict[str, dict[str, float]]:
        """C{INFO commandstats}: calls and microseconds per command (for where Redis spends its time)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"INFO commandstats\r\n")
            data = b""
            while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
                data += s.recv(65536)
        stats = {}
        for line in data.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, values = line[len("cmdstat_") :].split(":", 1)
                fields = dict(v.split("=") for v in values.split(","))
                stats[name] = {"calls": float(fields["calls"]), "usec": float(fields["usec"])}
        return stats

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass
class Node:
    """One C{twistd -n chatroulette} process of this checkout on a fixed loopback port."""

    name: str
    workdir: Path
    redis_url: str | None = None
    options: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        state = self.workdir / self.name
        state.mkdir(exist_ok=True)
        args = [
            *TWISTD, "--logfile", str(state / "twistd.log"), "chatroulette",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog=4096",
            "--state-dir", str(state), *self.options,
        ]  # fmt: skip
        if self.redis_url is not None:
            args += ["--redis", self.redis_url]
        return args

    def spawn(self) -> None:
        """Start the process; L{wait_ready} (or L{ready}) waits for it."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            self.command(), cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.starts += 1

    def ready(self) -> bool:
        """Whether the node answers C{/healthz} with 200 (it raises if the process ended)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"node {self.name} exited with {self.process.returncode}: {self.log_tail()}")
        try:
            code, _ = http_get(self.port, "/healthz", 1.0)
        except OSError:
            return False
        return code == 200

    def wait_ready(self, timeout: float = 30) -> None:
        """Blocking: only while no load is running."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} not ready in {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        _, body = http_get(self.port, "/healthz")
        return dict(json.loads(body))

    def metric(self, name: str) -> float:
        """One unlabelled sample of C{/metrics} (0 when absent)."""
        _, body = http_get(self.port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        process, self.process = self.process, None
        stop_process(process, sig)
        return None if process is None else process.returncode

    def log_tail(self) -> str:
        try:
            return (self.workdir / self.name / "twistd.log").read_text()[-3000:]
        except OSError:
            return ""


class Meter:
    """CPU of the server processes (and of the load tool, and of the machine) over one window."""

    def __init__(self, pids: dict[str, int], redis: Redis | None = None) -> None:
        self.pids = pids
        self.redis = redis
        self._commands = redis.commandstats() if redis is not None else {}
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {}
        for name, pid in self.pids.items():
            user, system = user_system_seconds(pid)
            sample[name] = user + system
            sample["_sys_" + name] = system
        sample["_load"] = cpu_seconds("self")
        sample["_busy"], sample["_total"] = machine_busy()
        sample["_wall"] = time.monotonic()
        return sample

    def stop(self) -> dict[str, Any]:
        end = self._sample()
        delta = {name: end[name] - self._start[name] for name in end}
        wall = delta.pop("_wall")
        total = delta.pop("_total")
        busy = delta.pop("_busy")
        load = delta.pop("_load")
        kernel = {name: delta.pop("_sys_" + name) for name in self.pids}
        servers = sum(delta.values())
        commands = {}
        if self.redis is not None:
            commands = {"redis_commands": _command_delta(self._commands, self.redis.commandstats())}
        return {
            **commands,
            "wall_s": wall,
            "server_cpu_s": servers,
            **{f"cpu_{name}_s": value for name, value in delta.items()},
            # The kernel's share of each process's CPU (system time).
            **{f"sys_{name}_s": value for name, value in kernel.items()},
            "load_tool_cpu_s": load,
            # Shares of the whole machine (all CPUs) over the window.
            "servers_share": servers / wall / CPUS,
            "load_tool_share": load / wall / CPUS,
            "machine_busy_share": busy / total if total else 0.0,
        }


# Load -----------------------------------------------------------------------

IDLE_WINDOW = 5.0
PROFILE_DIR: Path | None = None
RUN = 0


def profile(label: str, kind: str, pids: dict[str, int], duration: float) -> defer.Deferred[None]:
    """
    With C{--profile DIR}: C{py-spy record} each server process (not Redis)
    for the window, collapsed stacks to C{DIR}; fires when they are written.
    Sampling costs the servers CPU: profiled runs are for finding where the
    time goes, not for the table.
    """
    if PROFILE_DIR is None:
        return defer.succeed(None)
    from twisted.internet import threads

    spies = []
    for name, pid in pids.items():
        if name == "redis":
            continue
        out = PROFILE_DIR / f"run{RUN}-{label}-{kind}-{name}.txt"
        args = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "200",
                "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
        spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    def wait() -> None:
        for spy in spies:
            spy.wait()

    return threads.deferToThread(wait)


def _find_with(client: LoadClient, interest: str) -> None:
    """C{find} with one interest (the load tool's own C{find} has none)."""
    client.finding = True
    client.chatting = False
    client.last_sent = REQUEST
    client.find_at = now()
    client.sendMessage(json.dumps({"type": "find", "interests": [interest]}).encode())


async def _open(run: Run, urls: Sequence[str]) -> list[LoadClient]:
    """One client for each URL in C{urls} (in that order), C{concurrency} at a time."""
    semaphore = defer.DeferredSemaphore(max(1, run.config.concurrency))

    async def one(url: str) -> LoadClient:
        target = run.targets[url]
        client = cast(LoadClient, await target.endpoint.connect(target.factory))
        await client.opened
        run.per_url[url].opened += 1
        if run.churn:
            client.paced(REQUEST, client.send_find)
        return client

    for url in urls:
        run.per_url[url].clients += 1
    clients = await defer.gatherResults([semaphore.run(one, url) for url in urls], consumeErrors=True)
    run.clients = list(clients)
    run.report.connections_opened = len(run.clients)
    return run.clients


async def _send_at_rate(run: Run, senders: Sequence[LoadClient], rate: float, duration: float) -> None:
    """Every sender sends C{rate} messages a second, spread evenly, each probe stamped with when it was due."""
    n = len(senders)
    per_second = rate * n
    start = now()
    total = int(duration * per_second)
    done = 0

    def tick() -> None:
        nonlocal done
        due = min(int((now() - start) * per_second), total)
        while done < due:
            senders[done % n].send_probe(start + done / per_second)
            done += 1

    loop = task.LoopingCall(tick)
    loop.clock = run.reactor
    loop.start(0.005, now=True)
    await task.deferLater(run.reactor, duration, lambda: None)
    tick()
    loop.stop()


def _counter(nodes: Sequence[Node], name: str) -> float:
    return sum(node.metric(name) for node in nodes)


async def relay(
    reactor: Any, label: str, pair_urls: Sequence[tuple[str, str]], nodes: Sequence[Node], pids: dict[str, int],
    rate: float, duration: float, redis: Redis | None = None,
) -> dict[str, Any]:  # fmt: skip
    """
    One pair per entry of C{pair_urls} (its two clients on those two URLs),
    paired with each other by a shared interest, exchanging C{rate} messages a
    second per client for C{duration} seconds.
    """
    config = ClientConfig(concurrency=100, pair_timeout=60, drain=10)
    urls = sorted({u for pair in pair_urls for u in pair})
    run = Run("relay", urls, 2 * len(pair_urls), config, reactor)
    clients = await _open(run, [u for pair in pair_urls for u in pair])
    if len(clients) != 2 * len(pair_urls):
        raise RuntimeError(f"{label}: only {len(clients)} of {2 * len(pair_urls)} connections opened")
    for k in range(len(pair_urls)):
        for client in clients[2 * k : 2 * k + 2]:
            client.paced(REQUEST, lambda c=client, k=k: _find_with(c, f"pair{k}"))  # type: ignore[misc]
    if not await run.until(lambda: all(c.chatting for c in clients), 60):
        raise RuntimeError(f"{label}: {sum(c.chatting for c in clients)} of {len(clients)} clients paired")
    mismatched = sum(clients[2 * k].chat != clients[2 * k + 1].chat for k in range(len(pair_urls)))
    if mismatched:
        raise RuntimeError(f"{label}: {mismatched} pairs are not with the partner arranged")
    await task.deferLater(reactor, 1.0, lambda: None)
    # The cost of holding the paired connections alone, for the marginal cost per message.
    idle = Meter(pids)
    await task.deferLater(reactor, IDLE_WINDOW, lambda: None)
    idle_cpu = idle.stop()
    profiling = profile(label, "relay", pids, duration)
    cross_before = _counter(nodes, "chatroulette_cross_node_messages_total")
    delivered_before = run.ledger.delivered
    meter = Meter(pids, redis)
    await _send_at_rate(run, clients, rate, duration)
    await run.until(lambda: run.ledger.unsettled == 0, config.drain)
    cpu = meter.stop()
    await profiling
    delivered = run.ledger.delivered - delivered_before
    cross = _counter(nodes, "chatroulette_cross_node_messages_total") - cross_before
    await run.drain()
    await run.close_all()
    report = run.finish(duration)
    return {
        "config": label,
        "kind": "relay",
        "pairs": len(pair_urls),
        "messages": delivered,
        "cross_node_messages": cross,
        "lost": report.messages_lost,
        "duplicated": report.messages_duplicated,
        "reordered": report.messages_reordered,
        "errors": report.errors,
        "latency_p99_ms": report.latency_ms.p99,
        "us_per_unit": cpu["server_cpu_s"] / delivered * 1e6 if delivered else None,
        "idle_cpu_per_s": idle_cpu["server_cpu_s"] / idle_cpu["wall_s"],
        "marginal_us_per_unit": (cpu["server_cpu_s"] - idle_cpu["server_cpu_s"] / idle_cpu["wall_s"] * cpu["wall_s"])
        / delivered
        * 1e6
        if delivered
        else None,
        **cpu,
    }


async def churn(
    reactor: Any, label: str, urls: Sequence[str], pids: dict[str, int], clients: int, duration: float,
    redis: Redis | None = None,
) -> dict[str, Any]:  # fmt: skip
    """C{clients} clients spread over C{urls} doing find -> paired -> one message -> next, paced as the load tool paces."""
    config = ClientConfig(concurrency=100, drain=5)
    run = Run("churn", list(urls), clients, config, reactor)
    run.churn = True
    spread = [urls[i % len(urls)] for i in range(clients)]
    await _open(run, spread)
    await task.deferLater(reactor, 3.0, lambda: None)  # past the first burst of finds
    paired_before = run.paired_events
    profiling = profile(label, "churn", pids, duration)
    meter = Meter(pids, redis)
    await task.deferLater(reactor, duration, lambda: None)
    cpu = meter.stop()
    await profiling
    pairings = (run.paired_events - paired_before) / 2
    await run.drain()
    await run.close_all()
    report = run.finish(duration)
    return {
        "config": label,
        "kind": "churn",
        "clients": clients,
        "pairings": pairings,
        "pairings_per_s": pairings / cpu["wall_s"],
        "lost": report.messages_lost,
        "duplicated": report.messages_duplicated,
        "errors": report.errors,
        "dropped": report.connections_dropped,
        "us_per_unit": cpu["server_cpu_s"] / pairings * 1e6 if pairings else None,
        **cpu,
    }


# One run ---------------------------------------------------------------------

# Only the pairing arrangement differs from the production defaults: with one
# interest per pair, nobody may fall back to "anyone" while its partner connects.
NODE_OPTIONS = ["--interest-timeout", "3600"]


async def single_process(reactor: Any, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    node = Node("single", workdir, options=NODE_OPTIONS)
    node.spawn()
    try:
        node.wait_ready()
        pids = {"single": node.pid}
        pairs = [(node.url, node.url)] * args.pairs
        rows = []
        if "relay" in args.kinds:
            rows.append(await relay(reactor, "a", pairs, [node], pids, args.rate, args.duration))
        if "churn" in args.kinds:
            rows.append(await churn(reactor, "a", [node.url], pids, args.churn_clients, args.duration))
        return rows
    finally:
        node.stop()


async def two_plain_processes(reactor: Any, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    The control for C{b}: two in-memory processes (no Redis, two separate
    lobbies), half the pairs on each.  What splitting the same load over two
    processes costs by itself, apart from the shared lobby.
    """
    nodes = [Node(f"plain{i}", workdir, options=NODE_OPTIONS) for i in (1, 2)]
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
        pids = {"plain1": nodes[0].pid, "plain2": nodes[1].pid}
        one, two = nodes[0].url, nodes[1].url
        same = [(one, one) if k % 2 == 0 else (two, two) for k in range(args.pairs)]
        return [await relay(reactor, "a2", same, nodes, pids, args.rate, args.duration)]
    finally:
        for node in nodes:
            node.stop()


async def two_nodes(reactor: Any, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    redis = Redis(workdir, unix=args.unix)
    redis.start()
    nodes = [Node(f"node{i}", workdir, redis.url, NODE_OPTIONS) for i in (1, 2)]
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
        pids = {"node1": nodes[0].pid, "node2": nodes[1].pid, "redis": redis.pid}
        one, two = nodes[0].url, nodes[1].url
        same = [(one, one) if k % 2 == 0 else (two, two) for k in range(args.pairs)]
        across = [(one, two) if k % 2 == 0 else (two, one) for k in range(args.pairs)]
        rows = []
        if "relay" in args.kinds:
            rows.append(await relay(reactor, "b1", [(one, one)] * args.pairs, nodes, pids, args.rate, args.duration, redis))
            rows.append(await relay(reactor, "b", same, nodes, pids, args.rate, args.duration, redis))
            rows.append(await relay(reactor, "c", across, nodes, pids, args.rate, args.duration, redis))
        if "churn" in args.kinds:
            rows.append(await churn(reactor, "d", [one, two], pids, args.churn_clients, args.duration, redis))
        return rows
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


def _command_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Redis commands run between two C{INFO commandstats}."""
    delta = {}
    for name, now_ in after.items():
        then = before.get(name, {"calls": 0.0, "usec": 0.0})
        calls = now_["calls"] - then["calls"]
        if calls:
            usec = now_["usec"] - then["usec"]
            delta[name] = {"calls": calls, "usec": usec, "usec_per_call": round(usec / calls, 2)}
    return delta


# The table -------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], runs: int) -> str:
    def row(run: int, kind: str, config: str) -> dict[str, Any]:
        return next(r for r in rows if r["run"] == run and r["kind"] == kind and r["config"] == config)

    def ratios(kind: str, config: str, key: str) -> list[float]:
        return [row(i, kind, config)[key] / row(i, kind, "a")[key] for i in range(runs)]

    lines = [
        "| measure | target | ratio to (a), median | each run | CPU us per unit, medians: (a) / this |"
        " marginal ratio (idle CPU taken out), median (each run) |",
        "|---|---|---|---|---|---|",
    ]
    cases = [
        ("b1", "relay", "(b1) same-node relay, every chat on node 1 (node 2 idle), CPU per message"),
        ("b", "relay", "(b) same-node relay, half the chats on each node, CPU per message"),
        ("a2", "relay", "(control) two in-memory processes, no Redis, CPU per message"),
        ("c", "relay", "(c) cross-node relay, CPU per message"),
        ("d", "churn", "(d) pairing (churn), CPU per pairing"),
    ]
    for config, kind, title in cases:
        if not any(r["config"] == config for r in rows):
            continue
        each = ratios(kind, config, "us_per_unit")
        base = statistics.median(row(i, kind, "a")["us_per_unit"] for i in range(runs))
        mine = statistics.median(row(i, kind, config)["us_per_unit"] for i in range(runs))
        median = statistics.median(each)
        target = TARGETS.get(config)
        verdict = "-" if target is None else "met" if median <= target else "**missed**"
        if kind == "relay":
            marginal = ratios(kind, config, "marginal_us_per_unit")
            extra = f"{statistics.median(marginal):.2f} ({', '.join(f'{r:.2f}' for r in marginal)})"
        else:
            extra = "-"
        lines.append(
            f"| {title} | {'-' if target is None else f'<= {target}x'} | **{median:.2f}** ({verdict}) | "
            f"{', '.join(f'{r:.2f}' for r in each)} | {base:.1f} / {mine:.1f} | {extra} |"
        )
    lines += [
        "",
        "| config | kind | units per window | cross-node messages | server CPU-s (per process) | idle CPU-s/s "
        "| load tool, share of the machine | machine busy (everything) | lost/duplicated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, kind in [
        ("a", "relay"), ("a2", "relay"), ("b1", "relay"), ("b", "relay"), ("c", "relay"), ("a", "churn"), ("d", "churn")
    ]:  # fmt: skip
        mine = [r for r in rows if r["kind"] == kind and r["config"] == config]
        if not mine:
            continue

        def med(key: str) -> float:
            return float(statistics.median(r[key] for r in mine))

        units = med("messages") if kind == "relay" else med("pairings")
        cross = f"{med('cross_node_messages'):.0f}" if kind == "relay" else "-"
        idle = f"{med('idle_cpu_per_s'):.3f}" if kind == "relay" else "-"
        names = sorted(k for k in mine[0] if k.startswith("cpu_"))
        per = ", ".join(f"{n[4:-2]} {med(n):.2f}" for n in names)
        lines.append(
            f"| {config} | {kind} | {units:.0f} | {cross} | {med('server_cpu_s'):.2f} ({per}) | {idle} | "
            f"{med('load_tool_share'):.0%} | {med('machine_busy_share'):.0%} | "
            f"{sum(r['lost'] for r in mine)}/{sum(r['duplicated'] for r in mine)} |"
        )
    lines.append("")
    lines.append("(medians of the runs; shares are of all the machine's CPUs over the window)")
    lines.append("")
    lines.append(
        "Redis commands in the measured window (INFO commandstats, medians; commands run by the script"
        " are counted on their own too, and their time is inside evalsha's):"
    )
    for config, kind in [("b1", "relay"), ("b", "relay"), ("c", "relay"), ("d", "churn")]:
        mine = [r for r in rows if r["kind"] == kind and r["config"] == config and "redis_commands" in r]
        if not mine:
            continue
        unit = "message" if kind == "relay" else "pairing"
        names = sorted({n for r in mine for n in r["redis_commands"]})
        parts = []
        for name in names:
            if name == "info":
                continue  # this script's own sampling
            per_unit = statistics.median(
                r["redis_commands"].get(name, {}).get("calls", 0) / (r["messages"] if kind == "relay" else r["pairings"])
                for r in mine
            )
            usec = statistics.median(r["redis_commands"][name]["usec_per_call"] for r in mine if name in r["redis_commands"])
            if per_unit < 0.05:
                continue
            parts.append(f"{name} {per_unit:.2f}/{unit} at {usec:.1f} us")
        lines.append(f"- {config} {kind}: " + (", ".join(parts) or "none at 0.05 or more per " + unit))
    return "\n".join(lines)


def check(row: dict[str, Any], pairs: int) -> list[str]:
    """What makes a row untrustworthy: the arrangement of pairs not holding, losses, errors."""
    problems = []
    if row["kind"] == "relay":
        if row["config"] in ("a", "a2", "b1", "b") and row["cross_node_messages"] > 0.01 * row["messages"]:
            problems.append(f"{row['cross_node_messages']:.0f} cross-node messages in a same-node run")
        if row["config"] == "c" and row["cross_node_messages"] < 0.99 * row["messages"]:
            problems.append(f"only {row['cross_node_messages']:.0f} of {row['messages']} messages crossed nodes")
    if row["lost"] or row["duplicated"] or row.get("reordered"):
        problems.append(f"lost {row['lost']}, duplicated {row['duplicated']}, reordered {row.get('reordered', 0)}")
    errors = dict(row["errors"])
    if row["kind"] == "churn":
        # A message racing the partner's "next": refused, not lost (as the load tool counts it).
        errors.pop("not_chatting", None)
    if errors:
        problems.append(f"errors {errors}")
    return problems


async def main(reactor: Any, args: argparse.Namespace) -> None:
    global PROFILE_DIR, RUN
    if args.profile:
        PROFILE_DIR = Path(args.profile)
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    limit = raise_open_files()
    workdir = Path(tempfile.mkdtemp(prefix="chatroulette-cluster-"))
    print(f"open files {limit}; {CPUS} CPUs; work directory {workdir}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            RUN = run
            steps = [single_process, two_nodes] if run % 2 == 0 else [two_nodes, single_process]
            if args.control and "relay" in args.kinds:
                steps.insert(1, two_plain_processes)
            for step in steps:
                for row in await step(reactor, workdir, args):
                    row["run"] = run
                    rows.append(row)
                    print(
                        f"run {run} {row['config']} {row['kind']}: {row['us_per_unit']:.1f} us/unit, "
                        f"servers {row['server_cpu_s']:.2f} CPU-s, load tool {row['load_tool_share']:.0%} "
                        f"of the machine, machine busy {row['machine_busy_share']:.0%}; "
                        + ", ".join(
                            f"{k[4:-2]} {row['cpu_' + k[4:]]:.2f} CPU-s ({row[k] / row['cpu_' + k[4:]]:.0%} kernel)"
                            for k in row
                            if k.startswith("sys_") and row["cpu_" + k[4:]]
                        )
                        + "".join(f"; PROBLEM: {p}" for p in check(row, args.pairs)),
                        file=sys.stderr,
                    )
                    if args.raw:
                        with open(args.raw, "a") as f:
                            f.write(json.dumps(row) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.runs} runs; relay: {args.pairs} pairs x 2 clients x {args.rate} msg/s for {args.duration:g} s; "
        f"churn: {args.churn_clients} clients for {args.duration:g} s"
    )
    print(summarize(rows, args.runs))
    problems = [p for r in rows for p in check(r, args.pairs)]
    if problems:
        print("\nProblems: " + "; ".join(problems))
        raise SystemExit(1)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3); the table shows medians")
    parser.add_argument("--pairs", type=int, default=1000, help="relay: pairs (default 1000)")
    parser.add_argument("--rate", type=float, default=3.0, help="relay: messages a second per client (default 3)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each measured window (default 20)")
    parser.add_argument("--churn-clients", type=int, default=400, help="churn: clients (default 400)")
    parser.add_argument(
        "--kinds",
        type=lambda text: set(text.split(",")),
        default={"relay", "churn"},
        help="what to measure: relay, churn or relay,churn (the default)",
    )
    parser.add_argument(
        "--unix", action="store_true", help="the nodes reach Redis on its Unix socket (same machine), not loopback TCP"
    )
    parser.add_argument("--raw", help="append every measurement as one JSON line to this file")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also relay on two in-memory processes without Redis (a2): the cost of two processes alone",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="py-spy record every server process in every window (collapsed stacks to DIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (node and Redis logs)")
    args = parser.parse_args(argv)
    if args.rate > 4:
        parser.error("--rate above 4 a second per client would run into the server's default limit of 5")
    return args


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
