"""
C{chatroulette-load}: drive a running chatroulette server through its public
WebSocket protocol and report what users would have seen.

Scenarios:
  - C{relay}: N pairs exchanging messages at a fixed rate per connection (or
    as fast as the server's rate limit allows);
  - C{churn}: clients doing find -> paired -> one message -> next, over and over;
  - C{soak}: N paired, mostly idle connections held for a while, with an
    occasional message.

The Python API (L{run_relay}, L{run_churn}, L{run_soak}) returns a
L{chatroulette.loadstats.Report}; the command line prints it (or C{--json})
and exits non-zero when a message was lost, duplicated, reordered or
misrouted, or when errors exceed C{--max-errors}.

By default each connection stays 20% under the server's default rate limits:
at most 4 chat messages and 1.6 requests (C{find}) a second, 5 in a burst.
C{--max-rate}, C{--max-request-rate} or C{--no-rate-limit} lift that for
servers configured with looser limits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, platformTrust

from .limits import TokenBucket
from .loadstats import (
    Ledger,
    Progress,
    Report,
    count_errors,
    encode_probe,
    format_report,
    summarize,
)

# The server's default limits per connection are 5 messages a second (burst
# 10) and 2 requests (find, leave...) a second (burst 10): stay 20% under.
DEFAULT_MAX_RATE = 4.0
DEFAULT_MAX_REQUEST_RATE = 1.6
DEFAULT_BURST = 5.0
MESSAGE = "message"
REQUEST = "request"
NOT_CHATTING = "not_chatting"
RATE_LIMITED = "rate_limited"

# The server encodes relayed messages compactly, in this key order; frames
# that do not start like this take the general JSON path.
_MESSAGE_PREFIX = b'{"type":"message","text":"'

now = time.monotonic


@dataclass(frozen=True)
class ClientConfig:
    """How the load clients connect and pace themselves (shared by all scenarios)."""

    size: int = 64
    """Characters per chat message (probes are padded up to this)."""
    max_rate: float | None = DEFAULT_MAX_RATE
    """Chat messages a second per connection; L{None} for no client-side limit."""
    max_request_rate: float | None = DEFAULT_MAX_REQUEST_RATE
    """Requests (C{find}) a second per connection; L{None} for no client-side limit."""
    burst: float = DEFAULT_BURST
    """How many of each kind may go out back to back."""
    insecure: bool = False
    """For C{wss://}: accept any certificate (self-signed test servers)."""
    ca_cert: str | None = None
    """For C{wss://}: trust this PEM certificate instead of the system's roots."""
    origin: str | None = None
    concurrency: int = 200
    """Connections being opened at the same time."""
    connect_timeout: float = 10.0
    pair_timeout: float = 30.0
    drain: float = 5.0
    """Seconds to wait at the end for messages still in flight."""
    progress: Callable[[Progress], None] | None = None
    progress_interval: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_rate", "max_request_rate"):
            rate = getattr(self, name)
            if rate is not None and not rate > 0:
                raise ValueError(f"{name} must be above 0 (None: no client-side limit), not {rate}")
        if not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")


class LoadClient(WebSocketClientProtocol):
    """One simulated user; the scenario (L{_Run}) decides what it does."""

    factory: LoadClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.run: _Run | None = None
        self.seq = 0
        self.chat: str | None = None
        self.chatting = False
        self.finding = False
        self.find_at = 0.0
        self.ever_paired = False
        self.leaving = False
        self.moving_on = False
        self.last_sent = ""
        self.buckets: dict[str, TokenBucket] = {}
        self._queue: deque[tuple[str, Callable[[], None]]] = deque()
        self._timer: IDelayedCall | None = None
        self.opened: defer.Deferred[LoadClient] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    # Autobahn hooks ---------------------------------------------------------

    def onOpen(self) -> None:
        run = self.factory.run
        self.run = run
        self.name = run.next_name()
        config = run.config
        if config.max_rate is not None:
            self.buckets[MESSAGE] = TokenBucket(config.max_rate, config.burst, now())
        if config.max_request_rate is not None:
            self.buckets[REQUEST] = TokenBucket(config.max_request_rate, config.burst, now())
        self.opened.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._queue.clear()
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason or f"closed with code {code}"))
        else:
            run = self.run
            if run is not None:
                run.client_closed(self)
        if not self.closed.called:
            self.closed.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        run = self.run
        if run is None:
            return
        if payload.startswith(_MESSAGE_PREFIX) and payload.endswith(b'"}'):
            # Probes hold no characters JSON escapes: skip the decoder.
            text = payload[len(_MESSAGE_PREFIX) : -2].decode("utf-8")
            if "\\" not in text:
                run.on_message(self, text)
                return
        event = json.loads(payload)
        kind = event.get("type")
        if kind == "message":
            run.on_message(self, event["text"])
        elif kind == "paired":
            run.on_paired(self, event["chat"])
        elif kind == "partner_left":
            run.on_partner_left(self)
        elif kind == "error":
            run.on_error(self, str(event.get("code")))

    # Actions ----------------------------------------------------------------

    @property
    def ws_open(self) -> bool:
        return bool(self.state == WebSocketProtocol.STATE_OPEN)

    def paced(self, kind: str, action: Callable[[], None]) -> None:
        """
        Do C{action} now, or as soon as the client-side limit for its C{kind}
        (C{"message"} or C{"request"}) allows; actions keep their order.
        """
        bucket = self.buckets.get(kind)
        if self._queue or (bucket is not None and not bucket.take(now())):
            self._queue.append((kind, action))
            self._schedule()
            return
        action()

    def _schedule(self) -> None:
        if (self._timer is not None and self._timer.active()) or not self._queue:
            return
        bucket = self.buckets[self._queue[0][0]]
        self._timer = self.factory.run.reactor.callLater(bucket.delay(now()), self._drain_queue)

    def _drain_queue(self) -> None:
        self._timer = None
        while self._queue and self.ws_open:
            kind, action = self._queue[0]
            if not self.buckets[kind].take(now()):
                break
            self._queue.popleft()
            action()
        if self._queue and self.ws_open:
            self._schedule()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def send_find(self) -> None:
        if self.ws_open and not self.leaving:
            self.finding = True
            self.last_sent = REQUEST
            self.chatting = False
            self.find_at = now()
            self.sendMessage(b'{"type":"find"}')

    def send_probe(self, sent_at: float | None = None) -> bool:
        """Send one tracked message if paired; C{sent_at} is when it was due."""
        run = self.run
        if run is None or not self.chatting or not self.ws_open or self.chat is None:
            return False
        stamp = now() if sent_at is None else sent_at
        self.seq += 1
        text = encode_probe(self.name, self.seq, stamp, run.config.size)
        run.ledger.send(self.name, self.seq, self.chat, stamp)
        self.last_sent = MESSAGE
        self.sendMessage(_MESSAGE_PREFIX + text.encode("ascii") + b'"}')
        return True

    def probe_if_paired(self) -> None:
        self.send_probe()

    def close(self) -> None:
        self.leaving = True
        if self.ws_open:
            self.sendClose(1000)


