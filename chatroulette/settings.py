"""The connection-level settings the twistd options describe, and Autobahn's options from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    # WebRTC signalling in video chats: a burst of 100 lets a browser send
    # every ICE candidate it gathers at once (60 is common).
    signal_rate: float = 20.0
    signal_burst: int = 100
    # Every frame of any kind (data, continuation, ping, pong, close) takes a
    # token from one more bucket, before its payload is handled; over it, the
    # connection is cut off (see docs/design.md for the defaults).
    frame_rate: float = 100.0
    frame_burst: int = 300
    # Close a connection that lets this many bytes pile up unread (0 = never).
    max_buffer_bytes: int = 1024 * 1024
    # Open connections (HTTP and WebSocket) at once; 0: no cap (twistd's
    # default comes from the open-file limit, see tap.py).
    max_connections: int = 0
    # Handshake checks.
    allowed_origins: tuple[str, ...] = ()
    max_connections_per_ip: int = 50
    handshake_rate: float = 20.0
    handshake_burst: int = 50
    trust_proxy_headers: bool = False
    # The one header a trusted proxy puts the client address in (its last entry).
    proxy_header: str = "X-Forwarded-For"
    # Seconds between online-count updates to idle and waiting clients (0: none).
    online_interval: float = 5.0
    # Use the private-attribute speed hooks (see chatroulette.internals).
    fast_path: bool = True


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
        # Only the answer to our ping proves a client alive; by default any
        # data frame would (even an empty continuation frame that never ends
        # its message), and a client that never reads would stay forever.
        autoPingRestartOnAnyTraffic=False,
        perMessageCompressionAccept=lambda offers: None,
        # Origins (including "null") are judged by OriginPolicy in onConnect.
        allowNullOrigin=True,
    )
