"""
The chat service's lifetime: bans loaded at start, every client told
"going away" (1001) at stop, and the ban store's writer finished last.
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .internals import graceful_exit
from .moderation import SQLiteBanStore
from .protocol import CLOSE_GOING_AWAY, ChatServerFactory
from .redislink import RedisLink

DEFAULT_SHUTDOWN_TIMEOUT = 5.0


class ChatService(Service):
    """
    Start: load the bans still in force.  Stop (SIGTERM/SIGINT under twistd):
    refuse new handshakes, close every connection with 1001 and wait until
    they are closed or C{shutdown_timeout} passed, then drop the rest and
    stop the ban store.  Given the C{reactor}, a stop caused by SIGTERM or
    SIGINT then ends the process with exit status 0.  Sibling listening services stop at the same time,
    so no new connection arrives meanwhile.
    """

    _log = Logger()

    def __init__(
        self,
        factory: ChatServerFactory,
        clock: IReactorTime,
        store: SQLiteBanStore | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        reactor: object | None = None,
        redis: RedisLink | None = None,
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.store = store
        self.shutdown_timeout = shutdown_timeout
        self._reactor = reactor
        self.redis = redis

    def startService(self) -> None:
        super().startService()
        self.factory.accepting = True
        self.factory.moderation.load(self.clock.seconds())
        if self.redis is not None:
            # The node listens at once; /healthz says 503 until Redis is ready.
            self.redis.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        count = len(self.factory.live)
        self._log.info(
            "closing {count} {connections}: going away",
            count=count,
            connections="connection" if count == 1 else "connections",
            event="shutdown",
        )
        done: Deferred[None] = Deferred()

        def finish(_: object = None) -> None:
            if not done.called:
                done.callback(None)

        protocols = list(self.factory.live)
        closing = self.factory.close_all(CLOSE_GOING_AWAY, "Server going away.")
        closing.addBoth(finish)
        deadline = self.clock.callLater(self.shutdown_timeout, finish)

        def after(_: None) -> None:
            if deadline.active():
                deadline.cancel()
            for protocol in protocols:
                if protocol.state != WebSocketProtocol.STATE_CLOSED:
                    protocol.dropConnection(abort=True)
            if self.store is not None:
                self.store.stop()

        def exit(_: object) -> None:
            if self._reactor is not None and self.factory.hooks.exit_signal:
                # This stop was graceful and complete: exit with status 0.
                graceful_exit(self._reactor)

        done.addCallback(after)
        if self.redis is not None:
            # Every client has left the shared lobby; then this node says goodbye.
            redis = self.redis
            done.addCallback(lambda _: redis.stopService())
        done.addCallback(exit)
        return done
