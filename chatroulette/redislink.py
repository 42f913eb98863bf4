"""
This node's two connections to Redis, and whether it is ready.

One connection carries every script call and publish, in order (a client's
requests reach Redis in the order it sent them); the other is subscribed to
this node's channel.  Both reconnect by themselves, with backoff.  The node
is I{ready} when both are up, the script is loaded, its channel subscribed
and its own state written back to Redis; L{RedisLink.ready} is what
C{/healthz} reports, at once, without asking Redis.

A liveness ping every L{PING_INTERVAL} seconds drops a connection whose
Redis stopped answering (not only one that closed), so losing Redis is seen
within about two seconds.  The heartbeat (on the lobby's clock) tells Redis
this node lives and sweeps nodes that stopped.

Built on txredisapi's protocol classes (see docs/design.md for why), which
parse replies with hiredis (a C parser; txredisapi picks it when it is
installed, and it is a dependency here); the connection handling is
Twisted's L{ClientService}.
"""

from __future__ import annotations

import bisect
from functools import partial
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .internals import PackedCommands

PING_INTERVAL = 1.0
PING_TIMEOUT = 1.0
DEFAULT_DEAD_AFTER = 15.0
# Seconds between reconnection attempts, at most (backoff from 0.1 s).
MAX_RECONNECT_DELAY = 2.0
# Round-trip latency histogram buckets (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _tell(receivers: int, callbacks: list[Callable[[int], None]]) -> None:
    for delivered in callbacks:
        delivered(receivers)


class RedisURLError(ValueError):
    """A C{--redis} URL this server cannot use."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in: parsed from C{redis://}, C{rediss://} or C{unix://} URLs."""

    scheme: str
    host: str = "localhost"
    port: int = 6379
    path: str = ""
    username: str | None = None
    password: str | None = None
    db: int = 0
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise RedisURLError(f"not a redis://, rediss:// or unix:// URL: {url!r}")
        query = parse_qs(parts.query)
        try:
            port = parts.port
        except ValueError as e:
            raise RedisURLError(f"bad port in {url!r}") from e
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        db_text = query.get("db", [""])[0]
        if scheme != "unix" and parts.path.strip("/"):
            db_text = parts.path.strip("/")
        try:
            db = int(db_text) if db_text else 0
        except ValueError as e:
            raise RedisURLError(f"the database must be a number in {url!r}") from e
        if scheme == "unix":
            if not parts.path:
                raise RedisURLError(f"no socket path in {url!r}")
            return cls(scheme, path=parts.path, username=username, password=password, db=db)
        ca = query.get("ssl_ca_certs", [None])[0]
        return cls(
            scheme,
            host=parts.hostname or "localhost",
            port=port or 6379,
            username=username,
            password=password,
            db=db,
            ca_file=ca,
        )

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        if self.scheme == "unix":
            return UNIXClientEndpoint(reactor, self.path, timeout=5)
        tcp: IStreamClientEndpoint
        if ":" in self.host:
            tcp = TCP6ClientEndpoint(reactor, self.host, self.port, timeout=5)
        else:
            tcp = TCP4ClientEndpoint(reactor, self.host, self.port, timeout=5)
        if self.scheme == "redis":
            return tcp
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                authority = Certificate.loadPEM(f.read())
            options = optionsForClientTLS(self.host, trustRoot=authority)
        else:
            options = optionsForClientTLS(self.host, trustRoot=platformTrust())
        return wrapClientTLS(options, tcp)

    def describe(self) -> str:
        """For logs: never the password."""
        where = self.path if self.scheme == "unix" else f"{self.host}:{self.port}"
        return f"{self.scheme}://{where} db {self.db}"


class _Commands(txredisapi.RedisProtocol):  # type: ignore[misc]
    link: RedisLink

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link._lost(self)


class _PackedCommands(PackedCommands, _Commands):
    """The command connection with the fast hook: commands packed by hiredis."""


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    link: RedisLink

    def messageReceived(self, pattern: object, channel: str, message: str) -> None:
        self.link._message(message)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link._lost(self)


