"""
The Autobahn adapter: frames in, lobby calls; lobby events out, frames.

L{ChatServerProtocol} is one connection, a translator: it asks
L{chatroulette.admission} whether a handshake may open, takes a token from
L{chatroulette.ratelimit} per frame, parses with L{chatroulette.messages},
calls the lobby, and sends what the lobby says through the factory's
L{chatroulette.outbound.FrameWriter}.  L{ChatServerFactory} owns the lobby
and wires those parts together.

Two protections cut a client off rather than close it politely
(L{ChatServerProtocol.cut_off}): more frames than the frame budget allows,
and more bytes queued for a client that does not read than
C{--max-buffer-bytes}.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Sequence, cast

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import messages
from .admission import Admission
from .fastpath import FastTextFrames
from .ice import IceConfig
from .identity import ClientIds
from .internals import Hooks, cancel_close_timer, drop_handshake_state, send_close_frame, share_options, use_clock
from .limits import Slot
from .lobby import ILobby, Someone, State
from .messages import (
    BANNED,
    RATE_LIMITED,
    Find,
    Invite,
    Leave,
    Message,
    VIDEO,
    Mode,
    ProtocolError,
    Report,
    Signal,
    Typing,
    parse_client_frame,
)
from .moderation import Moderation
from .outbound import FrameWriter, SlowReader
from .presence import OnlineAnnouncer
from .ratelimit import ConnectionLimits
from .settings import Settings, websocket_options

BANNED_TEXT = "Your address was reported by several people and cannot chat for a while."

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
# Seconds a cut-off client has to take our close frame before the connection
# is dropped (we stop reading it, so it cannot answer; see cut_off).
CUT_OFF_GRACE = 1.0

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED


class ChatServerProtocol(FastTextFrames):
    """One connected stranger: a L{chatroulette.lobby.Peer}."""

    factory: ChatServerFactory
    _log = Logger()
    _joined = False
    client_id = "-"
    # The per-address key caps and bans apply to, or None (exempt): see Admitted.
    address_key: str | None = None
    # This connection's place in the connection count (from accept to
    # close), or why it was refused: see Admission.accept.
    _slot: Slot | str | None = None
    _limits: ConnectionLimits | None = None
    _reader: SlowReader | None = None
    _drop_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn's own log events name self.peer; never let them carry the
        # raw address (see --log-addresses).
        transport = cast(ITCPTransport, self.transport)
        self.remote_host = str(getattr(transport.getPeer(), "host", ""))
        self.client_id = self.peer = self.factory.ids.client_id(self.remote_host)
        admission = self.factory.admission
        # Counted since the HTTP side accepted it; or, if it did not come
        # through the Site, from now on.
        self._slot = admission.claim() or admission.accept(self.remote_host)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if isinstance(self._slot, Slot):
                self._slot.release()

    def onConnect(self, request: ConnectionRequest) -> None:
        assert self._slot is not None
        admitted = self.factory.admission.admit(
            request.headers, self.remote_host, self.client_id, self._slot
        )
        self.client_id = self.peer = admitted.client_id
        self.address_key = admitted.address_key

    def onOpen(self) -> None:
        factory = self.factory
        settings = factory.settings
        self._limits = ConnectionLimits(settings, factory.clock.seconds())
        self.count_frames(self._limits.frames)
        if settings.max_buffer_bytes:
            # Replace the HTTP channel (registered before the upgrade) as the
            # transport's producer: the transport then tells us when its
            # buffer is full, i.e. when this client stops reading.
            self._reader = SlowReader(settings.max_buffer_bytes)
            transport = cast(IConsumer, self.transport)
            transport.unregisterProducer()
            transport.registerProducer(self._reader, True)
        if factory.hooks.fast:
            drop_handshake_state(self)
        self._joined = True
        factory.live.add(self)
        factory.lobby.connect(self)
        factory.connected(self)
        factory.presence.connected(factory.lobby.online)
        self._log.info("client {client} connected", client=self.client_id, event="connect")
        self.send_text(messages.welcome(factory.lobby.online))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._leave_lobby(code)
        factory = self.factory
        factory.live.discard(self)
        if factory.hooks.clock:
            cancel_close_timer(self)
        if self._drop_call is not None:
            if self._drop_call.active():
                self._drop_call.cancel()
            self._drop_call = None

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

    # Frames in ----------------------------------------------------------------

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
            # Malformed frames cost parsing and a reply: they share the
            # request bucket, so a garbage flood is limited like any other.
            if self._allow(None, e.kind):
                self.send_error(e.code, e.message, e.kind)
            return True
        if self._allow(frame):
            try:
                self._dispatch(frame)
            except ProtocolError as e:
                self.send_error(e.code, e.message, "signal" if frame.__class__ is Signal else None)
        return True

    def _allow(self, frame: messages.ClientFrame | None, kind: str | None = None) -> bool:
        """
        Take a token, or refuse: C{rate_limited}, or close 1008 for a client
        that keeps flooding.  Logs once per connection, never per frame.
        C{kind}: the type of a malformed C{frame} (None) if known.
        """
        limits = self._limits
        assert limits is not None
        if limits.allow(frame, self.factory.clock.seconds()):
            return True
        if kind is None and frame.__class__ is Signal:
            kind = "signal"
        if limits.flooding(frame):
            self.factory.errors["flood"] += 1
            if kind == "signal":
                self.factory.signals_refused["flood"] += 1
            self._log.info("client {client} closed for flooding", client=self.client_id, event="limit")
            self.close_with(CLOSE_POLICY_VIOLATION, "Too many requests.")
        else:
            if not limits.warned:
                limits.warned = True
                self._log.info("client {client} hit a rate limit", client=self.client_id, event="limit")
            self.send_error(RATE_LIMITED, "Too many requests: slow down a little.", kind)
        return False

    def _dispatch(self, frame: messages.ClientFrame) -> None:
        lobby = self.factory.lobby
        if isinstance(frame, Message):
            lobby.message(self, frame.text)
        elif isinstance(frame, Typing):
            lobby.typing(self, frame.active)
        elif isinstance(frame, Signal):
            # Opaque (SDP holds addresses): relayed, never logged.
            lobby.signal(self, frame.data)
        elif isinstance(frame, Find):
            self._check_ban()
            lobby.find(self, frame.interests, frame.invite, frame.mode)
        elif isinstance(frame, Leave):
            lobby.leave(self)
            # Once per chat, like "pair": debug level (see log_pair).
            self._log.debug("client {client} left", client=self.client_id, event="leave")
        elif isinstance(frame, Report):
            reported = lobby.report(self, frame.reason)
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
            self.send_text(messages.invite(lobby.create_invite(self, frame.mode)))

    def _check_ban(self) -> None:
        key = self.address_key
        if key is not None and self.factory.moderation.is_banned(key, self.factory.clock.seconds()):
            raise ProtocolError(BANNED, BANNED_TEXT)

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with a protocol-level close code (1001,
        1003, 1008...), which Autobahn's public C{sendClose} refuses to send.
        The lobby is left at once, so a partner hears C{partner_left} now,
        not when the closing handshake ends.
        """
        if self.state == _OPEN:
            self._leave_lobby(code)
            send_close_frame(self, code, reason, self.factory.hooks.close_frame)

    def over_frame_budget(self) -> None:
        self.cut_off("frame_flood", "Too many frames.")

    def cut_off(self, counter: str, reason: str) -> None:
        """
        Close with 1008 a client whose input or output must stop at once:
        everything it sends from now on is dropped unparsed (Autobahn would
        go on parsing frames after a close), its socket is no longer read,
        its partner is told now, and the connection is dropped
        L{CUT_OFF_GRACE} seconds after the close frame, whether or not the
        client took it (it cannot answer: it is not read).  Idempotent.
        """
        if self.discarding:
            return
        self.discarding = True
        self.factory.errors[counter] += 1
        self._log.info("client {client} cut off: {reason}", client=self.client_id, reason=reason, event="limit")
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.pauseProducing()  # the transport stops reading the socket
        self._leave_lobby(CLOSE_POLICY_VIOLATION)
        if self.state == _OPEN:
            send_close_frame(self, CLOSE_POLICY_VIOLATION, reason, self.factory.hooks.close_frame)
        if self.state != _CLOSED:
            self._drop_call = self.factory.clock.callLater(CUT_OFF_GRACE, self._drop)

    def _drop(self) -> None:
        self._drop_call = None
        cast(ITCPTransport, self.transport).abortConnection()

    def onAutoPingTimeout(self) -> None:
        self.factory.errors["ping_timeout"] += 1
        self._log.info("client {client} stopped answering pings", client=self.client_id, event="limit")
        self._leave_lobby(None)
        super().onAutoPingTimeout()

    # Frames out -----------------------------------------------------------------

    def outgoing(self, size: int) -> bool:
        """
        Count what is queued for a client that stopped reading (our frames
        and everything Autobahn writes); past C{max_buffer_bytes}, drop it
        and cut the client off.  The cut-off's own close frame goes out.
        """
        reader = self._reader
        if reader is None or self.discarding or not reader.queued(size):
            return True
        self.cut_off("slow_reader", "Too slow: not reading.")
        return False

    def send_error(self, code: str, message: str, kind: str | None = None) -> None:
        """Refuse a request; C{kind}: the refused frame's type, if it matters (signals are counted)."""
        self.factory.errors[code] += 1
        if kind == "signal":
            self.factory.signals_refused[code] += 1
        self.send_text(messages.error(code, message))

    # Peer interface ---------------------------------------------------------

    def send_online(self, count: int) -> None:
        self.send_text(messages.online(count))

    def send_waiting(self) -> None:
        self.send_text(messages.waiting())

    def send_paired(self, chat: str, interests: Sequence[str], mode: Mode, initiator: bool) -> None:
        factory = self.factory
        # Fresh TURN credentials for each video chat, for each side.
        ice = factory.ice.client_config(factory.clock.seconds()) if mode == VIDEO else None
        self.send_text(messages.paired(chat, interests, mode, initiator, ice))

    def send_signal(self, data: bytes) -> None:
        self.send_text(messages.signal(data))

    def send_message(self, text: str) -> None:
        self.send_text(messages.message(text))

    def send_typing(self, active: bool) -> None:
        self.send_text(messages.typing(active))

    def send_partner_left(self, chat: str) -> None:
        self.send_text(messages.partner_left(chat))

    def send_invite_expired(self, code: str) -> None:
        self.send_text(messages.invite_expired(code))


