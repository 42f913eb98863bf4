"""
ICE servers for video chats, without I/O: validating the operator's STUN
and TURN URLs, and minting time-limited TURN credentials.

The credentials follow the "TURN REST API" draft
(draft-uberti-behave-turn-rest-00) that coturn implements with
C{use-auth-secret}: the username is C{<unix expiry>:<random id>}, the
password (C{credential}) is base64(HMAC-SHA1(secret, username)).  coturn
recomputes the password from the username and the shared secret and refuses
a username whose expiry has passed, so the chat server and the TURN server
share only the secret, never a user list.

Time and randomness are arguments, so the format is tested at a fixed clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Final, Literal

DEFAULT_TURN_TTL: Final = 3600.0
SCHEMES: Final = ("stun", "turn", "turns")
TURN_SCHEMES: Final = ("turn", "turns")

IceTransportPolicy = Literal["all", "relay"]


def scheme_of(url: str) -> str:
    """The scheme of an ICE server URL (RFC 7064, RFC 7065), lower-cased."""
    return url.partition(":")[0].lower()


def check_url(url: str) -> str:
    """
    Return C{url} if it is a C{stun:}, C{turn:} or C{turns:} URL with a host.

    Only the scheme and the presence of a host are checked: the browser
    parses the rest (port, C{?transport=udp}).

    @raise ValueError: with a message for the operator.
    """
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() not in SCHEMES:
        raise ValueError(f"{url!r} is not a stun:, turn: or turns: URL")
    host = rest.partition("?")[0]
    if not host or host.startswith("/") or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} has no host (for example turn:turn.example.com:3478)")
    return url


def turn_credentials(secret: bytes, expiry: int, token: str) -> tuple[str, str]:
    """
    A TURN REST API username and password, valid until the unix time
    C{expiry}: C{("<expiry>:<token>", base64(HMAC-SHA1(secret, username)))}.
    """
    username = f"{expiry}:{token}"
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def _token() -> str:
    # 12 URL-safe characters: never the ':' coturn splits the username on.
    return secrets.token_urlsafe(9)


@dataclass(frozen=True)
class IceConfig:
    """
    The operator's ICE servers (C{--ice-server}, C{--turn-secret},
    C{--turn-ttl}, C{--ice-relay-only}) and what a video client is told.
    """

    urls: tuple[str, ...] = ()
    turn_secret: bytes | None = None
    turn_ttl: float = DEFAULT_TURN_TTL
    relay_only: bool = False

    @property
    def stun_urls(self) -> tuple[str, ...]:
        return tuple(u for u in self.urls if scheme_of(u) == "stun")

    @property
    def turn_urls(self) -> tuple[str, ...]:
        return tuple(u for u in self.urls if scheme_of(u) in TURN_SCHEMES)

    @property
    def transport_policy(self) -> IceTransportPolicy:
        return "relay" if self.relay_only else "all"

    def problem(self) -> str | None:
        """What makes this configuration unusable, or None."""
        for url in self.urls:
            try:
                check_url(url)
            except ValueError as e:
                return str(e)
        if self.turn_urls and self.turn_secret is None:
            return "turn: and turns: servers need --turn-secret (browsers refuse TURN without credentials)"
        if self.turn_secret is not None and not self.turn_urls:
            return "--turn-secret needs a turn: or turns: --ice-server"
        if self.turn_secret is not None and not self.turn_secret:
            return "--turn-secret must not be empty"
        if self.relay_only and not self.turn_urls:
            return "--ice-relay-only needs a turn: or turns: --ice-server (and --turn-secret)"
        if not 0 < self.turn_ttl:
            return "--turn-ttl must be positive"
        return None

    def client_config(self, now: float, token: Callable[[], str] = _token) -> dict[str, Any]:
        """
        The fields a video C{paired} event carries: C{ice_servers}, a list of
        C{RTCIceServer} dictionaries (STUN URLs in one, without credentials;
        TURN URLs in another, with a fresh C{username} and C{credential}
        valid for C{turn_ttl} seconds from C{now}), and
        C{ice_transport_policy}, C{"all"} or C{"relay"}.
        """
        servers: list[dict[str, Any]] = []
        stun = self.stun_urls
        if stun:
            servers.append({"urls": list(stun)})
        turn = self.turn_urls
        if turn and self.turn_secret is not None:
            username, credential = turn_credentials(
                self.turn_secret, int(now + self.turn_ttl), token()
            )
            servers.append({"urls": list(turn), "username": username, "credential": credential})
        return {"ice_servers": servers, "ice_transport_policy": self.transport_policy}
