"""
--log-level: events below it are not written, whoever logs them, and ours
and Autobahn's are not even built.
"""

from __future__ import annotations

import types
from typing import Any, cast

from txaio import tx as txaio_twisted
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogLevel, LogPublisher, Logger, capturedLogs, formatEvent
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette import protocol
from chatroulette.logsetup import LogSetup, leveled_logger_class, level_loggers, wrap_observers
from chatroulette.tap import Options

from .memory import MemoryServer


class Probe:
    """A log field that records whether anything formatted it."""

    def __init__(self) -> None:
        self.formatted = False

    def __format__(self, spec: str) -> str:
        self.formatted = True
        return "probe"

    def __repr__(self) -> str:
        self.formatted = True
        return "probe"


def running() -> MemoryReactorClock:
    """A fake reactor that has started running: callWhenRunning calls at once."""
    reactor = MemoryReactorClock()
    reactor.run()
    return reactor


def recorder() -> tuple[list[dict[str, Any]], ILogObserver]:
    events: list[dict[str, Any]] = []
    return events, cast(ILogObserver, events.append)


class LogLevelOptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_default_is_info(self) -> None:
        """Without --log-level, info and above are written."""
        self.assertEqual(self.parse()["log-level"], LogLevel.info)

    def test_each_level(self) -> None:
        """Every level name is accepted, in any case."""
        for name in ("debug", "info", "warn", "error", "critical", "DEBUG"):
            self.assertEqual(self.parse("--log-level", name)["log-level"], LogLevel.levelWithName(name.lower()))

    def test_unknown_level_is_usage_error(self) -> None:
        """An unknown level is a usage error naming the option and the choices."""
        with self.assertRaises(usage.UsageError) as e:
            self.parse("--log-level", "verbose")
        self.assertIn("log-level", str(e.exception))
        self.assertIn("debug, info, warn, error, critical", str(e.exception))

    def test_help(self) -> None:
        """--help documents the option, its choices and its default."""
        text = str(Options())
        self.assertIn("--log-level=", text)
        self.assertIn("debug, info, warn, error, critical", " ".join(text.split()))
        self.assertIn("[default: info]", " ".join(text.split()))


class LeveledLoggerTests(SynchronousTestCase):
    def test_below_level_builds_nothing(self) -> None:
        """At info a debug call reaches no observer and formats none of its fields; info is written."""
        events, observer = recorder()
        log = leveled_logger_class(LogLevel.info)(namespace="test", observer=observer)
        probe = Probe()
        log.debug("{probe}", probe=probe)
        self.assertEqual(events, [])
        self.assertFalse(probe.formatted)
        log.info("{probe}", probe=probe)
        self.assertEqual(len(events), 1)
        self.assertEqual(formatEvent(events[0]), "probe")

    def test_levels_above(self) -> None:
        """At error, warn and below are dropped; error and critical are written."""
        events, observer = recorder()
        log = leveled_logger_class(LogLevel.error)(namespace="test", observer=observer)
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        self.assertEqual([e["log_format"] for e in events], ["e", "c"])

    def test_class_attribute_keeps_level(self) -> None:
        """A leveled logger used as a class attribute stays leveled on every access."""
        events, observer = recorder()

        class Thing:
            log = leveled_logger_class(LogLevel.info)(observer=observer)

        Thing().log.debug("hidden")
        Thing().log.info("shown")
        self.assertEqual([e["log_format"] for e in events], ["shown"])
        self.assertEqual(events[0]["log_namespace"], f"{__name__}.Thing")

    def test_module_and_class_loggers_replaced_and_restored(self) -> None:
        """Loggers of a module and of its classes are leveled, keep their namespace, and come back."""
        module = types.ModuleType("fake_module")
        original = Logger(namespace="fake_module.thing")
        vars(module)["log"] = original
        owner = type("Owner", (), {"__module__": "fake_module", "_log": Logger()})
        vars(module)["Owner"] = owner
        restore = level_loggers(LogLevel.warn, [module])
        replaced = vars(module)["log"]
        self.assertIsInstance(replaced, leveled_logger_class(LogLevel.warn))
        self.assertEqual(replaced.namespace, "fake_module.thing")
        self.assertIsInstance(vars(owner)["_log"], leveled_logger_class(LogLevel.warn))
        restore()
        self.assertIs(vars(module)["log"], original)
        self.assertIs(type(vars(owner)["_log"]), Logger)