class _Factory(Factory):
    """Builds txredisapi protocols; what they ask of a factory on a failed login."""

    isLazy = False
    _log = Logger()

    def __init__(self, kind: type, link: RedisLink, address: RedisAddress) -> None:
        self.kind = kind
        self.link = link
        self.address = address

    def buildProtocol(self, addr: object) -> Any:
        a = self.address
        p = self.kind(
            charset="utf-8",
            password=a.password,
            username=a.username,
            dbid=a.db if a.db else None,
            convertNumbers=False,
        )
        p.factory = self
        p.link = self.link
        return p

    def stopTrying(self) -> None:
        pass  # ClientService keeps trying: a password fixed in Redis is picked up.

    def connectionError(self, message: str) -> None:
        self._log.error("Redis: {message}", message=message, event="redis")


@dataclass
class LinkStats:
    """Counters for /metrics."""

    reconnects: int = 0
    swept: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class RedisLink(Service):
    """See the module docstring.  Started and stopped as a twistd service."""

    _log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        clock: IReactorTime | None = None,
        dead_after: float = DEFAULT_DEAD_AFTER,
        fast: bool = True,
    ) -> None:
        """
        @param fast: pack commands with hiredis (L{PackedCommands}, a private
            hook of txredisapi's: the caller passes the fast hooks' verdict,
            L{chatroulette.internals.Hooks.fast}).
        """
        self.address = address
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.dead_after = dead_after
        self.ready = False
        self.stats = LinkStats()
        self._cmd: Any = None
        self._sub: Any = None
        self._sha = ""
        self._script = ""
        self._channel = ""
        self._preparing = False
        self._ever_ready = False
        self._on_event: Callable[[str], None] = lambda _: None
        self._assert_args: Callable[[], list[object]] = lambda: []
        self._on_lost: Callable[[], None] = lambda: None
        self._heartbeat_args: Callable[[float], list[object]] = lambda _: []
        self._take_heartbeat: Callable[[str], dict[str, Any]] = lambda _: {}
        self._gone_args: Callable[[], list[object]] = lambda: []
        self._take_assert: Callable[[str], None] = lambda _: None
        self._keys: list[str] = []
        self._services: list[ClientService] = []
        self._commands_kind: type = _PackedCommands if fast else _Commands
        self._ping = LoopingCall(self._check_alive)
        self._ping.clock = reactor
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._clock
        self._readiness_waiters: list[Deferred[None]] = []
        self._outbox: dict[str, tuple[list[object], list[Callable[[int], None]]]] = {}
        self._outbox_call: Any = None
        # Events that arrived while this node's state was being written back.
        self._early: list[str] = []

    def attach(
        self,
        channel: str,
        script: str,
        on_event: Callable[[str], None],
        assert_args: Callable[[], list[object]],
        on_lost: Callable[[], None],
    ) -> None:
        self._channel = channel
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._on_event = on_event
        self._assert_args = assert_args
        self._on_lost = on_lost

    def attach_lobby(self, lobby: Any) -> None:
        """Heartbeats and the graceful goodbye, from the lobby that uses this link."""
        self._keys = [lobby.prefix]
        self._heartbeat_args = lobby.heartbeat_args
        self._take_heartbeat = lobby.take_heartbeat
        self._gone_args = lobby.gone_args
        self._take_assert = lobby.take_assert

    # Service --------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        policy = backoffPolicy(initialDelay=0.1, maxDelay=MAX_RECONNECT_DELAY, factor=2.0)
        for kind in (self._commands_kind, _Subscriber):
            service = ClientService(
                self.address.endpoint(self._reactor),
                _Factory(kind, self, self.address),
                retryPolicy=policy,
                clock=self._reactor,
                prepareConnection=partial(self._connected, kind),
            )
            service.startService()
            self._services.append(service)
        self._ping.start(PING_INTERVAL, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._ping.running:
            self._ping.stop()
        if self._heartbeat.running:
            self._heartbeat.stop()
        d: Deferred[Any] = succeed(None)
        if self.ready:
            # A graceful stop: this node's clients leave the shared lobby now.
            d = self.call(self._keys, self._gone_args()).addErrback(lambda _: None)
        self.ready = False

        def stop_connections(_: object) -> Deferred[Any]:
            return gatherResults([s.stopService() for s in self._services], consumeErrors=True)

        return d.addCallback(stop_connections).addCallback(lambda _: None)

    def abort(self) -> None:
        """
        Drop both connections at once, commands not yet sent included, and
        stay down: what this node's death (SIGKILL, power loss) looks like to
        Redis, whose state for this node stays until another node's
        heartbeat sweeps it.  For testing that failure; L{stopService} is the
        graceful stop.
        """
        Service.stopService(self)
        for loop in (self._ping, self._heartbeat):
            if loop.running:
                loop.stop()
        for protocol in (self._cmd, self._sub):
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
        for service in self._services:
            service.stopService()
        self._not_ready("aborted")

    # Connections -------------------------------------------------------------------

    def _connected(self, kind: type, proxy: Any) -> Deferred[None]:
        # Logged in (AUTH, SELECT): whenConnected fires with the protocol itself.
        d: Deferred[Any] = proxy.whenConnected()

        def up(protocol: Any) -> Deferred[None] | None:
            if kind is _Subscriber:
                subscribed: Deferred[None] = protocol.subscribe(self._channel)
                return subscribed.addCallback(lambda _: self._up("_sub", protocol))
            self._up("_cmd", protocol)
            return None

        return d.addCallback(up)

    def _up(self, attribute: str, protocol: Any) -> None:
        if protocol.transport is not None and protocol.connected:
            setattr(self, attribute, protocol)
            self._prepare()

    def _lost(self, protocol: Any) -> None:
        if protocol is self._cmd:
            self._cmd = None
        elif protocol is self._sub:
            self._sub = None
        else:
            return
        self.stats.reconnects += 1
        self._not_ready("connection lost")

    def _not_ready(self, why: str) -> None:
        if self.ready:
            self.ready = False
            self._log.warn("Redis unavailable ({why}): degraded until it is back", why=why, event="redis")
            if self._heartbeat.running:
                self._heartbeat.stop()
            self._on_lost()

    def reassert(self) -> None:
        """Redis no longer holds what this node owns: write it back (and reload the script)."""
        self._not_ready("state to write back")
        self._prepare()

    def _prepare(self) -> None:
        """Both connections up: load the script, write this node's state, then be ready."""
        if self.ready or self._preparing or self._cmd is None or self._sub is None or not self.running:
            return
        self._preparing = True
        cmd = self._cmd

        def load(_: object) -> Deferred[Any]:
            loaded: Deferred[Any] = cmd.script_load(self._script)
            return loaded

        def assert_state(_: object) -> Deferred[Any]:
            asserted: Deferred[Any] = cmd.evalsha(self._sha, self._keys, self._assert_args())
            return asserted

        def done(reply: str) -> None:
            self._preparing = False
            early, self._early = self._early, []
            if cmd is not self._cmd or self._sub is None:
                self._prepare()  # a new write-back: what came before it is stale
                return
            self._take_assert(reply)
            self.ready = True
            self._log.info(
                "Redis ready at {address}{again}",
                address=self.address.describe(),
                again=" again" if self._ever_ready else "",
                event="redis",
            )
            self._ever_ready = True
            for message in early:
                self._on_event(message)
            if not self._heartbeat.running:
                self._heartbeat.start(self._beat_interval(), now=True)
            waiters, self._readiness_waiters = self._readiness_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> None:
            self._preparing = False
            self._early.clear()
            self._log.failure("Redis set-up failed", failure, event="redis")
            if cmd is self._cmd and cmd.transport is not None:
                cmd.transport.abortConnection()

        maybeDeferred(load, None).addCallback(assert_state).addCallbacks(done, failed)

    def when_ready(self) -> Deferred[None]:
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readiness_waiters.append(d)
        return d

    def _check_alive(self) -> None:
        for protocol in (self._cmd, self._sub):
            if protocol is None or protocol.transport is None:
                continue
            d = maybeDeferred(protocol.execute_command, "PING")
            d.addTimeout(PING_TIMEOUT, self._reactor)
            d.addErrback(self._unresponsive, protocol)

    def _unresponsive(self, failure: Failure, protocol: Any) -> None:
        if protocol.transport is not None:
            self._log.warn("Redis did not answer a ping: reconnecting", event="redis")
            protocol.transport.abortConnection()

    def _beat_interval(self) -> float:
        return max(0.05, self.dead_after / 5)

    def _beat(self) -> None:
        if not self.ready:
            return
        d = self.call(self._keys, self._heartbeat_args(self.dead_after * 0.8))

        def beaten(reply: str) -> None:
            result = self._take_heartbeat(reply)
            swept = int(result.get("swept") or 0)
            if swept:
                self.stats.swept += swept
                self._log.info("swept {count} dead nodes", count=swept, event="redis")
            if not result.get("known"):
                self._log.warn("this node was declared dead: writing its state back", event="redis")
                self.reassert()

        d.addCallbacks(beaten, lambda f: None)

    # Calls -------------------------------------------------------------------

    def call(self, keys: Sequence[str], args: Sequence[object]) -> Deferred[str]:
        """Run the script (already loaded) on the command connection."""
        cmd = self._cmd
        if cmd is None:
            return fail(ConnectionError("Redis is not connected"))
        if self._outbox:
            self._send_outbox()
        start = self._reactor.seconds()
        # EVALSHA itself: txredisapi's evalsha() adds callbacks for its own
        # script bookkeeping (and a resend on NOSCRIPT, which we must not
        # have: see reassert).
        command: list[object] = ["EVALSHA", self._sha, len(keys), *keys, *args]
        d: Deferred[str] = maybeDeferred(cmd.execute_command, *command)
        d.addCallback(self._timed, start)
        return d

    def _timed(self, reply: str, start: float) -> str:
        self.stats.observe(self._reactor.seconds() - start)
        return reply

    def publish_soon(self, channel: str, item: object, delivered: Callable[[int], None] | None) -> None:
        """
        Publish C{item} on C{channel} with everything else published there
        in this reactor turn: one C{PUBLISH} of a JSON list per channel and
        turn, in order.  C{delivered} gets how many subscribers received it
        (0 if none, or if Redis could not be reached).  Sent before the next
        script call, so a message is never overtaken by what its sender did next.
        """
        batch = self._outbox.get(channel)
        if batch is None:
            batch = self._outbox[channel] = ([], [])
            if self._outbox_call is None:
                self._outbox_call = self._reactor.callLater(0, self._send_outbox)
        batch[0].append(item)
        if delivered is not None:
            batch[1].append(delivered)

    def _send_outbox(self) -> None:
        if self._outbox_call is not None:
            if self._outbox_call.active():
                self._outbox_call.cancel()
            self._outbox_call = None
        outbox, self._outbox = self._outbox, {}
        for channel, (items, callbacks) in outbox.items():
            d = self.publish(channel, orjson.dumps(items).decode())
            d.addCallbacks(_tell, lambda _, cs=callbacks: _tell(0, cs), callbackArgs=(callbacks,))

    def publish(self, channel: str, message: str) -> Deferred[int]:
        cmd = self._cmd
        if cmd is None:
            return fail(ConnectionError("Redis is not connected"))
        return maybeDeferred(cmd.publish, channel, message)

    def flush(self) -> Deferred[None]:
        """
        Fires once every call made so far is answered and every message
        published before then has arrived on this node's channel.
        """
        if self._outbox:
            self._send_outbox()
        cmd, sub = self._cmd, self._sub
        if cmd is None or sub is None:
            return succeed(None)
        d = maybeDeferred(cmd.execute_command, "PING")
        d.addCallback(lambda _: maybeDeferred(sub.execute_command, "PING"))
        return d.addCallback(lambda _: None)

    def _message(self, message: str) -> None:
        if self.ready:
            self._on_event(message)
        elif self._preparing:
            # Published after this node's write-back ran in Redis, and here
            # before its answer (they come over two connections): applied
            # right after that answer, where epochs drop what it overtook.
            # Earlier events are stale: lost with the connection, or older
            # than the epochs the write-back sets.
            self._early.append(message)

