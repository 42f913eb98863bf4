"""
The cluster recipe in deploy/: several chatroulette processes behind one
address.

A real HAProxy runs the shipped deploy/haproxy.cfg (tests/haproxy.py) in
front of two real nodes (twistd, --trust-proxy-headers, no shared lobby):
clients get through and are welcomed, they are spread over the nodes, a node
that is stopped or full is routed around and taken back once healthy, and
the nodes see the client's address HAProxy forwards, never one the client
wrote itself.  The systemd template unit is parsed and its checks run on it
always, verified by systemd-analyze where that is installed, and its command
line started as the real server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, cast

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory
from twisted.web.client import Agent

from chatroulette.load import ClientConfig, run_relay

from .cluster import eventually as cluster_eventually
from .haproxy import CONFIG, HAProxy, check_config, environment, proxy_line
from .hostile import handshake
from .redis_server import RedisServer
from .loopback import QueueClient, RawClient, open_client, read_body
from .ports import free_port
from .process import ROOT, TWISTD, ServerProcess, start

UNIT = ROOT / "deploy" / "chatroulette@.service"
# The program the unit runs, where its comments say to install it.
UNIT_PROGRAM = "/opt/chatroulette/bin/twistd"
# HAProxy takes a node out after 2 failed checks 2 s apart (fastinter 0.5 s
# once one failed), back in after 2 good ones: seconds, well within this.
ROUTING_TIMEOUT = 20.0


# A cluster: nodes and HAProxy ------------------------------------------------


@dataclass
class Node:
    """One chatroulette process, as the systemd unit starts it but on an ephemeral port."""

    process: ServerProcess
    transport: IProcessTransport
    port: int
    terminated: bool = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def health(self) -> tuple[int, dict[str, object] | None]:
        """C{GET /healthz}: the status code, and the counts when it answered 200."""
        agent = Agent(reactor)
        response = await agent.request(b"GET", f"http://127.0.0.1:{self.port}/healthz".encode())
        body = await read_body(response)
        return response.code, json.loads(body) if response.code == 200 else None

    async def online(self) -> int:
        """Connected WebSocket clients, by /healthz."""
        code, body = await self.health()
        assert code == 200 and body is not None, code
        return cast(int, body["online"])

    def terminate(self) -> None:
        """SIGTERM by PID, as systemd stops it (once: a second one would interrupt the graceful stop)."""
        if not self.terminated and not self.process.ended.called:
            self.terminated = True
            self.transport.signalProcess("TERM")

    async def stop(self) -> int | None:
        """L{terminate}, and its exit code once it ended (SIGKILL if it does not within 15 s)."""
        self.terminate()
        ended = self.process.ended
        ended.addTimeout(15, reactor)
        try:
            return await ended
        except defer.TimeoutError:
            self.transport.signalProcess("KILL")
            raise


@dataclass
class Cluster:
    nodes: list[Node]
    proxy: HAProxy

    async def onlines(self) -> list[int]:
        return [await node.online() for node in self.nodes]


@asynccontextmanager
async def running_nodes(*options: str) -> AsyncIterator[list[Node]]:
    """Two nodes with these options, each with its own state directory; stopped afterwards."""
    state = Path(tempfile.mkdtemp(prefix="chatroulette-deploy-"))
    nodes: list[Node] = []
    try:
        for i in range(2):
            process, transport, port = await start(TWISTD, "--state-dir", str(state / str(i)), *options)
            nodes.append(Node(process, transport, port))
        yield nodes
    finally:
        for node in nodes:
            if not node.process.ended.called:
                await node.stop()
        shutil.rmtree(state, ignore_errors=True)


@asynccontextmanager
async def cluster(*options: str) -> AsyncIterator[Cluster]:
    """Two nodes with --trust-proxy-headers and these options, and HAProxy in front of them."""
    async with running_nodes("--trust-proxy-headers", *options) as nodes:
        with HAProxy([node.port for node in nodes]) as proxy:
            yield Cluster(nodes, proxy)


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = ROUTING_TIMEOUT) -> None:
    """L{tests.cluster.eventually}, by default within the time HAProxy takes to route around a node."""
    await cluster_eventually(condition, what, timeout)


async def welcomed(url: str) -> QueueClient:
    """A client through C{url}, once it has its welcome."""
    client = await open_client(url)
    welcome = await client.next()
    assert welcome["type"] == "welcome", welcome
    return client


def states_are(proxy: HAProxy, expected: dict[str, str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return proxy.states() == expected

    return check


def close_all(clients: list[QueueClient]) -> None:
    for client in clients:
        client.dropConnection(abort=True)


# The shipped HAProxy configuration ---------------------------------------------


def test_shipped_config_is_valid() -> None:
    """haproxy -c accepts deploy/haproxy.cfg as shipped, and with the addresses the tests give it."""
    for env in ({}, environment(free_port(), [free_port(), free_port()])):
        checked = check_config(CONFIG, env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "Configuration file is valid" in checked.stdout + checked.stderr


def test_config_says_what_the_nodes_need() -> None:
    """The settings the nodes rely on are there: WebSocket timeouts, health checks, X-Forwarded-For."""
    text = CONFIG.read_text()
    lines = {line.split("#")[0].strip() for line in text.splitlines()}
    for line in [
        "balance leastconn",
        "option forwardfor",
        "http-request del-header X-Forwarded-For",
        "option httpchk",
        "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost",
        "http-check expect status 200",
        "option redispatch 1",
    ]:
        assert line in lines, line
    # Idle WebSockets must outlive --ping-interval (25 s) plus --ping-timeout (10 s).
    tunnel = re.search(r"^\s*timeout tunnel (\d+)(s|m|h)\s*$", text, re.M)
    assert tunnel is not None
    assert int(tunnel.group(1)) * {"s": 1, "m": 60, "h": 3600}[tunnel.group(2)] > 35


@pytest_twisted.ensureDeferred
async def test_welcome_through_haproxy() -> None:
    """A WebSocket client through HAProxy gets welcome from one of the nodes."""
    async with cluster() as c:
        assert c.proxy.states() == {"node1": "UP", "node2": "UP"}
        client = await open_client(c.proxy.url)
        welcome = await client.next()
        assert welcome == {"type": "welcome", "online": 1}
        assert sorted(await c.onlines()) == [0, 1]
        close_all([client])
        haproxy = c.proxy.process
        assert haproxy is not None
    # Stopped by its PID with the cluster.
    assert haproxy.poll() is not None


@pytest_twisted.ensureDeferred
async def test_clients_spread_over_the_nodes() -> None:
    """Two clients in a row land on different nodes (leastconn), as the nodes' online counts show."""
    async with cluster() as c:
        first = await welcomed(c.proxy.url)
        second = await welcomed(c.proxy.url)
        assert await c.onlines() == [1, 1]
        more = [await welcomed(c.proxy.url) for _ in range(4)]
        assert await c.onlines() == [3, 3]
        sessions = {name: row["scur"] for name, row in c.proxy.stats().items()}
        assert sessions == {"node1": "3", "node2": "3"}
        close_all([first, second, *more])


