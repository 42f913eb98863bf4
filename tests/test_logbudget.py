"""
The log budget: lines about refused or malformed requests, whoever logs
them, share one budget for the whole server and carry at most 200 escaped
characters of client text; every other line passes untouched.
"""

from __future__ import annotations

import base64
import os
from typing import Any, AsyncIterator, cast

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    Logger,
    capturedLogs,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.logbudget import (
    CLIENT_TEXT_LIMIT,
    DEFAULT_BYTES_PER_SECOND,
    DEFAULT_LINES_PER_SECOND,
    LogBudget,
    about_client_requests,
    client_text,
)
from chatroulette.logsetup import LogSetup
from chatroulette.tap import Options, makeService

from .hostile import raw_connect
from .loopback import RunningService, exchange, open_client
from .memory import MemoryServer

PAD = "x" * 15_000


def autobahn_event(reason: str = "bad", level: LogLevel = LogLevel.info) -> dict[str, Any]:
    """An event as Autobahn logs a failed handshake."""
    return {
        "log_namespace": "autobahn.twisted.websocket.WebSocketServerProtocol",
        "log_level": level,
        "log_format": "failing WebSocket opening handshake ('{reason}')",
        "log_time": 0.0,
        "reason": reason,
    }


def ours(kind: str, **fields: Any) -> dict[str, Any]:
    """An event as our own code logs it."""
    return {
        "log_namespace": "chatroulette.protocol.ChatServerFactory",
        "log_level": LogLevel.info,
        "log_format": kind,
        "log_time": 0.0,
        "event": kind,
        **fields,
    }


class ClientTextTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        """Short printable text is returned as it is, non-ASCII letters included."""
        self.assertEqual(client_text("Mozilla/5.0 (X11) é 猫 😀"), "Mozilla/5.0 (X11) é 猫 😀")

    def test_control_and_invisible_characters_escaped(self) -> None:
        """Newlines, escape sequences, NUL, bidi overrides and backslashes are escaped."""
        self.assertEqual(
            client_text("a\r\nb\x1b[31m\x00\u202e\\"), "a\\r\\nb\\x1b[31m\\x00\\u202e\\\\"
        )

    def test_undecodable_bytes(self) -> None:
        """Bytes are read as UTF-8; bytes that are not are shown as \\xNN."""
        self.assertEqual(client_text(b"caf\xc3\xa9 \xff\xfe"), "café \\xff\\xfe")

    def test_long_text_truncated_with_marker(self) -> None:
        """At most 200 characters of the text, then how many more there were."""
        self.assertEqual(client_text(PAD), "x" * 200 + "[... 14800 more characters]")

    def test_escapes_count_and_are_never_split(self) -> None:
        """Escaped characters count at their escaped length, and an escape is never cut in half."""
        text = client_text("a" * 198 + "\x1b" * 10)
        self.assertEqual(text, "a" * 198 + "[... 10 more characters]")
        text = client_text("\n" * 300)
        self.assertEqual(text, "\\n" * 100 + "[... 200 more characters]")

    def test_extra_characters_escaped(self) -> None:
        """Characters asked for (quotes, in the access log) are escaped with a backslash."""
        self.assertEqual(client_text('say "hi"', escape='"'), 'say \\"hi\\"')


class ClassificationTests(SynchronousTestCase):
    def test_third_party_namespaces(self) -> None:
        """Everything Autobahn and Twisted's web server log is about client requests."""
        for namespace in (
            "autobahn.twisted.websocket.WebSocketServerProtocol",
            "twisted.web.http.HTTPChannel",
            "twisted.web.server.Request",
        ):
            self.assertTrue(about_client_requests({"log_namespace": namespace}), namespace)
        for namespace in ("twisted.internet.tcp.Port", "twisted.web.httpx", "log_legacy", "chatroulette.service"):
            self.assertFalse(about_client_requests({"log_namespace": namespace}), namespace)

    def test_our_events(self) -> None:
        """Our refusals, limits and malformed requests count; service events do not."""
        for kind in ("refused", "limit", "malformed"):
            self.assertTrue(about_client_requests(ours(kind)), kind)
        for kind in ("serving", "connect", "disconnect", "pair", "leave", "report", "ban", "shutdown", "log_budget"):
            self.assertFalse(about_client_requests(ours(kind)), kind)

    def test_access_lines(self) -> None:
        """Access-log lines of 4xx answers count; others do not."""
        self.assertTrue(about_client_requests(ours("access", status=404)))
        self.assertTrue(about_client_requests(ours("access", status=400)))
        self.assertFalse(about_client_requests(ours("access", status=200)))
        self.assertFalse(about_client_requests(ours("access", status=500)))


