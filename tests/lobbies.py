"""
The two lobbies behind one test interface, for the lobby contract suite.

A contract test drives a lobby through L{ILobby} with recording peers and a
L{Clock}.  On the in-memory lobby every answer is there when the call
returns.  On the Redis lobby (a real C{redis-server}, started once for the
session, each lobby under its own key prefix) answers come after a round
trip: L{Settled} waits for them after every call and every C{advance}, and
turns a refusal that came later (C{send_error}) into the L{ProtocolError}
the in-memory lobby raises at once.  So one test reads the same for both.
"""

from __future__ import annotations

import atexit
import itertools
import random
from typing import Any, Callable, Sequence, cast

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.lobby import Clock as LobbyClock
from chatroulette.lobby import ILobby, Lobby
from chatroulette.messages import Mode, ProtocolError
from chatroulette.redislink import RedisAddress, RedisLink
from chatroulette.redislobby import RedisLobby

from .redis_server import RedisServer

# Lobby calls that may talk to Redis; each is followed by settling.
_REQUESTS = frozenset(
    {"connect", "disconnect", "find", "leave", "report", "create_invite", "message", "typing", "signal"}
)


class RecordingPeer:
    """A peer that remembers what the lobby told it."""

    address_key: str | None = None

    def __init__(self, name: str) -> None:
        self.name = self.client_id = name
        self.events: list[tuple[Any, ...]] = []
        # (chat, mode, initiator) of every paired event, in order.
        self.roles: list[tuple[str, str, bool]] = []

    def __repr__(self) -> str:
        return f"<peer {self.name}>"

    def send_waiting(self) -> None:
        self.events.append(("waiting",))

    def send_paired(self, chat: str, interests: Sequence[str], mode: Mode, initiator: bool) -> None:
        self.events.append(("paired", chat, list(interests)))
        self.roles.append((chat, mode, initiator))

    def send_signal(self, data: bytes) -> None:
        self.events.append(("signal", data))

    def send_message(self, text: str) -> None:
        self.events.append(("message", text))

    def send_typing(self, active: bool) -> None:
        self.events.append(("typing", active))

    def send_partner_left(self, chat: str) -> None:
        self.events.append(("partner_left", chat))

    def send_invite_expired(self, code: str) -> None:
        self.events.append(("invite_expired", code))

    def send_error(self, code: str, message: str) -> None:
        self.events.append(("error", code, message))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events


def tokens() -> Callable[[], str]:
    numbers = (f"code{i:08d}" for i in range(10**6))
    return lambda: next(numbers)


def make_memory_lobby(seed: int = 0, **kwargs: Any) -> tuple[Lobby, Clock]:
    clock = Clock()
    lobby = Lobby(cast(LobbyClock, clock), random.Random(seed), make_token=tokens(), **kwargs)
    return lobby, clock


_server: RedisServer | None = None
_prefixes = itertools.count(1)


def shared_redis() -> RedisServer:
    """One real redis-server for the whole run, started on first use, stopped at exit."""
    global _server
    if _server is None:
        _server = RedisServer()
        _server.start()
        atexit.register(_server.cleanup)
    return _server


def redis_node(
    server: RedisServer,
    clock: Clock,
    seed: int = 0,
    prefix: str | None = None,
    dead_after: float = 1e9,
    **kwargs: Any,
) -> tuple[RedisLobby, RedisLink]:
    """A started Redis lobby (one node) on C{server}, ready."""
    url = kwargs.pop("url", server.url)  # another way to the same server (a proxy)
    link = RedisLink(RedisAddress.parse(url), reactor, dead_after=dead_after, fast=kwargs.pop("fast", True))
    lobby = RedisLobby(
        cast(LobbyClock, clock),
        link,
        random.Random(seed),
        make_token=kwargs.pop("make_token", tokens()),
        prefix=prefix or "{test%d}" % next(_prefixes),
        **kwargs,
    )
    link.attach_lobby(lobby)
    link.startService()
    pytest_twisted.blockon(link.when_ready())
    return lobby, link


class Settled:
    """A lobby whose calls return once their answers (and the events they caused) have arrived."""

    def __init__(self, lobby: ILobby, settle: Callable[[], None]) -> None:
        self._lobby = lobby
        self._settle = settle

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._lobby, name)
        if name not in _REQUESTS:
            return attribute

        def call(peer: RecordingPeer, *args: Any, **kwargs: Any) -> Any:
            before = len(peer.events)
            result = attribute(peer, *args, **kwargs)
            self._settle()
            late = [e for e in peer.events[before:] if e[0] == "error"]
            if late:
                peer.events = [e for e in peer.events if e not in late]
                raise ProtocolError(late[0][1], late[0][2])
            return result

        return call


class SettledClock:
    """The test's clock: advancing it also waits for what the timers that fired asked of Redis."""

    def __init__(self, clock: Clock, settle: Callable[[], None]) -> None:
        self._clock = clock
        self._settle = settle

    def advance(self, amount: float) -> None:
        self._clock.advance(amount)
        self._settle()

    def seconds(self) -> float:
        return self._clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()


def open_lobby(on_redis: bool, seed: int = 0, **kwargs: Any) -> tuple[Any, Any, Callable[[], None]]:
    """A lobby, its clock, and what closes it: in memory, or a settled Redis lobby."""
    if not on_redis:
        lobby, clock = make_memory_lobby(seed, **kwargs)
        return lobby, clock, lambda: None
    raw_clock = Clock()
    redis_lobby, link = redis_node(shared_redis(), raw_clock, seed, **kwargs)

    def settle() -> None:
        pytest_twisted.blockon(redis_lobby.flush())

    def close() -> None:
        pytest_twisted.blockon(link.stopService())

    return Settled(redis_lobby, settle), SettledClock(raw_clock, settle), close


class LobbyTestCase(SynchronousTestCase):
    """
    A contract test: C{self.lobby} and C{self.clock} are the lobby under test
    (in memory here; on Redis in the C{OnRedis} twins made by L{also_on_redis}).
    """

    on_redis = False

    def setUp(self) -> None:
        self.lobby, self.clock = self.make_lobby()

    def make_lobby(self, seed: int = 0, **kwargs: Any) -> tuple[Any, Any]:
        lobby, clock, close = open_lobby(self.on_redis, seed, **kwargs)
        self.addCleanup(close)
        return lobby, clock

    def peer(self, name: str) -> RecordingPeer:
        peer = RecordingPeer(name)
        self.lobby.connect(peer)
        return peer

    def chat_of(self, peer: RecordingPeer) -> str:
        kind, chat, _ = [e for e in peer.events if e[0] == "paired"][-1]
        return cast(str, chat)


def also_on_redis(namespace: dict[str, Any]) -> None:
    """Add an C{...OnRedis} twin of every L{LobbyTestCase} in C{namespace}."""
    for name, value in list(namespace.items()):
        if isinstance(value, type) and issubclass(value, LobbyTestCase) and value is not LobbyTestCase:
            twin = type(f"{name}OnRedis", (value,), {"on_redis": True, "__module__": value.__module__})
            namespace[twin.__name__] = twin
