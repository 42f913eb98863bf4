"""
The Autobahn adapter: frames in, lobby calls; lobby events out, frames.

L{ChatServerFactory} owns the lobby, the WebSocket options and the abuse
limits; L{ChatServerProtocol} is one connection: a translator plus the
per-connection guards (rate limits, slow-reader cut-off, handshake checks).
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from zope.interface import implementer

from . import messages
from .limits import AddressLimits, OriginPolicy, TokenBucket, address_key, forwarded_address, is_loopback
from .fastpath import FastTextFrames, batch_writes, share_options
from .lobby import ILobby, LobbyError
from .messages import (
    BANNED,
    RATE_LIMITED,
    Find,
    Invite,
    Leave,
    Message,
    ProtocolError,
    Report,
    Typing,
    parse_client_frame,
)
from .moderation import Moderation

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008

_OPEN = WebSocketProtocol.STATE_OPEN


@dataclass(frozen=True)
class Settings:
    """WebSocket-level limits and timeouts (the twistd options set these)."""

    max_frame_bytes: int = 32 * 1024
    open_handshake_timeout: float = 5.0
    close_handshake_timeout: float = 3.0
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    log_addresses: bool = True
    # Per-connection token buckets (requests per second, burst); rate 0 = unlimited.
    message_rate: float = 5.0
    message_burst: int = 10
    typing_rate: float = 10.0
    typing_burst: int = 20
    request_rate: float = 2.0
    request_burst: int = 10
    # Close a connection that lets this many bytes pile up unread (0 = never).
    max_buffer_bytes: int = 1024 * 1024
    # Handshake checks.
    allowed_origins: tuple[str, ...] = ()
    max_connections_per_ip: int = 50
    handshake_rate: float = 20.0
    handshake_burst: int = 50
    trust_proxy_headers: bool = False


def websocket_options(settings: Settings) -> dict[str, Any]:
    """
    The Autobahn protocol options of the chat server, in one place, so the
    conformance test runs the RFC 6455 test-suite against exactly these.
    """
    return dict(
        failByDrop=False,
        maxFramePayloadSize=settings.max_frame_bytes,
        maxMessagePayloadSize=settings.max_frame_bytes,
        openHandshakeTimeout=settings.open_handshake_timeout,
        closeHandshakeTimeout=settings.close_handshake_timeout,
        autoPingInterval=settings.ping_interval,
        autoPingTimeout=settings.ping_timeout,
        perMessageCompressionAccept=lambda offers: None,
        # Origins (including "null") are judged by OriginPolicy in onConnect.
        allowNullOrigin=True,
    )


def cancel_close_timer(protocol: WebSocketProtocol) -> None:
    """
    Autobahn leaves its closing-handshake timer running after the connection
    is gone (it then does nothing); cancel it so no timer outlives the
    connection.
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None:
        if call.active():
            call.cancel()
        protocol.closeHandshakeTimeoutCall = None