class LogSetupTests(SynchronousTestCase):
    def start(self, level: LogLevel, publisher: LogPublisher | None = None) -> LogSetup:
        reactor = running()
        setup = LogSetup(level, reactor, reactor, publisher=publisher if publisher is not None else LogPublisher())
        setup.startService()
        self.addCleanup(self.stop, setup)
        return setup

    def stop(self, setup: LogSetup) -> None:
        if setup.running:
            setup.stopService()

    def chat_events(self) -> list[dict[str, Any]]:
        """The events of one chat started and left, with the server's code logging as usual."""
        server = MemoryServer()
        with capturedLogs() as events:
            a, b = server.pair()
            a.send_json(type="leave")
            server.flush()
        return list(events)

    def test_info_hides_our_debug_events(self) -> None:
        """At info the chat start and leave events (debug) are not emitted; connections (info) are."""
        self.start(LogLevel.info)
        kinds = [e.get("event") for e in self.chat_events()]
        self.assertIn("connect", kinds)
        self.assertNotIn("pair", kinds)
        self.assertNotIn("leave", kinds)

    def test_info_formats_nothing(self) -> None:
        """At info a debug event of ours formats none of its fields."""
        self.start(LogLevel.info)
        probe = Probe()
        with capturedLogs() as events:
            protocol._pair_log.debug("{probe}", probe=probe)
            protocol.ChatServerProtocol._log.debug("{probe}", probe=probe)
        self.assertEqual(list(events), [])
        self.assertFalse(probe.formatted)

    def test_debug_shows_them(self) -> None:
        """At debug the chat start and leave events are emitted."""
        self.start(LogLevel.debug)
        kinds = [e.get("event") for e in self.chat_events()]
        self.assertIn("pair", kinds)
        self.assertIn("leave", kinds)

    def test_stop_restores(self) -> None:
        """Once stopped, our loggers are as they were."""
        original = protocol._pair_log
        setup = self.start(LogLevel.critical)
        self.assertIsNot(protocol._pair_log, original)
        setup.stopService()
        self.assertIs(protocol._pair_log, original)

    def test_filters_every_source(self) -> None:
        """Events of any logger (Twisted's, say) below the level do not reach the installed observers."""
        events, observer = recorder()
        publisher = LogPublisher(observer)
        setup = self.start(LogLevel.warn, publisher)
        twisted_like = Logger(namespace="twisted.web.http", observer=publisher)
        twisted_like.info("quiet")
        twisted_like.warn("loud")
        self.assertEqual([e["log_format"] for e in events], ["loud"])
        setup.stopService()
        twisted_like.info("again")
        self.assertEqual([e["log_format"] for e in events], ["loud", "again"])

    def test_observers_wrapped_once_the_reactor_runs(self) -> None:
        """Started before the reactor runs (as under twist), ours are leveled at once, the observers once it runs."""
        events, observer = recorder()
        publisher = LogPublisher()
        reactor = MemoryReactorClock()
        setup = LogSetup(LogLevel.warn, reactor, reactor, publisher=publisher)
        setup.startService()
        self.addCleanup(self.stop, setup)
        self.assertIsInstance(protocol._pair_log, leveled_logger_class(LogLevel.warn))
        publisher.addObserver(observer)  # the runner begins logging
        reactor.run()
        twisted_like = Logger(namespace="twisted.web.http", observer=publisher)
        twisted_like.info("quiet")
        twisted_like.warn("loud")
        self.assertEqual([e["log_format"] for e in events], ["loud"])

    def test_stopped_before_the_reactor_runs(self) -> None:
        """Stopped before the reactor ran, nothing is wrapped when it does run."""
        events, observer = recorder()
        publisher = LogPublisher(observer)
        reactor = MemoryReactorClock()
        setup = LogSetup(LogLevel.warn, reactor, reactor, publisher=publisher)
        setup.startService()
        setup.stopService()
        reactor.run()
        Logger(observer=publisher).info("written")
        self.assertEqual([e["log_format"] for e in events], ["written"])

    def test_txaio_level(self) -> None:
        """Autobahn's loggers follow the level (debug methods live at debug), and go back after."""
        previous = txaio_twisted.get_global_log_level()
        setup = self.start(LogLevel.debug)
        self.assertEqual(txaio_twisted.get_global_log_level(), "debug")
        self.assertIsNot(WebSocketServerProtocol.log.debug, txaio_twisted._no_op)
        setup.stopService()
        self.assertEqual(txaio_twisted.get_global_log_level(), previous)
        setup = self.start(LogLevel.error)
        self.assertIs(WebSocketServerProtocol.log.warn, txaio_twisted._no_op)

    def test_observers_cannot_be_listed(self) -> None:
        """If Twisted keeps its observers some other way, ours are still leveled, with a warning."""

        class OpaquePublisher(LogPublisher):
            def __init__(self) -> None:
                super().__init__()
                self._observers = None  # type: ignore[assignment]

        self.assertIsNone(wrap_observers(OpaquePublisher(), lambda observer: observer))
        with capturedLogs() as events:
            self.start(LogLevel.info, OpaquePublisher())
        self.assertEqual([e.get("event") for e in events], ["log_setup"])
        kinds = [e.get("event") for e in self.chat_events()]
        self.assertNotIn("pair", kinds)

    def test_children_start_and_stop_under_the_level(self) -> None:
        """The level applies before the first child starts and until the last one has stopped."""
        seen: list[object] = []
        stopping: Deferred[None] = Deferred()

        class Child(Service):
            def startService(self) -> None:
                seen.append(protocol._pair_log)
                super().startService()

            def stopService(self) -> Deferred[None]:
                super().stopService()
                return stopping

        original = protocol._pair_log
        reactor = running()
        setup = LogSetup(LogLevel.info, reactor, reactor, publisher=LogPublisher())
        Child().setServiceParent(setup)
        setup.startService()
        self.assertIsNot(seen[0], original)
        stopped = setup.stopService()
        self.assertIsNot(protocol._pair_log, original)
        stopping.callback(None)
        self.successResultOf(stopped)
        self.assertIs(protocol._pair_log, original)
