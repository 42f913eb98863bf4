"""
The HTTP side: the browser client at C{/}, the WebSocket at C{/ws},
C{/healthz} and C{/metrics}.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, cast

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol, ITCPTransport, ITransport
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.web import http
from twisted.web.http import HTTPChannel, datetimeToLogString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from .limits import Slot
from .logbudget import client_text
from .messages import BAD_REQUEST, ERROR_CODES, NOT_CHATTING, RATE_LIMITED
from .internals import hide_address_in_logs
from .protocol import ChatServerFactory
from .redislink import LATENCY_BUCKETS
from .redislobby import RedisLobby
from .refusal import Refusals

MAX_REQUEST_HEADER_BYTES = 16 * 1024
"""Request line plus headers; more is answered 400 and the connection closed."""
MAX_REQUEST_BODY_BYTES = 64 * 1024
"""Nothing here takes a request body; bigger ones are answered 413."""
DEFAULT_HTTP_IDLE_TIMEOUT = 30.0
WEBSOCKET_PATH = "/ws"
"""Where the chat's WebSocket is served."""

_access_log = Logger(namespace=f"{__name__}.access")


def _field(value: bytes) -> str:
    """A client-chosen part of an access-log line: escaped (quotes too) and capped."""
    return client_text(value, escape='"')


SERVER = b"chatroulette"
"""The C{Server} header of every response: no software name or version."""

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


def _reads_only(request: Request) -> bytes | None:
    """
    A plain-text 405 for any method but GET and HEAD (nothing here takes
    another), or None.  Twisted's own answer is an HTML page its newer
    versions deprecate.
    """
    if request.method in (b"GET", b"HEAD"):
        return None
    request.setResponseCode(405)
    request.setHeader(b"Allow", b"GET, HEAD")
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Method not allowed.\n"


class ReadOnly(Resource):
    """A resource answering GET (and HEAD) only."""

    def render(self, request: Request) -> bytes | int:
        refusal = _reads_only(request)
        if refusal is not None:
            return refusal
        result: bytes | int = super().render(request)
        return result


class StaticFiles(File):
    """Static files with strict security headers on every response."""

    def render(self, request: Request) -> bytes | int:
        _security_headers(request)
        refusal = _reads_only(request)
        if refusal is not None:
            return refusal
        result: bytes | int = super().render(request)
        return result

    def directoryListing(self) -> Resource:
        return self.forbidden

    def getChild(self, path: bytes, request: Request) -> Resource:
        # A path segment that is not UTF-8 (GET /%ff) is simply not found;
        # static.File would also log a traceback for it.
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return cast(Resource, self.childNotFound)
        child: Resource = super().getChild(path, request)
        return child


def _short_answer(request: Request, code: int, reason: bytes, body: bytes) -> bytes:
    """An error answer of one plain-text line, naming no software."""
    request.setResponseCode(code, reason)  # Twisted has no reason phrase for 426
    _security_headers(request)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return body


class ChatWebSocketResource(WebSocketResource):
    """
    Autobahn's C{WebSocketResource}, plus: bytes a client sent right after its
    handshake request, in the same packet (its first frames), are handed to
    the WebSocket protocol.  Twisted's HTTP parser still holds them when the
    resource renders and would otherwise buffer them as a pipelined request,
    where they would be lost.
    """

    def render(self, request: Request) -> bytes | int:
        if request.clientproto != b"HTTP/1.1":
            # RFC 6455 4.1: the opening handshake is an HTTP/1.1 request.
            # Autobahn's resource rewrites the request line as HTTP/1.1, so
            # it would upgrade an HTTP/1.0 request.
            return _short_answer(request, 400, b"Bad Request", b"WebSocket connections need HTTP/1.1.\n")
        upgrade = request.getHeader(b"upgrade") or b""
        if b"websocket" not in [token.strip().lower() for token in upgrade.split(b",")]:
            # Not a WebSocket handshake: Autobahn would answer with a page
            # naming itself and its version.
            request.setHeader(b"Upgrade", b"websocket")
            request.setHeader(b"Connection", b"Upgrade")
            return _short_answer(
                request, 426, b"Upgrade Required", b"This address takes WebSocket connections only.\n"
            )
        channel = request.channel
        transport: Any = channel.transport
        with _handing_over(channel):
            result: bytes | int = super().render(request)
        if transport is not None and channel.transport is None and isinstance(channel, GuardedChannel):
            protocol = getattr(transport, "wrappedProtocol", None) or transport.protocol
            channel.upgraded = getattr(protocol, "wrappedProtocol", protocol)
        return result


