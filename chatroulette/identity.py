"""Log-safe names for connections: a counter and, if allowed, a keyed hash of the address."""

from __future__ import annotations

import hashlib
import itertools
import secrets


class ClientIds:
    """
    Names connections for logs: C{#n@label}, where the label is the address
    hashed with a per-process key (stable within one run, so one address's
    connections can be correlated, but not reversible), or C{#n} alone when
    addresses may not be logged at all.
    """

    def __init__(self, log_addresses: bool = True) -> None:
        self.log_addresses = log_addresses
        self._ids = itertools.count(1)
        self._salt = secrets.token_bytes(16)

    def client_id(self, host: str) -> str:
        """A new connection's name."""
        n = next(self._ids)
        if not self.log_addresses:
            return f"#{n}"
        return f"#{n}@{self.address_label(host)}"

    def rename(self, client_id: str, host: str) -> str:
        """The same connection's name, for the address a trusted proxy reported."""
        number = client_id.split("@", 1)[0]
        if not self.log_addresses:
            return number
        return f"{number}@{self.address_label(host)}"

    def address_label(self, host: str) -> str:
        """An address as logs may show it: hashed with the per-process key, or C{-}."""
        if not self.log_addresses:
            return "-"
        return hashlib.blake2b(host.encode(), key=self._salt, digest_size=5).hexdigest()