@pytest_twisted.ensureDeferred
async def test_stopped_node_routed_around() -> None:
    """After SIGTERM to a node its clients get 1001, and new clients still get welcome, from the other."""
    async with cluster() as c:
        first = await welcomed(c.proxy.url)
        stopped, other = c.nodes if await c.nodes[0].online() == 1 else c.nodes[::-1]
        stopped.terminate()
        first.closed.addTimeout(10, reactor)
        assert await first.closed == 1001
        assert await stopped.stop() == 0
        # Before HAProxy's checks notice: a refused connection is tried again
        # on the other node (option redispatch), so no client sees an error.
        clients = [await welcomed(c.proxy.url) for _ in range(4)]
        assert await other.online() == 4
        name = "node1" if stopped is c.nodes[0] else "node2"
        await eventually(
            lambda: defer.succeed(c.proxy.states()[name] == "DOWN"), f"HAProxy takes {name} out"
        )
        clients += [await welcomed(c.proxy.url) for _ in range(2)]
        assert await other.online() == 6
        close_all(clients)


@pytest_twisted.ensureDeferred
async def test_full_node_routed_around_and_back() -> None:
    """A node answering 503 on /healthz (full) is taken out, new clients go to the other; back in once it has room."""
    async with cluster("--max-connections", "4") as c:
        full, other = c.nodes
        # Four clients straight to the first node (the test as their proxy) fill it.
        direct = [await fill_one(full, f"192.0.2.{i}") for i in range(1, 5)]

        async def answers_503() -> bool:
            return (await full.health())[0] == 503

        await eventually(answers_503, "the full node answers 503 on /healthz")
        await eventually(states_are(c.proxy, {"node1": "DOWN", "node2": "UP"}), "HAProxy takes node1 out")
        through = [await welcomed(c.proxy.url) for _ in range(3)]
        assert await other.online() == 3
        # Room again: HAProxy takes the node back, and leastconn sends it the next client.
        close_all(direct)
        await eventually(states_are(c.proxy, {"node1": "UP", "node2": "UP"}), "HAProxy takes node1 back")
        through.append(await welcomed(c.proxy.url))
        assert await c.onlines() == [1, 3]
        close_all(through)


