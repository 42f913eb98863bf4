"""
Attacks that the in-memory tests defend against, run again over real
loopback sockets against the service as twistd builds it, each with a
normal pair chatting alongside (L{tests.bystanders.ChattingPair}): the
attack must meet the same refusal as in memory, and the pair must get
every message, in order, in under half a second.

Every service runs with production defaults except what the attack needs,
and C{--message-rate} raised for the pair (L{PAIR_ARGS}: it sends 20
messages a second each way).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, Iterator, cast

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import Agent

from chatroulette.moderation import BANS_FILE

from .bystanders import PAIR_ARGS, ChattingPair
from .hostile import handshake
from .loopback import QueueClient, RawClient, RunningService, open_client, read_body

clock = cast(IReactorTime, reactor)

BYSTANDERS = ("198.51.100.201", "198.51.100.202")
"""The pair's addresses, for a service behind a trusted proxy."""

ATTACKER = "203.0.113.66"


# Helpers ---------------------------------------------------------------------


async def within(awaitable: defer.Deferred[Any] | Coroutine[Any, Any, Any], seconds: float = 5) -> Any:
    """Wait for C{awaitable}, failing the test after C{seconds}."""
    d = defer.ensureDeferred(awaitable)
    d.addTimeout(seconds, clock)
    return await d


# Every attack runs against the fast path and against public APIs only.
_mode: list[str] = []


