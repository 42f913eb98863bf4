"""
TLS: --listen ssl:... serves the page over https and the chat over wss,
checked by clients that verify the (throwaway) certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, cast

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from chatroulette.tap import Options, makeService

from .certs import make_certificate
from .loopback import QueueClient, listeners, read_body




class TLSService:
    def __init__(self, service: MultiService, port: int, cert: Path) -> None:
        self.service, self.port = service, port
        self.trust = Certificate.loadPEM(cert.read_bytes())


@pytest_twisted.async_yield_fixture()
async def tls_service(tmp_path: Path) -> AsyncIterator[TLSService]:
    key, cert = make_certificate(tmp_path)
    options = Options()
    options.parseOptions(
        ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    )
    service = makeService(options)
    service.startService()
    port = (await listeners(service)[0].when_listening()).getHost().port  # type: ignore[attr-defined]
    yield TLSService(service, port, cert)
    await defer.maybeDeferred(service.stopService)


async def open_wss(running: TLSService) -> QueueClient:
    factory = WebSocketClientFactory(f"wss://localhost:{running.port}/ws")
    factory.protocol = QueueClient
    factory.setProtocolOptions(failByDrop=False)
    endpoint = endpoints.wrapClientTLS(
        optionsForClientTLS("localhost", trustRoot=running.trust),
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", running.port),
    )
    client = cast(QueueClient, await endpoint.connect(factory))
    await client.opened
    return client


@pytest_twisted.ensureDeferred
async def test_wss_chat(tls_service: TLSService) -> None:
    """Two clients verifying the certificate chat over wss://."""
    a, b = await open_wss(tls_service), await open_wss(tls_service)
    await a.next("welcome")
    await b.next("welcome")
    a.send_json(type="find")
    b.send_json(type="find")
    await a.next("paired")
    await b.next("paired")
    a.send_json(type="message", text="over TLS")
    assert (await b.next("message")) == {"type": "message", "text": "over TLS"}
    a.sendClose()
    b.sendClose()
    assert (await a.closed) == 1000
    await b.closed


@pytest_twisted.ensureDeferred
async def test_https_page(tls_service: TLSService) -> None:
    """The page is served over https with its security headers."""
    agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=tls_service.trust))
    response = await agent.request(b"GET", f"https://127.0.0.1:{tls_service.port}/".encode())
    body = await read_body(response)
    assert response.code == 200
    assert b"<html" in body.lower()
    assert response.headers.getRawHeaders(b"X-Content-Type-Options") == [b"nosniff"]


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_refused(tls_service: TLSService, tmp_path: Path) -> None:
    """A client trusting another certificate refuses the connection: verification is real."""
    other = tmp_path / "other"
    other.mkdir()
    _, other_cert = make_certificate(other)
    tls_service.trust = Certificate.loadPEM(other_cert.read_bytes())
    with pytest.raises(ConnectionError):
        await open_wss(tls_service)
