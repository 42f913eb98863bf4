"""
A real cluster: a real C{redis-server} and real C{twistd chatroulette --redis}
processes.  Strangers on different nodes chat; nodes that die, stop or lose
Redis fail the way docs/operations.md says.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from .cluster import Node, eventually, ready, start_node
from .loopback import QueueClient, open_client
from .redis_server import RedisServer


async def nodes(redis: RedisServer, count: int, *options: str) -> list[Node]:
    started = [await start_node(redis.url, *options) for _ in range(count)]
    for node in started:
        await ready(node)
    return started


async def answer(client: QueueClient) -> dict[str, Any]:
    """The next event that answers a request (not the welcome, not an online count)."""
    while True:
        event = await client.next()
        if event["type"] not in ("welcome", "online"):
            return event


def stop_all(started: list[Node]) -> None:
    for node in started:
        node.kill()


async def pair(one: QueueClient, other: QueueClient) -> str:
    """C{one} waits, C{other} finds it: both are told the same chat."""
    one.send_json(type="find")
    await one.next("waiting")
    other.send_json(type="find")
    chat = (await other.next("paired"))["chat"]
    assert (await one.next("paired"))["chat"] == chat
    return str(chat)


@pytest_twisted.ensureDeferred
async def test_strangers_on_two_nodes_chat(redis: RedisServer) -> None:
    """Two strangers on two nodes are paired at once and chat both ways, in order, until one leaves."""
    one, two = started = await nodes(redis, 2)
    try:
        a = await one.client()
        assert (await a.next("welcome"))["online"] == 1, "a newcomer counts itself"
        b = await two.client()
        chat = await pair(a, b)
        for i in range(8):
            a.send_json(type="message", text=f"hello {i}")
        b.send_json(type="typing", active=True)
        assert (await a.next())["type"] == "typing"
        for i in range(8):
            assert (await b.next("message"))["text"] == f"hello {i}"
        b.send_json(type="message", text="hi there")
        assert (await a.next("message"))["text"] == "hi there"
        a.send_json(type="leave")
        assert await b.next("partner_left") == {"type": "partner_left", "chat": chat}

        async def counted() -> bool:
            (code_one, h1), (code_two, h2) = await one.health(), await two.health()
            return (code_one, code_two, h1["online"], h2["online"]) == (200, 200, 2, 2)

        await eventually(counted, "both nodes count the whole cluster", 10)
        (_, h1), (_, h2) = await one.health(), await two.health()
        assert h1["node"]["id"] != h2["node"]["id"]
        assert (h1["node"]["online"], h2["node"]["online"]) == (1, 1)
        assert h1["node"]["redis"] == "ready"
        metrics = await one.metrics()
        assert metrics["chatroulette_redis_ready"] == 1
        assert metrics["chatroulette_cross_node_messages_total"] >= 8
        assert metrics["chatroulette_redis_latency_seconds_count"] > 0
        assert metrics["chatroulette_dead_nodes_swept_total"] == 0
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_racing_finds_pair_each_client_once(redis: RedisServer) -> None:
    """Forty finds sent at the same moment to two nodes: twenty chats, each client in exactly one."""
    started = await nodes(redis, 2)
    try:
        clients = [await started[i % 2].client() for i in range(40)]
        for client in clients:
            client.send_json(type="find")
        chats: dict[str, int] = {}
        for client in clients:
            event = await answer(client)
            if event["type"] == "waiting":
                event = await answer(client)
            assert event["type"] == "paired"
            chats[event["chat"]] = chats.get(event["chat"], 0) + 1
        assert sorted(chats.values()) == [2] * 20
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_killed_node_declared_dead(redis: RedisServer) -> None:
    """
    kill -9 of a node: within --node-dead-after, partners on other nodes get
    partner_left and its waiters are gone from the queue.
    """
    one, two = started = await nodes(redis, 2, "--node-dead-after", "3")
    try:
        a, b = await one.client(), await two.client()
        chat = await pair(a, b)
        waiter = await one.client()
        waiter.send_json(type="find", interests=["chess"])
        await waiter.next("waiting")
        one.kill("KILL")
        before = reactor.seconds()
        left = b.queue.get()
        left.addTimeout(10, reactor)
        assert await left == {"type": "partner_left", "chat": chat}
        assert reactor.seconds() - before < 6
        c = await two.client()
        c.send_json(type="find", interests=["chess"])
        assert (await answer(c))["type"] == "waiting", "paired with a client of a dead node"

        async def forgotten() -> bool:
            _, health = await two.health()
            return bool(health["online"] == 2 and health["waiting"] == 1)

        await eventually(forgotten, "the dead node's clients leave the counts", 10)
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_graceful_stop_tells_partners_at_once(redis: RedisServer) -> None:
    """SIGTERM: clients are told going away, partners on other nodes partner_left, and the node exits 0."""
    one, two = started = await nodes(redis, 2)
    try:
        a, b = await one.client(), await two.client()
        chat = await pair(a, b)
        one.kill("TERM")
        assert await b.next("partner_left") == {"type": "partner_left", "chat": chat}
        assert await one.ended() == 0, one.output()

        async def alone() -> bool:
            _, health = await two.health()
            return bool(health["online"] == 1)

        await eventually(alone, "the stopped node's clients leave the counts", 5)
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_redis_down_then_back_empty(redis: RedisServer) -> None:
    """
    Redis stops: chats within a node go on, chats across nodes end on both
    sides, find is answered unavailable, /healthz says 503 degraded.  Redis
    comes back empty: the nodes write their state back and new chats across
    nodes work again.
    """
    one, two = started = await nodes(redis, 2)
    try:
        local_a, local_b = await one.client(), await one.client()
        await pair(local_a, local_b)
        near, far = await one.client(), await two.client()
        cross = await pair(near, far)
        redis.stop()
        assert await near.next("partner_left") == {"type": "partner_left", "chat": cross}
        assert await far.next("partner_left") == {"type": "partner_left", "chat": cross}
        for node in (one, two):
            code, health = await node.health()
            assert (code, health["status"], health["node"]["redis"]) == (503, "degraded", "unavailable")
        local_a.send_json(type="message", text="still here?")
        assert (await local_b.next("message"))["text"] == "still here?"
        newcomer = await two.client()
        assert (await newcomer.next("welcome"))["type"] == "welcome"
        newcomer.send_json(type="find")
        error = await newcomer.next("error")
        assert error["code"] == "unavailable"

        redis.start()
        for node in (one, two):
            await ready(node, timeout=20)
        await pair(newcomer, near)
        local_b.send_json(type="message", text="yes")
        assert (await local_a.next("message"))["text"] == "yes"
        local_a.send_json(type="leave")
        assert (await local_b.next("partner_left"))["type"] == "partner_left"

        async def counted() -> bool:
            _, health = await one.health()
            return bool(health["online"] == 5 and health["chatting"] == 2)

        await eventually(counted, "the counts are rebuilt from what the nodes own", 10)
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_node_started_before_redis(redis: RedisServer) -> None:
    """A node listens before Redis is reachable, answers 503 until it is, then serves."""
    redis.stop()
    node = await start_node(redis.url)
    try:
        code, health = await node.health()
        assert (code, health["status"]) == (503, "degraded")
        client = await node.client()
        assert (await client.next("welcome"))["online"] == 1
        redis.start()
        await ready(node)
        client.send_json(type="find")
        assert (await answer(client))["type"] == "waiting"
    finally:
        node.kill()


@pytest.mark.parametrize(
    "form",
    ["password", "user", "unix", "tls"],
)
@pytest_twisted.ensureDeferred
async def test_redis_url_forms(form: str) -> None:
    """Each --redis URL form operators may use: a password, an ACL user, a Unix socket, TLS."""
    server = {
        "password": lambda: RedisServer(password="s3cret"),
        "user": lambda: RedisServer(password="other", user=("chat", "p4ss")),
        "unix": lambda: RedisServer(password="s3cret"),
        "tls": lambda: RedisServer(tls=True),
    }[form]()
    server.start()
    node = await start_node(server.unix_url if form == "unix" else server.url)
    try:
        await ready(node)
        a, b = await node.client(), await node.client()
        await pair(a, b)
        assert "s3cret" not in node.output() and "p4ss" not in node.output()
    finally:
        node.kill()
        server.cleanup()


@pytest_twisted.ensureDeferred
async def test_wrong_password_never_ready() -> None:
    """A node that Redis refuses stays degraded (503) and says why, without the password."""
    server = RedisServer(password="right")
    server.start()
    url = server.url.replace(":right@", ":wrong@")
    node = await start_node(url)
    try:
        await eventually(lambda: _logged(node, "could not auth"), "the refused login is logged", 10)
        code, health = await node.health()
        assert (code, health["status"]) == (503, "degraded")
        assert "wrong" not in node.output()
    finally:
        node.kill()
        server.cleanup()


async def _logged(node: Node, text: str) -> bool:
    return text in node.output()


@pytest_twisted.ensureDeferred
async def test_bans_are_the_clusters(redis: RedisServer) -> None:
    """
    Reports counted on two nodes ban an address on both: its waiter on the
    other node is taken out of the queue, and its finds anywhere are refused.
    """
    options = ("--trust-proxy-headers", "--report-ban-threshold", "2")
    one, two = started = await nodes(redis, 2, *options)

    async def client(node: Node, address: str) -> QueueClient:
        return await open_client(node.url, headers={"X-Forwarded-For": address})

    try:
        villain = await client(one, "203.0.113.9")
        elsewhere = await client(two, "203.0.113.9")
        elsewhere.send_json(type="find", mode="video")
        await elsewhere.next("waiting")
        for reporter_node, address in ((two, "198.51.100.1"), (one, "198.51.100.2")):
            reporter = await client(reporter_node, address)
            await pair(villain, reporter)
            reporter.send_json(type="report", reason="rude")
            await villain.next("partner_left")
        error = await elsewhere.next("error")
        assert error["code"] == "banned"
        for who in (villain, elsewhere):
            who.send_json(type="find")
            assert (await answer(who))["code"] == "banned"
        bystander = await client(two, "192.0.2.1")
        bystander.send_json(type="find")
        assert (await bystander.next())["type"] in ("welcome", "waiting")
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_hung_redis_seen_within_two_seconds(redis: RedisServer) -> None:
    """A Redis that stops answering (SIGSTOP) but keeps its connections: 503 within 2 s, ready again after."""
    (node,) = started = await nodes(redis, 1)
    try:
        redis.pause()
        stopped = reactor.seconds()

        async def degraded() -> bool:
            code, _ = await node.health()
            return code == 503

        await eventually(degraded, "/healthz says 503", 2.5)
        assert reactor.seconds() - stopped <= 2.5
        redis.resume()
        await ready(node)
    finally:
        redis.resume()
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_video_signals_cross_nodes(redis: RedisServer) -> None:
    """A video chat across two nodes: one initiator, and WebRTC signals relayed both ways unchanged."""
    one, two = started = await nodes(redis, 2)
    try:
        a, b = await one.client(), await two.client()
        a.send_json(type="find", mode="video")
        await a.next("waiting")
        b.send_json(type="find", mode="video")
        pb, pa = await b.next("paired"), await a.next("paired")
        assert (pa["mode"], pb["mode"]) == ("video", "video")
        assert (pa["initiator"], pb["initiator"]) == (True, False)
        offer = {"sdp": {"type": "offer", "sdp": "v=0\r\n"}}
        a.send_json(type="signal", data=offer)
        assert (await b.next("signal"))["data"] == offer
        b.send_json(type="signal", data={"candidate": None})
        assert (await a.next("signal"))["data"] == {"candidate": None}
    finally:
        stop_all(started)


@pytest_twisted.ensureDeferred
async def test_script_flushed_is_loaded_again(redis: RedisServer) -> None:
    """SCRIPT FLUSH under a running node (NOSCRIPT): the request is refused as unavailable, and the node recovers by itself."""
    (node,) = started = await nodes(redis, 1)
    try:
        a, b = await node.client(), await node.client()
        assert redis.command("SCRIPT", "FLUSH").startswith(b"+OK")
        a.send_json(type="find")
        first = await answer(a)
        assert first["type"] == "error" and first["code"] == "unavailable", first
        await ready(node)
        await pair(a, b)
    finally:
        stop_all(started)
