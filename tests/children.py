"""
Child processes for tests, with everything needed to say why one failed.

L{twisted.internet.utils.getProcessOutputAndValue} errbacks with a bare
C{(out, err, signal)} tuple when the child is killed by a signal; a tuple
is not an exception, so a test awaiting it dies of an unrelated
C{AttributeError} and the child's own story (which signal, what it wrote)
is lost.  L{run_child} always fires with a L{ChildResult}, and
L{ChildResult.check} turns anything but a clean exit into an assertion
message that gives the exit status or signal, stdout and stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

# Longer output is shown as its head and tail, with the length in between.
SHOWN_BYTES = 4096


def _show(name: str, data: bytes) -> str:
    text = data.decode(errors="replace")
    if len(data) > 2 * SHOWN_BYTES:
        head = data[:SHOWN_BYTES].decode(errors="replace")
        tail = data[-SHOWN_BYTES:].decode(errors="replace")
        text = f"{head}\n[... {len(data) - 2 * SHOWN_BYTES} bytes not shown ...]\n{tail}"
    return f"--- {name} ({len(data)} bytes) ---\n{text}"


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended, and everything it wrote."""

    argv: tuple[str, ...]
    out: bytes
    err: bytes
    exit_code: int | None
    signal: int | None

    @property
    def clean(self) -> bool:
        """It exited by itself with status 0."""
        return self.exit_code == 0 and self.signal is None

    def status(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = "unknown"
            return f"killed by signal {self.signal} ({name})"
        return f"exited with status {self.exit_code}"

    def describe(self) -> str:
        """The whole story, for an assertion message."""
        command = " ".join(
            arg if len(arg) <= 100 and "\n" not in arg else f"<{len(arg)}-character argument>"
            for arg in self.argv
        )
        return "\n".join(
            [f"child `{command}` {self.status()}", _show("stdout", self.out), _show("stderr", self.err)]
        )

    def check(self) -> bytes:
        """The stdout of a clean exit; any other ending fails with L{describe}."""
        if not self.clean:
            raise AssertionError(self.describe())
        return self.out


class _Collector(ProcessProtocol):
    """Keeps stdout and stderr apart and fires once the child is reaped and its pipes closed."""

    def __init__(self, argv: tuple[str, ...], ended: defer.Deferred[ChildResult]) -> None:
        self._argv = argv
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._ended = ended

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        ending = reason.value
        if not isinstance(ending, (ProcessDone, ProcessTerminated)):
            self._ended.errback(reason)
            return
        self._ended.callback(
            ChildResult(
                argv=self._argv,
                out=b"".join(self._out),
                err=b"".join(self._err),
                exit_code=ending.exitCode,
                signal=ending.signal,
            )
        )


def run_child(
    reactor: IReactorProcess,
    executable: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    path: str | None = None,
) -> defer.Deferred[ChildResult]:
    """
    Run C{executable} with C{args} in C{env} (empty by default) and the
    working directory C{path}; fire with how it ended, whatever that was.
    """
    argv = (executable, *args)
    ended: defer.Deferred[ChildResult] = defer.Deferred()
    reactor.spawnProcess(_Collector(argv, ended), executable, argv, env=dict(env or {}), path=path)
    return ended


def stop_by_pid(process: subprocess.Popen[bytes] | subprocess.Popen[str] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop a server the tests started: C{sig} by PID, then SIGKILL if it has not ended within C{timeout} seconds."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout)
