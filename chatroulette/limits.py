"""
Abuse limits, without I/O: token buckets, client addresses, connection
accounting (global and per address) and the Origin policy.

Everything here is plain Python and takes the time as an argument, so it is
tested without a reactor; C{protocol.py} wires it to connections.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class TokenBucket:
    """
    A token bucket that also counts refusals ("strikes").

    C{rate} tokens per second refill it up to C{burst}; each accepted request
    takes one.  A refused request adds a strike; strikes leak away at the same
    rate, so a client that is only a little too fast is refused now and then,
    while one that keeps flooding piles up strikes: L{flooding} tells the
    caller to close it.  O(1) and allocation-free apart from floats.

    The server refuses with it (L{take}, L{flooding}); the load tool also
    paces itself with it (L{delay}: when to try again).
    """

    __slots__ = ("rate", "burst", "tokens", "strikes", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.strikes = 0.0
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; otherwise count a strike and refuse."""
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:
            refill = elapsed * self.rate
            tokens = self.tokens + refill
            self.tokens = tokens if tokens < self.burst else self.burst
            if self.strikes:
                strikes = self.strikes - refill
                self.strikes = strikes if strikes > 0 else 0.0
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False

    @property
    def flooding(self) -> bool:
        """
        Refused at least twice the burst without pausing: three times the
        burst sent within the time the bucket takes to refill.
        """
        return self.strikes >= 2 * self.burst

    def delay(self, now: float) -> float:
        """
        Seconds from C{now} until L{take} would succeed: 0 when a token is
        there now.  Changes nothing (no refill, no strike).
        """
        elapsed = now - self.stamp
        tokens = self.tokens + elapsed * self.rate if elapsed > 0 else self.tokens
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def full_at(self, now: float) -> bool:
        """Would the bucket be full (and forgotten without loss) at C{now}?"""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in C{host} (an IP, maybe in brackets or with a zone), or None."""
    host = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_key(host: str) -> str:
    """
    The unit of per-address accounting for a client address: the IPv4 address,
    or the /64 network of an IPv6 address (one subscriber usually gets a whole
    /64, so counting single IPv6 addresses would count nothing).  IPv4-mapped
    IPv6 addresses count as their IPv4 address; anything that is not an IP
    (a Unix socket path, say) is its own key.
    """
    ip = parse_ip(host)
    if ip is None:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        network = ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))
        return str(network)
    return str(ip)


def is_loopback(host: str) -> bool:
    """Is C{host} a loopback address (127.0.0.0/8, ::1, or IPv4-mapped loopback)?"""
    ip = parse_ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


FORWARDED = "forwarded"
"""The RFC 7239 header, parsed by its own rules when it is the one trusted."""


def _node_address(node: str) -> str | None:
    """
    The IP address in one proxy entry: C{192.0.2.7}, C{192.0.2.7:4711},
    C{[2001:db8::7]:4711} or C{2001:db8::7}, quoted or not; None for
    anything else (C{unknown}, an obfuscated C{_hidden}, garbage).
    """
    node = node.strip().strip('"')
    if node.startswith("["):
        node = node[1:].split("]", 1)[0]
    elif node.count(":") == 1:  # IPv4 with a port
        node = node.split(":", 1)[0]
    ip = parse_ip(node)
    return None if ip is None else str(ip)


def _forwarded_for(element: str) -> str:
    """The C{for=} node of one C{Forwarded} element (RFC 7239), or C{""}."""
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return value
    return ""


def forwarded_address(headers: Mapping[str, str], header: str) -> str | None:
    """
    The client address a trusted reverse proxy reports in C{header}, and
    only there: the last entry, the one that proxy appended (entries before
    it came from the client, who can write anything), if it is an IP address.

    C{header} is C{X-Forwarded-For} or another header of that form (a
    comma-separated list of addresses), or C{Forwarded}, whose last
    element's C{for=} is taken (RFC 7239).  No other header is ever read:
    a client could send one the proxy does not strip.  C{headers} has
    lower-case names (as Autobahn gives them); repeated headers are joined
    with commas, so "last" is the proxy's entry.

    The list is split at every comma, quoted or not: a client's unbalanced
    quote cannot swallow the entry the proxy appends after it.
    """
    name = header.lower()
    value = headers.get(name)
    if not value:
        return None
    last = value.rsplit(",", 1)[-1]
    return _node_address(_forwarded_for(last) if name == FORWARDED else last)


@dataclass(frozen=True)
class Origin:
    """A web origin: scheme, host (lower case) and port (defaults filled in)."""

    scheme: str
    host: str
    port: int | None

    @classmethod
    def parse(cls, url: str) -> Origin:
        """
        Parse C{scheme://host[:port]}; the default port of http(s)/ws(s) may
        be given or not.

        @raise ValueError: if C{url} is not an origin.
        """
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if not scheme or not parts.hostname:
            raise ValueError(f"{url!r} is not an origin like https://example.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{url!r} is not an origin: only scheme, host and port")
        port = parts.port  # raises ValueError for a bad port
        if port is None:
            port = _DEFAULT_PORTS.get(scheme)
        return cls(scheme, parts.hostname.lower(), port)


def _host_and_port(host_header: str, default_port: int | None) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + host_header.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else default_port


class OriginPolicy:
    """
    Which browser pages may open a WebSocket (cross-site WebSocket hijacking
    protection).

    Allowed: requests without an C{Origin} header (not a browser), pages from
    the host the request was sent to (the C{Host} header, same host and port;
    the scheme is not compared, so TLS terminated by a proxy in front still
    counts as same-origin), and the extra origins given.  The literal origin
    C{null} (sandboxed frames, local files) is refused unless listed.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        allowed = [url.strip() for url in allowed]
        self._allow_null = "null" in allowed
        self._allowed = frozenset(Origin.parse(url) for url in allowed if url != "null")

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True
        if origin.strip() == "null":
            return self._allow_null
        try:
            parsed = Origin.parse(origin)
        except ValueError:
            return False
        if parsed in self._allowed:
            return True
        if host_header:
            target = _host_and_port(host_header, _DEFAULT_PORTS.get(parsed.scheme))
            if target is not None and target == (parsed.host, parsed.port):
                return True
        return False


RESERVE_SHARE = 8
"""
While the last slots of the global cap are being used, an address that
already holds this many connections is refused: room for a browser loading
the page (up to 6 parallel HTTP connections) and opening its WebSocket.
"""


def default_reserve(max_connections: int) -> int:
    """The slots of the global cap kept for addresses below L{RESERVE_SHARE}: the last eighth."""
    return max_connections // 8


class Slot:
    """
    One open connection's place in L{AddressLimits}, from the TCP accept to
    the close, through the HTTP phase and the WebSocket alike.

    C{key} is the address it is counted under (None: not known yet, a
    connection from a trusted proxy before its handshake names the client);
    C{exempt} connections (loopback) are counted but not capped.
    L{release} is idempotent, so whichever protocol has the connection when
    it closes may call it.
    """

    __slots__ = ("_limits", "key", "exempt", "_open")

    def __init__(self, limits: AddressLimits, key: str | None, exempt: bool) -> None:
        self._limits = limits
        self.key = key
        self.exempt = exempt
        self._open = True

    @property
    def address_key(self) -> str | None:
        """The key per-address limits and bans apply to, or None (exempt or not known)."""
        return None if self.exempt else self.key

    def release(self) -> None:
        """The connection is closed (any further call does nothing)."""
        if self._open:
            self._open = False
            self._limits._uncount(self.key)


class AddressLimits:
    """
    Connection accounting: open connections in all (a global cap) and per
    address (a per-address cap), and a handshake rate per address; each
    disabled by a limit of 0.

    A connection is counted once, from its TCP accept (L{open}) to its close
    (L{Slot.release}), whether it is still sending its HTTP request or has
    become a WebSocket.  When fewer than C{reserve} slots of the global cap
    are left, an address already holding L{RESERVE_SHARE} connections is
    refused, so that one address (or a few) filling the server leaves room
    for new ones.  Loopback connections are exempt from the per-address cap
    and the handshake rate, not from the global cap or the reserve.

    Buckets of addresses that went quiet are forgotten (amortised, when the
    table has doubled), so memory follows the number of recently active
    addresses, not every address ever seen.
    """

    def __init__(
        self,
        max_connections_per_address: int,
        handshake_rate: float,
        handshake_burst: float,
        max_connections: int = 0,
        reserve: int | None = None,
    ) -> None:
        self.max_connections_per_address = max_connections_per_address
        self.handshake_rate = handshake_rate
        self.handshake_burst = handshake_burst
        self.max_connections = max_connections
        self.reserve = default_reserve(max_connections) if reserve is None else reserve
        self.total = 0
        self.connections: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = 1024

    def open(self, key: str | None, exempt: bool) -> Slot | str:
        """
        Count a new connection from C{key} (None: not known yet), or say
        why it is refused (C{"max_connections"}, C{"connections"} or
        C{"reserved"}) without counting it.
        """
        refusal = self._refusal(key, exempt, self.total)
        if refusal is not None:
            return refusal
        self.total += 1
        if key is not None:
            self.connections[key] = self.connections.get(key, 0) + 1
        return Slot(self, key, exempt)

    def attribute(self, slot: Slot, key: str, exempt: bool) -> str | None:
        """
        The counted connection C{slot} turns out to come from C{key} (a
        trusted proxy named its client at the handshake): count it there
        instead, or say why that address may not have it
        (C{"connections"} or C{"reserved"}), leaving it as it was.
        """
        if slot.key == key:
            slot.exempt = exempt
            return None
        refusal = self._refusal(key, exempt, self.total - 1)
        if refusal is not None:
            return refusal
        self._uncount(slot.key)
        self.total += 1
        self.connections[key] = self.connections.get(key, 0) + 1
        slot.key, slot.exempt = key, exempt
        return None

    def _refusal(self, key: str | None, exempt: bool, others: int) -> str | None:
        """Why one more connection from C{key}, beside C{others} open ones, is refused, if it is."""
        cap = self.max_connections
        if cap and others >= cap:
            return "max_connections"
        if key is None:
            return None
        held = self.connections.get(key, 0)
        if not exempt and self.max_connections_per_address and held >= self.max_connections_per_address:
            return "connections"
        if cap and others >= cap - self.reserve and held >= RESERVE_SHARE:
            return "reserved"
        return None

    def _uncount(self, key: str | None) -> None:
        self.total -= 1
        if key is not None:
            count = self.connections.get(key, 0) - 1
            if count > 0:
                self.connections[key] = count
            else:
                self.connections.pop(key, None)

    def handshake(self, key: str, now: float) -> str | None:
        """Take a handshake from C{key} out of its bucket, or refuse it (C{"handshake_rate"})."""
        if not self.handshake_rate:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.handshake_rate, self.handshake_burst, now)
        return None if bucket.take(now) else "handshake_rate"

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full_at(now)]:
            del self._buckets[key]
        self._prune_at = max(1024, 2 * len(self._buckets))

    @property
    def tracked(self) -> int:
        """How many addresses have a handshake bucket (for tests and metrics)."""
        return len(self._buckets)
