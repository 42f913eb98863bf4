"""
Every use of a private or undocumented attribute of Twisted, Autobahn or
txredisapi, in one module.

The frame fast path (L{chatroulette.fastpath}), write-through and write
batching (L{chatroulette.outbound}) and a few savings per connection reach
into Twisted's TCP transport and Autobahn's protocol state.  Nothing else in
the package does.  L{self_check} runs once at start-up: it builds a real
Autobahn connection on an in-memory transport and a real Twisted TCP
connection on a socket pair and checks that every attribute used here still
exists with the shape this module expects.  If one is missing or has
changed, L{Hooks.detect} turns every hook off with one warning and the
service runs on public APIs only: slower, equally correct.

C{--no-fast-path} turns off the speed hooks (L{Hooks.fast}).  Four hooks
are not about speed and stay on unless the self-check fails, each with a
public fallback: Autobahn's timers on the injected clock (L{use_clock},
L{cancel_close_timer}), protocol close codes (L{send_close_frame}; Autobahn's
public C{sendClose} refuses 1001, 1003 and 1008), exit status 0 after a
graceful stop (L{graceful_exit}) and no client address in Twisted's own log
lines about connections (L{hide_address_in_logs}).

With C{--redis}, the node's command connection packs its commands with
hiredis (L{PackedCommands}, a fast hook: txredisapi's own packing in
Python was a third of a node's cost per Redis call).

The frame budget (every frame a client sends takes a token, see
L{chatroulette.protocol}) counts Autobahn's frames through L{CountedFrames}
with the fast path, and by reading frame headers itself without it.
"""

from __future__ import annotations

import functools
import socket
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, cast

import hiredis
import txredisapi
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.error import ConnectionDone
from twisted.logger import ILogObserver, LogEvent, Logger, LogPublisher
from zope.interface import implementer
from twisted.python.failure import Failure

_log = Logger()

_OPEN = WebSocketProtocol.STATE_OPEN
_GROUND = WebSocketProtocol.SEND_STATE_GROUND


# Twisted ---------------------------------------------------------------------


def is_plain_tcp(transport: object) -> bool:
    """A server-side TCP connection without TLS: the only kind written through."""
    return type(transport) is tcp.Server and not transport.TLS


def write_through(transport: ITransport | None, data: bytes) -> None:
    """
    Write C{data} to the socket now when nothing is queued, like asyncio does.

    C{FileDescriptor.write} always buffers and waits for the reactor to report
    the socket writable: two C{epoll_ctl} calls and a reactor turn per chat
    message.  For a plain TCP connection (no TLS, not even after C{startTLS})
    with nothing buffered, try the non-blocking C{send} first and buffer only
    what the kernel did not take; anything else goes the usual way.  Nothing
    is written once the connection is being aborted (an abort drops buffered
    data; so must we).
    """
    if transport is None:
        return
    if type(transport) is tcp.Server:
        if transport._aborting:
            return
        if (
            not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport._tempDataLen
            and not transport.dataBuffer
        ):
            try:
                sent = transport.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # let Twisted find and report the error its own way
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


@implementer(ILogObserver)
class _PortLog:
    """
    The observer of a listening port's own log events, which passes them on
    with any C{address} field (the EMFILE recovery lines name each socket
    closed unanswered) labelled like every other address in the logs.
    """

    def __init__(self, label: Callable[[str], str], observer: ILogObserver) -> None:
        self._label = label
        self._observer = observer

    def __call__(self, event: LogEvent) -> None:
        address = event.get("address")
        if isinstance(address, tuple) and address:
            event = dict(event, address=self._label(str(address[0])))
        self._observer(event)


