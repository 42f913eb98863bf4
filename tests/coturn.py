"""
A real coturn for tests: Debian's C{turnserver} on free loopback ports, in a
temporary directory with a generated configuration (the one operations.md
documents, made loopback-only), stopped by its PID.  Plus the few STUN/TURN
messages (RFC 5389, RFC 5766) a test needs to ask it for an allocation with
long-term credentials, the way a browser does.

    with Coturn(secret="s3cret") as turn:
        result = allocate(turn.address, username, password)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .children import stop_by_pid
from .ports import free_port, free_port_range

TURNSERVER = "/usr/bin/turnserver"
REALM = "chatroulette.test"
# Relay ports: a small range, found free at start.
RELAY_PORTS = 16
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
ALLOCATE_REQUEST = 0x0003
REFRESH_REQUEST = 0x0004
SUCCESS = 0x0100
ERROR = 0x0110
# Attributes.
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
REALM_ATTRIBUTE = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
LIFETIME = 0x000D
UDP = 17


def config_text(
    secret: str, port: int, min_port: int, max_port: int, directory: Path, realm: str = REALM
) -> str:
    """The coturn configuration of operations.md, loopback-only, everything in C{directory}."""
    return f"""\
# Time-limited credentials (TURN REST API): the same secret as --turn-secret.
use-auth-secret
static-auth-secret={secret}
realm={realm}
# Loopback only, for tests: listen and relay on 127.0.0.1, and let peers be
# loopback addresses too (coturn refuses them by default).
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port={port}
min-port={min_port}
max-port={max_port}
allow-loopback-peers
no-rfc5780
no-cli
no-tls
no-dtls
no-software-attribute
fingerprint
userdb={directory / "turndb"}
log-file={directory / "turnserver.log"}
simple-log
no-stdout-log
# Log each session (allocation) with its username: tests look for them.
verbose
pidfile={directory / "turnserver.pid"}
"""


@dataclass
class Coturn:
    """A coturn process on loopback, for the duration of a C{with} block."""

    secret: str
    realm: str = REALM
    port: int = 0
    relay_ports: tuple[int, int] = (0, 0)
    directory: Path = field(default_factory=Path)
    process: subprocess.Popen[bytes] | None = None
    _temp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """The server as --ice-server takes it."""
        return f"turn:127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.directory / "turnserver.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        self._temp = tempfile.TemporaryDirectory(prefix="coturn-")
        self.directory = Path(self._temp.name)
        self.port = free_port()
        base = free_port_range(RELAY_PORTS, exclude=range(self.port, self.port + 1))
        self.relay_ports = (base, base + RELAY_PORTS - 1)
        conf = self.directory / "turnserver.conf"
        conf.write_text(config_text(self.secret, self.port, *self.relay_ports, self.directory, self.realm))
        self.process = subprocess.Popen(
            [TURNSERVER, "-c", str(conf)],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until coturn answers a STUN binding request (each try waits for an answer, not a timer)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"turnserver exited with {self.process.returncode}: {self._story()}")
                request = message(BINDING_REQUEST, [])
                s.sendto(request, self.address)
                try:
                    data, _ = s.recvfrom(2048)
                except (socket.timeout, ConnectionRefusedError):
                    continue
                if parse(data).kind == BINDING_REQUEST | SUCCESS:
                    return
        self.stop()
        raise RuntimeError(f"turnserver did not answer within {START_TIMEOUT} s: {self._story()}")

    def _story(self) -> str:
        err = b""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            err = self.process.stderr.read()
        return f"stderr {err[-2000:]!r}, log {self.log[-2000:]!r}"

    def pid(self) -> int:
        """The PID coturn wrote to its pidfile (the process started, as it says itself)."""
        return int((self.directory / "turnserver.pid").read_text().strip())

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it does not end; the temporary directory goes too."""
        process, self.process = self.process, None
        if process is not None:
            stop_by_pid(process, timeout=STOP_TIMEOUT)
            if process.stderr is not None:
                process.stderr.close()
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    def __enter__(self) -> Coturn:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# STUN messages -----------------------------------------------------------------