class _ClockTimer:
    """
    Autobahn's timer hook (C{factory._batched_timer}) on our own clock, so
    handshake, close and ping timeouts follow the injected reactor (a
    L{twisted.internet.task.Clock} in tests) instead of txaio's global one.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, func, *args, **kwargs)


@implementer(IPushProducer)
class ChatServerProtocol(FastTextFrames):
    """One connected stranger: a L{chatroulette.lobby.Peer}."""

    factory: ChatServerFactory
    _log = Logger()
    _joined = False
    client_id = "-"
    # The per-address accounting key (IPv4 address or IPv6 /64), or None for
    # loopback peers without trusted proxy headers (exempt from caps and bans).
    address_key: str | None = None
    _counted: str | None = None
    _messages: TokenBucket | None = None
    _typing: TokenBucket | None = None
    _requests: TokenBucket | None = None
    _warned = False
    # Slow-reader accounting: bytes queued while the transport has paused us.
    _paused = False
    _paused_bytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn's own log events name self.peer; never let them carry the
        # raw address (see --log-addresses).
        transport = cast(ITCPTransport, self.transport)
        self.remote_host = str(getattr(transport.getPeer(), "host", ""))
        self.client_id = self.peer = self.factory.client_id(self.remote_host)

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        settings = factory.settings
        forwarded = forwarded_address(request.headers) if settings.trust_proxy_headers else None
        host = forwarded or self.remote_host
        if forwarded is not None:
            self.client_id = self.peer = factory.client_id(host)
        if not factory.accepting:
            factory.refuse("shutting_down", self.client_id)
            raise ConnectionDeny(503, "Server shutting down")
        if not factory.origins.allows(request.headers.get("origin"), request.headers.get("host")):
            factory.refuse("origin", self.client_id)
            raise ConnectionDeny(403, "Origin not allowed")
        if forwarded is None and is_loopback(host):
            return
        key = address_key(host)
        refusal = factory.addresses.admit(key, factory.clock.seconds())
        if refusal is not None:
            factory.refuse(refusal, self.client_id)
            raise ConnectionDeny(429, "Too many connections from your address")
        self.address_key = self._counted = key

    def onOpen(self) -> None:
        factory = self.factory
        settings = factory.settings
        now = factory.clock.seconds()
        if settings.message_rate:
            self._messages = TokenBucket(settings.message_rate, settings.message_burst, now)
        if settings.typing_rate:
            self._typing = TokenBucket(settings.typing_rate, settings.typing_burst, now)
        if settings.request_rate:
            self._requests = TokenBucket(settings.request_rate, settings.request_burst, now)
        if settings.max_buffer_bytes:
            # Replace the HTTP channel (registered before the upgrade) as the
            # transport's producer: the transport then tells us when its
            # buffer is full, i.e. when this client stops reading.
            transport = cast(IConsumer, self.transport)
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        # The handshake is over: drop what only it needed.  Each connection
        # keeps an empty deque (760 bytes) that Autobahn fills only for
        # "sync" or chopped sends, which this server never makes; a tuple
        # makes any such send fail loudly instead of sharing a queue.
        self.send_queue = ()  # type: ignore[assignment]
        self.http_headers = {}
        self.http_request_data = b""
        self.http_response_data = ""
        self._joined = True
        factory.live.add(self)
        factory.lobby.connect(self)
        factory.connected(self)
        self._log.info("client {client} connected", client=self.client_id, event="connect")
        self._emit(messages.welcome(factory.lobby.online))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._leave_lobby(code)
        self.factory.live.discard(self)
        if self._counted is not None:
            self.factory.addresses.release(self._counted)
            self._counted = None
        cancel_close_timer(self)

    def _leave_lobby(self, code: int | None) -> None:
        """Leave the lobby (telling any partner at once); idempotent."""
        if self._joined:
            self._joined = False
            self.factory.lobby.disconnect(self)
            self.factory.disconnected(self)
            self._log.info(
                "client {client} disconnected (code {code})",
                client=self.client_id,
                code=code,
                event="disconnect",
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Frames that came through Autobahn (the unusual ones: see fastpath)."""
        if isBinary:
            self.factory.errors["binary_frame"] += 1
            self.close_with(CLOSE_UNSUPPORTED_DATA, "Only JSON text frames are accepted.")
            return
        # Autobahn has validated the UTF-8 already, so this always handles it.
        self.on_text(payload)

    def on_text(self, payload: bytes) -> bool:
        """
        A complete text frame from the fast path: handled, or C{False} (and
        nothing done) when it is not valid UTF-8, so that Autobahn fails the
        connection with 1007 as usual.
        """
        if not self._joined:
            return True  # closing: ignore what is still in flight
        try:
            frame = parse_client_frame(payload)
        except ProtocolError as e:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return False
            self._refuse_malformed(e)
            return True
        self._handle_frame(frame)
        return True

    def _refuse_malformed(self, e: ProtocolError) -> None:
        # Malformed frames cost parsing and a reply: they share the
        # request bucket, so a garbage flood is limited like any other.
        if self._allow(self._requests):
            self.send_error(e.code, e.message)

    def _handle_frame(self, frame: messages.ClientFrame) -> None:
        kind = frame.__class__
        if kind is Message:
            bucket = self._messages
        elif kind is Typing:
            bucket = self._typing
        else:
            bucket = self._requests
        if bucket is not None and not self._allow(bucket):
            return
        try:
            self._dispatch(frame)
        except (ProtocolError, LobbyError) as e:
            self.send_error(e.code, e.message)

    def _allow(self, bucket: TokenBucket | None) -> bool:
        """
        Take a token, or refuse: C{rate_limited}, or close 1008 for a client
        that keeps flooding.  Logs once per connection, never per frame.
        """
        if bucket is None or bucket.take(self.factory.clock.seconds()):
            return True
        if bucket.flooding:
            self.factory.errors["flood"] += 1
            self._log.info(
                "client {client} closed for flooding", client=self.client_id, event="limit"
            )
            self.close_with(CLOSE_POLICY_VIOLATION, "Too many requests.")
        else:
            if not self._warned:
                self._warned = True
                self._log.info(
                    "client {client} hit a rate limit", client=self.client_id, event="limit"
                )
            self.send_error(RATE_LIMITED, "Too many requests: slow down a little.")
        return False

    def _dispatch(self, frame: messages.ClientFrame) -> None:
        lobby = self.factory.lobby
        if isinstance(frame, Message):
            lobby.message(self, frame.text)
        elif isinstance(frame, Typing):
            lobby.typing(self, frame.active)
        elif isinstance(frame, Find):
            self._check_ban()
            lobby.find(self, frame.interests, frame.invite)
        elif isinstance(frame, Leave):
            lobby.leave(self)
            # Once per chat, like "pair": debug level (see _log_pair).
            self._log.debug("client {client} left", client=self.client_id, event="leave")
        elif isinstance(frame, Report):
            reported = cast("ChatServerProtocol | None", lobby.report(self, frame.reason))
            if reported is None:
                return  # reported already from this connection: counted and logged once
            # The reason is the reporter's own words about the chat: not logged.
            self._log.info(
                "client {client} reported {reported}",
                client=self.client_id,
                reported=reported.client_id,
                event="report",
            )
            self.factory.count_report(self, reported)
        elif isinstance(frame, Invite):
            self._check_ban()
            self._emit(messages.invite(lobby.create_invite(self)))

    def _check_ban(self) -> None:
        key = self.address_key
        if key is not None and self.factory.moderation.is_banned(key, self.factory.clock.seconds()):
            raise ProtocolError(
                BANNED, "Your address was reported by several people and cannot chat for a while."
            )

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with a protocol-level close code (1001,
        1003, 1008...), which Autobahn's public C{sendClose} refuses to send.
        The lobby is left at once, so a partner hears C{partner_left} now,
        not when the closing handshake ends.
        """
        if self.state == _OPEN:
            self._leave_lobby(code)
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    def onAutoPingTimeout(self) -> None:
        self.factory.errors["ping_timeout"] += 1
        self._log.info(
            "client {client} stopped answering pings", client=self.client_id, event="limit"
        )
        self._leave_lobby(None)
        super().onAutoPingTimeout()

    # IPushProducer: the transport pauses us when its buffer is full --------

    def pauseProducing(self) -> None:
        # TCP transports call this again on every write while over their
        # buffer size: count from the first call only.
        if not self._paused:
            self._paused = True
            self._paused_bytes = 0

    def resumeProducing(self) -> None:
        self._paused = False

    def stopProducing(self) -> None:
        pass

    # Peer interface ---------------------------------------------------------

    def _emit(self, frame: bytes) -> None:
        if self.state == _OPEN:
            if self._paused:
                # The client is not reading: count what piles up (one
                # attribute check per frame otherwise).
                self._paused_bytes += len(frame)
                if self._paused_bytes > self.factory.settings.max_buffer_bytes:
                    self.factory.errors["slow_reader"] += 1
                    self._log.info(
                        "client {client} closed: not reading", client=self.client_id, event="limit"
                    )
                    self.close_with(CLOSE_POLICY_VIOLATION, "Too slow: not reading.")
                    return
            self.send_text(frame)

    def send_error(self, code: str, message: str) -> None:
        self.factory.errors[code] += 1
        self._emit(messages.error(code, message))

    def send_waiting(self) -> None:
        self._emit(messages.waiting())

    def send_paired(self, chat: str, interests: Sequence[str]) -> None:
        self._emit(messages.paired(chat, interests))

    def send_message(self, text: str) -> None:
        self._emit(messages.message(text))

    def send_typing(self, active: bool) -> None:
        self._emit(messages.typing(active))

    def send_partner_left(self, chat: str) -> None:
        self._emit(messages.partner_left(chat))

    def send_invite_expired(self, code: str) -> None:
        self._emit(messages.invite_expired(code))


# Chat starts, in the factory's namespace; a module-level logger is not
# re-created on every access (as a class attribute's is), and its events
# carry no log_source to serialise.
_pair_log = Logger(namespace=f"{__name__}.ChatServerFactory")


class ChatServerFactory(WebSocketServerFactory):
    """Owns the lobby, the open connections, the WebSocket options and the limits."""

    protocol = ChatServerProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(
        self,
        lobby: ILobby,
        clock: IReactorTime,
        settings: Settings = Settings(),
        url: str | None = None,
        moderation: Moderation | None = None,
    ) -> None:
        super().__init__(url, server="chatroulette")
        self.lobby = lobby
        self.clock = clock
        self.settings = settings
        self.moderation = moderation if moderation is not None else Moderation()
        self._batched_timer = _ClockTimer(clock)
        # Connections in the lobby; and every open or closing WebSocket.
        self.protocols: set[ChatServerProtocol] = set()
        self.live: set[ChatServerProtocol] = set()
        self.connections_total = 0
        self.errors: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.accepting = True
        self.origins = OriginPolicy(settings.allowed_origins)
        self.addresses = AddressLimits(
            settings.max_connections_per_ip, settings.handshake_rate, settings.handshake_burst
        )
        self._ids = itertools.count(1)
        self._salt = secrets.token_bytes(16)
        self._refusal_logged: dict[str, float] = {}
        self._refusals_unlogged: Counter[str] = Counter()
        self.setProtocolOptions(**websocket_options(settings))
        share_options(self)
        batch_writes(self, clock)
        lobby.on_pair = self._log_pair

    def _log_pair(self, chat: str, one: Any, other: Any, interests: Sequence[str]) -> None:
        # Events that happen once per chat are debug level: written by twistd
        # and by `twist --log-level debug`, filtered out (for about 3 us) by
        # twist's default level.  Written, one costs 15-25 us: as much as the
        # rest of a pairing's Python code (benchmarks/RESULTS.md).  One event
        # per chat, not one per side; and the message is formatted here
        # (client ids and chat ids never contain braces), because
        # twisted.logger's observers otherwise flatten each field of the
        # format string on every event.  The fields are in the event all the
        # same.
        client, partner = one.client_id, other.client_id
        _pair_log.debug(
            f"clients {client} and {partner} paired in chat {chat}",
            client=client,
            partner=partner,
            chat=chat,
            shared=len(interests),
            event="pair",
        )

    def client_id(self, host: str) -> str:
        """
        A log-safe name for a connection: a counter and, if allowed, the
        address hashed with a per-process key (stable within one run, so one
        address's connections can be correlated, but not reversible).
        """
        n = next(self._ids)
        if not self.settings.log_addresses:
            return f"#{n}"
        return f"#{n}@{self.address_label(host)}"

    def address_label(self, host: str) -> str:
        """An address as logs may show it: hashed with the per-process key, or C{-}."""
        if not self.settings.log_addresses:
            return "-"
        return hashlib.blake2b(host.encode(), key=self._salt, digest_size=5).hexdigest()

    def refuse(self, reason: str, client: str) -> None:
        """
        Count a refused handshake; log it, but at most once a second per
        reason (a flood of refusals must not become a flood of log lines).
        """
        self.refused[reason] += 1
        now = self.clock.seconds()
        if now - self._refusal_logged.get(reason, -1.0) < 1.0:
            self._refusals_unlogged[reason] += 1
            return
        self._refusal_logged[reason] = now
        self._log.info(
            "refused handshake from {client}: {reason} ({suppressed} more since last logged)",
            client=client,
            reason=reason,
            suppressed=self._refusals_unlogged.pop(reason, 0),
            event="refused",
        )

    def count_report(self, reporter: ChatServerProtocol, reported: ChatServerProtocol) -> None:
        """Feed a report to moderation; ban the reported address if it is due."""
        if reported.address_key is None:
            return
        until = self.moderation.report(
            reporter.address_key or "local", reported.address_key, self.clock.seconds()
        )
        if until is not None:
            self._log.info(
                "address of client {client} banned for {seconds:.0f} s after reports",
                client=reported.client_id,
                seconds=self.moderation.ban_seconds,
                event="ban",
            )

    def connected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.add(protocol)
        self.connections_total += 1

    def disconnected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.discard(protocol)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "Server restarting.") -> Deferred[Any]:
        """
        Stop accepting handshakes and close every open connection with
        C{code}; the result fires when all of them are closed.
        """
        self.accepting = False
        closing: list[Deferred[Any]] = []
        for protocol in list(self.live):
            closing.append(protocol.is_closed)
            protocol.close_with(code, reason)
        return DeferredList(closing, consumeErrors=True)
