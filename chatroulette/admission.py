"""
Who may connect and open a WebSocket: connections counted from the TCP
accept (globally and per address), the checks of the opening handshake
(shutting down, Origin, the client address a trusted proxy reports,
per-address connections and handshake rate), and counting and logging of
refusals.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .identity import ClientIds
from .limits import AddressLimits, OriginPolicy, Slot, address_key, forwarded_address, is_loopback
from .settings import Settings

# How each connection refusal is answered: HTTP status and reason phrase.
REFUSALS = {
    "max_connections": (503, "Server full"),
    "reserved": (503, "Server busy"),
    "connections": (429, "Too many connections from your address"),
    "handshake_rate": (429, "Too many connections from your address"),
}


@dataclass(frozen=True)
class Admitted:
    """A handshake let through: the connection's log name and accounting key."""

    client_id: str
    # The per-address key (IPv4 address or IPv6 /64) caps and bans apply to,
    # or None for loopback clients, connected directly or through a trusted
    # proxy on their own machine (exempt from caps and bans).
    address_key: str | None


class Admission:
    """The connection and handshake checks of one server, with their counters."""

    _log = Logger()

    def __init__(self, settings: Settings, clock: IReactorTime, ids: ClientIds) -> None:
        self.settings = settings
        self.clock = clock
        self.ids = ids
        self.accepting = True
        self.origins = OriginPolicy(settings.allowed_origins)
        self.addresses = AddressLimits(
            settings.max_connections_per_ip,
            settings.handshake_rate,
            settings.handshake_burst,
            settings.max_connections,
        )
        self.refused: Counter[str] = Counter()
        self._refusal_logged: dict[str, float] = {}
        self._refusals_unlogged: Counter[str] = Counter()
        self._handed_over: Slot | None = None

    def accept(self, host: str) -> Slot | str:
        """
        Count a connection from C{host} just accepted, or say why it is
        refused (counted and logged here).

        Behind a trusted proxy every connection comes from the proxy: it
        is counted against the global cap only until its handshake names
        the client (L{admit}).
        """
        if self.settings.trust_proxy_headers:
            opened = self.addresses.open(None, True)
        else:
            opened = self.addresses.open(address_key(host), is_loopback(host))
        if isinstance(opened, str):
            due = self._count_refusal(opened)
            if due is not None:
                self._log.info(
                    "refused connection from {client}: {reason} ({suppressed} more since last logged)",
                    client=self.ids.address_label(host),
                    reason=opened,
                    suppressed=due,
                    event="refused",
                )
        return opened

    @contextmanager
    def handing_over(self, slot: Slot | None) -> Iterator[None]:
        """
        While the HTTP side hands its connection to a WebSocket protocol,
        offer that connection's L{Slot} to it (L{claim}), so that one
        connection stays counted once, from accept to close.
        """
        self._handed_over = slot
        try:
            yield
        finally:
            self._handed_over = None

    def claim(self) -> Slot | None:
        """The L{Slot} being handed over (see L{handing_over}), if any, now the caller's."""
        slot, self._handed_over = self._handed_over, None
        return slot

    def admit(
        self, headers: Mapping[str, str], remote_host: str, client_id: str, slot: Slot | str
    ) -> Admitted:
        """
        Let a handshake through, or refuse it.

        @param headers: the request's headers, lower-case names.
        @param slot: the connection's place in the count (from L{accept}),
            or the reason it was refused there.
        @raise ConnectionDeny: refused (503, 403, 400 or 429).
        """
        # Behind a trusted proxy: the one header it sets, and the last entry
        # only (see forwarded_address).
        trusted = self.settings.trust_proxy_headers
        forwarded = forwarded_address(headers, self.settings.proxy_header) if trusted else None
        if forwarded is not None:
            client_id = self.ids.rename(client_id, forwarded)
        if isinstance(slot, str):
            # Refused (and counted) when it was accepted.
            status, phrase = REFUSALS[slot]
            raise ConnectionDeny(status, phrase)
        if not self.accepting:
            self.refuse("shutting_down", client_id)
            raise ConnectionDeny(503, "Server shutting down")
        if not self.origins.allows(headers.get("origin"), headers.get("host")):
            self.refuse("origin", client_id)
            raise ConnectionDeny(403, "Origin not allowed")
        if trusted:
            if forwarded is None:
                # Not a client of the proxy, or the proxy is misconfigured:
                # never guess (the TCP peer is the proxy, whose loopback
                # address would be exempt from every per-address limit).
                self.refuse("proxy_header", client_id)
                raise ConnectionDeny(400, "No client address from the proxy")
            # Count this connection under its client from now on.
            moved = self.addresses.attribute(slot, address_key(forwarded), is_loopback(forwarded))
            self._deny(moved, client_id)
        key = slot.address_key
        if key is not None:
            self._deny(self.addresses.handshake(key, self.clock.seconds()), client_id)
        return Admitted(client_id, key)

    def _deny(self, refusal: str | None, client_id: str) -> None:
        if refusal is not None:
            self.refuse(refusal, client_id)
            status, phrase = REFUSALS[refusal]
            raise ConnectionDeny(status, phrase)

    def refuse(self, reason: str, client: str) -> None:
        """
        Count a refused handshake; log it, but at most once a second per
        reason (a flood of refusals must not become a flood of log lines).
        """
        due = self._count_refusal(reason)
        if due is not None:
            self._log.info(
                "refused handshake from {client}: {reason} ({suppressed} more since last logged)",
                client=client,
                reason=reason,
                suppressed=due,
                event="refused",
            )

    def _count_refusal(self, reason: str) -> int | None:
        """Count a refusal; if it is due to be logged, how many went unlogged before it."""
        self.refused[reason] += 1
        now = self.clock.seconds()
        if now - self._refusal_logged.get(reason, -1.0) < 1.0:
            self._refusals_unlogged[reason] += 1
            return None
        self._refusal_logged[reason] = now
        return self._refusals_unlogged.pop(reason, 0)