@pytest.fixture(autouse=True, params=["fast path", "no fast path"])
def mode(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run each attack once with the fast path and once with --no-fast-path."""
    _mode[:] = [] if request.param == "fast path" else ["--no-fast-path"]
    yield
    _mode.clear()


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[RunningService]:
    """The service on loopback with these options (and the pair's), stopped afterwards."""
    running = await RunningService.start(*PAIR_ARGS, *_mode, *args)
    try:
        yield running
    finally:
        await running.stop()


@asynccontextmanager
async def chatting(running: RunningService, addresses: tuple[str, str] | None = None) -> AsyncIterator[ChattingPair]:
    """A L{ChattingPair} on C{running}, dropped if the test fails before its C{finish()}."""
    pair = await ChattingPair.start(running, addresses)
    try:
        yield pair
    finally:
        pair.close()


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    """
    Every log event published while inside.  Entered after the service
    started, the observer is outside the service's level filter and log
    budget, so it sees every line, dropped ones too; entered before, it sees
    what the log file would get.
    """
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


async def exchange(running: RunningService, request: bytes) -> RawClient:
    """Connect, send C{request}, and wait for the response head (or the end of the connection)."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    client = cast(RawClient, await within(endpoint.connect(Factory.forProtocol(RawClient))))
    assert client.transport is not None
    client.transport.write(request)
    await within(client.answered)
    return client


async def all_of(requests: list[bytes], running: RunningService) -> list[RawClient]:
    """L{exchange} for every request, all at once."""
    return cast(
        list[RawClient],
        await defer.gatherResults(
            [defer.ensureDeferred(exchange(running, request)) for request in requests], consumeErrors=True
        ),
    )


async def get(url: str) -> tuple[int, bytes]:
    response = await within(Agent(reactor).request(b"GET", url.encode()))
    return response.code, await within(read_body(response))


async def metric(running: RunningService, name: str) -> float:
    """One sample of C{/metrics}: C{name} with its labels."""
    _, body = await get(running.http + "/metrics")
    samples = dict(line.rpartition(" ")[::2] for line in body.decode().splitlines() if not line.startswith("#"))
    return float(samples[name])


async def connect(running: RunningService, address: str | None = None) -> QueueClient:
    """A chat client (from C{address} through the trusted proxy, if given), welcomed."""
    headers = {"X-Forwarded-For": address} if address is not None else None
    client = await within(open_client(running.url, headers=headers))
    await client.next("welcome")
    return cast(QueueClient, client)


async def invite_pair(
    running: RunningService, inviter: str | None = None, joiner: str | None = None
) -> tuple[QueueClient, QueueClient]:
    """Two clients paired by an invite, so that no one else waiting can take either."""
    a, b = await connect(running, inviter), await connect(running, joiner)
    a.send_json(type="invite")
    b.send_json(type="find", invite=(await a.next("invite"))["code"])
    await a.next("paired")
    await b.next("paired")
    return a, b


async def close(*clients: QueueClient) -> None:
    for client in clients:
        client.sendClose()
    for client in clients:
        await within(client.closed)


def failures(events: list[dict[str, Any]]) -> list[str]:
    """The events that carry a traceback or an error flag, as text."""
    return [
        formatEvent(e) or repr(e)
        for e in events
        if e.get("log_failure") is not None or e.get("isError") or "Traceback" in (formatEvent(e) or "")
    ]


# The attacks -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spoofed_forwarded_neither_dodges_the_cap_nor_passes_for_loopback() -> None:
    """Behind the proxy, a client's own Forwarded header neither lifts its address's cap nor passes for loopback."""
    async with serving("--trust-proxy-headers", "--max-connections-per-ip", "3") as running:
        async with chatting(running, BYSTANDERS) as pair:
            host = f"127.0.0.1:{running.port}"
            spoofs = [f"for=192.0.2.{i}" for i in range(1, 18)] + ["for=unknown", "for=127.0.0.1", 'for="[::1]"']
            attempts = await all_of(
                [handshake(host, extra={"Forwarded": s, "X-Forwarded-For": ATTACKER}) for s in spoofs], running
            )
            try:
                statuses = Counter(a.status() for a in attempts)
                assert statuses == {101: 3, 429: len(spoofs) - 3}, statuses
                unknown = await all_of([handshake(host, extra={"Forwarded": "for=unknown"})] * 10, running)
                assert [u.status() for u in unknown] == [400] * 10
                for refused in [a for a in attempts if a.status() != 101] + unknown:
                    await within(refused.lost)  # refused and closed by the server
                assert await metric(running, 'chatroulette_refused_total{reason="connections"}') == len(spoofs) - 3
                assert await metric(running, 'chatroulette_refused_total{reason="proxy_header"}') == 10
                _, health = await get(running.http + "/healthz")
                assert json.loads(health)["online"] == 2 + 3  # the pair and the attacker's three
            finally:
                for attempt in attempts:
                    attempt.abort()
            await pair.finish()


JUNK = [
    (b"GET /%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"y" * (17 * 1024) + b"\r\n\r\n", 400),
    (handshake().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1), 400),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 426),
]


@pytest_twisted.ensureDeferred
async def test_http_junk_refused_without_tracebacks() -> None:
    """200 junk requests (/%ff, 17 KiB header, HTTP/1.0 upgrade, GET /ws) get 404/400/400/426, no traceback."""
    async with serving() as running:
        with captured_log() as events:
            async with chatting(running) as pair:
                answers: Counter[tuple[bytes, int | None]] = Counter()
                for _ in range(10):  # 10 rounds of 20 at once, one per message of the pair: 200 requests
                    await pair.delivered()
                    batch = [request for request, _ in JUNK] * 5
                    for request, client in zip(batch, await all_of(batch, running)):
                        await within(client.lost)  # each answered, then closed by the server
                        answers[request[:16], client.status()] += 1
                assert answers == Counter({(request[:16], status): 50 for request, status in JUNK}), answers
                _, health = await get(running.http + "/healthz")
                assert json.loads(health)["online"] == 2  # the pair only
                await pair.finish()
        assert failures(events) == []
        access = Counter(e["status"] for e in events if e.get("event") == "access")
        assert access[404] == 50, access  # the observer did see the junk


BLANK = [" ", "\t\n\r \u3000", "\u200b", "\u200b" * 2000, "\u3164", " \u200b\n\u3164\ufeff "]


@pytest_twisted.ensureDeferred
async def test_blank_messages_refused_and_not_relayed() -> None:
    """Messages of only whitespace, U+200B or U+3164 are refused with bad_request and never reach the partner."""
    async with serving() as running:
        async with chatting(running) as pair:
            attacker, partner = await invite_pair(running)
            for text in BLANK:
                attacker.send_json(type="message", text=text)
            attacker.send_json(type="message", text="visible")
            refusals = [await attacker.next() for _ in BLANK]
            assert [(e["type"], e["code"]) for e in refusals] == [("error", "bad_request")] * len(BLANK)
            # Relayed in order: had a blank one been relayed, it would come first.
            assert (await partner.next()) == {"type": "message", "text": "visible"}
            assert await metric(running, 'chatroulette_errors_total{code="bad_request"}') == len(BLANK)
            await close(attacker, partner)
            await pair.finish()


TARGET = "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_ban_takes_the_waiting_connection_out_at_once(tmp_path: Path) -> None:
    """A ban by three reporters takes the address's waiting and inviting connections out at once; nobody meets them."""
    async with serving("--trust-proxy-headers", "--state-dir", str(tmp_path)) as running:
        async with chatting(running, BYSTANDERS) as pair:
            waiting, inviting = await connect(running, TARGET), await connect(running, TARGET)
            waiting.send_json(type="find", interests=["nobody else"])
            assert (await waiting.next()) == {"type": "waiting"}
            others: list[QueueClient] = []
            for i in range(1, 4):
                target, reporter = await invite_pair(running, TARGET, f"198.51.100.{i}")
                others += [target, reporter]
                if i == 3:
                    inviting.send_json(type="invite")
                    code = (await inviting.next("invite"))["code"]
                reporter.send_json(type="report", reason="rude")
                assert (await target.next())["type"] == "partner_left"
            # At once: told in the turn the third report is handled (1 s bounds the wait).
            for client in (waiting, inviting):
                event = await within(client.next(), 1)
                assert (event["type"], event["code"]) == ("error", "banned"), event
            newcomer, joiner, again = (
                await connect(running, "198.51.100.9"),
                await connect(running, "198.51.100.10"),
                await connect(running, TARGET),
            )
            newcomer.send_json(type="find", interests=["nobody else"])
            joiner.send_json(type="find", invite=code)
            again.send_json(type="find")
            assert (await newcomer.next()) == {"type": "waiting"}
            assert (await joiner.next())["code"] == "invite_invalid"
            assert (await again.next())["code"] == "banned"
            _, health = await get(running.http + "/healthz")
            assert json.loads(health)["waiting"] == 1  # the newcomer alone
            await close(waiting, inviting, newcomer, joiner, again, *others)
            await pair.finish()


@pytest_twisted.ensureDeferred
async def test_repeated_reports_of_one_partner_counted_once(tmp_path: Path) -> None:
    """One client reporting its partner eight times: one report in the metrics and the log, no error."""
    async with serving("--trust-proxy-headers", "--state-dir", str(tmp_path)) as running:
        with captured_log() as events:
            async with chatting(running, BYSTANDERS) as pair:
                reported, reporter = await invite_pair(running, TARGET, "198.51.100.23")
                for _ in range(8):
                    reporter.send_json(type="report", reason="rude")
                reporter.send_json(type="invite")  # answered after the reports: nothing came before it
                assert (await reporter.next())["type"] == "invite"
                assert (await reported.next())["type"] == "partner_left"
                assert await metric(running, "chatroulette_reports_total") == 1
                assert await metric(running, 'chatroulette_errors_total{code="not_chatting"}') == 0
                await close(reported, reporter)
                await pair.finish()
        assert [e.get("event") for e in events].count("report") == 1


@pytest_twisted.ensureDeferred
async def test_corrupt_bans_file_moved_aside_and_service_serves(tmp_path: Path) -> None:
    """Random bytes as the bans file: the service starts, moves it aside with one error logged, and a pair chats."""
    bans = tmp_path / BANS_FILE
    junk = random.Random(1).randbytes(8192)
    bans.write_bytes(junk)
    with captured_log() as events:  # from before the start: the file is read then
        async with serving("--state-dir", str(tmp_path)) as running:
            (aside,) = tmp_path.glob(f"{BANS_FILE}.corrupt-*")
            assert not bans.exists() and aside.read_bytes() == junk
            async with chatting(running) as pair:
                await pair.finish()
    errors = [e for e in events if e["log_level"] >= LogLevel.error]
    assert len(errors) == 1, [formatEvent(e) for e in errors]
    assert errors[0].get("log_failure") is None
    assert str(bans) in (formatEvent(errors[0]) or "") and aside.name in (formatEvent(errors[0]) or "")