async def fill_one(node: Node, address: str) -> QueueClient:
    """
    A client straight to C{node} from C{address}, retried while refused: a
    health check from HAProxy may hold one of the node's few places for a moment.
    """
    opened: list[QueueClient] = []

    async def attempt() -> bool:
        try:
            opened.append(await open_client(node.url, headers={"X-Forwarded-For": address}))
        except ConnectionError:
            return False
        return True

    await eventually(attempt, f"a connection to the node from {address}")
    return opened[0]


async def raw_handshake(port: int, first_bytes: bytes) -> RawClient:
    """A raw connection to C{port} that sends C{first_bytes}; once the response head is in."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    raw = cast(RawClient, await endpoint.connect(Factory.forProtocol(RawClient)))
    assert raw.transport is not None
    raw.transport.write(first_bytes)
    raw.answered.addTimeout(10, reactor)
    await raw.answered
    return raw


@pytest_twisted.ensureDeferred
async def test_nodes_see_the_forwarded_address() -> None:
    """
    The nodes cap connections by the address HAProxy forwards (X-Forwarded-For),
    not by HAProxy's own loopback address, nor by an X-Forwarded-For the client wrote.
    """
    async with cluster("--max-connections-per-ip", "1") as c:
        proxied = c.proxy.proxied_port

        async def from_address(source: str, claimed: str | None = None) -> RawClient:
            """A handshake through HAProxy from C{source} (PROXY protocol), claiming C{claimed} itself."""
            extra = {"X-Forwarded-For": claimed} if claimed else None
            return await raw_handshake(proxied, proxy_line(source, proxied) + handshake(extra=extra))

        # One connection from 203.0.113.66 on each node (leastconn), and that is its cap on both.
        held = [await from_address("203.0.113.66") for _ in range(2)]
        assert [r.status() for r in held] == [101, 101], [r.received for r in held]
        assert sorted(await c.onlines()) == [1, 1]
        refused = await from_address("203.0.113.66", claimed="198.51.100.7")
        assert refused.status() == 429, refused.received
        held.append(await from_address("203.0.113.67"))
        assert held[-1].status() == 101, held[-1].received
        # Loopback (the test itself) is exempt, whatever it writes in X-Forwarded-For.
        frontend = c.proxy.port
        spoofers = [await raw_handshake(frontend, handshake(extra={"X-Forwarded-For": "203.0.113.66"})) for _ in range(3)]
        assert [r.status() for r in spoofers] == [101] * 3, [r.received for r in spoofers]
        for raw in [*held, refused, *spoofers]:
            raw.abort()


@pytest_twisted.ensureDeferred
async def test_load_tool_spreads_over_the_nodes() -> None:
    """
    The load tool given two nodes' URLs sends half its clients to each, and
    counts them per URL.  (Straight to the nodes, which therefore do not
    trust proxy headers here; each pairs its own half, having no shared lobby.)
    """
    async with running_nodes() as nodes:
        urls = [node.url for node in nodes]
        report = await run_relay(urls, 4, rate=2.0, duration=1.0, config=ClientConfig(drain=2.0))
        assert report.problems() == [], report
        assert report.url == ", ".join(urls)
        assert list(report.per_url) == urls
        for counts in report.per_url.values():
            assert (counts.clients, counts.opened, counts.failed, counts.dropped, counts.paired) == (4, 4, 0, 0, 4)

        async def empty() -> bool:
            return [await node.online() for node in nodes] == [0, 0]

        await eventually(empty, "both nodes empty after the run")


# The systemd template unit -------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """
    A unit file's settings by section, in order (a key may repeat), as
    systemd reads them: comments start with # or ;, a line ending in a
    backslash continues on the next, and comment lines inside a continued
    line are skipped.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(("#", ";")) or (not stripped and not pending):
            continue
        if pending:
            stripped = pending + " " + stripped
            pending = ""
        if stripped.endswith("\\"):
            pending = stripped[:-1].rstrip()
            continue
        if stripped.startswith("["):
            assert stripped.endswith("]"), f"line {number}: {line!r}"
            current = sections.setdefault(stripped[1:-1], [])
            continue
        key, equals, value = stripped.partition("=")
        assert equals and current is not None and re.fullmatch(r"[A-Za-z0-9]+", key.strip()), (
            f"line {number}: {line!r} is not a setting in a section"
        )
        current.append((key.strip(), value.strip()))
    assert not pending, "the file ends in a continued line"
    return sections


