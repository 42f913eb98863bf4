"""
A soak of the shared lobby: many chats over two nodes and Redis for a long
while, one node restarted (SIGTERM, then started again on the same port)
halfway through.

    .venv/bin/python benchmarks/soak.py [--clients 4000] [--duration 600] [--interval 5]

It starts a C{redis-server} and two nodes (C{twistd -n chatroulette --listen
tcp:PORT:interface=127.0.0.1 --redis URL}, production defaults otherwise) from
this checkout, lifts the open-file limit to the hard one, and opens
C{--clients} WebSocket clients (Autobahn, in this process), alternately on
each node.  Every client sends C{find}; whoever the lobby pairs chats, each
client sending one message every C{--interval} seconds on average,
C{"<chat>|<sender>|<seq>"} with the sequence number counting from 1 in each
chat, so that the receiver can tell a gap, a duplicate or a reordering.

Halfway (C{--restart-at}), node 2 gets SIGTERM: its clients are closed with
1001 and their partners on node 1 get C{partner_left}.  It is started again
on the same port.  Clients closed by the server reconnect after a short
random pause, to either node (like a load balancer would send them), and
C{find} again; clients told C{partner_left} C{find} again.

At the end the clients stop sending, wait for what is in flight, and count,
among the chats that stayed up (neither client was disconnected nor told
C{partner_left}), the messages lost and duplicated: both must be 0.  Then
every client closes, and each node's C{/healthz} must come back to 0 online,
waiting and chatting, at the top (the whole service) and for the node itself.
The exit status is 1 when anything of that failed.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from cluster import Node, Redis, cpu_seconds, raise_open_files  # the processes, as cluster.py runs them

now = time.monotonic
CROSS = "chatroulette_cross_node_messages_total"


@dataclass
class Chat:
    """One chat as its two clients saw it."""

    id: str
    members: list[str] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)
    """The node each member was connected to."""
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    """By receiver: messages received (not counting duplicates)."""
    duplicated: int = 0
    reordered: int = 0
    gaps: int = 0
    broken: bool = False
    """One of its clients was disconnected or told partner_left."""


class Soak:
    """The state of the whole soak: clients, chats, counters."""

    def __init__(self, reactor: Any, nodes: list[Node], args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.nodes = nodes
        self.args = args
        self.factories = [SoakFactory(self, node, i) for i, node in enumerate(nodes)]
        self.clients: set[SoakClient] = set()
        self.chats: dict[str, Chat] = {}
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.misrouted = 0
        self.reconnects = 0
        self.failed_connects = 0
        self.pairings = 0
        self.sending = True
        self.starting = True
        self.closing = False
        self._names = 0

    def name(self) -> str:
        self._names += 1
        return f"c{self._names}"

    async def connect(self, node: int) -> SoakClient:
        factory = self.factories[node]
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", factory.node.port, timeout=10)
        client = cast(SoakClient, await endpoint.connect(factory))
        await client.opened
        return client

    def reconnect_later(self, delay: float) -> None:
        """A client closed by the server comes back after C{delay}, to either node, until one takes it."""

        async def attempt() -> None:
            wait = 0.5
            while not self.closing:
                try:
                    await self.connect(random.randrange(len(self.factories)))
                    self.reconnects += 1
                    return
                except Exception:
                    self.failed_connects += 1
                    await task.deferLater(self.reactor, wait + random.random() * wait, lambda: None)
                    wait = min(wait * 2, 8)

        self.reactor.callLater(delay, lambda: defer.ensureDeferred(attempt()))

    def chat(self, chat_id: str, member: str, node: int) -> Chat:
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = self.chats[chat_id] = Chat(chat_id)
        chat.members.append(member)
        chat.nodes.append(node)
        return chat

    def counts(self) -> dict[str, int]:
        up = [c for c in self.chats.values() if not c.broken and len(c.members) == 2]
        return {
            "connected": sum(1 for c in self.clients if c.ws_open),
            "chatting": sum(1 for c in self.clients if c.chat is not None),
            "chats": len(self.chats),
            "chats_up": len(up),
            "sent": sum(sum(c.sent.values()) for c in self.chats.values()),
        }


class SoakClient(WebSocketClientProtocol):
    factory: SoakFactory

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.chat: Chat | None = None
        self.seq = 0
        self.last_seen = 0
        self.seen: set[int] = set()
        self.timer: Any = None
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    @property
    def soak(self) -> Soak:
        return self.factory.soak

    @property
    def ws_open(self) -> bool:
        return bool(self.state == WebSocketProtocol.STATE_OPEN)

    def onOpen(self) -> None:
        self.name = self.soak.name()
        self.soak.clients.add(self)
        self.opened.callback(None)
        soak = self.soak
        if soak.starting:
            # Spread the first finds out in time, so that who meets whom is
            # not decided by which node's burst of requests reaches Redis first.
            soak.reactor.callLater(random.random() * soak.args.find_spread, self.find)
        else:
            self.find()

    def find(self) -> None:
        if self.ws_open and not self.soak.closing:
            self.sendMessage(b'{"type":"find"}')

    def find_later(self) -> None:
        self.soak.reactor.callLater(0.5 + random.random(), self.find)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        event = json.loads(payload)
        kind = event["type"]
        soak = self.soak
        if kind == "message":
            self.received(event["text"])
        elif kind == "paired":
            soak.pairings += 1
            self.chat = soak.chat(event["chat"], self.name, self.factory.index)
            self.seq = self.last_seen = 0
            self.seen = set()
            self.schedule(random.random() * soak.args.interval)
        elif kind == "partner_left":
            self.end_chat()
            self.find_later()
        elif kind == "error":
            soak.errors[event.get("code", "?")] += 1
            if event.get("code") == "unavailable" and self.chat is None:
                self.soak.reactor.callLater(1 + 2 * random.random(), self.find)

    def received(self, text: str) -> None:
        chat_id, sender, seq_text = text.split("|")
        chat = self.chat
        if chat is None or chat.id != chat_id or sender == self.name:
            self.soak.misrouted += 1
            return
        seq = int(seq_text)
        if seq in self.seen:
            chat.duplicated += 1
            return
        self.seen.add(seq)
        chat.received[self.name] += 1
        if seq < self.last_seen:
            chat.reordered += 1
        elif seq > self.last_seen + 1:
            chat.gaps += 1
        self.last_seen = max(seq, self.last_seen)

    def schedule(self, delay: float) -> None:
        self.timer = self.soak.reactor.callLater(delay, self.send)

    def send(self) -> None:
        self.timer = None
        chat, soak = self.chat, self.soak
        if chat is None or not soak.sending or not self.ws_open:
            return
        self.seq += 1
        chat.sent[self.name] += 1
        self.sendMessage(json.dumps({"type": "message", "text": f"{chat.id}|{self.name}|{self.seq}"}).encode())
        # Exponential gaps averaging the interval, at least 0.25 s (the rate limit is 5 a second).
        self.schedule(max(0.25, random.expovariate(1 / soak.args.interval)))

    def end_chat(self) -> None:
        if self.chat is not None:
            self.chat.broken = True
            self.chat = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        soak = self.soak
        self.end_chat()
        soak.clients.discard(self)
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"closed with {code}"))
        elif not soak.closing:
            soak.closes[str(code)] += 1
            soak.reconnect_later(0.5 + 2 * random.random())
        if not self.closed.called:
            self.closed.callback(None)


class SoakFactory(WebSocketClientFactory):
    protocol = SoakClient  # type: ignore[assignment]

    def __init__(self, soak: Soak, node: Node, index: int) -> None:
        super().__init__(node.url)
        self.soak = soak
        self.node = node
        self.index = index
        self.setProtocolOptions(
            failByDrop=False, openHandshakeTimeout=10, closeHandshakeTimeout=5, perMessageCompressionOffers=[]
        )


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def restart(reactor: Any, node: Node) -> dict[str, float]:
    """SIGTERM, wait for the exit, start again on the same port, wait until ready; without blocking the clients."""
    process = node.process
    assert process is not None
    started = now()
    process.send_signal(signal.SIGTERM)
    while process.poll() is None:
        await sleep(reactor, 0.05)
    stopped = now()
    node.spawn()
    while not node.ready():
        await sleep(reactor, 0.1)
    return {"exit_code": process.returncode, "stop_s": stopped - started, "start_s": now() - stopped}


def zero(health: dict[str, Any]) -> bool:
    keys = ("online", "waiting", "chatting")
    return all(health[k] == 0 for k in keys) and all(health["node"][k] == 0 for k in keys)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    limit = raise_open_files()
    workdir = Path(tempfile.mkdtemp(prefix="chatroulette-soak-"))
    log = sys.stderr
    print(f"open files {limit}; work directory {workdir}", file=log)
    redis = Redis(workdir)
    redis.start()
    nodes = [Node(f"node{i}", workdir, redis.url) for i in (1, 2)]
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_ready()
    soak = Soak(reactor, nodes, args)
    result: dict[str, Any] = {"clients": args.clients, "duration_s": args.duration, "interval_s": args.interval}
    try:
        t0 = now()
        semaphore = defer.DeferredSemaphore(200)
        opened = await defer.DeferredList(
            [semaphore.run(soak.connect, i % 2) for i in range(args.clients)], consumeErrors=True
        )
        result["opened"] = sum(1 for ok, _ in opened if ok)
        failures = Counter(repr(cast(Any, f).value) for ok, f in opened if not ok)
        if failures:
            print(f"failed connections: {dict(failures)}", file=log)
        print(f"{result['opened']} connections open in {now() - t0:.1f} s", file=log)
        await sleep(reactor, args.find_spread + 5)
        soak.starting = False
        start = now()
        result["at_start"] = soak.counts()
        cpu = {"redis": -cpu_seconds(redis.pid)} | {n.name: -cpu_seconds(n.pid) for n in nodes}
        restart_at = args.duration * args.restart_at
        restarted = False
        cross_before_restart = 0.0
        while (elapsed := now() - start) < args.duration:
            if not restarted and elapsed >= restart_at:
                restarted = True
                before = soak.counts()
                print(f"{elapsed:.0f} s: restarting node 2 ({before})", file=log)
                cpu["node2 before restart"] = cpu.pop("node2") + cpu_seconds(nodes[1].pid)
                cross_before_restart = nodes[1].metric(CROSS)
                result["restart"] = {"at_s": round(elapsed, 1), "before": before, **await restart(reactor, nodes[1])}
                cpu["node2"] = -cpu_seconds(nodes[1].pid)
                print(f"node 2 back: {result['restart']}", file=log)
            until = restart_at if not restarted else args.duration
            await sleep(reactor, max(0.1, min(30.0, until - elapsed)))
            print(f"{now() - start:.0f} s: {soak.counts()} errors {dict(soak.errors)} closes {dict(soak.closes)}", file=log)
        soak.sending = False
        await sleep(reactor, args.drain)
        wall = now() - start
        for n in nodes:
            cpu[n.name] += cpu_seconds(n.pid)
        result["cross_node_messages_metric"] = sum(n.metric(CROSS) for n in nodes) + cross_before_restart
        cpu["redis"] += cpu_seconds(redis.pid)
        result["server_cpu_s"] = {k: round(v, 2) for k, v in cpu.items()}
        result["servers_share_of_machine"] = round(sum(cpu.values()) / wall / 2, 3)
        up = [c for c in soak.chats.values() if not c.broken and len(c.members) == 2]
        broken = [c for c in soak.chats.values() if c.broken]

        def lost(chats: list[Chat]) -> int:
            total = 0
            for chat in chats:
                for sender in chat.members:
                    (other,) = [m for m in chat.members if m != sender] or [sender]
                    total += chat.sent[sender] - chat.received[other]
            return total

        result["chats"] = len(soak.chats)
        result["pairings_seen"] = soak.pairings
        result["chats_stayed_up"] = len(up)
        result["chats_stayed_up_across_nodes"] = sum(1 for c in up if len(set(c.nodes)) == 2)
        result["messages_in_chats_stayed_up_across_nodes"] = sum(
            sum(c.sent.values()) for c in up if len(set(c.nodes)) == 2
        )
        result["chats_across_nodes"] = sum(1 for c in soak.chats.values() if len(set(c.nodes)) == 2)
        result["messages_in_chats_stayed_up"] = sum(sum(c.sent.values()) for c in up)
        result["lost"] = lost(up)
        result["duplicated"] = sum(c.duplicated for c in up)
        result["reordered"] = sum(c.reordered for c in up)
        result["gaps"] = sum(c.gaps for c in up)
        result["chats_broken"] = len(broken)
        result["messages_in_broken_chats"] = sum(sum(c.sent.values()) for c in broken)
        result["undelivered_in_broken_chats"] = lost([c for c in broken if len(c.members) == 2])
        result["duplicated_in_broken_chats"] = sum(c.duplicated for c in broken)
        result["misrouted"] = soak.misrouted
        result["errors"] = dict(soak.errors)
        result["closed_by_server"] = dict(soak.closes)
        result["reconnects"] = soak.reconnects
        result["failed_reconnect_attempts"] = soak.failed_connects
        result["sent_total"] = sum(sum(c.sent.values()) for c in soak.chats.values())
        result["median_chat_messages"] = statistics.median([sum(c.sent.values()) for c in up] or [0])
    finally:
        soak.closing = True
        clients = list(soak.clients)
        for client in clients:
            if client.ws_open:
                client.sendClose(1000)
        waits = [c.closed for c in clients if not c.closed.called]
        if waits:
            done = defer.DeferredList(waits)
            done.addTimeout(20, reactor)
            try:
                await done
            except defer.TimeoutError:
                pass
    deadline = now() + args.settle
    healths: list[dict[str, Any]] = []
    while now() < deadline:
        healths = [node.health() for node in nodes]
        if all(zero(h) for h in healths):
            break
        await sleep(reactor, 0.5)
    result["healthz_at_end"] = healths
    result["healthz_zero_after_s"] = round(now() - (deadline - args.settle), 1)
    for node in nodes:
        node.stop()
    redis.stop()
    print(json.dumps(result, indent=1))
    problems = []
    if result.get("lost") or result.get("duplicated") or result.get("misrouted"):
        problems.append("messages lost, duplicated or misrouted in chats that stayed up")
    if not all(zero(h) for h in healths):
        problems.append("healthz counts not back to zero")
    if result.get("opened") != args.clients:
        problems.append("not every client connected")
    if problems:
        print("FAILED: " + "; ".join(problems))
        raise SystemExit(1)
    print(f"passed; logs in {workdir}" if args.keep else "passed")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--clients", type=int, default=4000, help="clients, half on each node (default 4000)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of chatting (default 600)")
    parser.add_argument("--interval", type=float, default=5, help="mean seconds between a client's messages (default 5)")
    parser.add_argument(
        "--find-spread", type=float, default=10, help="seconds over which the first finds are spread (default 10)"
    )
    parser.add_argument("--restart-at", type=float, default=0.5, help="when to restart node 2, a fraction of --duration")
    parser.add_argument("--drain", type=float, default=5, help="seconds to wait for messages in flight at the end")
    parser.add_argument("--settle", type=float, default=60, help="seconds allowed for /healthz to come back to zero")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (node and Redis logs)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
