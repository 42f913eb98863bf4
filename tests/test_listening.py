"""
Listening on --listen endpoints and saying where: the URL a person can open,
from the port actually bound.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent

from chatroulette.listening import ListeningService, serving_url

from .certs import make_certificate
from .loopback import RunningService, read_body


class ServingURLTests(SynchronousTestCase):
    def test_bound_ipv4_address(self) -> None:
        """A server bound to one IPv4 address is reached at that address and port."""
        self.assertEqual(serving_url(IPv4Address("TCP", "127.0.0.1", 8080)), "http://127.0.0.1:8080/")

    def test_wildcard_is_localhost(self) -> None:
        """A wildcard bind (IPv4 or IPv6, or none given) is shown as localhost."""
        for address in (
            IPv4Address("TCP", "0.0.0.0", 8080),
            IPv6Address("TCP", "::", 8080),
            IPv4Address("TCP", "", 8080),
        ):
            self.assertEqual(serving_url(address), "http://localhost:8080/")

    def test_ipv6_in_brackets(self) -> None:
        """An IPv6 address is bracketed, a zone index percent-escaped (RFC 6874)."""
        self.assertEqual(serving_url(IPv6Address("TCP", "::1", 8443), tls=True), "https://[::1]:8443/")
        self.assertEqual(
            serving_url(IPv6Address("TCP", "fe80::1%eth0", 8080)), "http://[fe80::1%25eth0]:8080/"
        )

    def test_tls_is_https(self) -> None:
        """A TLS endpoint is an https URL."""
        self.assertEqual(serving_url(IPv4Address("TCP", "0.0.0.0", 8443), tls=True), "https://localhost:8443/")

    def test_default_ports_omitted(self) -> None:
        """Port 80 for http and 443 for https are left out; the other way round they stay."""
        self.assertEqual(serving_url(IPv4Address("TCP", "0.0.0.0", 80)), "http://localhost/")
        self.assertEqual(serving_url(IPv4Address("TCP", "0.0.0.0", 443), tls=True), "https://localhost/")
        self.assertEqual(serving_url(IPv4Address("TCP", "0.0.0.0", 443)), "http://localhost:443/")
        self.assertEqual(serving_url(IPv4Address("TCP", "0.0.0.0", 80), tls=True), "https://localhost:80/")

    def test_unix_socket(self) -> None:
        """A Unix socket is shown as unix: and its path; an abstract one with @."""
        self.assertEqual(serving_url(UNIXAddress(b"/run/chat.sock")), "unix:/run/chat.sock")
        self.assertEqual(serving_url(UNIXAddress(b"\0chat")), "unix:@chat")


def serving_events(events: Any) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "serving"]


class ListeningServiceTests(SynchronousTestCase):
    def test_logs_url_when_listening(self) -> None:
        """Starting listens on the endpoint and logs one line with the URL and the WebSocket path."""
        memory = MemoryReactor()
        service = ListeningService("tcp:8080", Factory.forProtocol(Protocol), memory)
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        self.assertEqual(len(memory.tcpServers), 1)
        (event,) = serving_events(events)
        self.assertEqual(formatEvent(event), "chatroulette serving http://localhost:8080/ (WebSocket /ws)")
        self.assertEqual(event["listen"], "tcp:8080")
        self.assertEqual(service.url, "http://localhost:8080/")
        self.assertIs(self.successResultOf(service.when_listening()), service.port)

    def test_ssl_endpoint_is_https(self) -> None:
        """An ssl: endpoint is logged with an https URL."""
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        key, cert = make_certificate(Path(directory))
        memory = MemoryReactor()
        service = ListeningService(
            f"ssl:8443:privateKey={key}:certKey={cert}", Factory.forProtocol(Protocol), memory
        )
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(len(memory.sslServers), 1)
        (event,) = serving_events(events)
        self.assertEqual(event["url"], "https://localhost:8443/")

    def test_unix_endpoint(self) -> None:
        """A unix: endpoint is logged as unix: and its path."""
        service = ListeningService("unix:/tmp/chat.sock", Factory.forProtocol(Protocol), MemoryReactor())
        with capturedLogs() as events:
            service.startService()
        (event,) = serving_events(events)
        self.assertEqual(formatEvent(event), "chatroulette serving unix:/tmp/chat.sock (WebSocket /ws)")

    def test_failure_to_listen_raises_at_start(self) -> None:
        """If the port cannot be bound, starting raises (so twistd exits with the reason) and nothing is logged as serving."""
        broken = RaisingMemoryReactor(listenException=CannotListenError("", 8080, OSError("in use")))
        service = ListeningService("tcp:8080", Factory.forProtocol(Protocol), broken)
        with capturedLogs() as events:
            self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertEqual(serving_events(events), [])
        self.failureResultOf(service.when_listening(), CannotListenError)

    def test_stop_stops_listening(self) -> None:
        """Stopping stops listening on the port, and the result fires when it has."""
        service = ListeningService("tcp:8080", Factory.forProtocol(Protocol), MemoryReactor())
        endpoint = service.endpoint = FakeEndpoint()
        service.startService()
        endpoint.listening.callback(endpoint.port)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        endpoint.port.stopped.callback(None)
        self.successResultOf(stopped)
        self.assertIsNone(service.port)

    def test_stop_before_listening_cancels(self) -> None:
        """Stopping before the endpoint is listening cancels the attempt, quietly."""
        service = ListeningService("tcp:8080", Factory.forProtocol(Protocol), MemoryReactor())
        endpoint = service.endpoint = FakeEndpoint()
        with capturedLogs() as events:
            service.startService()
            waiting = service.when_listening()
            self.successResultOf(service.stopService())
        self.assertTrue(endpoint.cancelled)
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertEqual(list(events), [])


class FakePort:
    def __init__(self) -> None:
        self.stopped: defer.Deferred[None] = defer.Deferred()

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "0.0.0.0", 8080)

    def stopListening(self) -> defer.Deferred[None]:
        return self.stopped


class FakeEndpoint:
    """An endpoint whose listening and stopping the test drives."""

    def __init__(self) -> None:
        self.port = FakePort()
        self.cancelled = False
        self.listening: defer.Deferred[FakePort] = defer.Deferred(self.cancel)

    def cancel(self, d: defer.Deferred[FakePort]) -> None:
        self.cancelled = True

    def listen(self, factory: object) -> defer.Deferred[FakePort]:
        return self.listening


def free_port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest_twisted.async_yield_fixture()
async def listening() -> AsyncIterator[tuple[ListeningService, list[dict[str, Any]]]]:
    from twisted.web.server import Site
    from twisted.web.static import Data

    page = Data(b"hello", "text/plain")
    page.isLeaf = True
    service = ListeningService("tcp:0:interface=127.0.0.1", Site(page), reactor)
    with capturedLogs() as events:
        service.startService()
        await service.when_listening()
        yield service, list(events)
    if service.running:
        await defer.maybeDeferred(service.stopService)


@pytest_twisted.ensureDeferred
async def test_real_port_zero_logged_with_bound_port(
    listening: tuple[ListeningService, list[dict[str, Any]]],
) -> None:
    """Listening on tcp:0 logs the port the kernel chose, and that URL serves; stopping closes it."""
    service, events = listening
    (event,) = serving_events(events)
    port = service.port
    assert port is not None
    number = port.getHost().port  # type: ignore[attr-defined]
    assert number != 0
    assert event["url"] == f"http://127.0.0.1:{number}/"
    response = await Agent(reactor).request(b"GET", event["url"].encode())
    assert await read_body(response) == b"hello"
    await defer.maybeDeferred(service.stopService)
    assert free_port_closed(number)


@pytest_twisted.ensureDeferred
async def test_service_logs_where_it_serves() -> None:
    """The service makeService builds logs one serving line per --listen, with the real port."""
    with capturedLogs() as events:
        running = await RunningService.start("--listen", "tcp:0:interface=127.0.0.1")
        # Stopped inside: the service wraps the observers it finds, this one included.
        await running.stop()
    urls = [e["url"] for e in serving_events(events)]
    assert len(urls) == 2
    assert f"http://127.0.0.1:{running.port}/" in urls
    assert all(url.startswith("http://127.0.0.1:") and not url.endswith(":0/") for url in urls)