def setting(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    """The one value of C{key} in C{section}."""
    values = [v for k, v in unit.get(section, []) if k == key]
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def expand(value: str, instance: str, state: str) -> str:
    """The systemd specifiers the unit uses: %i (the instance), %S (the state directory root), %%."""

    def one(match: re.Match[str]) -> str:
        specifier = match.group(1)
        if specifier not in {"i", "S", "%"}:
            raise AssertionError(f"specifier %{specifier} not expected in {value!r}")
        return {"i": instance, "S": state, "%": "%"}[specifier]

    return re.sub(r"%(.)", one, value)


def option(command: list[str], name: str) -> str:
    """The value after C{name} in a command line (given once)."""
    assert command.count(name) == 1, (name, command)
    return command[command.index(name) + 1]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


def test_unit_file_settings() -> None:
    """The unit parses, runs twistd as documented on a loopback port per instance, hardened, stopped gently."""
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    command = shlex.split(setting(unit, "Service", "ExecStart"))
    assert command[0] == UNIT_PROGRAM
    assert {"--nodaemon", "--pidfile=", "--logfile=-"} <= set(command[1 : command.index("chatroulette")])
    node = command[command.index("chatroulette") + 1 :]
    assert option(node, "--listen") == "tcp:%i:interface=127.0.0.1"
    assert "--trust-proxy-headers" in node
    assert option(node, "--state-dir") == "%S/chatroulette/%i"
    assert setting(unit, "Service", "StateDirectory") == "chatroulette/%i"
    # systemd must wait longer than the node's own graceful shutdown before it kills.
    assert setting(unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(setting(unit, "Service", "TimeoutStopSec")) >= 2 * seconds(option(node, "--shutdown-timeout"))
    assert setting(unit, "Service", "Restart") == "on-failure"
    assert int(setting(unit, "Service", "LimitNOFILE")) >= 65536
    for key, value in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert setting(unit, "Service", key) == value, key
    assert setting(unit, "Install", "WantedBy") == "multi-user.target"
    # Where --redis goes, for when the shared lobby is used.
    assert re.search(r"^#\s+--redis redis://127\.0\.0\.1:6379/0$", UNIT.read_text(), re.M)


def installed_unit(directory: Path) -> Path:
    """The template in C{directory}, running this checkout's twistd instead of the documented path."""
    text = UNIT.read_text()
    assert text.count(UNIT_PROGRAM) == 1
    twistd = Path(sys.executable).parent / "twistd"
    path = directory / UNIT.name
    path.write_text(text.replace(UNIT_PROGRAM, str(twistd)))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verified_by_systemd(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about an instance of the template."""
    installed_unit(tmp_path)
    instance = tmp_path / "chatroulette@8081.service"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    about_it = [line for line in (result.stdout + result.stderr).splitlines() if "chatroulette" in line]
    assert result.returncode == 0 and not about_it, result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_unit_command_line_serves() -> None:
    """The unit's ExecStart, with its specifiers filled in, starts a node on the instance's port that stops with 0 on SIGTERM."""
    unit = parse_unit(UNIT.read_text())
    port = free_port()
    state = tempfile.mkdtemp(prefix="chatroulette-unit-")
    try:
        command = shlex.split(expand(setting(unit, "Service", "ExecStart"), str(port), state))
        # The installed program is this checkout's twistd, run as tests/process.py
        # runs it (python -c "...run()"), with the unit's arguments.
        assert command[0] == UNIT_PROGRAM
        args = [*TWISTD[:3], *command[1:]]
        process = ServerProcess()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        transport = reactor.spawnProcess(process, args[0], args, env=env, path=state)
        node = Node(process, transport, port)
        try:
            process.port.addTimeout(20, reactor)
            assert await process.port == port, process.output
            code, body = await node.health()
            assert code == 200 and body is not None and body["status"] == "ok"
            # Without a proxy in front, a handshake is refused: the node trusts only X-Forwarded-For.
            raw = await raw_handshake(port, handshake())
            assert raw.status() == 400, raw.received
        finally:
            exit_code = await node.stop()
        assert exit_code == 0, process.output
        assert Path(state, "chatroulette", str(port)).is_dir()
    finally:
        shutil.rmtree(state, ignore_errors=True)


# With a shared lobby ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chats_through_haproxy_across_nodes() -> None:
    """
    The whole recipe: redis-server, two nodes sharing it, HAProxy in front.
    Two strangers through the one address land on different nodes and chat
    with each other, both ways.
    """
    with RedisServer() as redis:
        async with cluster("--redis", redis.url) as c:
            for node in c.nodes:
                await eventually(partial(_ready, node), "the node is ready (Redis)")
            first = await welcomed(c.proxy.url)
            second = await welcomed(c.proxy.url)
            locals_ = []
            for node in c.nodes:
                _, body = await node.health()
                assert body is not None
                locals_.append(cast(dict[str, int], body["node"])["online"])
            assert locals_ == [1, 1], "the two strangers are on different nodes"
            first.send_json(type="find")
            assert (await first.next("waiting"))["type"] == "waiting"
            second.send_json(type="find")
            chat = (await second.next("paired"))["chat"]
            assert (await first.next("paired"))["chat"] == chat
            first.send_json(type="message", text="hello from node 1")
            assert (await second.next("message"))["text"] == "hello from node 1"
            second.send_json(type="message", text="and from node 2")
            assert (await first.next("message"))["text"] == "and from node 2"
            close_all([first, second])


async def _ready(node: Node) -> bool:
    code, _ = await node.health()
    return code == 200
