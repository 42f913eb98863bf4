"""
End to end over real loopback sockets: the service as makeService builds it.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent

from .loopback import RunningService, open_client, read_body


@pytest_twisted.async_yield_fixture()
async def service() -> AsyncIterator[RunningService]:
    running = await RunningService.start()
    yield running
    await running.stop()


async def get(url: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    response = await Agent(reactor).request(b"GET", url.encode())
    body = await read_body(response)
    return response.code, dict(response.headers.getAllRawHeaders()), body


@pytest_twisted.ensureDeferred
async def test_two_strangers_chat(service: RunningService) -> None:
    """Two clients over real sockets are paired, chat, and one leaves."""
    a = await open_client(service.url)
    b = await open_client(service.url)
    assert (await a.next())["type"] == "welcome"
    assert (await b.next()) == {"type": "welcome", "online": 2}
    a.send_json(type="find", interests=["Cats"])
    assert (await a.next()) == {"type": "waiting"}
    b.send_json(type="find", interests=["cats"])
    paired = await a.next()
    assert paired["type"] == "paired" and paired["interests"] == ["cats"]
    assert (await b.next()) == paired
    a.send_json(type="message", text="hello over TCP")
    assert (await b.next()) == {"type": "message", "text": "hello over TCP"}
    b.send_json(type="typing", active=True)
    assert (await a.next()) == {"type": "typing", "active": True}
    a.dropConnection(abort=True)
    assert (await b.next()) == {"type": "partner_left", "chat": paired["chat"]}
    b.sendClose()
    await b.closed


@pytest_twisted.ensureDeferred
async def test_page_health_and_metrics(service: RunningService) -> None:
    """The client page, /healthz and /metrics are served over HTTP."""
    code, headers, body = await get(service.http + "/")
    assert code == 200
    assert b"<html" in body.lower()
    assert headers[b"X-Content-Type-Options"] == [b"nosniff"]
    assert b"script-src 'self'" in headers[b"Content-Security-Policy"][0]
    code, _, body = await get(service.http + "/healthz")
    assert code == 200
    assert json.loads(body) == {"status": "ok", "online": 0, "waiting": 0, "chatting": 0}
    code, headers, body = await get(service.http + "/metrics")
    assert code == 200
    assert headers[b"Content-Type"][0].startswith(b"text/plain")
    assert b"chatroulette_pairings_total 0.0" in body
    code, _, _ = await get(service.http + "/no-such-file")
    assert code == 404
