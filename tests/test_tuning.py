"""
Tests for L{chatroulette.tuning}: the open-file limit and the collector's
settings, with fake limits and a fake collector (no network, and the test
process's own limits and collector are never touched).
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette import tuning
from chatroulette.tap import Options


class FakeLimits:
    """The part of the C{resource} module that L{tuning.raise_open_file_limit} uses."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = {self.RLIMIT_NOFILE: (soft, hard)}
        self.refuse = refuse
        self.set_calls: list[tuple[int, tuple[int, int]]] = []

    def getrlimit(self, resource: int, /) -> tuple[int, int]:
        return self.limits[resource]

    def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None:
        self.set_calls.append((resource, limits))
        if self.refuse:
            raise ValueError("not allowed")
        self.limits[resource] = limits


class RaiseOpenFileLimitTests(SynchronousTestCase):
    def test_soft_raised_to_hard(self) -> None:
        """A soft limit below the hard one is raised to it."""
        limits = FakeLimits(1024, 65536)
        self.assertEqual(tuning.raise_open_file_limit(limits), (1024, 65536))
        self.assertEqual(limits.getrlimit(limits.RLIMIT_NOFILE), (65536, 65536))

    def test_hard_limit_kept(self) -> None:
        """The hard limit is never changed (only root could raise it)."""
        limits = FakeLimits(1024, 4096)
        tuning.raise_open_file_limit(limits)
        self.assertEqual(limits.set_calls, [(limits.RLIMIT_NOFILE, (4096, 4096))])

    def test_already_at_hard(self) -> None:
        """At the hard limit already, nothing is set."""
        limits = FakeLimits(20000, 20000)
        self.assertEqual(tuning.raise_open_file_limit(limits), (20000, 20000))
        self.assertEqual(limits.set_calls, [])

    def test_unlimited_hard(self) -> None:
        """An unlimited hard limit is taken as it is: the soft limit becomes unlimited."""
        limits = FakeLimits(1024, FakeLimits.RLIM_INFINITY)
        self.assertEqual(tuning.raise_open_file_limit(limits), (1024, FakeLimits.RLIM_INFINITY))
        self.assertEqual(
            limits.getrlimit(limits.RLIMIT_NOFILE),
            (FakeLimits.RLIM_INFINITY, FakeLimits.RLIM_INFINITY),
        )

    def test_refused(self) -> None:
        """A refused change (a sandbox, a container) is not an error: None, limits unchanged."""
        limits = FakeLimits(1024, 65536, refuse=True)
        self.assertIsNone(tuning.raise_open_file_limit(limits))
        self.assertEqual(limits.getrlimit(limits.RLIMIT_NOFILE), (1024, 65536))


class FakeCollector:
    """Records what L{tuning.tune_collector} does, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def collect(self) -> int:
        self.calls.append(("collect",))
        return 0

    def freeze(self) -> None:
        self.calls.append(("freeze",))

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append(("set_threshold", *threshold))


class TuneCollectorTests(SynchronousTestCase):
    def test_collect_freeze_threshold(self) -> None:
        """Start-up garbage is collected first, the survivors frozen, then the thresholds set."""
        fake = FakeCollector()
        tuning.tune_collector(
            collect=fake.collect, freeze=fake.freeze, set_threshold=fake.set_threshold
        )
        self.assertEqual(
            fake.calls, [("collect",), ("freeze",), ("set_threshold", *tuning.GC_THRESHOLD)]
        )

    def test_nothing_switched_off(self) -> None:
        """Every generation keeps a positive threshold: the collector is tuned, not disabled."""
        self.assertEqual(len(tuning.GC_THRESHOLD), 3)
        self.assertTrue(all(t > 0 for t in tuning.GC_THRESHOLD))
        self.assertGreater(tuning.GC_THRESHOLD[0], 700)  # CPython's default


class RunningAsProgramTests(SynchronousTestCase):
    def test_subcommand_of_twistd(self) -> None:
        """Options parsed as twistd's (or twist's) subcommand have a parent: a program."""

        class Runner(usage.Options):
            subCommands = [["chatroulette", None, Options, "chat"]]

        raised: list[None] = []
        self.patch(tuning, "raise_open_file_limit", lambda: raised.append(None))
        runner = Runner()
        runner.parseOptions(["chatroulette", "--state-dir", self.mktemp()])
        self.assertTrue(tuning.running_as_program(runner.subOptions))
        self.assertEqual(raised, [None])  # before --max-connections took its default

    def test_built_directly(self) -> None:
        """Options parsed directly (tests, an embedding application) are not: nothing is tuned."""
        raised: list[None] = []
        self.patch(tuning, "raise_open_file_limit", lambda: raised.append(None))
        options = Options()
        options.parseOptions(["--state-dir", self.mktemp()])
        self.assertFalse(tuning.running_as_program(options))
        self.assertEqual(raised, [])
