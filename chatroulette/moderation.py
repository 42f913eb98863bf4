"""
Reports and bans by client address.

L{Moderation} counts reports per reported address and bans an address that
enough distinct addresses reported within a window; it is sans-I/O (time is
passed in).  L{SQLiteBanStore} keeps bans across restarts in a small SQLite
file, writing on one worker thread so the reactor never waits on the disk.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Final, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

DEFAULT_REPORT_BAN_THRESHOLD: Final = 3
DEFAULT_REPORT_WINDOW: Final = 3600.0
DEFAULT_BAN_SECONDS: Final = 3600.0
BANS_FILE: Final = "chatroulette-bans.sqlite3"


class BanStore(Protocol):
    """Where bans outlive the process."""

    def load(self, now: float) -> dict[str, float]:
        """The bans still in force at C{now}: address key -> end (epoch seconds)."""

    def save(self, key: str, until: float, now: float) -> Deferred[None]:
        """
        Record a ban (and forget the expired ones) without blocking.  The
        result never fails: a store logs its own failures.
        """


class Moderation:
    """
    Reports counted per reported address; C{threshold} distinct reporting
    addresses within C{window} seconds ban the address for C{ban_seconds}.
    A threshold of 0 disables bans (reports still end chats and keep the two
    connections apart, see the lobby).
    """

    def __init__(
        self,
        threshold: int = DEFAULT_REPORT_BAN_THRESHOLD,
        window: float = DEFAULT_REPORT_WINDOW,
        ban_seconds: float = DEFAULT_BAN_SECONDS,
        store: BanStore | None = None,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.ban_seconds = ban_seconds
        self.store = store
        self.bans: dict[str, float] = {}
        self._reports: dict[str, dict[str, float]] = {}
        self._prune_at = 1024
        self._watchers: list[Callable[[str, float], None]] = []

    def watch(self, banned: Callable[[str, float], None]) -> None:
        """
        Be told of bans decided elsewhere (by other nodes of a cluster: see
        L{SharedModeration}); a ban returned by L{report} is not told again.
        """
        self._watchers.append(banned)

    def load(self, now: float) -> None:
        """Read the bans still in force from the store (at startup)."""
        if self.store is not None:
            self.bans.update(self.store.load(now))

    def is_banned(self, key: str, now: float) -> bool:
        until = self.bans.get(key)
        if until is None:
            return False
        if until <= now:
            del self.bans[key]
            return False
        return True

    def report(self, reporter: str, reported: str, now: float) -> float | None:
        """
        Count a report of address C{reported} by address C{reporter}.

        @return: the end of the ban this report caused, or None.
        """
        if not self.threshold or reporter == reported:
            return None
        if len(self._reports) >= self._prune_at:
            self._prune(now)
        reporters = self._reports.setdefault(reported, {})
        reporters[reporter] = now
        horizon = now - self.window
        for key in [k for k, t in reporters.items() if t < horizon]:
            del reporters[key]
        if len(reporters) < self.threshold:
            return None
        del self._reports[reported]
        until = now + self.ban_seconds
        self.bans[reported] = until
        if self.store is not None:
            self.store.save(reported, until, now)
        return until

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, r in self._reports.items() if max(r.values()) < horizon]:
            del self._reports[key]
        for key in [k for k, until in self.bans.items() if until <= now]:
            del self.bans[key]
        self._prune_at = max(1024, 2 * len(self._reports))


class SharedModeration(Moderation):
    """
    Reports and bans for a cluster (C{--redis}): reports are counted in Redis
    for the whole service and a ban reaches every node (L{ban}, called by the
    shared lobby), which keeps its own copy to check at once.  Bans live in
    Redis only (no file).
    """

    def __init__(
        self,
        report_to: Callable[[str, str, int, float, float], None],
        threshold: int = DEFAULT_REPORT_BAN_THRESHOLD,
        window: float = DEFAULT_REPORT_WINDOW,
        ban_seconds: float = DEFAULT_BAN_SECONDS,
    ) -> None:
        super().__init__(threshold, window, ban_seconds)
        self._report_to = report_to

    def report(self, reporter: str, reported: str, now: float) -> float | None:
        """Sent to Redis: a ban, if due, arrives through L{ban} on every node."""
        if self.threshold and reporter != reported:
            self._report_to(reporter, reported, self.threshold, self.window, self.ban_seconds)
        return None

    def ban(self, key: str, until: float) -> None:
        if until > self.bans.get(key, 0.0):
            self.bans[key] = until
            for banned in self._watchers:
                banned(key, until)


class SQLiteBanStore:
    """
    Bans in an SQLite file, created on the first ban (a server that never
    bans anyone leaves no file behind).  Writes run on a dedicated
    single-thread pool (one connection, one writer, in order), started on
    the first write and stopped by L{stop} or at reactor shutdown.
    """

    _log = Logger()

    def __init__(self, path: Path, reactor: IReactorFromThreads) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chatroulette-bans")
        self._connection: sqlite3.Connection | None = None

    def stop(self) -> None:
        """Finish queued writes, then stop the worker thread."""
        if self._pool.started:
            self._pool.stop()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def load(self, now: float) -> dict[str, float]:
        """
        The bans in the file, if any.  A file SQLite cannot read as a
        database (random bytes, a truncated database), or a directory in its
        place, is moved aside for inspection (C{<name>.corrupt-<UTC time>})
        with one error logged, and the service starts without those bans; a
        fresh file is created at the next ban.  A file that cannot be read
        for another reason (locked, no permission) is left where it is.
        """
        if not self.path.exists():
            return {}
        if not self.path.is_file():
            self._set_aside(now, "not a file")
            return {}
        try:
            connection = sqlite3.connect(self.path)
            try:
                rows = connection.execute(
                    "SELECT address, until FROM bans WHERE until > ?", (now,)
                ).fetchall()
            finally:
                connection.close()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                self._log.error(
                    "could not read the bans file {path} ({error}); starting without its bans",
                    path=str(self.path),
                    error=str(e),
                )
            return {}
        except sqlite3.DatabaseError as e:  # not a database, or a damaged one
            self._set_aside(now, str(e))
            return {}
        return {address: until for address, until in rows}

    def _set_aside(self, now: float, error: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for n in itertools.count(1):
            if not os.path.lexists(aside):
                break
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.rename(aside)
            # A rollback journal left beside the damaged file belongs to it,
            # not to the fresh one.
            for suffix in ("-journal", "-wal", "-shm"):
                companion = self.path.with_name(self.path.name + suffix)
                if companion.exists():
                    companion.rename(aside.with_name(aside.name + suffix))
        except OSError as e:
            self._log.error(
                "the bans file {path} is unreadable ({error}) and could not be moved aside "
                "({reason}); starting with no bans",
                path=str(self.path),
                error=error,
                reason=e.strerror or str(e),
            )
            return
        self._log.error(
            "the bans file {path} is unreadable ({error}); moved it aside to {aside} and "
            "started with no bans (a new file is created at the next ban)",
            path=str(self.path),
            error=error,
            aside=str(aside),
        )

    def save(self, key: str, until: float, now: float) -> Deferred[None]:
        if not self._pool.started and not self._pool.joined:
            self._pool.start()
            cast(IReactorCore, self._reactor).addSystemEventTrigger("during", "shutdown", self.stop)
        d: Deferred[None] = deferToThreadPool(
            self._reactor, self._pool, self._save, key, until, now
        )
        d.addErrback(self._save_failed)
        return d

    def _save_failed(self, failure: Failure) -> None:
        # One plain line (no traceback, and not the banned address): the
        # ban still holds in memory, until the server stops.
        self._log.error(
            "could not save a ban to the bans file {path} ({error}); it holds until the server stops",
            path=str(self.path),
            error=failure.getErrorMessage(),
        )

    def _save(self, key: str, until: float, now: float) -> None:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, check_same_thread=False)
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS bans (address TEXT PRIMARY KEY, until REAL NOT NULL)"
            )
        with self._connection:
            self._connection.execute("DELETE FROM bans WHERE until <= ?", (now,))
            self._connection.execute(
                "INSERT INTO bans (address, until) VALUES (?, ?) "
                "ON CONFLICT (address) DO UPDATE SET until = excluded.until",
                (key, until),
            )