@contextmanager
def _handing_over(channel: object) -> Iterator[None]:
    """
    While a WebSocket protocol takes over C{channel}'s connection, offer it
    the connection's place in the count (L{Admission.handing_over}), so the
    connection stays counted once from accept to close.  Should the
    connection go to a protocol that does not claim it, nothing would ever
    release it: it is then no longer counted.
    """
    if not isinstance(channel, GuardedChannel) or channel.slot is None:
        yield
        return
    admission = channel.site.chat.admission
    with admission.handing_over(channel.slot):
        yield
        unclaimed = admission.claim()
    if unclaimed is not None and channel.transport is None:
        unclaimed.release()


class Health(ReadOnly):
    """C{GET /healthz}: liveness plus the lobby's counts, as JSON."""

    isLeaf = True

    def __init__(self, factory: ChatServerFactory) -> None:
        super().__init__()
        self._factory = factory

    def render_GET(self, request: Request) -> bytes:
        lobby = self._factory.lobby
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        ready = lobby.ready
        if not ready:
            # A load balancer routes around a node that cannot reach the shared lobby.
            request.setResponseCode(503)
        body: dict[str, object] = {
            "status": "ok" if ready else "degraded",
            "online": lobby.online,
            "waiting": lobby.waiting,
            "chatting": lobby.chatting,
        }
        if isinstance(lobby, RedisLobby):
            online, waiting, chatting = lobby.local_counts
            body["node"] = {
                "id": lobby.node,
                "redis": "ready" if ready else "unavailable",
                "online": online,
                "waiting": waiting,
                "chatting": chatting,
            }
        return json.dumps(body).encode()


# Why a signal can be refused: always listed, at 0 until it happens.
SIGNAL_REFUSALS = (BAD_REQUEST, NOT_CHATTING, RATE_LIMITED, "flood")


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
        addresses = factory.admission.addresses
        yield GaugeMetricFamily(
            "chatroulette_open_connections",
            "Open TCP connections, HTTP and WebSocket, as counted against --max-connections.",
            value=addresses.total,
        )
        yield GaugeMetricFamily(
            "chatroulette_max_connections",
            "The --max-connections cap (0: none).",
            value=addresses.max_connections,
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
            "chatroulette_video_chats",
            "Video chats started since start (of chatroulette_pairings).",
            value=stats.video_pairings,
        )
        yield CounterMetricFamily(
            "chatroulette_signals_relayed",
            "WebRTC signals relayed to a partner in a video chat.",
            value=stats.signals,
        )
        yield _by_label(
            "chatroulette_signals_refused",
            "WebRTC signals refused, by error code (flood: closed for flooding).",
            "code",
            SIGNAL_REFUSALS,
            factory.signals_refused,
        )
        yield CounterMetricFamily(
            "chatroulette_messages_relayed",
            "Chat messages relayed to a partner.",
            value=stats.messages,
        )
        yield CounterMetricFamily(
            "chatroulette_reports", "Partners reported by users.", value=stats.reports
        )
        yield _by_label(
            "chatroulette_errors",
            "Requests refused or connections failed, by code.",
            "code",
            ERROR_CODES,
            factory.errors,
        )
        if isinstance(lobby, RedisLobby):
            yield from _cluster_metrics(lobby)
        yield _by_label(
            "chatroulette_refused",
            "Connections refused or cut off before the WebSocket opened, by reason.",
            "reason",
            REFUSAL_REASONS,
            factory.refused,
        )


