"""
An in-memory harness: the real C{Site} and WebSocket stack, real Autobahn
clients, connected by L{twisted.test.iosim} pumps on a L{Clock}.  No sockets,
no global reactor, no real time.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, MutableMapping, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect

from chatroulette.ice import IceConfig
from chatroulette.lobby import Clock as LobbyClock
from chatroulette.lobby import Lobby
from chatroulette.internals import use_clock
from chatroulette.protocol import ChatServerFactory, log_pair
from chatroulette.settings import Settings
from chatroulette.web import build_site

STATIC = Path(__file__).resolve().parent.parent / "static"


class MemoryClient(WebSocketClientProtocol):
    """A WebSocket client that records every event it receives, decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.opened = False
        self.chat: str | None = None
        self.closed: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        event = json.loads(payload)
        if event["type"] == "paired":
            self.chat = event["chat"]
        self.events.append(event)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)

    def send_json(self, **frame: Any) -> None:
        self.sendMessage(json.dumps(frame).encode())

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def last(self, type: str) -> dict[str, Any]:
        """The most recent event of this type."""
        for event in reversed(self.events):
            if event["type"] == type:
                found: dict[str, Any] = event
                return found
        raise AssertionError(f"no {type!r} event in {self.events!r}")

    def take(self) -> list[dict[str, Any]]:
        """Return and forget the events received so far."""
        events, self.events = self.events, []
        return events


class MemoryServer:
    """The whole service on an in-memory network, with a controllable clock."""

    def __init__(
        self,
        settings: Settings = Settings(),
        interest_timeout: float = 10.0,
        repeat_cooldown: float = 30.0,
        seed: int = 0,
        fast_path: bool | None = None,
        ice: IceConfig = IceConfig(),
    ) -> None:
        if fast_path is not None:
            settings = replace(settings, fast_path=fast_path)
        self.clock = Clock()
        self.lobby = Lobby(
            cast(LobbyClock, self.clock),
            random.Random(seed),
            interest_timeout=interest_timeout,
            repeat_cooldown=repeat_cooldown,
            on_pair=log_pair,
        )
        self.factory = ChatServerFactory(self.lobby, self.clock, settings, ice=ice)
        self.site = build_site(self.factory, STATIC)
        self.pumps: list[IOPump] = []
        self._port = 40000

    def wire(self, client: IProtocol, host: str = "127.0.0.1") -> IOPump:
        """
        Connect any client protocol to the site from C{host} (IPv4 or IPv6)
        on an in-memory pump; nothing is delivered until the next flush.
        """
        self._port += 1
        server_address: IPv4Address | IPv6Address
        client_address: IPv4Address | IPv6Address
        if ":" in host:
            server_address = IPv6Address("TCP", "::1", 8080)
            client_address = IPv6Address("TCP", host, self._port)
        else:
            server_address = IPv4Address("TCP", "127.0.0.1", 8080)
            client_address = IPv4Address("TCP", host, self._port)
        server = self.site.buildProtocol(client_address)
        pump: IOPump = connect(
            server,
            FakeTransport(server, True, server_address, client_address),
            client,
            FakeTransport(client, False, client_address, server_address),
            greet=False,
        )
        self.pumps.append(pump)
        return pump

    def connect(
        self,
        path: str = "/ws",
        headers: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        offers: list[Any] | None = None,
        origin: str | None = None,
        client_class: type[MemoryClient] = MemoryClient,
    ) -> MemoryClient:
        """Open a WebSocket connection and complete the handshake."""
        client_factory = WebSocketClientFactory(
            f"ws://localhost:8080{path}", headers=headers, origin=origin
        )
        client_factory.protocol = client_class
        use_clock(client_factory, self.clock)
        client_factory.setProtocolOptions(serverConnectionDropTimeout=0, failByDrop=False)
        if offers is not None:
            client_factory.setProtocolOptions(perMessageCompressionOffers=offers)
        client = cast(MemoryClient, client_factory.buildProtocol(None))
        self.wire(client, host)
        self.flush()
        return client

    def flush(self) -> None:
        """Deliver every pending byte in both directions on every connection."""
        while any(pump.pump(advanceClock=False) for pump in self.pumps):
            pass

    def advance(self, seconds: float) -> None:
        """Let time pass, then deliver what it caused."""
        self.clock.advance(seconds)
        self.flush()

    def pair(self, mode: str = "text") -> tuple[MemoryClient, MemoryClient]:
        """Two fresh clients chatting with each other (in C{mode}); C{a} waited first."""
        a, b = self.connect(), self.connect()
        a.send_json(type="find", mode=mode)
        self.flush()
        b.send_json(type="find", mode=mode)
        self.flush()
        assert a.last("paired")["chat"] == b.last("paired")["chat"]
        a.take()
        b.take()
        return a, b


def also_without_fast_path(namespace: MutableMapping[str, Any]) -> None:
    """
    For every C{...Tests} class in a test module's C{namespace} (whose tests
    build their servers with C{fast_path=self.fast_path}), add a
    C{...NoFastPathTests} twin that runs the same tests on public APIs only
    (C{--no-fast-path}).  Call at the end of the module.
    """
    for name, value in list(namespace.items()):
        if isinstance(value, type) and name.endswith("Tests") and getattr(value, "fast_path", None) is True:
            twin = name[: -len("Tests")] + "NoFastPathTests"
            namespace[twin] = type(twin, (value,), {"fast_path": False, "__module__": value.__module__})
