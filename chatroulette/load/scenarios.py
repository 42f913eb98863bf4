"""
The scenarios: L{run_relay}, L{run_churn} and L{run_soak} open the clients,
drive them, and return a L{chatroulette.load.stats.Report}.  L{Run} is one
run's state: its clients, its ledger and its counters.

Every scenario takes one URL or several: with several (the processes of a
cluster, or its proxy and a node), the clients are spread over them in turn,
the first client to the first URL, the second to the second, and so on.
Who is paired with whom is the servers' business, so the two sides of a
chat may well have come through different URLs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Sequence, cast
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from .client import (
    MESSAGE,
    NOT_CHATTING,
    RATE_LIMITED,
    REQUEST,
    ClientConfig,
    LoadClient,
    LoadClientFactory,
    client_endpoint,
    now,
)
from .stats import Ledger, Progress, Report, UrlCounts, count_errors, summarize


def check_urls(url: str | Sequence[str]) -> list[str]:
    """
    The run's URLs, in order: C{url} itself when it is one string.

    @raise ValueError: no URL, one given twice, or one that is not C{ws://}
        or C{wss://} with a host.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no URL given: name the server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws")
    for each in urls:
        parts = urlsplit(each)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{each!r} is not a WebSocket URL like ws://127.0.0.1:8080/ws or wss://chat.example/ws")
        if urls.count(each) > 1:
            raise ValueError(f"{each} is given twice: each URL once, clients are spread over them in turn")
    return urls


def spread(clients: int, urls: Sequence[str]) -> list[str]:
    """The URL of each of C{clients} clients: round robin over C{urls}, in their order."""
    return [urls[i % len(urls)] for i in range(clients)]


class _Target:
    """One of the run's URLs: the factory and endpoint its clients connect with."""

    def __init__(self, run: Run, url: str) -> None:
        self.factory = LoadClientFactory(run, url, run.config.origin)
        self.endpoint = client_endpoint(run.reactor, self.factory, run.config)


class Run:
    """One load run: its clients, its ledger, its counters, its scenario."""

    def __init__(
        self, scenario: str, url: str | Sequence[str], clients: int, config: ClientConfig, reactor: Any
    ) -> None:
        self.scenario = scenario
        self.urls = check_urls(url)
        self.config = config
        self.reactor = reactor
        self.ledger = Ledger()
        self.targets = {each: _Target(self, each) for each in self.urls}
        self.report = Report(scenario=scenario, url=", ".join(self.urls), clients=clients)
        self.per_url = {each: UrlCounts() for each in self.urls}
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
            self.per_url[client.factory.url].dropped += 1

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

    async def _open_one(self, url: str) -> None:
        target = self.targets[url]
        try:
            protocol = await target.endpoint.connect(target.factory)
            client = cast(LoadClient, protocol)
            await client.opened
        except Exception as e:
            self.report.connections_failed += 1
            self.per_url[url].failed += 1
            self.connect_errors[type(e).__name__] += 1
            return
        self.clients.append(client)
        self.per_url[url].opened += 1
        if self.churn:
            client.paced(REQUEST, client.send_find)

    async def open_all(self, n: int) -> None:
        """Open C{n} connections, C{concurrency} at a time, spread over the URLs in turn."""
        semaphore = defer.DeferredSemaphore(max(1, self.config.concurrency))
        urls = spread(n, self.urls)
        for url in urls:
            self.per_url[url].clients += 1
        await defer.gatherResults([semaphore.run(self._open_one, url) for url in urls])
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
        paired = Counter(c.factory.url for c in self.clients if c.ever_paired)
        per_url = {url: replace(counts, paired=paired[url]) for url, counts in self.per_url.items()}
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
            per_url=per_url,
        )


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


async def _send_at_rate(run: Run, rate: float, duration: float) -> float:
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
    url: str | Sequence[str],
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
    run = Run("relay", url, 2 * pairs, config, _reactor(reactor))
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
    url: str | Sequence[str],
    clients: int,
    duration: float = 10.0,
    *,
    config: ClientConfig = ClientConfig(),
    reactor: IReactorTime | None = None,
) -> Report:
    """C{clients} clients doing find -> paired -> one message -> next for C{duration} seconds."""
    run = Run("churn", url, clients, config, _reactor(reactor))
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
    url: str | Sequence[str],
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
    run = Run("soak", url, clients, config, _reactor(reactor))
    run.start_progress()
    await run.open_all(clients)
    await run.pair_all()
    window_s = await _send_at_rate(run, 1.0 / interval if interval > 0 else 0.0, duration)
    await run.drain()
    await run.close_all()
    return run.finish(window_s)