def _cluster_metrics(lobby: RedisLobby) -> Iterator[Metric]:
    """A cluster node's own figures (the counts above are the whole cluster's)."""
    stats = lobby.link_stats
    yield GaugeMetricFamily(
        "chatroulette_redis_ready", "1 when this node is connected to Redis and ready, else 0.", value=int(lobby.ready)
    )
    histogram = HistogramMetricFamily(
        "chatroulette_redis_latency_seconds", "Round trip of the lobby's Redis script calls."
    )
    cumulative, buckets = 0, []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_buckets):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    histogram.add_metric([], buckets, stats.latency_sum)
    yield histogram
    yield CounterMetricFamily(
        "chatroulette_cross_node_messages",
        "Messages, typing and signals relayed to a partner on another node.",
        value=lobby.cross_node_messages,
    )
    yield CounterMetricFamily(
        "chatroulette_redis_reconnects", "Connections to Redis lost (each is reconnected).", value=stats.reconnects
    )
    yield CounterMetricFamily(
        "chatroulette_dead_nodes_swept",
        "Nodes this node declared dead (no heartbeat) and removed from the lobby.",
        value=stats.swept,
    )


def _by_label(
    name: str, documentation: str, label: str, known: Iterable[str], counts: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter per value of C{label}: every C{known} one (0 until counted), and any other counted."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted(set(known) | set(counts)):
        family.add_metric([value], counts.get(value, 0))
    return family


class Metrics(ReadOnly):
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
    root.putChild(WEBSOCKET_PATH.strip("/").encode(), ChatWebSocketResource(factory))
    root.putChild(b"healthz", Health(factory))
    registry = CollectorRegistry()
    registry.register(ChatCollector(factory))
    root.putChild(b"metrics", Metrics(registry))
    return root


REFUSAL_REASONS = (
    "origin",
    "connections",
    "handshake_rate",
    "shutting_down",
    "request_timeout",
    "request_too_large",
    "proxy_header",
    "max_connections",
    "reserved",
)


class GuardedChannel(HTTPChannel):
    """
    An C{HTTPChannel} that gives each request a deadline to arrive in full
    (request line, headers and body), however slowly its bytes trickle in,
    and refuses request bodies this server has no use for.

    Twisted's own idle timeout restarts on every byte, so a client sending
    one byte a second (slowloris) would hold a connection forever.  After a
    WebSocket upgrade the channel is out of the picture (Autobahn's protocol
    takes the transport), and Autobahn's opening-handshake timeout applies.
    """

    site: GuardedSite
    totalHeadersSize = MAX_REQUEST_HEADER_BYTES
    # The longest single line (request line or header); LineReceiver's own
    # answer to a longer one is to drop the connection without a word.
    MAX_LENGTH = MAX_REQUEST_HEADER_BYTES
    _deadline: IDelayedCall | None = None
    _body_bytes = 0
    _refused = False
    # Between a request's last byte and its response's end (Twisted keeps
    # its own flag for this, privately).
    _busy = False
    # The WebSocket protocol that took this connection over, if any.
    upgraded: IProtocol | None = None
    # This connection's place in the connection count (see GuardedSite).
    slot: Slot | None = None

    def logPrefix(self) -> str:
        # Twisted tags legacy log lines written while it handles this
        # connection with the transport's log prefix: "<this>,<session>,<address>".
        return "HTTPChannel"

    def makeConnection(self, transport: ITransport) -> None:
        # Keep the client's address out of the log lines Twisted writes about
        # this connection and its listening port (--log-addresses): labelled
        # (hashed) or left out, like every other address in the logs.  This
        # also holds once a WebSocket has taken the connection over.
        chat = self.site.chat
        if chat.hooks.log_privacy:
            hide_address_in_logs(transport, chat.address_label)
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.chat.refused["request_timeout"] += 1
        cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and not self._busy:
            # The first byte of the next request on a kept-alive connection.
            self._start_deadline()
        super().dataReceived(data)
        if self.upgraded is not None:
            # The WebSocket protocol has the connection now and this channel
            # gets no more data.  The upgrade request, never finished, and
            # this channel refer to each other: let go of it, so that both
            # are freed now by reference counting rather than later by the
            # cyclic garbage collector (about 27 objects per handshake, which
            # made full collections slow while thousands of clients connect).
            del self.requests[:]

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        self._body_bytes = 0
        if self.length is not None and self.length > MAX_REQUEST_BODY_BYTES:
            self._refuse_body()

    def rawDataReceived(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.dataReceived(data)
            return
        if self._refused:
            return
        if not self._busy:
            self._body_bytes += len(data)
            if self._body_bytes > MAX_REQUEST_BODY_BYTES + 1024:  # room for chunk framing
                self._refuse_body()
                return
        super().rawDataReceived(data)

    def _refuse_body(self) -> None:
        self.site.chat.refused["request_too_large"] += 1
        self._refuse(b"413 Content Too Large")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(b"400 Bad Request")

    def _refuse(self, status: bytes) -> None:
        """Answer C{status} with no body, close, and ignore whatever else arrives."""
        self._refused = True
        self._cancel_deadline()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.transport.loseConnection()

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        self._busy = True
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self._busy = False
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        if self.slot is not None:
            self.slot.release()
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        # An idle kept-alive connection: close it, without Twisted's log
        # line naming the client's address.
        self.loseConnection()


class ChatRequest(Request):
    """A request whose response's C{Server} header is L{SERVER}, not Twisted's C{TwistedWeb/x.y}."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode() if isinstance(name, str) else name).lower() == b"server":
            value = SERVER
        super().setHeader(name, value)


class GuardedSite(Site):
    """A C{Site} whose connections are L{GuardedChannel}s, timed on the chat factory's clock."""

    requestFactory = ChatRequest

    def __init__(self, root: Resource, chat: ChatServerFactory, **kwargs: Any) -> None:
        def access_log(timestamp: str, request: Request) -> str:
            # The combined log format, with the address hashed or dropped
            # (--log-addresses) instead of in the clear, and what the client
            # chose (method, path, protocol, Referer, User-Agent) escaped and
            # capped: a request line and headers may be 16 KB long.  Without
            # addresses the line keeps no more of the request than its path:
            # no query string, Referer or User-Agent, which can identify a
            # person too.
            host = str(getattr(request.getClientAddress(), "host", "-"))
            if chat.settings.log_addresses:
                target = request.uri
                referrer = request.getHeader(b"referer") or b"-"
                agent = request.getHeader(b"user-agent") or b"-"
            else:
                target, referrer, agent = request.path, b"-", b"-"
            return (
                f'"{chat.address_label(host)}" - - {timestamp} '
                f'"{_field(request.method)} {_field(target)} {_field(request.clientproto)}" '
                f'{request.code} {request.sentLength or "-"} "{_field(referrer)}" "{_field(agent)}"'
            )

        super().__init__(root, reactor=chat.clock, logFormatter=access_log, **kwargs)
        self._access_line = access_log
        self.chat = chat
        self.request_timeout = chat.settings.open_handshake_timeout
        self.refusals = Refusals(chat.clock)
        self._accepted: Slot | None = None

    def buildProtocol(self, addr: IAddress | None) -> IProtocol:  # type: ignore[override]
        """
        Count the connection just accepted (L{Admission.accept}: the global
        cap, the per-address cap and the reserve) and give its channel its
        L{Slot}; or refuse it at once, with a fixed response and no channel.
        """
        opened = self.chat.admission.accept(str(getattr(addr, "host", "")))
        if isinstance(opened, str):
            return self.refusals.protocol(opened)
        self._accepted = opened
        try:
            protocol: IProtocol = super().buildProtocol(addr)
        except BaseException:
            opened.release()
            raise
        finally:
            self._accepted = None
        return protocol

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/1.1 only, even where the h2 package would let Twisted offer
        # HTTP/2 over TLS: its channel would replace the GuardedChannel, and
        # with it the request deadline and the release of the connection's
        # Slot.  (WebSockets need HTTP/1.1 anyway.)
        return [b"http/1.1"]

    def protocol(self) -> GuardedChannel:  # type: ignore[override]
        # Twisted annotates this as its private HTTP/1.1-or-2 wrapper; any
        # HTTPChannel works, and this server speaks HTTP/1.1 only.
        channel = GuardedChannel()
        channel.slot = self._accepted
        return channel

    def log(self, request: http.Request) -> None:
        """
        The access log: one event per request answered, its message the
        combined-format line, with the C{status} in a field of its own (the
        log budget counts 4xx answers among refused requests).
        """
        line = self._access_line(datetimeToLogString(self.reactor.seconds()), cast(Request, request))
        _access_log.info("{line}", line=line, status=request.code, event="access")


def build_site(
    factory: ChatServerFactory,
    static_dir: Path | None = None,
    idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT,
) -> GuardedSite:
    """The C{Site} serving everything on one port."""
    site = GuardedSite(build_root(factory, static_dir), factory, timeout=idle_timeout)
    site.displayTracebacks = False
    return site