def hide_address_in_logs(transport: object, label: Callable[[str], str]) -> None:
    """
    Keep a client's address out of the log lines Twisted writes about its TCP
    connection and listening port: the connection's log prefix
    (C{tcp.Server.logstr}, "<protocol's logPrefix>,<session>,<address>", set
    when the connection is accepted) and the port's EMFILE recovery lines
    (written through the port class's private C{_logger}, which this gives
    the port a labelling one of its own, once).
    """
    while transport is not None and not isinstance(transport, tcp.Server):
        transport = getattr(transport, "transport", None)  # under TLS: the TCP connection
    if transport is None:
        return
    host = str(getattr(transport.getPeer(), "host", ""))
    prefix = transport.logstr.rsplit(",", 1)[0]
    hashed = label(host)
    transport.logstr = prefix if hashed == "-" else f"{prefix},{hashed}"
    port = transport.server
    if port is not None and not isinstance(port._logger.observer, _PortLog):
        logger = port._logger
        port._logger = Logger(logger.namespace, observer=_PortLog(label, logger.observer))


def installed_observers(publisher: object) -> list[ILogObserver] | None:
    """
    The observers a C{twisted.logger.LogPublisher} sends events to, or
    C{None} if this version of Twisted keeps them some other way.

    twisted.logger offers no public way to list a publisher's observers, and
    twistd and twist install theirs on the global publisher themselves; this
    reads the private C{LogPublisher._observers}.  Anything unexpected means
    "unknown", and the caller then leaves the observers alone (log levels
    and the log budget then apply to this package's and Autobahn's events
    only).
    """
    observers = getattr(publisher, "_observers", None)
    if not isinstance(observers, list) or not all(callable(o) for o in observers):
        return None
    return list(observers)


def graceful_exit(reactor: object) -> None:
    """
    twistd and twist re-raise a SIGTERM/SIGINT after the reactor stops, so the
    process would end "killed by a signal"; after a complete graceful stop,
    forget the signal so the process exits with status 0.
    """
    if hasattr(reactor, "_exitSignal"):
        setattr(reactor, "_exitSignal", None)


# Autobahn --------------------------------------------------------------------


def autobahn_idle(protocol: Any) -> bool:
    """Open, and Autobahn holds no partial frame or message: the fast path may parse."""
    return (
        protocol.state == _OPEN
        and not protocol.data
        and protocol.current_frame is None
        and not protocol.inside_message
    )


def autobahn_feed(protocol: Any, data: bytes) -> None:
    """Hand bytes to Autobahn's own frame parser (below our C{dataReceived})."""
    protocol._dataReceived(data)


def autobahn_discard(protocol: Any) -> None:
    """
    Make Autobahn's parser stop: forget the bytes it holds and the frame it
    has just begun, so that its parsing loop finds nothing more to parse.
    Called from L{CountedFrames.onFrameBegin}.
    """
    protocol.data = b""
    protocol.current_frame = None


class CountedFrames(WebSocketServerProtocol):
    """
    Tell the protocol about every frame Autobahn's parser begins, of any kind
    (data, continuation, ping, pong, close), before Autobahn handles its
    payload, and let it refuse the frame.

    Autobahn calls its undocumented C{onFrameBegin} once per frame, right
    after it has parsed the frame's header (whatever the opcode; it is no
    streaming-mode hook).  With the fast path's hooks on, this override asks
    L{frame_begins}; on C{False}, the frame is dropped and Autobahn's buffer
    emptied (L{autobahn_discard}), so nothing more of this input is parsed.
    Without them it only passes the call on: L{chatroulette.fastpath} then
    counts frame headers itself, on public APIs.
    """

    factory: Any

    def frame_begins(self) -> bool:
        """A frame begins: may Autobahn handle it?"""
        return True

    def onFrameBegin(self) -> None:
        if self.factory.hooks.fast and not self.frame_begins():
            autobahn_discard(self)
            return
        super().onFrameBegin()


def can_send_direct(protocol: Any) -> bool:
    """No fragmented or synchronous send of Autobahn's is in progress."""
    return protocol.send_state == _GROUND and not protocol.triggered


def send_close_frame(protocol: Any, code: int, reason: str, private: bool) -> None:
    """
    Send a close frame with a protocol-level code (1001, 1003, 1008...), or,
    unless C{private} hooks are allowed, 1000 with the reason.
    """
    if private:
        protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8"), isReply=False)
    else:
        protocol.sendClose(code=1000, reason=reason)


