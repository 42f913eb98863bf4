"""
The twistd plugin's real work: command-line options and the service tree.

Nothing happens at import time; C{makeService} builds everything.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

from twisted.application import service, strports
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from .lobby import DEFAULT_INTEREST_TIMEOUT, DEFAULT_REPEAT_COOLDOWN, Clock, Lobby
from .protocol import ChatServerFactory, Settings
from .web import build_site, default_static_dir

DEFAULT_LISTEN = "tcp:8080"


def _seconds(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"--{name} must be a number of seconds, not {value!r}") from None
        if not 0 <= seconds < 10**7:
            raise ValueError(f"--{name} must be between 0 and 10000000 seconds, not {value!r}")
        return seconds

    coerce.coerceDoc = "Seconds."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Anonymous one-to-one random text chat. Serves the browser client at /, "
        "the WebSocket at /ws, health at /healthz and Prometheus metrics at /metrics."
    )

    optParameters = [
        [
            "static",
            None,
            None,
            "Directory of the browser client to serve at / (default: the packaged client).",
        ],
        [
            "interest-timeout",
            None,
            DEFAULT_INTEREST_TIMEOUT,
            "Seconds a stranger with interests waits for a shared interest before "
            "being matched with anyone.",
            _seconds("interest-timeout"),
        ],
        [
            "repeat-cooldown",
            None,
            DEFAULT_REPEAT_COOLDOWN,
            "Seconds before two strangers whose chat ended can be paired again.",
            _seconds("repeat-cooldown"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable; default tcp:8080), for
        example tcp:8080:interface=127.0.0.1 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem.
        """
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        from twisted.internet import reactor

        for description in self["listen"]:
            try:
                strports.service(description, None, reactor)  # type: ignore[arg-type]
            except Exception as e:
                raise usage.UsageError(f"--listen {description!r} is not a valid endpoint: {e}")
        if self["static"] is not None:
            static = Path(self["static"])
            if not (static / "index.html").is_file():
                raise usage.UsageError(f"--static {self['static']!r} has no index.html")
            self["static"] = static
        else:
            try:
                self["static"] = default_static_dir()
            except FileNotFoundError as e:
                raise usage.UsageError(str(e))


def makeService(options: Options) -> service.MultiService:
    """The service tree: one listening service per --listen endpoint, one shared site."""
    from twisted.internet import reactor

    clock = cast(IReactorTime, reactor)
    top = service.MultiService()
    lobby = Lobby(
        cast(Clock, clock),
        random.SystemRandom(),
        interest_timeout=options["interest-timeout"],
        repeat_cooldown=options["repeat-cooldown"],
    )
    factory = ChatServerFactory(lobby, clock, Settings())
    site = build_site(factory, options["static"])
    for description in options["listen"]:
        strports.service(description, site, reactor).setServiceParent(top)
    return top
