"""
The child-process helper says how a child ended: exit status or signal,
stdout and stderr, in the assertion message.
"""

from __future__ import annotations

import signal
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from .children import SHOWN_BYTES, ChildResult, _Collector, run_child


def ended(reason: Exception, out: bytes = b"", err: bytes = b"") -> ChildResult:
    """Feed a collector some output and an ending, as the reactor would."""
    results: list[ChildResult] = []
    done: defer.Deferred[ChildResult] = defer.Deferred()
    done.addCallback(results.append)
    collector = _Collector(("python", "-c", "..."), done)
    collector.outReceived(out)
    collector.errReceived(err)
    collector.processEnded(Failure(reason))
    [result] = results
    return result


class ChildResultTests(SynchronousTestCase):
    def test_clean_exit(self) -> None:
        """A child that exits 0 is clean and check() gives its stdout."""
        child = ended(ProcessDone(0), out=b"results\n")
        self.assertEqual((child.exit_code, child.signal), (0, None))
        self.assertEqual(child.check(), b"results\n")

    def test_killed_by_signal(self) -> None:
        """A signal fails check() with its number and name, stdout and stderr."""
        child = ended(ProcessTerminated(signal=signal.SIGABRT), out=b'[{"case": "1.1.1"}]', err=b"")
        self.assertFalse(child.clean)
        with self.assertRaises(AssertionError) as raised:
            child.check()
        message = str(raised.exception)
        self.assertIn(f"killed by signal {int(signal.SIGABRT)} (SIGABRT)", message)
        self.assertIn('--- stdout (19 bytes) ---\n[{"case": "1.1.1"}]', message)
        self.assertIn("--- stderr (0 bytes) ---", message)

    def test_nonzero_exit(self) -> None:
        """A non-zero status fails check() with that status and the traceback on stderr."""
        child = ended(ProcessTerminated(exitCode=1), err=b"Traceback ...\nValueError: no\n")
        with self.assertRaises(AssertionError) as raised:
            child.check()
        self.assertIn("exited with status 1", str(raised.exception))
        self.assertIn("ValueError: no", str(raised.exception))

    def test_long_output_shown_by_its_ends(self) -> None:
        """Long output keeps its head and tail and says how much is left out."""
        out = b"<" + b"x" * (3 * SHOWN_BYTES) + b">"
        description = ended(ProcessTerminated(exitCode=2), out=out).describe()
        self.assertIn(f"--- stdout ({len(out)} bytes) ---\n<", description)
        self.assertIn(f"[... {len(out) - 2 * SHOWN_BYTES} bytes not shown ...]", description)
        self.assertIn(">\n--- stderr", description)


@pytest_twisted.ensureDeferred
async def test_real_child_killed_by_signal() -> None:
    """A real child killed by a signal after writing is reported with the signal and its output, not an odd errback."""
    # SIGTERM rather than SIGABRT: the same path, and no core file left behind.
    code = (
        "import os, signal, sys; sys.stdout.write('partial'); sys.stderr.write('oops');"
        " sys.stdout.flush(); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGTERM)"
    )
    child = await run_child(reactor, sys.executable, ["-c", code])
    assert (child.exit_code, child.signal, child.out, child.err) == (None, signal.SIGTERM, b"partial", b"oops")
    with pytest.raises(AssertionError, match=f"killed by signal {int(signal.SIGTERM)} \\(SIGTERM\\)"):
        child.check()