def cancel_close_timer(protocol: Any) -> None:
    """
    Autobahn leaves its closing-handshake timer running after the connection
    is gone (it then does nothing); cancel it so no timer outlives the
    connection.
    """
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None:
        if call.active():
            call.cancel()
        protocol.closeHandshakeTimeoutCall = None


def drop_handshake_state(protocol: Any) -> None:
    """
    The handshake is over: drop what only it needed.  Each connection keeps
    an empty deque that Autobahn fills only for "sync" or chopped sends,
    which this server never makes; a tuple makes any such send fail loudly
    instead of sharing a queue.
    """
    protocol.send_queue = ()
    protocol.http_headers = {}
    protocol.http_request_data = b""
    protocol.http_response_data = ""


class _ClockTimer:
    """Autobahn's timer hook on our own clock, so its timeouts follow an injected clock."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, func, *args, **kwargs)


def use_clock(factory: Any, clock: IReactorTime) -> None:
    """
    Run a factory's Autobahn timers (handshake, close, ping) on C{clock}
    instead of txaio's global reactor (with the fast path only; the clock is
    the reactor in production, where the two are the same but for Autobahn's
    200 ms timer buckets).
    """
    factory._batched_timer = _ClockTimer(clock)


def share_options(factory: WebSocketServerFactory) -> None:
    """
    Make the factory's protocol options class attributes of a protocol class
    made for this factory, so connections stop copying every option into each
    instance (Autobahn copies only what an instance lacks).  Call after the
    last C{setProtocolOptions}.
    """
    base = factory.protocol
    attrs: dict[str, Any] = {}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A plain function (e.g. perMessageCompressionAccept) must not become a method.
        attrs[name] = staticmethod(value) if isinstance(value, types.FunctionType) else value
    attrs["CONFIG_ATTRS"] = ()
    attrs["__module__"] = base.__module__
    factory.protocol = cast(Any, type(base.__name__, (base,), attrs))


# txredisapi ------------------------------------------------------------------


class PackedCommands:
    """
    A mixin for a txredisapi protocol: every command it sends is packed by
    hiredis's C{pack_command} (C) instead of txredisapi's
    C{BaseRedisProtocol._build_command} (Python, a call per argument).  The
    bytes are the same for text, bytes and integers; a float is written as
    C{repr} does ("2.5", where txredisapi writes "2.500000"), which Redis and
    Lua read as the same number.
    """

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        return cast(bytes, hiredis.pack_command(args))


def _check_txredisapi(problems: list[str]) -> None:
    sample = ("EVALSHA", "abc", 1, "{p}", "\u00e9t\u00e9", b"\x00\xff", 10**20)
    _expect(problems, "txredisapi's BaseRedisProtocol._build_command packs commands as hiredis does",
            lambda: txredisapi.RedisProtocol(charset="utf-8")._build_command(*sample)
            == hiredis.pack_command(cast(Any, sample)))

    class Probe(PackedCommands, txredisapi.RedisProtocol):  # type: ignore[misc]
        pass

    probe = Probe(charset="utf-8")
    transport = StringTransport()
    probe.makeConnection(transport)
    answers: list[object] = []
    _expect(problems, "txredisapi's execute_command sends what _build_command packs",
            lambda: (probe.execute_command("ECHO", "\u00e9").addCallback(answers.append),
                     transport.value() == b"*2\r\n$4\r\nECHO\r\n$2\r\n\xc3\xa9\r\n")[1])
    _expect(problems, "txredisapi's protocol answers a command packed by hiredis",
            lambda: (probe.dataReceived(b"$2\r\n\xc3\xa9\r\n"), answers == ["\u00e9"])[1])
    probe.connectionLost(Failure(ConnectionDone()))


# The self-check ----------------------------------------------------------------


_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _expect(problems: list[str], what: str, ok: Callable[[], bool]) -> None:
    try:
        good = ok()
    except Exception as e:  # a changed shape may raise anything
        problems.append(f"{what} ({e.__class__.__name__}: {e})")
        return
    if not good:
        problems.append(what)


def _check_autobahn(problems: list[str]) -> None:
    factory = WebSocketServerFactory()
    _expect(problems, "WebSocketServerFactory._batched_timer.call_later",
            lambda: callable(factory._batched_timer.call_later))
    _expect(problems, "WebSocketServerProtocol.CONFIG_ATTRS names factory options",
            lambda: all(hasattr(factory, n) for n in WebSocketServerProtocol.CONFIG_ATTRS))
    # Timers of this probe go to a throw-away clock, never the reactor.
    factory._batched_timer = _ClockTimer(MemoryReactorClock())
    factory.setProtocolOptions(autoPingInterval=0)
    factory.protocol = WebSocketServerProtocol
    protocol: Any = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    _expect(problems, "WebSocketProtocol._dataReceived is a method",
            lambda: callable(protocol._dataReceived))
    _expect(problems, "Autobahn completes an in-memory handshake",
            lambda: (protocol.dataReceived(_HANDSHAKE), protocol.state == _OPEN)[1])
    if problems:
        return
    checks: Iterable[tuple[str, Callable[[], bool]]] = [
        ("WebSocketProtocol.data is bytes", lambda: protocol.data == b""),
        ("WebSocketProtocol.current_frame is None when idle", lambda: protocol.current_frame is None),
        ("WebSocketProtocol.inside_message is a bool", lambda: protocol.inside_message is False),
        ("WebSocketProtocol.send_state is SEND_STATE_GROUND", lambda: protocol.send_state == _GROUND),
        ("WebSocketProtocol.triggered is a bool", lambda: protocol.triggered is False),
        ("WebSocketProtocol.closeHandshakeTimeoutCall exists",
         lambda: hasattr(protocol, "closeHandshakeTimeoutCall")),
        ("WebSocketProtocol.send_queue, http_headers, http_request_data, http_response_data",
         lambda: all(hasattr(protocol, n) for n in
                     ("send_queue", "http_headers", "http_request_data", "http_response_data"))),
    ]
    for what, ok in checks:
        _expect(problems, what, ok)
    # A text frame fed below dataReceived arrives as a message.
    received: list[bytes] = []
    protocol.onMessage = lambda payload, binary: received.append(payload)
    frame = b"\x81\x82" + b"\x00\x00\x00\x00" + b"hi"
    _expect(problems, "WebSocketProtocol._dataReceived parses a frame",
            lambda: (protocol._dataReceived(frame), received == [b"hi"])[1])
    # Autobahn calls onFrameBegin for every frame (a ping too) with its
    # header in current_frame; emptying data and current_frame there stops
    # its parser (the second frame is dropped, the third never begun).
    begun: list[int] = []

    def begin() -> None:
        begun.append(protocol.current_frame.opcode)
        if len(begun) == 2:
            autobahn_discard(protocol)
        else:
            WebSocketProtocol.onFrameBegin(protocol)

    protocol.onFrameBegin = begin
    received.clear()
    ping = b"\x89\x80" + b"\x00\x00\x00\x00"
    _expect(problems, "WebSocketProtocol.onFrameBegin begins every frame; data and current_frame stop it",
            lambda: (protocol._dataReceived(ping + frame + frame),
                     begun == [9, 1] and received == [] and protocol.data == b""
                     and protocol.current_frame is None)[1])
    del protocol.onFrameBegin
    _expect(problems, "WebSocketProtocol._dataReceived parses after a discard",
            lambda: (protocol._dataReceived(frame), received == [b"hi"])[1])
    _expect(problems, "WebSocketProtocol.sendCloseFrame(code, reasonUtf8, isReply)",
            lambda: (protocol.sendCloseFrame(code=1008, reasonUtf8=b"x", isReply=False),
                     transport.value().endswith(b"\x88\x03\x03\xf0x"))[1])
    protocol.connectionLost(Failure(ConnectionDone()))


@implementer(ILogObserver)
def _observer_probe(event: LogEvent) -> None:
    """An observer for the self-check to look for."""


class _PortProbe:
    """Stands in for a listening port while the self-check builds a TCP connection."""

    _realPortNumber = 1


def _check_twisted(problems: list[str]) -> None:
    _expect(problems, "FileDescriptor.dataBuffer is bytes",
            lambda: isinstance(abstract.FileDescriptor.dataBuffer, bytes))
    _expect(problems, "tcp.Server.TLS and tcp.Server._aborting are bools",
            lambda: tcp.Server.TLS is False and tcp.Server._aborting is False)
    one, other = socket.socketpair()
    try:
        connection = tcp.Connection(one, None, MemoryReactorClock())  # type: ignore[arg-type]
        _expect(problems, "FileDescriptor._tempDataLen starts at 0",
                lambda: connection._tempDataLen == 0)
        _expect(problems, "tcp.Connection.socket is the socket", lambda: connection.socket is one)
        server = tcp.Server(
            one, None, ("127.0.0.1", 1), _PortProbe(), 7, MemoryReactorClock()  # type: ignore[arg-type]
        )
        _expect(problems, "tcp.Server.logstr ends with the client's address",
                lambda: server.logstr.endswith(",7,127.0.0.1"))
        _expect(problems, "tcp.Server.server is the listening port",
                lambda: isinstance(server.server, _PortProbe))
    finally:
        one.close()
        other.close()
    from twisted.internet import base

    _expect(problems, "ReactorBase._exitSignal", lambda: base.ReactorBase._exitSignal is None)
    probe = LogPublisher()
    probe.addObserver(_observer_probe)
    _expect(problems, "LogPublisher._observers lists its observers",
            lambda: installed_observers(probe) == [_observer_probe])
    _expect(problems, "tcp.Port._logger is a Logger with an observer",
            lambda: isinstance(tcp.Port._logger, Logger) and hasattr(tcp.Port._logger, "observer"))


@functools.cache
def self_check() -> tuple[str, ...]:
    """What is missing or has changed shape among the private attributes used here (run once)."""
    problems: list[str] = []
    _check_twisted(problems)
    _check_autobahn(problems)
    _check_txredisapi(problems)
    return tuple(problems)


@dataclass(frozen=True)
class Hooks:
    """
    Which private hooks a server uses.

    C{fast}: the speed hooks (frame fast path, write-through, write batching,
    shared options, dropped handshake state, Redis commands packed by
    hiredis), and the frame budget's count of Autobahn's frames
    (L{CountedFrames}; fallback: reading frame headers before Autobahn
    parses them); C{--no-fast-path} turns them off.  The others are not
    about speed, and go only if the self-check fails, each to a public fallback: C{clock} (Autobahn's timers on the
    injected clock, and no closing timer outliving its connection; fallback:
    txaio's timers on the reactor), C{close_frame} (L{send_close_frame};
    fallback: close 1000 with the reason) and C{exit_signal}
    (L{graceful_exit}; fallback: exit "killed by SIGTERM"), C{log_privacy}
    (L{hide_address_in_logs}; fallback: Twisted's connection log prefix and
    EMFILE lines show client addresses).
    """

    fast: bool = True
    clock: bool = True
    close_frame: bool = True
    exit_signal: bool = True
    log_privacy: bool = True

    @classmethod
    def public_only(cls) -> Hooks:
        return cls(False, False, False, False, False)

    @classmethod
    def detect(cls, fast_path: bool = True) -> Hooks:
        """
        The hooks this Twisted and Autobahn allow (see L{self_check}), the fast
        path only if C{fast_path}; one warning per process if the check failed.
        """
        global _warned
        problems = self_check()
        if problems and not _warned:
            _warned = True
            _log.warn(
                "fast path off: this Twisted or Autobahn differs from the tested versions "
                "({problems}); serving on public APIs only",
                problems="; ".join(problems),
            )
        if problems:
            return cls.public_only()
        return cls(fast=fast_path)


_warned = False
