"""
Who may open a WebSocket: the checks of the opening handshake (shutting
down, Origin, per-address connections and handshake rate), the client
address a trusted proxy reports, and counting and logging of refusals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .identity import ClientIds
from .limits import AddressLimits, OriginPolicy, address_key, forwarded_address, is_loopback
from .settings import Settings


@dataclass(frozen=True)
class Admitted:
    """A handshake let through: the connection's log name and accounting key."""

    client_id: str
    # The per-address accounting key (IPv4 address or IPv6 /64), or None for
    # loopback clients, connected directly or through a trusted proxy on
    # their own machine (exempt from caps and bans).
    address_key: str | None


class Admission:
    """The handshake checks of one server, with their counters."""

    _log = Logger()

    def __init__(self, settings: Settings, clock: IReactorTime, ids: ClientIds) -> None:
        self.settings = settings
        self.clock = clock
        self.ids = ids
        self.accepting = True
        self.origins = OriginPolicy(settings.allowed_origins)
        self.addresses = AddressLimits(
            settings.max_connections_per_ip, settings.handshake_rate, settings.handshake_burst
        )
        self.refused: Counter[str] = Counter()
        self._refusal_logged: dict[str, float] = {}
        self._refusals_unlogged: Counter[str] = Counter()

    def admit(self, headers: Mapping[str, str], remote_host: str, client_id: str) -> Admitted:
        """
        Let a handshake through (counting it against its address), or refuse it.

        @param headers: the request's headers, lower-case names.
        @raise ConnectionDeny: refused (503, 403, 400 or 429).
        """
        # Behind a trusted proxy: the one header it sets, and the last entry
        # only (see forwarded_address).
        trusted = self.settings.trust_proxy_headers
        forwarded = forwarded_address(headers, self.settings.proxy_header) if trusted else None
        if forwarded is not None:
            client_id = self.ids.rename(client_id, forwarded)
        if not self.accepting:
            self.refuse("shutting_down", client_id)
            raise ConnectionDeny(503, "Server shutting down")
        if not self.origins.allows(headers.get("origin"), headers.get("host")):
            self.refuse("origin", client_id)
            raise ConnectionDeny(403, "Origin not allowed")
        if trusted and forwarded is None:
            # Not a client of the proxy, or the proxy is misconfigured: never
            # guess (the TCP peer is the proxy, whose loopback address would
            # be exempt from every per-address limit).
            self.refuse("proxy_header", client_id)
            raise ConnectionDeny(400, "No client address from the proxy")
        host = forwarded or remote_host
        if is_loopback(host):
            # A local client, connected directly or through the proxy.
            return Admitted(client_id, None)
        key = address_key(host)
        refusal = self.addresses.admit(key, self.clock.seconds())
        if refusal is not None:
            self.refuse(refusal, client_id)
            raise ConnectionDeny(429, "Too many connections from your address")
        return Admitted(client_id, key)

    def release(self, key: str) -> None:
        """A connection admitted with this address key is gone."""
        self.addresses.release(key)

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
