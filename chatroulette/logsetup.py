"""
The log configuration the service runs under, for every source (this
package's loggers, Autobahn's, Twisted's): C{--log-level}, and the log
budget for lines about refused or malformed requests (L{logbudget}).

twistd and twist choose the log observers (the log file, C{--logger},
syslog, twist's own level filter) and install them after C{makeService}:
twistd before it starts the service, twist after (just before it runs the
reactor).  So L{LogSetup} levels the loggers it owns when the service
starts, wraps whatever observers are installed once the reactor runs, and
undoes both once everything under it has stopped.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

from txaio import tx as txaio_twisted
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    Logger,
    globalLogPublisher,
)

from .internals import installed_observers
from .logbudget import DEFAULT_BYTES_PER_SECOND, DEFAULT_LINES_PER_SECOND, LogBudget

LEVELS = ("debug", "info", "warn", "error", "critical")
DEFAULT_LEVEL = LogLevel.info

_log = Logger()


def level_named(name: str) -> LogLevel:
    """The L{LogLevel} called C{name} (one of L{LEVELS}), or C{ValueError}."""
    if name.lower() not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, not {name!r}")
    level: LogLevel = LogLevel.levelWithName(name.lower())
    return level


def _ignore(self: Logger, *args: Any, **kwargs: Any) -> None:
    """A log method of a level that is not written: builds nothing, sends nothing."""


_leveled_classes: dict[LogLevel, type[Logger]] = {}


def leveled_logger_class(level: LogLevel) -> type[Logger]:
    """
    A L{Logger} whose methods for levels below C{level} do nothing, bound
    once here instead of checked on every call: an event below the level is
    never built, and its fields are never formatted.  A class, not an
    instance patch, because a L{Logger} that is a class attribute makes a
    new logger of its own class on every access.
    """
    cls = _leveled_classes.get(level)
    if cls is None:
        names = [candidate.name for candidate in LogLevel.iterconstants()]
        quiet = {name: _ignore for name in names[: names.index(level.name)]}
        cls = type(f"Logger_{level.name}", (Logger,), quiet)
        _leveled_classes[level] = cls
    return cls


def level_loggers(level: LogLevel, modules: Iterable[object]) -> Callable[[], None]:
    """
    Replace every L{Logger} that is an attribute of one of C{modules}, or of
    a class defined in one of them, by a L{leveled_logger_class} logger with
    the same namespace and observer.  Returns the function that puts the
    original loggers back.  Loggers made later, or kept elsewhere, are not
    affected.
    """
    cls = leveled_logger_class(level)
    replaced: list[tuple[object, str, Logger]] = []
    for module in modules:
        module_name = getattr(module, "__name__", None)
        holders: list[object] = [module]
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == module_name:
                holders.append(value)
        for holder in holders:
            for name, value in list(vars(holder).items()):
                if isinstance(value, Logger):
                    setattr(holder, name, cls(value.namespace, value.source, value.observer))
                    replaced.append((holder, name, value))

    def restore() -> None:
        for holder, name, original in reversed(replaced):
            setattr(holder, name, original)

    return restore


def our_modules() -> list[object]:
    """This package's modules that are loaded now."""
    return [
        module
        for name, module in list(sys.modules.items())
        if module is not None and (name == __package__ or name.startswith(f"{__package__}."))
    ]


def level_txaio(level: LogLevel) -> Callable[[], None]:
    """
    Set txaio's global level (Autobahn's loggers: below it their methods are
    no-ops, as ours); returns the function that sets the previous one back.
    """
    previous = txaio_twisted.get_global_log_level()
    txaio_twisted.set_global_log_level(level.name)
    return lambda: txaio_twisted.set_global_log_level(previous)


def wrap_observers(
    publisher: LogPublisher, wrap: Callable[[ILogObserver], ILogObserver]
) -> Callable[[], None] | None:
    """
    Send every event C{publisher} publishes through C{wrap(observers)}
    instead of straight to the observers it has now; returns the function
    that undoes it, or C{None} (nothing done) if the observers cannot be
    listed.

    An observer removed from C{publisher} while wrapped comes back when this
    is undone: undo it first.
    """
    observers = installed_observers(publisher)
    if observers is None:
        return None
    for observer in observers:
        publisher.removeObserver(observer)
    wrapper = wrap(LogPublisher(*observers))
    publisher.addObserver(wrapper)

    def restore() -> None:
        publisher.removeObserver(wrapper)
        for observer in observers:
            publisher.addObserver(observer)

    return restore


class LogSetup(MultiService):
    """
    A C{MultiService} whose children run under the log configuration:
    events below C{level} are not written, whoever logs them, and events
    about refused or malformed requests, whoever logs them, share one
    L{LogBudget} of C{refused_lines} lines and C{refused_bytes} bytes a
    second (0: no limit).

    This package's and Autobahn's loggers are leveled before the first child
    starts; the installed observers are wrapped (level filter, then budget)
    once C{reactor} runs: the first moment both twistd and twist have
    installed theirs, and before any client can connect.  Both last until
    the last child has stopped, graceful shutdown included.
    """

    def __init__(
        self,
        level: LogLevel,
        reactor: IReactorCore,
        clock: IReactorTime,
        refused_lines: float = DEFAULT_LINES_PER_SECOND,
        refused_bytes: float = DEFAULT_BYTES_PER_SECOND,
        publisher: LogPublisher = globalLogPublisher,
    ) -> None:
        super().__init__()
        self.level = level
        self.refused_lines = refused_lines
        self.refused_bytes = refused_bytes
        self._reactor = reactor
        self._clock = clock
        self._publisher = publisher
        self._undo: list[Callable[[], None]] | None = None
        self.budget: LogBudget | None = None
        """The budget, while the observers are wrapped."""

    def privilegedStartService(self) -> None:
        self._apply()
        super().privilegedStartService()

    def startService(self) -> None:
        self._apply()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()

        def undo(result: object) -> object:
            self._restore()
            return result

        stopped.addBoth(undo)
        return stopped

    def _apply(self) -> None:
        if self._undo is not None:
            return
        self._undo = [level_loggers(self.level, our_modules()), level_txaio(self.level)]
        self._reactor.callWhenRunning(self._wrap, self._undo)

    def _chain(self, observers: ILogObserver) -> ILogObserver:
        # The summary of dropped lines is an ordinary event, logged from the
        # top: through the level filter, past the budget.
        self.budget = LogBudget(
            observers, self._clock, self.refused_lines, self.refused_bytes, summary_observer=self._publisher
        )
        return FilteringLogObserver(self.budget, [LogLevelFilterPredicate(defaultLogLevel=self.level)])

    def _wrap(self, undo: list[Callable[[], None]]) -> None:
        if undo is not self._undo:
            return  # stopped (and maybe started again) before the reactor ran
        restore = wrap_observers(self._publisher, self._chain)
        if restore is None:
            _log.warn(
                "this version of Twisted does not let the log observers be wrapped: "
                "--log-level applies to chatroulette's and Autobahn's events only, "
                "and there is no log budget",
                event="log_setup",
            )
            return
        undo.append(restore)
        budget = self.budget
        assert budget is not None
        undo.append(budget.summarise)  # undone first: the last drops are told

    def _restore(self) -> None:
        undo, self._undo = self._undo, None
        for step in reversed(undo or []):
            step()
        self.budget = None
