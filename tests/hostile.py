"""
Hostile and impolite clients for the protection tests: in memory (on top of
L{tests.memory.MemoryServer}) and as raw bytes for real sockets.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import cast

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump

from chatroulette.protocol import ChatServerProtocol

from .memory import MemoryClient, MemoryServer


class SilentClient(MemoryClient):
    """A client whose network went dead in one direction: it never answers pings."""

    def onPing(self, payload: bytes) -> None:
        pass


def connect_as(
    server: MemoryServer,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    client_class: type[MemoryClient] = MemoryClient,
) -> MemoryClient:
    """C{MemoryServer.connect} from any address, with any Origin or client class."""
    return server.connect(headers=headers, host=host, origin=origin, client_class=client_class)


class RawClient(Protocol):
    """Bytes in, bytes out: whatever a test writes, and everything the server sends."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True

    def status(self) -> int | None:
        """The HTTP status code of the response, if one arrived."""
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])


def raw_connect(server: MemoryServer, host: str = "127.0.0.1") -> tuple[RawClient, IOPump]:
    """An in-memory connection to the site with a L{RawClient} on the other end."""
    client = RawClient()
    return client, server.wire(client, host)


def server_side(server: MemoryServer, client: object) -> ChatServerProtocol:
    """The server's protocol for an in-memory client connection."""
    for pump in server.pumps:
        if pump.client is client:
            return cast(ChatServerProtocol, pump.serverIO.protocol)
    raise LookupError(client)


def handshake(
    host: str = "localhost:8080",
    origin: str | None = None,
    path: str = "/ws",
    extra: dict[str, str] | None = None,
) -> bytes:
    """A WebSocket opening handshake request, as a browser or a bot would send it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """One masked client frame, final unless C{fin} is false (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete unmasked server frames (opcode, payload) after the HTTP response in C{data}."""
    end = data.find(b"\r\n\r\n")
    pos = end + 4 if end >= 0 else 0
    frames = []
    while pos + 2 <= len(data):
        opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = pos + 2
        if length == 126:
            length = struct.unpack("!H", data[head : head + 2])[0]
            head += 2
        elif length == 127:
            length = struct.unpack("!Q", data[head : head + 8])[0]
            head += 8
        if head + length > len(data):
            break
        frames.append((opcode, data[head : head + length]))
        pos = head + length
    return frames


def close_code(data: bytes) -> int | None:
    """The code of the first close frame in unmasked server bytes (after the HTTP response)."""
    for opcode, payload in server_frames(data):
        if opcode == 8:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code
    return None
