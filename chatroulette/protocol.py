"""
The Autobahn adapter: frames in, lobby calls; lobby events out, frames.

L{ChatServerFactory} owns the lobby and the WebSocket options;
L{ChatServerProtocol} is one connection and nothing more than a translator.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from . import messages
from .lobby import ILobby, LobbyError
from .messages import (
    Find,
    Invite,
    Leave,
    Message,
    ProtocolError,
    Report,
    Typing,
    parse_client_frame,
)

CLOSE_UNSUPPORTED_DATA = 1003


@dataclass(frozen=True)
class Settings:
    """WebSocket-level limits and timeouts (the twistd options set these)."""

    max_frame_bytes: int = 32 * 1024
    open_handshake_timeout: float = 5.0
    close_handshake_timeout: float = 3.0
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    log_addresses: bool = True


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


class ChatServerProtocol(WebSocketServerProtocol):
    """One connected stranger: a L{chatroulette.lobby.Peer}."""

    factory: ChatServerFactory
    _log = Logger()
    _joined = False
    client_id = "-"

    def onConnect(self, request: ConnectionRequest) -> None:
        self.client_id = self.factory.client_id(request.peer)

    def onOpen(self) -> None:
        self._joined = True
        self.factory.lobby.connect(self)
        self.factory.connected(self)
        self._log.info("client {client} connected", client=self.client_id)
        self.sendMessage(messages.welcome(self.factory.lobby.online))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._joined:
            self._joined = False
            self.factory.lobby.disconnect(self)
            self.factory.disconnected(self)
            self._log.info(
                "client {client} disconnected (code {code})", client=self.client_id, code=code
            )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.factory.errors["binary_frame"] += 1
            self.close_with(CLOSE_UNSUPPORTED_DATA, "Only JSON text frames are accepted.")
            return
        try:
            self._dispatch(parse_client_frame(payload))
        except (ProtocolError, LobbyError) as e:
            self.send_error(e.code, e.message)

    def _dispatch(self, frame: messages.ClientFrame) -> None:
        lobby = self.factory.lobby
        if isinstance(frame, Message):
            lobby.message(self, frame.text)
        elif isinstance(frame, Typing):
            lobby.typing(self, frame.active)
        elif isinstance(frame, Find):
            lobby.find(self, frame.interests, frame.invite)
        elif isinstance(frame, Leave):
            lobby.leave(self)
            self._log.info("client {client} left", client=self.client_id)
        elif isinstance(frame, Report):
            reported = cast(ChatServerProtocol, lobby.report(self, frame.reason))
            self._log.info(
                "client {client} reported {reported}: {reason!r}",
                client=self.client_id,
                reported=reported.client_id,
                reason=frame.reason,
            )
        elif isinstance(frame, Invite):
            self._emit(messages.invite(lobby.create_invite(self)))

    def close_with(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with a protocol-level close code (1001,
        1003, 1008...), which Autobahn's public C{sendClose} refuses to send.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)

    # Peer interface ---------------------------------------------------------

    def _emit(self, frame: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(frame)

    def send_error(self, code: str, message: str) -> None:
        self.factory.errors[code] += 1
        self._emit(messages.error(code, message))

    def send_waiting(self) -> None:
        self._emit(messages.waiting())

    def send_paired(self, chat: str, interests: Sequence[str]) -> None:
        self._log.info("client {client} paired in chat {chat}", client=self.client_id, chat=chat)
        self._emit(messages.paired(chat, interests))

    def send_message(self, text: str) -> None:
        self._emit(messages.message(text))

    def send_typing(self, active: bool) -> None:
        self._emit(messages.typing(active))

    def send_partner_left(self, chat: str) -> None:
        self._emit(messages.partner_left(chat))

    def send_invite_expired(self, code: str) -> None:
        self._emit(messages.invite_expired(code))


class ChatServerFactory(WebSocketServerFactory):
    """Owns the lobby, the open connections and the WebSocket options."""

    protocol = ChatServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        lobby: ILobby,
        clock: IReactorTime,
        settings: Settings = Settings(),
        url: str | None = None,
    ) -> None:
        super().__init__(url, server="chatroulette")
        self.lobby = lobby
        self.clock = clock
        self.settings = settings
        self._batched_timer = _ClockTimer(clock)
        self.protocols: set[ChatServerProtocol] = set()
        self.connections_total = 0
        self.errors: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._salt = secrets.token_bytes(16)
        self.setProtocolOptions(
            failByDrop=False,
            maxFramePayloadSize=settings.max_frame_bytes,
            maxMessagePayloadSize=settings.max_frame_bytes,
            openHandshakeTimeout=settings.open_handshake_timeout,
            closeHandshakeTimeout=settings.close_handshake_timeout,
            autoPingInterval=settings.ping_interval,
            autoPingTimeout=settings.ping_timeout,
            perMessageCompressionAccept=lambda offers: None,
        )

    def client_id(self, peer: str) -> str:
        """
        A log-safe name for a connection: a counter and, if allowed, the
        address hashed with a per-process key (stable within one run, so one
        address's connections can be correlated, but not reversible).
        """
        n = next(self._ids)
        if not self.settings.log_addresses:
            return f"#{n}"
        host = peer.rsplit(":", 1)[0]
        digest = hashlib.blake2b(host.encode(), key=self._salt, digest_size=5).hexdigest()
        return f"#{n}@{digest}"

    def connected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.add(protocol)
        self.connections_total += 1

    def disconnected(self, protocol: ChatServerProtocol) -> None:
        self.protocols.discard(protocol)
