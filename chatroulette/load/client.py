"""
One simulated user: a WebSocket client that speaks the public protocol,
paces itself under the server's rate limits and tells its L{Run} what it sees.

L{ClientConfig} holds the options every scenario shares; L{client_endpoint}
connects over TCP or TLS.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, platformTrust

from ..limits import TokenBucket
from .stats import Progress, encode_probe

if TYPE_CHECKING:
    from .scenarios import Run

# The server's default limits per connection are 5 messages a second (burst
# 10) and 2 requests (find, leave...) a second (burst 10): stay 20% under.
DEFAULT_MAX_RATE = 4.0
DEFAULT_MAX_REQUEST_RATE = 1.6
DEFAULT_BURST = 5.0
MESSAGE = "message"
REQUEST = "request"
NOT_CHATTING = "not_chatting"
RATE_LIMITED = "rate_limited"

# The server encodes relayed messages compactly, in this key order; frames
# that do not start like this take the general JSON path.
_MESSAGE_PREFIX = b'{"type":"message","text":"'

now = time.monotonic


@dataclass(frozen=True)
class ClientConfig:
    """How the load clients connect and pace themselves (shared by all scenarios)."""

    size: int = 64
    """Characters per chat message (probes are padded up to this)."""
    max_rate: float | None = DEFAULT_MAX_RATE
    """Chat messages a second per connection; L{None} for no client-side limit."""
    max_request_rate: float | None = DEFAULT_MAX_REQUEST_RATE
    """Requests (C{find}) a second per connection; L{None} for no client-side limit."""
    burst: float = DEFAULT_BURST
    """How many of each kind may go out back to back."""
    insecure: bool = False
    """For C{wss://}: accept any certificate (self-signed test servers)."""
    ca_cert: str | None = None
    """For C{wss://}: trust this PEM certificate instead of the system's roots."""
    origin: str | None = None
    concurrency: int = 200
    """Connections being opened at the same time."""
    connect_timeout: float = 10.0
    pair_timeout: float = 30.0
    drain: float = 5.0
    """Seconds to wait at the end for messages still in flight."""
    progress: Callable[[Progress], None] | None = None
    progress_interval: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_rate", "max_request_rate"):
            rate = getattr(self, name)
            if rate is not None and not rate > 0:
                raise ValueError(f"{name} must be above 0 (None: no client-side limit), not {rate}")
        if not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")


class LoadClient(WebSocketClientProtocol):
    """One simulated user; the scenario (L{Run}) decides what it does."""

    factory: LoadClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.run: Run | None = None
        self.seq = 0
        self.chat: str | None = None
        self.chatting = False
        self.finding = False
        self.find_at = 0.0
        self.ever_paired = False
        self.leaving = False
        self.moving_on = False
        self.last_sent = ""
        self.buckets: dict[str, TokenBucket] = {}
        self._queue: deque[tuple[str, Callable[[], None]]] = deque()
        self._timer: IDelayedCall | None = None
        self.opened: defer.Deferred[LoadClient] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    # Autobahn hooks ---------------------------------------------------------

    def onOpen(self) -> None:
        run = self.factory.run
        self.run = run
        self.name = run.next_name()
        config = run.config
        if config.max_rate is not None:
            self.buckets[MESSAGE] = TokenBucket(config.max_rate, config.burst, now())
        if config.max_request_rate is not None:
            self.buckets[REQUEST] = TokenBucket(config.max_request_rate, config.burst, now())
        self.opened.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._queue.clear()
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason or f"closed with code {code}"))
        else:
            run = self.run
            if run is not None:
                run.client_closed(self)
        if not self.closed.called:
            self.closed.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        run = self.run
        if run is None:
            return
        if payload.startswith(_MESSAGE_PREFIX) and payload.endswith(b'"}'):
            # Probes hold no characters JSON escapes: skip the decoder.
            text = payload[len(_MESSAGE_PREFIX) : -2].decode("utf-8")
            if "\\" not in text:
                run.on_message(self, text)
                return
        event = json.loads(payload)
        kind = event.get("type")
        if kind == "message":
            run.on_message(self, event["text"])
        elif kind == "paired":
            run.on_paired(self, event["chat"])
        elif kind == "partner_left":
            run.on_partner_left(self)
        elif kind == "error":
            run.on_error(self, str(event.get("code")))

    # Actions ----------------------------------------------------------------

    @property
    def ws_open(self) -> bool:
        return bool(self.state == WebSocketProtocol.STATE_OPEN)

    def paced(self, kind: str, action: Callable[[], None]) -> None:
        """
        Do C{action} now, or as soon as the client-side limit for its C{kind}
        (C{"message"} or C{"request"}) allows; actions keep their order.
        """
        bucket = self.buckets.get(kind)
        if self._queue or (bucket is not None and not bucket.take(now())):
            self._queue.append((kind, action))
            self._schedule()
            return
        action()

    def _schedule(self) -> None:
        if (self._timer is not None and self._timer.active()) or not self._queue:
            return
        bucket = self.buckets[self._queue[0][0]]
        self._timer = self.factory.run.reactor.callLater(bucket.delay(now()), self._drain_queue)

    def _drain_queue(self) -> None:
        self._timer = None
        while self._queue and self.ws_open:
            kind, action = self._queue[0]
            if not self.buckets[kind].take(now()):
                break
            self._queue.popleft()
            action()
        if self._queue and self.ws_open:
            self._schedule()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def send_find(self) -> None:
        if self.ws_open and not self.leaving:
            self.finding = True
            self.last_sent = REQUEST
            self.chatting = False
            self.find_at = now()
            self.sendMessage(b'{"type":"find"}')

    def send_probe(self, sent_at: float | None = None) -> bool:
        """Send one tracked message if paired; C{sent_at} is when it was due."""
        run = self.run
        if run is None or not self.chatting or not self.ws_open or self.chat is None:
            return False
        stamp = now() if sent_at is None else sent_at
        self.seq += 1
        text = encode_probe(self.name, self.seq, stamp, run.config.size)
        run.ledger.send(self.name, self.seq, self.chat, stamp)
        self.last_sent = MESSAGE
        self.sendMessage(_MESSAGE_PREFIX + text.encode("ascii") + b'"}')
        return True

    def probe_if_paired(self) -> None:
        self.send_probe()

    def close(self) -> None:
        self.leaving = True
        if self.ws_open:
            self.sendClose(1000)


class LoadClientFactory(WebSocketClientFactory):
    protocol = LoadClient  # type: ignore[assignment]

    def __init__(self, run: Run, url: str, origin: str | None) -> None:
        super().__init__(url, origin=origin)
        self.run = run
        self.setProtocolOptions(
            failByDrop=False,
            openHandshakeTimeout=run.config.connect_timeout,
            closeHandshakeTimeout=5,
            perMessageCompressionOffers=[],
        )


def client_endpoint(
    reactor: Any, factory: WebSocketClientFactory, config: ClientConfig
) -> IStreamClientEndpoint:
    """A TCP endpoint for C{ws://}, TLS over TCP for C{wss://} (verified unless told otherwise)."""
    tcp = HostnameEndpoint(reactor, factory.host, factory.port, timeout=config.connect_timeout)
    if not factory.isSecure:
        return tcp
    if config.insecure:
        return wrapClientTLS(CertificateOptions(verify=False), tcp)
    if config.ca_cert is not None:
        with open(config.ca_cert, "rb") as f:
            trust: Any = Certificate.loadPEM(f.read())
    else:
        trust = platformTrust()
    return wrapClientTLS(optionsForClientTLS(factory.host, trustRoot=trust), tcp)
