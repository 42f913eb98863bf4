"""
Load tests: the service started in-process on a loopback port, driven by the
load tool (L{chatroulette.load}) through the public WebSocket protocol.

Runnable by trial (C{python -m twisted.trial tests.test_load}) and by pytest.
C{CHATROULETTE_LOAD_SCALE=N} multiplies the number of clients by N for a real
load run (see C{benchmarks/README.md}).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Coroutine

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from chatroulette.load import ClientConfig, Report, run_churn, run_relay, run_soak

from .certs import make_certificate
from .children import run_child
from .loopback import RunningService, listeners, read_body

SCALE = max(1, int(os.environ.get("CHATROULETTE_LOAD_SCALE", "1")))
ROOT = Path(__file__).resolve().parent.parent



def deferred_test(
    f: Callable[[LoadTests], Coroutine[Any, Any, None]],
) -> Callable[[LoadTests], defer.Deferred[None]]:
    """Let trial (which wants Deferreds) run an C{async def} test."""

    def wrapper(self: LoadTests) -> defer.Deferred[None]:
        return defer.ensureDeferred(f(self))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper




class LoadTests(TestCase):
    """Short load runs against the real service on loopback."""

    timeout = 60 * SCALE

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        async def start() -> None:
            self.service = await RunningService.start()

        return defer.ensureDeferred(start())

    def tearDown(self) -> defer.Deferred[None]:  # type: ignore[override]
        return defer.ensureDeferred(self.stop())

    async def stop(self) -> None:
        await self.service.stop()

    async def health(self) -> dict[str, Any]:
        response = await Agent(reactor).request(b"GET", (self.service.http + "/healthz").encode())
        body: dict[str, Any] = json.loads(await read_body(response))
        return body

    async def start_tls(self) -> tuple[str, str]:
        """Also listen with TLS on loopback; return the C{wss://} URL and the CA file."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        key, cert = make_certificate(directory)
        await self.service.stop()
        self.service = await RunningService.start(
            "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        tls = listeners(self.service.service)[1]
        port = (await tls.when_listening()).getHost().port  # type: ignore[attr-defined]
        return f"wss://localhost:{port}/ws", str(cert)

    async def assert_lobby_empties(self, timeout: float = 10.0) -> None:
        """The lobby's online/waiting/chatting counts all reach zero in time."""
        deadline = reactor.seconds() + timeout
        while True:
            counts = await self.health()
            if counts["online"] == counts["waiting"] == counts["chatting"] == 0:
                return
            if reactor.seconds() > deadline:
                self.fail(f"lobby not empty after the run: {counts}")
            await task.deferLater(reactor, 0.05)

    def assert_clean(self, report: Report, clients: int) -> None:
        """Everyone connected and was paired; nothing lost, duplicated, reordered or refused."""
        self.assertEqual(report.connections_opened, clients, report)
        self.assertEqual(report.connections_failed, 0)
        self.assertEqual(report.connections_dropped, 0)
        self.assertEqual(report.clients_paired, clients)
        self.assertGreater(report.messages_delivered, 0)
        self.assertEqual(report.messages_delivered, report.messages_sent - report.messages_refused)
        self.assertEqual(report.messages_lost, 0)
        self.assertEqual(report.messages_duplicated, 0)
        self.assertEqual(report.messages_reordered, 0)
        self.assertEqual(report.messages_misrouted, 0)
        self.assertEqual(report.latency_ms.count, report.messages_delivered)
        self.assertEqual(report.problems(), [])

    @deferred_test
    async def test_relay(self) -> None:
        """Pairs relaying at a steady rate lose, duplicate and reorder nothing."""
        pairs = 100 * SCALE
        report = await run_relay(self.service.url, pairs, rate=2.0, duration=2.0)
        self.assert_clean(report, 2 * pairs)
        self.assertEqual(report.pairings, pairs)
        self.assertEqual(report.messages_refused, 0)
        self.assertEqual(report.messages_sent, 2 * pairs * 2 * 2)
        self.assertEqual(report.errors, {})
        await self.assert_lobby_empties()

    @deferred_test
    async def test_churn(self) -> None:
        """Clients moving on after every message are all paired, many times, losing nothing."""
        clients = 200 * SCALE
        report = await run_churn(self.service.url, clients, duration=2.5)
        self.assert_clean(report, clients)
        self.assertGreater(report.pairings, clients)
        self.assertGreaterEqual(report.pairing_wait_ms.count, clients)
        self.assertLessEqual(report.pairing_wait_ms.count, 2 * report.pairings)
        self.assertEqual(report.errors, {})
        await self.assert_lobby_empties()

    @deferred_test
    async def test_soak(self) -> None:
        """Mostly idle paired connections stay open and their occasional messages arrive."""
        clients = 300 * SCALE
        report = await run_soak(self.service.url, clients, duration=2.0, interval=1.0)
        self.assert_clean(report, clients)
        self.assertEqual(report.messages_sent, clients * 2)
        await self.assert_lobby_empties()

    @deferred_test
    async def test_as_fast_as_allowed(self) -> None:
        """By default the tool sends as fast as the server's rate limits allow, and no faster."""
        report = await run_relay(self.service.url, 10, rate=None, duration=2.0)
        self.assert_clean(report, 20)
        self.assertEqual(report.messages_sent, 20 * 4 * 2)
        self.assertEqual(report.errors, {})
        await self.assert_lobby_empties()

    @deferred_test
    async def test_rate_above_limit_refused(self) -> None:
        """Asking for more than the client-side rate limit is refused before connecting."""
        with self.assertRaises(ValueError):
            await run_relay(self.service.url, 1, rate=10.0, duration=1.0)
        health = await self.health()
        self.assertEqual(health["online"], 0)

    @deferred_test
    async def test_tls(self) -> None:
        """wss:// verifies the certificate: a self-signed one needs --ca-cert (or --insecure)."""
        url, ca = await self.start_tls()
        refused = await run_relay(url, 1, rate=1.0, duration=0.5, config=ClientConfig(drain=0.5))
        self.assertEqual(refused.connections_failed, 2)
        self.assertNotEqual(refused.problems(), [])
        for config in (ClientConfig(ca_cert=ca), ClientConfig(insecure=True)):
            report = await run_relay(url, 2, rate=2.0, duration=1.0, config=config)
            self.assert_clean(report, 4)
        await self.assert_lobby_empties()

    @deferred_test
    async def test_command_line(self) -> None:
        """The console script prints a JSON report and exits 0 when nothing was lost."""
        child = await run_child(
            reactor,
            sys.executable,
            ["-m", "chatroulette.load", "relay", self.service.url, "--pairs", "10", "--rate", "2",
             "--duration", "1", "--json"],
            env=os.environ,
            path=str(ROOT),
        )
        report = json.loads(child.check())
        self.assertEqual(report["connections_opened"], 20)
        self.assertEqual(report["messages_delivered"], report["messages_sent"])
        self.assertEqual(report["messages_lost"], 0)
        await self.assert_lobby_empties()

    @deferred_test
    async def test_command_line_fails(self) -> None:
        """The console script exits non-zero when it cannot connect."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        child = await run_child(
            reactor,
            sys.executable,
            ["-m", "chatroulette.load", "churn", f"ws://127.0.0.1:{closed_port}/ws", "--clients", "3",
             "--duration", "0.5", "--quiet"],
            env=os.environ,
            path=str(ROOT),
        )
        self.assertEqual((child.exit_code, child.signal), (1, None), child.describe())
        self.assertIn(b"failed 3", child.out, child.describe())
        self.assertIn(b"FAIL", child.out, child.describe())

