"""
A fast path through Autobahn for the frames a chat server sees most.

Almost every frame a chat client sends is one small, complete, masked text
frame, and almost every frame the server sends is one small unmasked text
frame.  Autobahn handles every case of RFC 6455 in one general state machine
that costs tens of microseconds per frame in Python.  L{FastTextFrames}
handles just the common case itself and hands everything else (control
frames, fragments, partial frames, extended lengths, anything unusual or
invalid) to Autobahn unchanged, so Autobahn still decides every error and
close code.  See C{benchmarks/RESULTS.md} for what it gains.
"""

from __future__ import annotations

import types
from typing import Any, Protocol, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport

_OPEN = WebSocketProtocol.STATE_OPEN
_GROUND = WebSocketProtocol.SEND_STATE_GROUND
_FIN_TEXT = 0x81


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR C{payload} with the repeating 4-byte C{mask} (RFC 6455 section 5.3)."""
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying C{payload} (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return bytes((_FIN_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big") + payload


def write_through(transport: ITransport | None, data: bytes) -> None:
    """
    Write C{data} to the socket now when nothing is queued, like asyncio does.

    C{FileDescriptor.write} always buffers and waits for the reactor to report
    the socket writable: two C{epoll_ctl} calls and a reactor turn per chat
    message, about a third of the server's CPU per relayed message.  When the
    transport is a plain TCP connection with nothing buffered, try the
    non-blocking C{send} first and buffer only what the kernel did not take;
    any other transport (TLS, in-memory) or any doubt goes the usual way.
    """
    if (
        type(transport) is tcp.Server
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and not transport.dataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # let Twisted find and report the error its own way
        if sent == len(data):
            return
        data = data[sent:]
    if transport is not None:
        transport.write(data)


class _HasTransport(Protocol):
    @property
    def transport(self) -> ITransport | None: ...


class WriteBatcher:
    """
    Hold the frames for plain TCP connections until the reactor has handled
    every event of this turn, then write each connection's frames with one
    C{send}.

    A busy chat server sends a connection several frames in one reactor turn
    (C{partner_left} then C{paired}, a message then C{partner_left}...).  On
    loopback and on real networks alike, most of the cost of a small C{send}
    is per call and per packet, not per byte: at churn rates about half the
    sends are saved.  Nothing waits for a timer: the flush is a
    C{callLater(0)}, which the reactor runs before it next polls for events.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: dict[_HasTransport, list[bytes]] = {}
        self._call: IDelayedCall | None = None

    def add(self, owner: _HasTransport, frame: bytes) -> None:
        frames = self._pending.get(owner)
        if frames is not None:
            frames.append(frame)
            return
        self._pending[owner] = [frame]
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Write everything held (in order, per connection)."""
        self._call = None
        pending, self._pending = self._pending, {}
        for owner, frames in pending.items():
            _write(owner, frames)

    def flush_one(self, owner: _HasTransport) -> None:
        """Write what is held for C{owner} now, ahead of anything it writes next."""
        frames = self._pending.pop(owner, None)
        if frames is not None:
            _write(owner, frames)


def _write(owner: _HasTransport, frames: list[bytes]) -> None:
    write_through(owner.transport, frames[0] if len(frames) == 1 else b"".join(frames))


class FastTextFrames(WebSocketServerProtocol):
    """
    Receive complete masked text frames and send text frames without
    Autobahn's general machinery; fall back to it for everything else.

    Subclasses implement L{on_text}, which must return C{False} (having done
    nothing) when the payload should rather go through Autobahn, for example
    because it may not be valid UTF-8: Autobahn then fails the connection with
    the right close code.
    """

    # Set by batch_writes, per factory; None writes every frame at once.
    write_batcher: WriteBatcher | None = None

    def on_text(self, payload: bytes) -> bool:
        raise NotImplementedError()

    def dataReceived(self, data: bytes) -> None:
        if (
            self.state != _OPEN
            or self.data
            or self.current_frame is not None
            or self.inside_message
        ):
            self._dataReceived(data)
            return
        limit = self.maxFramePayloadSize
        pos, end_of_data = 0, len(data)
        while pos + 6 <= end_of_data:
            if data[pos] != _FIN_TEXT:
                break
            length = data[pos + 1] ^ 0x80  # the mask bit must be set
            if length < 126:
                head = pos + 2
            elif length == 126 and pos + 8 <= end_of_data:
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not minimally encoded: Autobahn decides
                head = pos + 4
            else:
                break  # unmasked (length >= 128), 64-bit length, or incomplete header
            if limit and length > limit:
                break
            frame_end = head + 4 + length
            if frame_end > end_of_data:
                break
            payload = unmask(data[head + 4 : frame_end], data[head : head + 4])
            if not self.on_text(payload):
                break
            pos = frame_end
            if self.state != _OPEN:
                break
        if pos < end_of_data:
            self._dataReceived(data[pos:] if pos else data)

    def send_text(self, payload: bytes) -> None:
        """Send one text message (UTF-8 C{payload}) if the connection is open."""
        if self.state == _OPEN:
            if self.send_state == _GROUND and not self.triggered:
                batcher = self.write_batcher
                if batcher is not None and type(self.transport) is tcp.Server:
                    batcher.add(self, text_frame(payload))
                else:
                    write_through(self.transport, text_frame(payload))
            else:
                self.sendMessage(payload)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes (close frames, pongs, fragmented
        # messages) goes after the frames already held for this connection.
        batcher = self.write_batcher
        if batcher is not None:
            batcher.flush_one(self)
        super().sendData(data, sync, chopsize)


def share_options(factory: WebSocketServerFactory) -> None:
    """
    Make the factory's protocol options class attributes of a protocol class
    made for this factory, so connections stop copying ~45 options into each
    instance (Autobahn copies only what an instance lacks).  Call after the
    last C{setProtocolOptions}.
    """
    base = factory.protocol
    attrs: dict[str, Any] = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A plain function (e.g. perMessageCompressionAccept) must not become a method.
        attrs[name] = staticmethod(value) if isinstance(value, types.FunctionType) else value
    attrs["CONFIG_ATTRS"] = ()
    factory.protocol = cast("type[WebSocketServerProtocol]", type(base.__name__, (base,), attrs))


def batch_writes(factory: WebSocketServerFactory, clock: IReactorTime) -> None:
    """
    Batch the fast path's writes per reactor turn (see L{WriteBatcher}) for
    the connections of C{factory}, whose protocol class must have been made
    for it by L{share_options}.
    """
    protocol = cast("type[FastTextFrames]", factory.protocol)
    assert issubclass(protocol, FastTextFrames) and protocol.__dict__.get("CONFIG_ATTRS") == ()
    protocol.write_batcher = WriteBatcher(clock)