class LoadClientFactory(WebSocketClientFactory):
    protocol = LoadClient  # type: ignore[assignment]

    def __init__(self, run: _Run, url: str, origin: str | None) -> None:
        super().__init__(url, origin=origin)
        self.run = run
        self.setProtocolOptions(
            failByDrop=False,
            openHandshakeTimeout=run.config.connect_timeout,
            closeHandshakeTimeout=5,
            perMessageCompressionOffers=[],
        )


def client_endpoint(
    reactor: Any, factory: WebSocketClientFactory, config: ClientConfig
) -> IStreamClientEndpoint:
    """A TCP endpoint for C{ws://}, TLS over TCP for C{wss://} (verified unless told otherwise)."""
    tcp = HostnameEndpoint(reactor, factory.host, factory.port, timeout=config.connect_timeout)
    if not factory.isSecure:
        return tcp
    if config.insecure:
        return wrapClientTLS(CertificateOptions(verify=False), tcp)
    if config.ca_cert is not None:
        with open(config.ca_cert, "rb") as f:
            trust: Any = Certificate.loadPEM(f.read())
    else:
        trust = platformTrust()
    return wrapClientTLS(optionsForClientTLS(factory.host, trustRoot=trust), tcp)


class _Run:
    """One load run: its clients, its ledger, its counters, its scenario."""

    def __init__(self, scenario: str, url: str, clients: int, config: ClientConfig, reactor: Any) -> None:
        self.scenario = scenario
        self.url = url
        self.config = config
        self.reactor = reactor
        self.ledger = Ledger()
        self.factory = LoadClientFactory(self, url, config.origin)
        self.endpoint = client_endpoint(reactor, self.factory, config)
        self.report = Report(scenario=scenario, url=url, clients=clients)
        self.clients: list[LoadClient] = []
        self.errors: Counter[str] = Counter()
        self.connect_errors: Counter[str] = Counter()
        self.pair_waits: list[float] = []
        self.paired_events = 0
        self.stopping = False
        self.closing = False
        self.reply = False
        self.churn = False
        self._names = 0
        self._started = now()
        self._last_progress = (self._started, 0)
        self._progress: task.LoopingCall | None = None

    def next_name(self) -> str:
        self._names += 1
        return f"c{self._names}"

    # Events from clients ----------------------------------------------------

    def on_paired(self, client: LoadClient, chat: str) -> None:
        client.chat = chat
        client.chatting = True
        client.moving_on = False
        self.paired_events += 1
        if client.finding:
            client.finding = False
            if not self.stopping:
                self.pair_waits.append(now() - client.find_at)
        client.ever_paired = True
        if self.churn and not self.stopping:
            client.paced(MESSAGE, client.probe_if_paired)

    def on_message(self, client: LoadClient, text: str) -> None:
        self.ledger.receive(client.name, client.chat, text, now())
        if self.stopping or not client.chatting:
            return
        if self.churn:
            if not client.moving_on:
                client.moving_on = True
                client.paced(REQUEST, client.send_find)
        elif self.reply:
            client.send_probe()

    def on_partner_left(self, client: LoadClient) -> None:
        was_chatting = client.chatting
        client.chatting = False
        if self.churn and was_chatting and not self.stopping and not client.moving_on:
            client.moving_on = True
            client.paced(REQUEST, client.send_find)

    def on_error(self, client: LoadClient, code: str) -> None:
        self.errors[code] += 1
        if code == NOT_CHATTING:
            self.ledger.refuse()
        elif code == RATE_LIMITED:
            # Refused, not lost (most likely the last frame sent; errors carry
            # no reference to their frame).  A refused find is retried.
            if client.last_sent == MESSAGE:
                self.ledger.refuse()
            elif self.churn and not self.stopping and not client.chatting:
                client.paced(REQUEST, client.send_find)

    def client_closed(self, client: LoadClient) -> None:
        client.chatting = False
        if not (self.closing or client.leaving):
            self.report.connections_dropped += 1

    # Phases -----------------------------------------------------------------

    def start_progress(self) -> None:
        if self.config.progress is not None:
            self._progress = task.LoopingCall(self._tick_progress)
            self._progress.clock = self.reactor
            self._progress.start(self.config.progress_interval, now=False)

    def _tick_progress(self) -> None:
        callback = self.config.progress
        if callback is None:
            return
        t = now()
        then, delivered = self._last_progress
        rate = (self.ledger.delivered - delivered) / (t - then) if t > then else 0.0
        self._last_progress = (t, self.ledger.delivered)
        callback(
            Progress(
                elapsed=t - self._started,
                connected=sum(1 for c in self.clients if c.ws_open),
                paired=sum(1 for c in self.clients if c.ever_paired),
                delivered=self.ledger.delivered,
                msgs_per_s=rate,
                errors=sum(self.errors.values())
                + self.report.connections_failed
                + self.report.connections_dropped,
            )
        )

    async def _open_one(self) -> None:
        try:
            protocol = await self.endpoint.connect(self.factory)
            client = cast(LoadClient, protocol)
            await client.opened
        except Exception as e:
            self.report.connections_failed += 1
            self.connect_errors[type(e).__name__] += 1
            return
        self.clients.append(client)
        if self.churn:
            client.paced(REQUEST, client.send_find)

    async def open_all(self, n: int) -> None:
        """Open C{n} connections, C{concurrency} at a time."""
        semaphore = defer.DeferredSemaphore(max(1, self.config.concurrency))
        await defer.gatherResults(
            [semaphore.run(lambda: defer.ensureDeferred(self._open_one())) for _ in range(n)]
        )
        self.report.connections_opened = len(self.clients)

    async def until(self, condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
        """Wait (polling the condition) until it holds or C{timeout} seconds pass."""
        deadline = now() + timeout
        while not condition():
            if now() >= deadline:
                return False
            await task.deferLater(self.reactor, poll)
        return True

    async def pair_all(self) -> None:
        """Every open client sends C{find}; wait until all of them are paired."""
        for client in self.clients:
            client.paced(REQUEST, client.send_find)
        await self.until(
            lambda: all(c.chatting or not c.ws_open for c in self.clients), self.config.pair_timeout
        )

    async def drain(self) -> None:
        """Stop starting anything new; wait for messages in flight."""
        self.stopping = True
        await self.until(
            lambda: self.ledger.unsettled == 0 and not any(c.pending for c in self.clients),
            self.config.drain,
        )

    async def close_all(self) -> None:
        self.closing = True
        for client in self.clients:
            client.close()
        waits = [c.closed for c in self.clients if not c.closed.called]
        if waits:
            all_closed = defer.DeferredList(waits)
            all_closed.addTimeout(10, self.reactor)
            try:
                await all_closed
            except defer.TimeoutError:
                for client in self.clients:
                    if not client.closed.called:
                        client.dropConnection(abort=True)
        if self._progress is not None and self._progress.running:
            self._progress.stop()

    def finish(self, window: float) -> Report:
        report = self.report
        ledger = self.ledger
        return replace(
            report,
            duration_s=round(window, 3),
            clients_paired=sum(1 for c in self.clients if c.ever_paired),
            pairings=self.paired_events // 2,
            pairings_per_s=round(self.paired_events / 2 / window, 1) if window > 0 else 0.0,
            messages_sent=ledger.sent,
            messages_delivered=ledger.delivered,
            messages_lost=ledger.unsettled,
            messages_refused=ledger.refused,
            messages_duplicated=ledger.duplicated + ledger.foreign,
            messages_reordered=ledger.reordered,
            messages_misrouted=ledger.misrouted,
            messages_per_s=round(ledger.delivered / window, 1) if window > 0 else 0.0,
            latency_ms=summarize(ledger.latencies, 1000.0),
            pairing_wait_ms=summarize(self.pair_waits, 1000.0),
            errors=count_errors(self.errors.elements()),
            connection_errors=count_errors(self.connect_errors.elements()),
        )


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


async def _send_at_rate(run: _Run, rate: float, duration: float) -> float:
    """
    Every paired client sends C{rate} messages a second for C{duration}
    seconds, the sends spread evenly over the clients.  Each probe carries the
    time it was I{due}, so a load tool that falls behind shows as latency
    instead of hiding it.
    """
    senders = [c for c in run.clients if c.chatting]
    if not senders or rate <= 0:
        await task.deferLater(run.reactor, duration)
        return duration
    n = len(senders)
    per_second = rate * n
    start = now()
    done = 0

    def tick() -> None:
        nonlocal done
        due = min(int((now() - start) * per_second), int(duration * per_second))
        while done < due:
            client = senders[done % n]
            client.send_probe(start + done / per_second)
            done += 1

    loop = task.LoopingCall(tick)
    loop.clock = run.reactor
    loop.start(0.005, now=True)
    await task.deferLater(run.reactor, duration)
    tick()
    loop.stop()
    return now() - start


def _check_rate(rate: float | None, config: ClientConfig) -> float | None:
    """The per-connection message rate to use (L{None}: closed loop, as fast as replies come)."""
    if config.max_rate is None:
        return rate
    if rate is None:
        return config.max_rate
    if rate > config.max_rate:
        raise ValueError(
            f"{rate} messages a second per connection is above the client-side limit of "
            f"{config.max_rate}; raise max_rate (--max-rate) or lift it (--no-rate-limit) "
            "for servers configured with looser limits"
        )
    return rate


async def run_relay(
    url: str,
    pairs: int,
    rate: float | None = None,
    duration: float = 10.0,
    *,
    window: int = 1,
    config: ClientConfig = ClientConfig(),
    reactor: IReactorTime | None = None,
) -> Report:
    """
    C{pairs} pairs exchanging messages for C{duration} seconds.

    @param rate: messages a second per connection; L{None} means as fast as
        allowed: the client-side limit if there is one, otherwise a closed
        loop with C{window} messages in flight per connection (each message
        received is answered with a new one).
    """
    effective = _check_rate(rate, config)
    run = _Run("relay", url, 2 * pairs, config, _reactor(reactor))
    run.start_progress()
    await run.open_all(2 * pairs)
    await run.pair_all()
    if effective is None:
        run.reply = True
        start = now()
        for client in run.clients:
            for _ in range(max(1, window)):
                client.send_probe()
        await task.deferLater(run.reactor, duration)
        run.reply = False
        window_s = now() - start
    else:
        window_s = await _send_at_rate(run, effective, duration)
    await run.drain()
    await run.close_all()
    return run.finish(window_s)


async def run_churn(
    url: str,
    clients: int,
    duration: float = 10.0,
    *,
    config: ClientConfig = ClientConfig(),
    reactor: IReactorTime | None = None,
) -> Report:
    """C{clients} clients doing find -> paired -> one message -> next for C{duration} seconds."""
    run = _Run("churn", url, clients, config, _reactor(reactor))
    run.churn = True
    run.start_progress()
    start = now()
    await run.open_all(clients)
    remaining = duration - (now() - start)
    if remaining > 0:
        await task.deferLater(run.reactor, remaining)
    window_s = now() - start
    await run.drain()
    await run.close_all()
    return run.finish(window_s)


async def run_soak(
    url: str,
    clients: int,
    duration: float = 60.0,
    interval: float = 30.0,
    *,
    config: ClientConfig = ClientConfig(),
    reactor: IReactorTime | None = None,
) -> Report:
    """
    C{clients} connections, paired and held open for C{duration} seconds,
    each sending one message every C{interval} seconds on average.
    Connections the server drops count as errors.
    """
    run = _Run("soak", url, clients, config, _reactor(reactor))
    run.start_progress()
    await run.open_all(clients)
    await run.pair_all()
    window_s = await _send_at_rate(run, 1.0 / interval if interval > 0 else 0.0, duration)
    await run.drain()
    await run.close_all()
    return run.finish(window_s)


# Command line -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("url", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws or wss://chat.example/ws")
    common.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    common.add_argument("--size", type=int, default=64, help="characters per message (default 64)")
    common.add_argument(
        "--max-rate",
        type=float,
        default=DEFAULT_MAX_RATE,
        help=f"chat messages a second per connection the tool allows itself (default {DEFAULT_MAX_RATE}, "
        "under the server's default limit of 5)",
    )
    common.add_argument(
        "--max-request-rate",
        type=float,
        default=DEFAULT_MAX_REQUEST_RATE,
        help=f"find requests a second per connection (default {DEFAULT_MAX_REQUEST_RATE}, "
        "under the server's default limit of 2)",
    )
    common.add_argument("--burst", type=float, default=DEFAULT_BURST, help=f"burst for both limits (default {DEFAULT_BURST:g})")
    common.add_argument(
        "--no-rate-limit", action="store_true", help="no client-side pacing (for servers with looser limits)"
    )
    common.add_argument("--insecure", action="store_true", help="wss: accept any server certificate")
    common.add_argument("--ca-cert", metavar="FILE", help="wss: trust this PEM certificate (self-signed test servers)")
    common.add_argument("--origin", help="send this Origin header (default: none, like a non-browser client)")
    common.add_argument("--concurrency", type=int, default=200, help="connections opened at once (default 200)")
    common.add_argument("--drain", type=float, default=5.0, help="seconds to wait for messages in flight at the end")
    common.add_argument(
        "--max-errors", type=int, default=0, help="errors tolerated before the exit status is non-zero (default 0)"
    )
    common.add_argument("--json", action="store_true", help="print the report as one JSON object")
    common.add_argument("--quiet", action="store_true", help="no progress line")

    parser = argparse.ArgumentParser(
        prog="chatroulette-load",
        description="Load-test a running chatroulette server through its public WebSocket protocol.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    relay = sub.add_parser("relay", parents=[common], help="pairs exchanging messages")
    relay.add_argument("--pairs", type=int, default=100, help="pairs of clients (default 100)")
    relay.add_argument(
        "--rate", type=float, help="messages a second per connection (default: as fast as allowed)"
    )
    relay.add_argument(
        "--window", type=int, default=1, help="with --no-rate-limit and no --rate: messages in flight per connection"
    )
    churn = sub.add_parser("churn", parents=[common], help="find -> paired -> message -> next, repeatedly")
    churn.add_argument("--clients", type=int, default=200, help="clients (default 200)")
    soak = sub.add_parser("soak", parents=[common], help="many mostly idle paired connections")
    soak.add_argument("--clients", type=int, default=1000, help="clients (default 1000)")
    soak.add_argument("--interval", type=float, default=30.0, help="seconds between one client's messages (default 30)")
    return parser


def config_from_args(args: argparse.Namespace, progress: Callable[[Progress], None] | None) -> ClientConfig:
    if args.size < 1 or args.size > 2000:
        raise ValueError("--size must be between 1 and 2000 characters")
    return ClientConfig(
        size=args.size,
        max_rate=None if args.no_rate_limit else args.max_rate,
        max_request_rate=None if args.no_rate_limit else args.max_request_rate,
        burst=args.burst,
        insecure=args.insecure,
        ca_cert=args.ca_cert,
        origin=args.origin,
        concurrency=args.concurrency,
        drain=args.drain,
        progress=progress,
    )


class _ProgressLine:
    """The live line on stderr: rewritten in place on a terminal, one line every 5 s otherwise."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._shown = False
        self._count = 0

    def __call__(self, progress: Progress) -> None:
        self._count += 1
        if self._tty:
            self._stream.write("\r\x1b[K" + progress.line())
            self._shown = True
        elif self._count % 5 == 0:
            self._stream.write(progress.line() + "\n")
        self._stream.flush()

    def end(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


async def _main(reactor: IReactorCore, args: argparse.Namespace) -> None:
    line = None if args.quiet else _ProgressLine(sys.stderr)
    try:
        config = config_from_args(args, line)
        if args.scenario == "relay":
            report = await run_relay(
                args.url, args.pairs, args.rate, args.duration, window=args.window, config=config, reactor=cast(IReactorTime, reactor)
            )
        elif args.scenario == "churn":
            report = await run_churn(args.url, args.clients, args.duration, config=config, reactor=cast(IReactorTime, reactor))
        else:
            report = await run_soak(
                args.url, args.clients, args.duration, args.interval, config=config, reactor=cast(IReactorTime, reactor)
            )
    except ValueError as e:
        print(f"chatroulette-load: {e}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        if line is not None:
            line.end()
    print(report.to_json() if args.json else format_report(report, args.max_errors))
    if report.problems(args.max_errors):
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """The C{chatroulette-load} console script."""
    args = build_parser().parse_args(argv)
    task.react(lambda reactor: defer.ensureDeferred(_main(reactor, args)))


if __name__ == "__main__":
    main()
