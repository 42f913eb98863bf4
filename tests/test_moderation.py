"""
Reports and bans without I/O, and the SQLite ban store.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.moderation import Moderation, SQLiteBanStore


class FakeStore:
    def __init__(self, bans: dict[str, float] | None = None) -> None:
        self.bans = dict(bans or {})
        self.saved: list[tuple[str, float]] = []

    def load(self, now: float) -> dict[str, float]:
        return {k: v for k, v in self.bans.items() if v > now}

    def save(self, key: str, until: float, now: float) -> Deferred[None]:
        self.saved.append((key, until))
        return succeed(None)


class ModerationTests(SynchronousTestCase):
    def test_three_distinct_reporters_ban(self) -> None:
        """The third distinct reporting address within the window bans the reported address."""
        store = FakeStore()
        moderation = Moderation(threshold=3, window=3600, ban_seconds=600, store=store)
        self.assertIsNone(moderation.report("r1", "x", 0))
        self.assertIsNone(moderation.report("r1", "x", 1))
        self.assertIsNone(moderation.report("r2", "x", 2))
        self.assertFalse(moderation.is_banned("x", 3))
        self.assertEqual(moderation.report("r3", "x", 3), 603)
        self.assertTrue(moderation.is_banned("x", 4))
        self.assertFalse(moderation.is_banned("r1", 4))
        self.assertEqual(store.saved, [("x", 603)])

    def test_ban_expires(self) -> None:
        """A ban ends after its duration."""
        moderation = Moderation(threshold=1, ban_seconds=60)
        moderation.report("r", "x", 0)
        self.assertTrue(moderation.is_banned("x", 59))
        self.assertFalse(moderation.is_banned("x", 60))

    def test_old_reports_do_not_count(self) -> None:
        """Reports older than the window are forgotten."""
        moderation = Moderation(threshold=3, window=3600)
        moderation.report("r1", "x", 0)
        moderation.report("r2", "x", 10)
        self.assertIsNone(moderation.report("r3", "x", 3601))
        self.assertIsNotNone(moderation.report("r4", "x", 3602))

    def test_self_reports_and_disabled(self) -> None:
        """An address cannot report itself, and a threshold of 0 never bans."""
        moderation = Moderation(threshold=1)
        self.assertIsNone(moderation.report("x", "x", 0))
        off = Moderation(threshold=0)
        self.assertIsNone(off.report("r", "x", 0))
        self.assertFalse(off.is_banned("x", 0))

    def test_load_from_store(self) -> None:
        """Bans still in force are read back at startup."""
        moderation = Moderation(store=FakeStore({"x": 100.0, "y": 5.0}))
        moderation.load(10.0)
        self.assertTrue(moderation.is_banned("x", 10.0))
        self.assertFalse(moderation.is_banned("y", 10.0))


class SQLiteBanStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.path = self.dir / "state" / "bans.sqlite3"

    def tearDown(self) -> None:
        for p in sorted(self.dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        self.dir.rmdir()

    def test_no_file_until_a_ban(self) -> None:
        """A store that saved nothing has created no file and loads nothing."""
        store = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        self.assertEqual(store.load(0), {})
        self.assertFalse(self.path.exists())

    def test_round_trip(self) -> None:
        """Saved bans are read back by a new store; expired ones are dropped."""
        store = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        store._save("x", 100.0, 0.0)
        store._save("y", 50.0, 0.0)
        store._save("x", 200.0, 10.0)
        store._save("z", 300.0, 60.0)
        store.stop()
        again = SQLiteBanStore(self.path, reactor=None)  # type: ignore[arg-type]
        self.assertEqual(again.load(60.0), {"x": 200.0, "z": 300.0})
        rows = sqlite3.connect(self.path).execute("SELECT address FROM bans ORDER BY address").fetchall()
        self.assertEqual(rows, [("x",), ("z",)])