@dataclass
class Message:
    kind: int
    transaction: bytes
    attributes: dict[int, bytes]

    @property
    def error_code(self) -> int | None:
        value = self.attributes.get(ERROR_CODE)
        if value is None:
            return None
        return (value[2] & 0x07) * 100 + value[3]

    def relayed_address(self) -> tuple[str, int]:
        value = self.attributes[XOR_RELAYED_ADDRESS]
        family, port = value[1], struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
        assert family == 0x01, "IPv4"
        address = struct.unpack("!I", value[4:8])[0] ^ MAGIC_COOKIE
        return socket.inet_ntoa(struct.pack("!I", address)), port


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def message(
    kind: int, attributes: list[tuple[int, bytes]], key: bytes | None = None, transaction: bytes | None = None
) -> bytes:
    """A STUN message; with C{key}, ending in MESSAGE-INTEGRITY (RFC 5389 section 15.4)."""
    transaction = transaction if transaction is not None else os.urandom(12)
    body = b"".join(_attribute(k, v) for k, v in attributes)
    if key is None:
        return struct.pack("!HHI", kind, len(body), MAGIC_COOKIE) + transaction + body
    # The length covers the MESSAGE-INTEGRITY attribute (24 bytes) the HMAC is over.
    header = struct.pack("!HHI", kind, len(body) + 24, MAGIC_COOKIE) + transaction
    integrity = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + _attribute(MESSAGE_INTEGRITY, integrity)


def parse(data: bytes) -> Message:
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE:
        raise ValueError("not a STUN message")
    attributes: dict[int, bytes] = {}
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        attribute, size = struct.unpack("!HH", data[pos : pos + 4])
        attributes.setdefault(attribute, data[pos + 4 : pos + 4 + size])
        pos += 4 + size + (-size % 4)
    return Message(kind, data[8:20], attributes)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 5389 section 15.4: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def _exchange(s: socket.socket, address: tuple[str, int], request: bytes) -> Message:
    transaction = request[8:20]
    for _ in range(5):  # UDP: retransmit a lost request
        s.sendto(request, address)
        try:
            while True:
                data, _ = s.recvfrom(4096)
                answer = parse(data)
                if answer.transaction == transaction:
                    return answer
        except socket.timeout:
            continue
    raise TimeoutError("no answer from the TURN server")


@dataclass
class Allocation:
    """What the TURN server answered to an authenticated Allocate request."""

    answer: Message
    challenge: Message

    @property
    def succeeded(self) -> bool:
        return self.answer.kind == ALLOCATE_REQUEST | SUCCESS


def allocate(address: tuple[str, int], username: str, password: str) -> Allocation:
    """
    Ask for a UDP relay as a browser does: an unauthenticated Allocate
    (answered 401 with the realm and a nonce), then the same request with
    long-term credentials.  A successful allocation is released at once.
    """
    transport = [(REQUESTED_TRANSPORT, struct.pack("!B3x", UDP))]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        challenge = _exchange(s, address, message(ALLOCATE_REQUEST, transport))
        realm = challenge.attributes[REALM_ATTRIBUTE].decode()
        nonce = challenge.attributes[NONCE]
        key = long_term_key(username, realm, password)
        credentials = [(USERNAME, username.encode()), (REALM_ATTRIBUTE, realm.encode()), (NONCE, nonce)]
        answer = _exchange(s, address, message(ALLOCATE_REQUEST, transport + credentials, key))
        if answer.kind == ALLOCATE_REQUEST | SUCCESS:
            release = message(REFRESH_REQUEST, [(LIFETIME, struct.pack("!I", 0))] + credentials, key)
            _exchange(s, address, release)
        return Allocation(answer, challenge)