# Chat starts, in the factory's namespace; a module-level logger is not
# re-created on every access (as a class attribute's is), and its events
# carry no log_source to serialise.
_pair_log = Logger(namespace=f"{__name__}.ChatServerFactory")


def log_pair(chat: str, client: str, partner: str, interests: Sequence[str]) -> None:
    """The lobbies' C{on_pair} observer."""
    # Events that happen once per chat are debug level (see design.md):
    # below --log-level (default info) this call does nothing at all,
    # so nothing is formatted here; one event per chat, not one per side.
    _pair_log.debug(
        "clients {client} and {partner} paired in chat {chat}",
        client=client,
        partner=partner,
        chat=chat,
        shared=len(interests),
        event="pair",
    )


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
        hooks: Hooks | None = None,
        ice: IceConfig = IceConfig(),
    ) -> None:
        super().__init__(url, server="chatroulette")
        self.lobby = lobby
        self.clock = clock
        self.settings = settings
        self.ice = ice
        self.hooks = hooks if hooks is not None else Hooks.detect(settings.fast_path)
        self.moderation = moderation if moderation is not None else Moderation()
        self.moderation.watch(self._banned_elsewhere)
        self.ids = ClientIds(settings.log_addresses)
        self.admission = Admission(settings, clock, self.ids)
        # Connections in the lobby; and every open or closing WebSocket.
        self.protocols: set[ChatServerProtocol] = set()
        self.live: set[ChatServerProtocol] = set()
        self.connections_total = 0
        self.errors: Counter[str] = Counter()
        # Signals refused, by error code (and "flood"); also in errors.
        self.signals_refused: Counter[str] = Counter()
        self.setProtocolOptions(**websocket_options(settings))
        if self.hooks.clock:
            use_clock(self, clock)
        if self.hooks.fast:
            share_options(self)
        self.writer = FrameWriter(clock, self.hooks.fast)
        self.presence = OnlineAnnouncer(
            clock, lambda: lobby.online, self._not_chatting, settings.online_interval
        )

    # What the HTTP side reads (web.py).
    @property
    def refused(self) -> Counter[str]:
        return self.admission.refused

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.admission.accepting = value

    def address_label(self, host: str) -> str:
        return self.ids.address_label(host)

    def count_report(self, reporter: ChatServerProtocol, reported: Someone) -> None:
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
            self._unqueue_banned(reported.address_key)

    def _banned_elsewhere(self, key: str, until: float) -> None:
        """A ban the cluster decided (reports counted on any node)."""
        self._log.info(
            "an address was banned for {seconds:.0f} s after reports (cluster)",
            seconds=until - self.clock.seconds(),
            event="ban",
        )
        self._unqueue_banned(key)

    def _unqueue_banned(self, key: str) -> None:
        """
        Take the banned address's connections out of the queue at once (waiting
        or inviting) and tell them why; chats already going on run their course.
        """
        lobby = self.lobby
        for protocol in [p for p in self.protocols if p.address_key == key]:
            if lobby.state_of(protocol) in (State.WAITING, State.INVITING):
                lobby.leave(protocol)
                protocol.send_error(BANNED, BANNED_TEXT)

    def _not_chatting(self) -> Iterator[ChatServerProtocol]:
        """The connections on the start screen or in the queue (they see the online count)."""
        state_of = self.lobby.state_of
        return (p for p in self.protocols if state_of(p) is not State.CHATTING)

    def connected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.add(protocol)
        self.connections_total += 1

    def disconnected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.discard(protocol)
        if not self.protocols:
            self.presence.stop()  # no timer while nobody is connected

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "Server going away.") -> Deferred[Any]:
        """
        Stop accepting handshakes and close every open connection with
        C{code}; the result fires when all of them are closed.
        """
        self.accepting = False
        self.presence.stop()
        closing: list[Deferred[Any]] = []
        for protocol in list(self.live):
            closing.append(protocol.is_closed)
            protocol.close_with(code, reason)
        return DeferredList(closing, consumeErrors=True)