class Recorder:
    """An observer keeping what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kinds(self) -> list[object]:
        return [e.get("event") for e in self.events]

    def summaries(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "log_budget"]


class LogBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.out = Recorder()

    def budget(self, lines: float = 20, size: float = 16384) -> LogBudget:
        return LogBudget(cast(ILogObserver, self.out), self.clock, lines, size)

    def test_ordinary_events_pass_untouched(self) -> None:
        """Service events pass as they are, never dropped, even while client lines are."""
        budget = self.budget()
        for _ in range(100):
            budget(autobahn_event())
        events = [ours(kind) for kind in ("serving", "connect", "ban", "shutdown")] * 50
        for event in events:
            budget(event)
        passed = [e for e in self.out.events if not about_client_requests(e)]
        self.assertEqual(len(passed), 200)
        self.assertTrue(all(a is b for a, b in zip(passed, events)))

    def test_lines_per_second(self) -> None:
        """A flood gets its budget's lines a second, one second's worth at once."""
        budget = self.budget(lines=20)
        for _ in range(100):
            budget(autobahn_event())
        self.assertEqual(len(self.out.events), 20)
        self.clock.advance(0.5)
        for _ in range(100):
            budget(autobahn_event())
        self.assertEqual(len([e for e in self.out.events if e.get("event") != "log_budget"]), 30)

    def test_bytes_per_second(self) -> None:
        """Long lines are limited by bytes before lines."""
        budget = self.budget(lines=20, size=1000)
        for _ in range(20):
            budget(autobahn_event("y" * 150))
        self.assertEqual(len(self.out.events), 5)  # 5 x 190 bytes fit in 1000
        self.assertEqual(budget.dropped, 15)

    def test_client_text_capped(self) -> None:
        """15 KB of client text in any field becomes 200 escaped characters; the original is not changed."""
        budget = self.budget()
        event = autobahn_event('invalid port "' + PAD + '\r\n"')
        event["peer"] = "#1@abc"
        budget(event)
        (out,) = self.out.events
        self.assertEqual(out["reason"], client_text(event["reason"]))
        self.assertLessEqual(len(out["reason"]), CLIENT_TEXT_LIMIT + len("[... 99999 more characters]"))
        self.assertEqual(out["peer"], "#1@abc")
        self.assertNotIn("\n", formatEvent(out))
        self.assertEqual(len(event["reason"]), len(PAD) + 17)

    def test_text_outside_text_fields_capped_as_a_whole(self) -> None:
        """Client text reaching the message another way (an exception's text) caps the whole message."""
        budget = self.budget()
        event = autobahn_event()
        event["log_format"] = "Unexpected exception in onConnect ['{err}']"
        event["err"] = ValueError(PAD + "\n")
        budget(event)
        (out,) = self.out.events
        message = formatEvent(out)
        self.assertTrue(message.startswith("Unexpected exception in onConnect ['xxx"))
        self.assertTrue(message.endswith(" more characters]"))
        self.assertLessEqual(len(message), CLIENT_TEXT_LIMIT + len("[... 99999 more characters]"))

    def test_summary_after_drops(self) -> None:
        """A second after the first dropped line, one summary says how many were dropped."""
        budget = self.budget(lines=20)
        for _ in range(50):
            budget(autobahn_event())
        self.clock.advance(0.3)
        for _ in range(50):
            budget(autobahn_event())
        self.assertEqual(self.out.summaries(), [])
        self.clock.advance(0.7)
        (summary,) = self.out.summaries()
        self.assertEqual(summary["count"], 50 - 20 + 50 - 6)
        self.assertEqual(summary["log_level"], LogLevel.warn)
        self.assertEqual(
            formatEvent(summary),
            "74 log lines about refused or malformed requests dropped in the last 1.0 seconds (log budget)",
        )
        self.clock.advance(10)
        self.assertEqual(len(self.out.summaries()), 1)

    def test_sustained_flood(self) -> None:
        """Under a flood lasting ten seconds: the budget's lines a second, and one summary a second."""
        budget = self.budget(lines=20)
        for tick in range(1000):
            for _ in range(10):
                budget(autobahn_event())
            self.clock.advance(0.01)
        self.clock.advance(1)
        lines = [e for e in self.out.events if e.get("event") != "log_budget"]
        summaries = self.out.summaries()
        self.assertLessEqual(len(lines), 20 + 20 * 10)
        self.assertGreaterEqual(len(lines), 20 * 10)
        self.assertIn(len(summaries), (10, 11))
        self.assertEqual(sum(s["count"] for s in summaries) + len(lines), 10_000)
        self.assertEqual(budget.dropped_total, 10_000 - len(lines))

    def test_summarise_now(self) -> None:
        """summarise() tells the drops at once (at stop, say), and no second summary follows."""
        budget = self.budget(lines=1)
        budget(autobahn_event())
        budget(autobahn_event())
        budget.summarise()
        self.assertEqual([s["count"] for s in self.out.summaries()], [1])
        self.clock.advance(5)
        self.assertEqual(len(self.out.summaries()), 1)

    def test_no_limit(self) -> None:
        """Rates of 0 drop nothing, and client text is still capped."""
        budget = self.budget(lines=0, size=0)
        for _ in range(1000):
            budget(autobahn_event(PAD))
        self.assertEqual(len(self.out.events), 1000)
        self.assertEqual(self.out.events[0]["reason"], client_text(PAD))

    def test_summary_observer(self) -> None:
        """The summary can be sent elsewhere (to the top of the chain, through the level filter)."""
        top = Recorder()
        budget = LogBudget(cast(ILogObserver, self.out), self.clock, 1, 1000, cast(ILogObserver, top))
        budget(autobahn_event())
        budget(autobahn_event())
        self.clock.advance(1)
        self.assertEqual(self.out.summaries(), [])
        self.assertEqual([s["count"] for s in top.summaries()], [1])


class BudgetOptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """By default 20 lines and 16 KiB a second, and makeService's LogSetup gets them."""
        options = self.parse()
        self.assertEqual((options["refused-log-lines"], options["refused-log-bytes"]), (20, 16384))
        top = makeService(options)
        assert isinstance(top, LogSetup)
        self.assertEqual((top.refused_lines, top.refused_bytes), (20, 16384))

    def test_values(self) -> None:
        """Other rates, and 0 for no limit, are taken; nonsense is a usage error naming the option."""
        options = self.parse("--refused-log-lines", "5", "--refused-log-bytes", "0")
        self.assertEqual(makeService(options).refused_lines, 5)  # type: ignore[attr-defined]
        self.assertEqual(options["refused-log-bytes"], 0)
        for args in (["--refused-log-lines", "-1"], ["--refused-log-bytes", "lots"]):
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertIn(args[0][2:], str(e.exception))

    def test_help(self) -> None:
        """--help explains both options on their own."""
        text = " ".join(str(Options()).split())
        self.assertIn("--refused-log-lines= Log lines per second the whole server may write", text)
        self.assertIn("capped at 200 characters", text)
        self.assertIn("--refused-log-bytes= Bytes of message per second", text)


class LogSetupBudgetTests(SynchronousTestCase):
    def started(
        self, level: LogLevel, refused_lines: int
    ) -> tuple[Recorder, LogPublisher, MemoryReactorClock, LogSetup]:
        """A running LogSetup whose observers are one L{Recorder}, on a running fake reactor."""
        out = Recorder()
        publisher = LogPublisher(cast(ILogObserver, out))
        reactor = MemoryReactorClock()
        reactor.run()
        setup = LogSetup(level, reactor, reactor, refused_lines=refused_lines, publisher=publisher)
        setup.startService()
        return out, publisher, reactor, setup

    def test_installed_for_every_source(self) -> None:
        """Under the service, lines about clients from Autobahn, Twisted and us share one budget, summarised."""
        out, publisher, reactor, setup = self.started(LogLevel.info, 10)
        self.addCleanup(setup.stopService)
        for namespace in ("autobahn.websocket", "twisted.web.http.HTTPChannel", "chatroulette.protocol"):
            log = Logger(namespace=namespace, observer=publisher)
            for _ in range(10):
                log.info("client {client} refused", client="#1", event="refused")
        Logger(observer=publisher).info("address banned", event="ban")
        self.assertEqual(out.kinds(), ["refused"] * 10 + ["ban"])
        reactor.advance(1)
        self.assertEqual([s["count"] for s in out.summaries()], [20])
        Logger(namespace="autobahn.x", observer=publisher).info("one more")
        self.assertEqual(formatEvent(out.events[-1]), "one more")

    def test_stop_tells_the_last_drops(self) -> None:
        """Stopping logs the summary of drops not yet told, then unwraps the observers."""
        out, publisher, reactor, setup = self.started(LogLevel.info, 1)
        log = Logger(namespace="autobahn.x", observer=publisher)
        log.info("a")
        log.info("b")
        setup.stopService()
        self.assertEqual([s["count"] for s in out.summaries()], [1])
        log.info("c")
        self.assertEqual(formatEvent(out.events[-1]), "c")

    def test_summary_obeys_the_level(self) -> None:
        """At --log-level error the summary (a warning) is not written either."""
        out, publisher, reactor, setup = self.started(LogLevel.error, 1)
        self.addCleanup(setup.stopService)
        log = Logger(namespace="autobahn.x", observer=publisher)
        log.error("a")
        log.error("b")
        reactor.advance(1)
        self.assertEqual(out.summaries(), [])
        self.assertEqual(len(out.events), 1)


class AccessLogTests(SynchronousTestCase):
    def test_client_text_capped_and_status_given(self) -> None:
        """An access-log line carries at most 200 escaped characters of each thing the client chose, and the status."""
        server = MemoryServer()
        with capturedLogs() as events:
            client, pump = raw_connect(server)
            pump.clientIO.write(
                f"GET /{PAD[:5000]} HTTP/1.1\r\nHost: x\r\nReferer: \"{PAD[:5000]}\r\n"
                "User-Agent: a\"b\x7f\r\n\r\n".encode()
            )
            server.flush()
        (access,) = [e for e in events if e.get("event") == "access"]
        self.assertEqual(access["status"], 404)
        self.assertTrue(about_client_requests(access))
        line = formatEvent(access)
        self.assertRegex(
            line,
            r'^"[0-9a-f]{10}" - - \[.*\] "GET /x{199}\[\.\.\. 4801 more characters\] HTTP/1.1" 404 \d+ '
            r'"\\"x{198}\[\.\.\. 4802 more characters\]" "a\\"b\\x7f"$',
        )


# Over real sockets --------------------------------------------------------


def malformed_handshake(i: int) -> bytes:
    """A WebSocket handshake with 15 KB of client text where Autobahn (or the access log) quotes it."""
    key = base64.b64encode(os.urandom(16)).decode()
    common = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
    kind = i % 4
    if kind == 0:  # an invalid port, quoted twice
        request = f"GET /ws HTTP/1.1\r\nHost: localhost:{PAD}\r\n{common}Sec-WebSocket-Version: 13\r\n"
    elif kind == 1:  # an unknown version
        request = f"GET /ws HTTP/1.1\r\nHost: localhost\r\n{common}Sec-WebSocket-Version: \x1b[2J{PAD}\r\n"
    elif kind == 2:  # a cross-site page with a garbage header
        request = (
            f"GET /ws HTTP/1.1\r\nHost: localhost\r\n{common}Sec-WebSocket-Version: 13\r\n"
            f"Origin: http://evil.example\r\nX-Junk: {PAD}\r\n"
        )
    else:  # not even a WebSocket: a 404 with a huge path and User-Agent
        request = (
            f"GET /{PAD[:3000]} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {PAD[:11000]}\r\n"
            "Connection: close\r\n"
        )
    return (request + "\r\n").encode()


class Capture:
    """An observer installed before the service starts: it sees what the log file would get."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.summary: defer.Deferred[None] = defer.Deferred()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("event") == "log_budget" and not self.summary.called:
            self.summary.callback(None)


@pytest_twisted.async_yield_fixture()
async def captured() -> AsyncIterator[Capture]:
    capture = Capture()
    observer = cast(ILogObserver, capture)
    globalLogPublisher.addObserver(observer)
    yield capture
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_malformed_handshake_flood_within_budget(captured: Capture) -> None:
    """300 malformed handshakes with 15 KB each from loopback: log within budget, text capped, a summary, chat unhurt."""
    started = reactor.seconds()
    running = await RunningService.start()
    try:
        a, b = await open_client(running.url), await open_client(running.url)
        a.send_json(type="find")
        b.send_json(type="find")
        await a.next("paired")
        await b.next("paired")
        for batch in range(0, 300, 50):
            await defer.gatherResults(
                [defer.ensureDeferred(exchange(running.port, malformed_handshake(i), timeout=10)) for i in range(batch, batch + 50)]
            )
            a.send_json(type="message", text=f"still here {batch}")
            assert (await b.next("message"))["text"] == f"still here {batch}"
        captured.summary.addTimeout(5, reactor)
        await captured.summary
        b.send_json(type="message", text="and after")
        assert (await a.next("message"))["text"] == "and after"
        budget = running.service.budget  # type: ignore[attr-defined]
        dropped = budget.dropped_total
    finally:
        await running.stop()
    elapsed = reactor.seconds() - started
    about = [e for e in captured.events if about_client_requests(e)]
    messages = [formatEvent(e) for e in about]
    assert len(about) <= DEFAULT_LINES_PER_SECOND * (elapsed + 1), (len(about), elapsed)
    assert sum(len(m.encode()) for m in messages) <= DEFAULT_BYTES_PER_SECOND * (elapsed + 1)
    assert all("x" * (CLIENT_TEXT_LIMIT + 1) not in m and "\x1b" not in m for m in messages), max(messages, key=len)
    assert any(e["log_namespace"].startswith("autobahn.") for e in about)
    assert any(e.get("event") == "access" for e in about)
    summaries = [e for e in captured.events if e.get("event") == "log_budget"]
    assert sum(s["count"] for s in summaries) == dropped > 200
    kinds = [e.get("event") for e in captured.events]
    assert kinds.count("serving") == 1 and kinds.count("connect") == 2 and "shutdown" in kinds
