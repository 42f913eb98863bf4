"""
The HTTP side: the browser client at C{/}, the WebSocket at C{/ws},
C{/healthz} and C{/metrics}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from .messages import ERROR_CODES
from .protocol import ChatServerFactory

# No inline script or style, no third-party origin: the client is plain files
# from this server, talking WebSocket to this server.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    b"object-src 'none'"
)


def default_static_dir() -> Path:
    """The packaged browser client, or C{static/} beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError("The browser client (static/index.html) is not installed.")


def _security_headers(request: Request) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")


class StaticFiles(File):
    """Static files with strict security headers on every response."""

    def render(self, request: Request) -> bytes | int:
        _security_headers(request)
        result: bytes | int = super().render(request)
        return result

    def directoryListing(self) -> Resource:
        return self.forbidden


class Health(Resource):
    """C{GET /healthz}: liveness plus the lobby's counts, as JSON."""

    isLeaf = True

    def __init__(self, factory: ChatServerFactory) -> None:
        super().__init__()
        self._factory = factory

    def render_GET(self, request: Request) -> bytes:
        lobby = self._factory.lobby
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        body = {
            "status": "ok",
            "online": lobby.online,
            "waiting": lobby.waiting,
            "chatting": lobby.chatting,
        }
        return json.dumps(body).encode()


class ChatCollector(Collector):
    """Reads the factory's and lobby's counters at scrape time (nothing on the hot path)."""

    def __init__(self, factory: ChatServerFactory) -> None:
        self._factory = factory

    def collect(self) -> Iterator[Metric]:
        factory, lobby = self._factory, self._factory.lobby
        stats = lobby.stats
        yield GaugeMetricFamily(
            "chatroulette_connections", "Open WebSocket connections.", value=len(factory.protocols)
        )
        yield CounterMetricFamily(
            "chatroulette_connections",
            "WebSocket connections opened since start.",
            value=factory.connections_total,
        )
        yield GaugeMetricFamily(
            "chatroulette_waiting", "Clients waiting for a partner.", value=lobby.waiting
        )
        yield GaugeMetricFamily(
            "chatroulette_pairs", "Chats in progress.", value=lobby.chatting // 2
        )
        yield CounterMetricFamily(
            "chatroulette_pairings", "Chats started since start.", value=stats.pairings
        )
        yield CounterMetricFamily(
            "chatroulette_messages_relayed",
            "Chat messages relayed to a partner.",
            value=stats.messages,
        )
        yield CounterMetricFamily(
            "chatroulette_reports", "Partners reported by users.", value=stats.reports
        )
        errors = CounterMetricFamily(
            "chatroulette_errors", "Requests refused or connections failed, by code.", labels=["code"]
        )
        for code in sorted(set(ERROR_CODES) | set(factory.errors)):
            errors.add_metric([code], factory.errors[code])
        yield errors


class Metrics(Resource):
    """C{GET /metrics}: Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self._registry)


def build_root(factory: ChatServerFactory, static_dir: Path | None = None) -> Resource:
    """The resource tree: C{/}, C{/ws}, C{/healthz}, C{/metrics}."""
    root = StaticFiles(str(static_dir or default_static_dir()))
    root.putChild(b"ws", WebSocketResource(factory))
    root.putChild(b"healthz", Health(factory))
    registry = CollectorRegistry()
    registry.register(ChatCollector(factory))
    root.putChild(b"metrics", Metrics(registry))
    return root


def build_site(factory: ChatServerFactory, static_dir: Path | None = None) -> Site:
    """The C{Site} serving everything on one port."""
    site = Site(build_root(factory, static_dir))
    site.displayTracebacks = False
    return site
