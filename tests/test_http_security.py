"""
HTTP hardening: what the logs may show of a client, unreadable state,
oversized or old-fashioned requests at C{/ws}, what responses reveal about
the software, and reports counted once.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import shutil
import socket
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any, AsyncIterator, cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.ssl import Certificate
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from chatroulette.moderation import BANS_FILE, Moderation, SQLiteBanStore
from chatroulette.listening import ListeningService
from chatroulette.settings import Settings
from chatroulette.service import ChatService
from chatroulette.tap import Options, makeService

from .certs import make_certificate
from .hostile import RawClient, connect_as, handshake, raw_connect
from .loopback import RunningService, exchange, read_body
from .memory import MemoryServer, also_without_fast_path

REMOTE = "203.0.113.7"


def capture_log(test: SynchronousTestCase | None = None) -> list[dict[str, Any]]:
    """Every log event from now on (until the test's cleanup, if given)."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    if test is not None:
        test.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def dump(events: list[dict[str, Any]]) -> str:
    """Everything the events say: their text, their fields and their log system."""
    return "\n".join(
        (formatEvent(e) or "") + repr(sorted((k, repr(v)) for k, v in e.items())) for e in events
    )


def raw_request(server: MemoryServer, request: bytes, host: str = REMOTE) -> RawClient:
    """Send C{request} on a fresh in-memory connection from C{host} and deliver everything."""
    client, pump = raw_connect(server, host)
    pump.clientIO.write(request)
    server.flush()
    return client


class AccessLogTestCase(SynchronousTestCase):
    settings = Settings()

    def setUp(self) -> None:
        self.server = MemoryServer(self.settings)
        self.events = capture_log(self)
        self.server.site.doStart()  # opens the access log, as listening does
        self.addCleanup(self.server.site.doStop)

    def access_lines(self) -> list[str]:
        return [formatEvent(e) or "" for e in self.events if "GET /" in (formatEvent(e) or "")]


class AccessLogTests(AccessLogTestCase):
    def test_fields_escaped(self) -> None:
        """Quotes, raw bytes and terminal escapes in a logged header cannot forge access log fields or lines."""
        raw_request(self.server, b'GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: a" "b\xff\x1b[1m\r\n\r\n')
        (line,) = self.access_lines()
        self.assertTrue(line.endswith(r'"-" "a\" \"b\xff\x1b[1m"'), line)
        self.assertTrue(line.isascii() and line.isprintable())

    def test_access_line(self) -> None:
        """With --log-addresses yes the access log keeps query string, Referer and User-Agent, with the address hashed."""
        raw_request(
            self.server,
            b"GET /healthz?q=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r.example/\r\nUser-Agent: UA/1\r\n\r\n",
        )
        (line,) = self.access_lines()
        self.assertRegex(
            line, r'^"[0-9a-f]{10}" - - \[.*\] "GET /healthz\?q=1 HTTP/1.1" 200 \d+ "http://r.example/" "UA/1"$'
        )
        self.assertNotIn(REMOTE, dump(self.events))

    def test_undecodable_path_is_404_without_traceback(self) -> None:
        """GET /%ff (not UTF-8) is answered 404 and logs no traceback."""
        client = raw_request(self.server, b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(client.status(), 404)
        self.assertEqual([e for e in self.events if e.get("log_failure") or e.get("isError")], [])
        self.assertNotIn("Traceback", dump(self.events))


class NoAddressAccessLogTests(AccessLogTestCase):
    settings = Settings(log_addresses=False)

    def test_access_line(self) -> None:
        """With --log-addresses no the access log shows the path without query string, and no Referer or User-Agent."""
        raw_request(
            self.server,
            b"GET /healthz?token=s3cr3t HTTP/1.1\r\nHost: x\r\n"
            b"Referer: http://r.example/s3cr3t\r\nUser-Agent: UA/1 s3cr3t\r\n\r\n",
        )
        (line,) = self.access_lines()
        self.assertRegex(line, r'^"-" - - \[.*\] "GET /healthz HTTP/1.1" 200 \d+ "-" "-"$')
        self.assertNotIn("s3cr3t", dump(self.events))
        self.assertNotIn(REMOTE, dump(self.events))


async def start_service(*args: str) -> RunningService:
    """The service as twistd builds it, listening where C{args} say (one C{--listen})."""
    options = Options()
    options.parseOptions(list(args))
    service = makeService(options)
    service.startService()
    listening = next(s for s in service if isinstance(s, ListeningService))
    port = await listening.when_listening()
    return RunningService(service, cast(IPv4Address, port.getHost()).port)


@pytest_twisted.async_yield_fixture()
async def service(tmp_path: Path) -> AsyncIterator[RunningService]:
    running = await RunningService.start("--state-dir", str(tmp_path))
    yield running
    await running.stop()


class ErrorProbe(Resource):
    """Logs an error the way Twisted's own code does while it handles a connection."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        legacy_log.err(RuntimeError("probe"), "probe error")
        return b"logged"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "ssl"])
async def test_connection_log_context_names_no_address(tmp_path: Path, tls: bool) -> None:
    """Errors logged while a connection is handled (plain or TLS) carry no client address in their system prefix."""
    agent, listen = Agent(reactor), "tcp:0:interface=127.0.0.1"
    if tls:
        key, cert = make_certificate(tmp_path)
        trust = Certificate.loadPEM(cert.read_bytes())
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    running = await start_service("--listen", listen, "--state-dir", str(tmp_path))
    site = next(s for s in running.service if isinstance(s, ListeningService)).factory
    cast(Site, site).resource.putChild(b"probe", ErrorProbe())
    events = capture_log()
    try:
        scheme = "https" if tls else "http"
        response = await agent.request(b"GET", f"{scheme}://127.0.0.1:{running.port}/probe".encode())
        assert (await read_body(response)) == b"logged"
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
        await running.stop()
    (error,) = [e for e in events if e.get("why") == "probe error"]
    assert error["log_system"].startswith("HTTPChannel")
    assert "127.0.0.1" not in dump([error])
    # (The test's own HTTP client logs the address it connects to.)
    assert [e["log_system"] for e in events if "127.0.0.1" in str(e.get("log_system"))] == []


@pytest_twisted.ensureDeferred
async def test_static_files_server_header(service: RunningService) -> None:
    """The page and its files are served with a Server header naming no software version."""
    for path in ["/", "/main.js", "/missing"]:
        response = await Agent(reactor).request(b"GET", f"{service.http}{path}".encode())
        await read_body(response)
        assert response.headers.getRawHeaders(b"server") == [b"chatroulette"], path


@pytest_twisted.ensureDeferred
async def test_emfile_recovery_names_no_address(service: RunningService) -> None:
    """When the process runs out of file descriptors, Twisted's recovery lines name no client address."""
    # A port labels the addresses in these lines from its first connection on.
    await exchange(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    events = capture_log()
    recovered: defer.Deferred[None] = defer.Deferred()

    def watch(event: dict[str, Any]) -> None:
        if "EMFILE recovery" in str(event.get("log_format")) and not recovered.called:
            recovered.callback(None)

    globalLogPublisher.addObserver(cast(ILogObserver, watch))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    client = socket.socket()
    try:
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", service.port))
        # Take every free descriptor number below the highest one in use,
        # then forbid higher ones: the server's next accept() fails EMFILE.
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd > top:
                os.close(fd)
                break
            fillers.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
        recovered.addTimeout(5, reactor)
        await recovered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
        client.close()
        globalLogPublisher.removeObserver(cast(ILogObserver, watch))
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    text = dump(events)
    assert "EMFILE recovery: Closed socket from" in text
    assert "127.0.0.1" not in text


class CorruptBansFileTests(SynchronousTestCase):
    """An unreadable bans file is moved aside and the service starts without bans."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = self.dir / BANS_FILE
        self.events = capture_log(self)

    def assert_moved_aside(self, now: float = 1_800_000_000.0) -> None:
        store = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        self.assertEqual(store.load(now), {})
        aside = self.dir / f"{BANS_FILE}.corrupt-20270115T080000Z"
        self.assertEqual(sorted(self.dir.iterdir()), [aside])
        errors = [e for e in self.events if e["log_level"] >= LogLevel.error]
        self.assertEqual(len(errors), 1, dump(self.events))
        self.assertIsNone(errors[0].get("log_failure"))
        text = formatEvent(errors[0]) or ""
        self.assertIn(str(self.path), text)
        self.assertIn(aside.name, text)
        # A fresh file takes its place at the next ban.
        store._save("203.0.113.7", now + 60, now)
        store.stop()
        self.assertEqual(SQLiteBanStore(self.path, None).load(now), {"203.0.113.7": now + 60})  # type: ignore[arg-type]

    def test_random_bytes(self) -> None:
        """A bans file of random bytes is moved aside, with one error logged."""
        self.path.write_bytes(random.Random(1).randbytes(8192))
        self.assert_moved_aside()

    def test_truncated_database(self) -> None:
        """A real bans database cut short is moved aside, with one error logged."""
        store = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        store._save("198.51.100.1", 2e9, 0.0)
        store.stop()
        with closing(sqlite3.connect(self.path)) as db, db:
            db.executemany(
                "INSERT INTO bans (address, until) VALUES (?, ?)",
                ((f"2001:db8:{i:x}::", 2e9) for i in range(3000)),
            )
        data = self.path.read_bytes()
        self.path.write_bytes(data[: len(data) // 2])
        self.assert_moved_aside()

    def test_directory(self) -> None:
        """A directory where the bans file should be is moved aside, with one error logged."""
        (self.path / "junk").mkdir(parents=True)
        self.assert_moved_aside()

    def test_service_starts(self) -> None:
        """The chat service starts over a corrupt bans file (the store reads it at start)."""
        self.path.write_bytes(b"not a database" * 100)
        server = MemoryServer()
        store = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        server.factory.moderation = Moderation(store=store)
        ChatService(server.factory, server.clock, store).startService()
        self.assertFalse(self.path.exists())
        self.assertTrue(server.connect().opened)


class StateDirOptionTests(SynchronousTestCase):
    """--state-dir is checked when the options are read, not at the first ban."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)

    def parse(self, state_dir: Path) -> Options:
        options = Options()
        options.parseOptions(["--state-dir", str(state_dir)])
        return options

    def test_created_and_probed(self) -> None:
        """A missing state directory is created at start, and the write probe leaves nothing behind."""
        state = self.dir / "a" / "b"
        self.assertEqual(self.parse(state)["state-dir"], state)
        self.assertEqual(list(state.iterdir()), [])

    def test_cannot_be_created(self) -> None:
        """A state directory that cannot be created is a usage error naming the option."""
        (self.dir / "file").write_text("")
        with self.assertRaises(usage.UsageError) as e:
            self.parse(self.dir / "file" / "state")
        self.assertIn("--state-dir", str(e.exception))

    def test_cannot_be_written(self) -> None:
        """A state directory where no file can be written is a usage error (even for root)."""
        with self.assertRaises(usage.UsageError) as e:
            self.parse(Path("/proc/self/fdinfo"))  # no one may create files in procfs
        self.assertIn("--state-dir", str(e.exception))
        self.assertIn("written", str(e.exception))


class _ThreadResults:
    """Just enough reactor for a thread pool's results: kept until the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))

    def addSystemEventTrigger(self, *args: Any) -> None:
        pass

    def run(self) -> None:
        for f, args in self.calls:
            f(*args)


class BanSaveFailureTests(SynchronousTestCase):
    def test_failed_save_logged_plainly(self) -> None:
        """A ban that cannot be written is one plain error line, not an unhandled error in a Deferred."""
        events = capture_log(self)
        state = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, state)
        (state / "file").write_text("")
        results = _ThreadResults()
        store = SQLiteBanStore(state / "file" / BANS_FILE, results)  # type: ignore[arg-type]
        moderation = Moderation(threshold=1, store=store)
        self.assertIsNotNone(moderation.report("198.51.100.1", "203.0.113.7", 0.0))
        self.assertTrue(moderation.is_banned("203.0.113.7", 1.0))
        store.stop()  # waits for the write to fail
        results.run()
        del results, store, moderation
        gc.collect()  # an unhandled failure is logged when its Deferred is collected
        errors = [e for e in events if e["log_level"] >= LogLevel.error]
        self.assertEqual(len(errors), 1, dump(events))
        self.assertIsNone(errors[0].get("log_failure"))
        text = formatEvent(errors[0]) or ""
        self.assertIn("could not save a ban", text)
        self.assertIn(str(state / "file" / BANS_FILE), text)
        self.assertIn("File exists", text)
        self.assertNotIn("203.0.113.7", dump(events))


class HTTPRequestTests(SynchronousTestCase):
    """How the site answers requests it will not serve."""

    fast_path = True

    def setUp(self) -> None:
        self.server = MemoryServer(fast_path=self.fast_path)

    def test_long_request_line_answered_400(self) -> None:
        """A URL over 16 KiB is answered 400 Bad Request, then the connection is closed."""
        client = raw_request(self.server, b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(client.status(), 400)
        self.assertTrue(client.lost)

    def test_long_header_line_answered_400(self) -> None:
        """A single header line over 16 KiB is answered 400 Bad Request, then the connection is closed."""
        client, pump = raw_connect(self.server, REMOTE)
        pump.clientIO.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(20):  # arriving in pieces, as over a real network
            pump.clientIO.write(b"y" * 1024)
            self.server.flush()
        self.assertEqual(client.status(), 400)
        self.assertTrue(client.lost)

    def test_http10_upgrade_refused_400(self) -> None:
        """A WebSocket upgrade over HTTP/1.0 is refused with 400 (RFC 6455 needs HTTP/1.1); no WebSocket opens."""
        request = handshake().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
        client = raw_request(self.server, request)
        self.assertEqual(client.received.split(b" ", 2)[1], b"400")
        self.assertNotIn(b"101", client.received.split(b"\r\n", 1)[0])
        self.assertEqual(self.server.lobby.online, 0)
        self.assertTrue(raw_request(self.server, handshake()).received.startswith(b"HTTP/1.1 101 "))

    def test_plain_get_ws_answered_426(self) -> None:
        """GET /ws without an upgrade is 426 Upgrade Required with Upgrade: websocket, and a body naming no software."""
        client = raw_request(self.server, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.received.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"))
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertIn((b"upgrade", b"websocket"), response_headers(head))
        self.assertTrue(body)
        self.assertNotRegex(body.lower(), rb"autobahn|twisted|\d+\.\d+")
        self.assertEqual(self.server.lobby.online, 0)

    def test_server_header_names_no_software_version(self) -> None:
        """No response (pages, errors, refusals, the handshake) names Twisted, Autobahn or a version in its headers."""
        requests = [  # static files need a real reactor to stream: see test_static_files_server_header
            b"HEAD /main.js HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
            handshake(),
            handshake().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1),
            handshake(origin="https://evil.example"),
            b"GET /" + b"a" * (17 * 1024) + b" HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
        ]
        for request in requests:
            head = raw_request(self.server, request).received.partition(b"\r\n\r\n")[0]
            self.assertRegex(head, rb"^HTTP/1\.[01] \d{3} ", request[:40])
            headers = response_headers(head)
            self.assertIn(dict(headers).get(b"server", b"chatroulette"), [b"chatroulette"], request[:40])
            for name, value in headers:
                self.assertNotRegex(value.lower(), rb"autobahn|twisted", (request[:40], name))


    def test_other_methods_answered_405_in_plain_text(self) -> None:
        """DELETE, PUT or POST to any page is a plain-text 405 naming GET and HEAD, with no deprecated HTML page."""
        for request in [
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        ]:
            head, _, body = raw_request(self.server, request).received.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 405 "), head)
            self.assertIn((b"allow", b"GET, HEAD"), response_headers(head))
            self.assertEqual(body, b"Method not allowed.\n")
        self.assertEqual([w["message"] for w in self.flushWarnings()], [])


def response_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (lower-cased name, value) pairs of a response head."""
    lines = head.split(b"\r\n")[1:]
    return [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]


class RepeatedReportTests(SynchronousTestCase):
    """A partner reported again from the same connection is one report."""

    fast_path = True

    def test_repeated_report_counted_and_logged_once(self) -> None:
        """Reporting the same partner three times: one report event, one in the metrics, one for moderation."""
        server = MemoryServer(fast_path=self.fast_path)
        moderation = Moderation(threshold=2)
        server.factory.moderation = moderation
        counted: list[tuple[str, str]] = []
        count = moderation.report

        def record(reporter: str, reported: str, now: float) -> float | None:
            counted.append((reporter, reported))
            return count(reporter, reported, now)

        moderation.report = record  # type: ignore[method-assign]
        events = capture_log(self)
        a, b = connect_as(server, REMOTE), connect_as(server, "198.51.100.23")
        a.send_json(type="invite")
        server.flush()
        b.send_json(type="find", invite=a.last("invite")["code"])
        server.flush()
        for _ in range(3):
            b.send_json(type="report", reason="rude")
        server.flush()
        self.assertEqual(len([e for e in events if e.get("event") == "report"]), 1)
        self.assertEqual(server.lobby.stats.reports, 1)
        self.assertEqual(counted, [("198.51.100.23", REMOTE)])
        self.assertNotIn("error", b.types())


also_without_fast_path(globals())
