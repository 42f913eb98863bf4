"""
The C{chatroulette-load} command line (also C{python -m chatroulette.load}):
parse the arguments, run one scenario, print the report, and exit 1 when the
run failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore, IReactorTime

from .client import DEFAULT_BURST, DEFAULT_MAX_RATE, DEFAULT_MAX_REQUEST_RATE, ClientConfig
from .scenarios import check_urls, run_churn, run_relay, run_soak
from .stats import Progress, format_report


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "url",
        nargs="*",
        help="the server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws or wss://chat.example/ws; "
        "several (the processes of a cluster): the clients are spread over them in turn",
    )
    common.add_argument(
        "--url",
        dest="more_urls",
        metavar="URL",
        action="append",
        default=[],
        help="one more URL to spread clients over (repeatable; after the ones given without --url)",
    )
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


def urls_from_args(args: argparse.Namespace) -> list[str]:
    """
    The URLs to spread the clients over: those given without C{--url}, then
    those given with it.

    @raise ValueError: none, one twice, or one that is not a WebSocket URL.
    """
    return check_urls([*args.url, *args.more_urls])


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
        urls = urls_from_args(args)
        config = config_from_args(args, line)
        if args.scenario == "relay":
            report = await run_relay(
                urls, args.pairs, args.rate, args.duration, window=args.window, config=config, reactor=cast(IReactorTime, reactor)
            )
        elif args.scenario == "churn":
            report = await run_churn(urls, args.clients, args.duration, config=config, reactor=cast(IReactorTime, reactor))
        else:
            report = await run_soak(
                urls, args.clients, args.duration, args.interval, config=config, reactor=cast(IReactorTime, reactor)
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

