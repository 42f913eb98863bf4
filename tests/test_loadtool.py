"""
The load tool's pure parts: probe texts, the delivery ledger, percentiles,
the report and its verdict, the pacing options, spreading clients over
several URLs, the command line, and the package layout (the server never
imports the load tool).  No reactor, no network.  (The token bucket that paces the clients is the server's own,
tested in test_limits.)
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.load import ClientConfig
from chatroulette.load.cli import build_parser, config_from_args, urls_from_args
from chatroulette.load.client import DEFAULT_MAX_RATE
from chatroulette.load.scenarios import Run, check_urls, spread
from chatroulette.load.stats import (
    Ledger,
    Progress,
    Report,
    Summary,
    UrlCounts,
    count_errors,
    decode_probe,
    encode_probe,
    format_report,
    percentile,
    summarize,
)


class ProbeTests(SynchronousTestCase):
    """Tracked message texts."""

    def test_round_trip(self) -> None:
        """A probe decodes to its sender, sequence number and send time."""
        text = encode_probe("c17", 42, 1234.5678, size=64)
        self.assertEqual(len(text), 64)
        self.assertTrue(text.startswith("c17:42:1234.567800:"))
        probe = decode_probe(text)
        assert probe is not None
        self.assertEqual((probe.sender, probe.seq), ("c17", 42))
        self.assertAlmostEqual(probe.sent_at, 1234.5678)

    def test_never_truncated(self) -> None:
        """A size smaller than the header leaves the header whole."""
        text = encode_probe("c1", 1, 1.0, size=3)
        self.assertEqual(text, "c1:1:1.000000:")
        self.assertIsNotNone(decode_probe(text))

    def test_foreign_text(self) -> None:
        """Texts the tool did not write are not mistaken for probes."""
        for text in ["hello", "a:b:c:", "c1:x:1.0:", "c1:1:1.0:hello", ":1:1.0:", "c1:1:now:xx"]:
            self.assertIsNone(decode_probe(text), text)

    @given(st.from_regex(r"c[0-9]{1,6}", fullmatch=True), st.integers(0, 10**9), st.floats(0, 1e7))
    def test_any_probe_decodes(self, sender: str, seq: int, sent_at: float) -> None:
        """Every probe the tool can write decodes to what was put in."""
        probe = decode_probe(encode_probe(sender, seq, sent_at, size=80))
        assert probe is not None
        self.assertEqual((probe.sender, probe.seq), (sender, seq))
        self.assertAlmostEqual(probe.sent_at, sent_at, places=5)


class PercentileTests(SynchronousTestCase):
    """Nearest-rank percentiles and summaries."""

    def test_nearest_rank(self) -> None:
        """The smallest value with at least q% of the values at or below it."""
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50.0)
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile(values, 100), 100.0)
        self.assertEqual(percentile(values, 0.5), 1.0)
        self.assertEqual(percentile([1.0, 2.0, 3.0, 4.0], 50), 2.0)
        self.assertEqual(percentile([7.0], 99), 7.0)

    def test_invalid(self) -> None:
        """No values, or a percentile outside (0, 100], is an error."""
        self.assertRaises(ValueError, percentile, [], 50)
        self.assertRaises(ValueError, percentile, [1.0], 0)
        self.assertRaises(ValueError, percentile, [1.0], 101)

    @given(st.lists(st.floats(-1e6, 1e6), min_size=1), st.floats(0.01, 100), st.floats(0.01, 100))
    def test_monotonic_member(self, values: list[float], q1: float, q2: float) -> None:
        """A percentile is one of the values and never decreases with q."""
        ordered = sorted(values)
        low, high = sorted((q1, q2))
        self.assertIn(percentile(ordered, low), ordered)
        self.assertLessEqual(percentile(ordered, low), percentile(ordered, high))

    def test_summarize(self) -> None:
        """Summaries scale seconds to milliseconds and are empty for no samples."""
        summary = summarize([0.003, 0.001, 0.002, 0.010], scale=1000)
        self.assertEqual(summary, Summary(count=4, p50=2.0, p95=10.0, p99=10.0, max=10.0))
        self.assertEqual(summarize([]), Summary())


class LedgerTests(SynchronousTestCase):
    """Delivery accounting: loss, refusal, duplication, reordering, misrouting."""

    def send(self, ledger: Ledger, sender: str, seq: int, chat: str = "k", at: float = 1.0) -> str:
        ledger.send(sender, seq, chat, at)
        return encode_probe(sender, seq, at, 32)

    def test_delivered_with_latency(self) -> None:
        """A delivered probe settles and yields its latency."""
        ledger = Ledger()
        text = self.send(ledger, "c1", 1, at=10.0)
        self.assertEqual(ledger.unsettled, 1)
        ledger.receive("c2", "k", text, 10.25)
        self.assertEqual((ledger.delivered, ledger.unsettled), (1, 0))
        self.assertEqual(ledger.latencies, [0.25])

    def test_lost(self) -> None:
        """A probe neither delivered nor refused stays unsettled: lost at the end."""
        ledger = Ledger()
        self.send(ledger, "c1", 1)
        ledger.receive("c2", "k", self.send(ledger, "c1", 2), 2.0)
        self.assertEqual(ledger.unsettled, 1)

    def test_refused(self) -> None:
        """A probe the server refused (partner already gone) is not lost."""
        ledger = Ledger()
        self.send(ledger, "c1", 1)
        ledger.refuse()
        self.assertEqual((ledger.refused, ledger.unsettled), (1, 0))

    def test_duplicate(self) -> None:
        """The same probe arriving twice counts one delivery and one duplicate."""
        ledger = Ledger()
        text = self.send(ledger, "c1", 1)
        ledger.receive("c2", "k", text, 2.0)
        ledger.receive("c2", "k", text, 2.0)
        self.assertEqual((ledger.delivered, ledger.duplicated), (1, 1))

    def test_reordered(self) -> None:
        """A probe overtaken by a later one from the same sender is out of order."""
        ledger = Ledger()
        first, second = self.send(ledger, "c1", 1), self.send(ledger, "c1", 2)
        ledger.receive("c2", "k", second, 2.0)
        ledger.receive("c2", "k", first, 2.0)
        self.assertEqual((ledger.delivered, ledger.reordered), (2, 1))

    def test_order_is_per_sender(self) -> None:
        """Interleaved senders are not a reordering."""
        ledger = Ledger()
        a1, b1, a2 = self.send(ledger, "a", 1), self.send(ledger, "b", 1), self.send(ledger, "a", 2)
        for text in (b1, a1, a2):
            ledger.receive("r", "k", text, 2.0)
        self.assertEqual((ledger.delivered, ledger.reordered), (3, 0))

    def test_misrouted(self) -> None:
        """A probe arriving in another chat than it was sent in is misrouted."""
        ledger = Ledger()
        text = self.send(ledger, "c1", 1, chat="k1")
        ledger.receive("c3", "k2", text, 2.0)
        self.assertEqual(ledger.misrouted, 1)

    def test_foreign(self) -> None:
        """A message that is not a probe is counted apart."""
        ledger = Ledger()
        ledger.receive("c1", "k", "hi there", 1.0)
        self.assertEqual((ledger.foreign, ledger.delivered), (1, 0))


class ReportTests(SynchronousTestCase):
    """The verdict and its rendering."""

    def test_clean_run_passes(self) -> None:
        """A run with nothing lost and no errors has no problems."""
        report = Report("relay", "ws://h/ws", 2, messages_sent=5, messages_delivered=5)
        self.assertEqual(report.problems(), [])
        self.assertIn("PASS", format_report(report))

    def test_loss_fails(self) -> None:
        """Lost, duplicated, reordered or misrouted messages each fail the run."""
        for field in ("messages_lost", "messages_duplicated", "messages_reordered", "messages_misrouted"):
            report = Report("relay", "ws://h/ws", 2, **{field: 1})  # type: ignore[arg-type]
            self.assertEqual(len(report.problems()), 1, field)
            self.assertIn("FAIL", format_report(report))

    def test_error_threshold(self) -> None:
        """Errors fail the run only beyond the allowed number."""
        report = Report("churn", "ws://h/ws", 2, connections_failed=1, errors={"rate_limited": 2})
        self.assertEqual(report.error_count(), 3)
        self.assertEqual(len(report.problems(max_errors=2)), 1)
        self.assertEqual(report.problems(max_errors=3), [])

    def test_json(self) -> None:
        """The JSON form carries every figure, latency summaries nested."""
        report = Report("soak", "ws://h/ws", 4, latency_ms=Summary(3, 1.0, 2.0, 2.0, 2.0))
        data = json.loads(report.to_json())
        self.assertEqual(data["scenario"], "soak")
        self.assertEqual(data["latency_ms"]["p99"], 2.0)
        self.assertEqual(data["errors"], {})

    def test_count_errors(self) -> None:
        """Error codes are counted and sorted."""
        self.assertEqual(count_errors(["b", "a", "b"]), {"a": 1, "b": 2})

    def test_per_url_lines(self) -> None:
        """With several URLs the report has a line per URL, in the order given; with one it has none."""
        per_url = {
            "ws://b:8082/ws": UrlCounts(clients=3, opened=3, paired=3),
            "ws://a:8081/ws": UrlCounts(clients=3, opened=2, failed=1, paired=2),
        }
        report = Report("relay", "ws://b:8082/ws, ws://a:8081/ws", 6, per_url=per_url)
        lines = format_report(report).splitlines()
        self.assertIn("relay against ws://b:8082/ws, ws://a:8081/ws: 6 clients", lines[0])
        self.assertEqual(
            lines[2:4],
            [
                "  per URL      ws://b:8082/ws: 3 clients, opened 3, failed 0, dropped 0, paired 3",
                "               ws://a:8081/ws: 3 clients, opened 2, failed 1, dropped 0, paired 2",
            ],
        )
        self.assertTrue(lines[4].startswith("  pairing"), lines)
        single = Report("relay", "ws://a:8081/ws", 2, per_url={"ws://a:8081/ws": UrlCounts(clients=2)})
        self.assertNotIn("per URL", format_report(single))

    def test_per_url_json(self) -> None:
        """The JSON form has each URL's counts under per_url."""
        report = Report("churn", "ws://a/ws", 1, per_url={"ws://a/ws": UrlCounts(1, 1, 0, 0, 1)})
        data = json.loads(report.to_json())
        self.assertEqual(
            data["per_url"], {"ws://a/ws": {"clients": 1, "opened": 1, "failed": 0, "dropped": 0, "paired": 1}}
        )

    def test_progress_line(self) -> None:
        """The live line shows connections, pairs, throughput and errors."""
        line = Progress(3.0, 200, 198, 1000, 400.0, 1).line()
        for part in ("connected 200", "paired 198", "400 msg/s", "errors 1"):
            self.assertIn(part, line)


class CommandLineTests(SynchronousTestCase):
    """Argument parsing."""

    def test_defaults_respect_limits(self) -> None:
        """By default the tool paces itself under the server's default limits."""
        args = build_parser().parse_args(["relay", "ws://127.0.0.1:8080/ws"])
        config = config_from_args(args, None)
        self.assertEqual(config.max_rate, DEFAULT_MAX_RATE)
        self.assertLess(DEFAULT_MAX_RATE, 5)
        assert config.max_request_rate is not None
        self.assertLess(config.max_request_rate, 2)
        self.assertFalse(config.insecure)
        self.assertIsNone(config.ca_cert)

    def test_lift_limits_and_tls(self) -> None:
        """--no-rate-limit lifts pacing; --insecure and --ca-cert reach the config."""
        args = build_parser().parse_args(
            ["churn", "wss://chat.example/ws", "--no-rate-limit", "--insecure", "--ca-cert", "ca.pem"]
        )
        config = config_from_args(args, None)
        self.assertIsNone(config.max_rate)
        self.assertIsNone(config.max_request_rate)
        self.assertTrue(config.insecure)
        self.assertEqual(config.ca_cert, "ca.pem")

    def test_bad_size(self) -> None:
        """Message sizes the server would refuse are rejected up front."""
        args = build_parser().parse_args(["relay", "ws://h/ws", "--size", "2001"])
        self.assertRaises(ValueError, config_from_args, args, None)

    def test_bad_pacing(self) -> None:
        """Rates of 0 or below and bursts under 1 are refused before any connection."""
        for args in (["--max-rate", "0"], ["--max-request-rate", "-1"], ["--burst", "0.5"]):
            parsed = build_parser().parse_args(["relay", "ws://h/ws", *args])
            self.assertRaises(ValueError, config_from_args, parsed, None)
        self.assertRaises(ValueError, ClientConfig, max_rate=0.0)
        self.assertEqual(ClientConfig(max_rate=None, max_request_rate=None).max_rate, None)


class SeveralUrlsTests(SynchronousTestCase):
    """Clients spread over several URLs (the processes of a cluster), in turn."""

    def test_round_robin(self) -> None:
        """The first client goes to the first URL, the second to the second, and round again."""
        self.assertEqual(spread(5, ["ws://a/ws", "ws://b/ws"]), ["ws://a/ws", "ws://b/ws"] * 2 + ["ws://a/ws"])
        self.assertEqual(spread(3, ["ws://a/ws"]), ["ws://a/ws"] * 3)
        self.assertEqual(spread(0, ["ws://a/ws"]), [])

    @given(st.integers(0, 1000), st.integers(1, 10))
    def test_even_spread(self, clients: int, urls: int) -> None:
        """No URL gets more than one client more than another."""
        counts = [0] * urls
        for url in spread(clients, [f"ws://n{i}/ws" for i in range(urls)]):
            counts[int(url[len("ws://n") : -len("/ws")])] += 1
        self.assertEqual(sum(counts), clients)
        self.assertLessEqual(max(counts) - min(counts), 1)

    def test_one_url_or_several(self) -> None:
        """A single string is one URL (not its characters); a sequence keeps its order."""
        self.assertEqual(check_urls("ws://a/ws"), ["ws://a/ws"])
        self.assertEqual(check_urls(("wss://b/ws", "ws://a:81/ws")), ["wss://b/ws", "ws://a:81/ws"])

    def test_bad_urls(self) -> None:
        """No URL, a URL twice, or one that is not ws:// or wss:// is refused before any connection."""
        for urls in ([], ["ws://a/ws", "ws://a/ws"], ["http://a/ws"], ["a:8080"], ["ws:///ws"]):
            self.assertRaises(ValueError, check_urls, urls)

    def test_run_counts_per_url(self) -> None:
        """A run starts with one (empty) count per URL, in order, and reports its URLs together."""
        run = Run("relay", ["ws://b:8082/ws", "ws://a:8081/ws"], 4, ClientConfig(), MemoryReactorClock())
        self.assertEqual(list(run.per_url), ["ws://b:8082/ws", "ws://a:8081/ws"])
        self.assertEqual(run.report.url, "ws://b:8082/ws, ws://a:8081/ws")
        self.assertEqual(
            [t.factory.url for t in run.targets.values()], ["ws://b:8082/ws", "ws://a:8081/ws"]
        )

    def test_command_line_urls(self) -> None:
        """URLs repeat as arguments or with --url (those without first); the single-URL form still works."""
        cases = [
            (["relay", "ws://a/ws"], ["ws://a/ws"]),
            (["relay", "ws://a/ws", "ws://b/ws", "--pairs", "3"], ["ws://a/ws", "ws://b/ws"]),
            (["churn", "--url", "ws://a/ws", "--url", "ws://b/ws"], ["ws://a/ws", "ws://b/ws"]),
            (["soak", "--url", "ws://c/ws", "ws://a/ws", "ws://b/ws"], ["ws://a/ws", "ws://b/ws", "ws://c/ws"]),
        ]
        for argv, urls in cases:
            self.assertEqual(urls_from_args(build_parser().parse_args(argv)), urls, argv)

    def test_command_line_needs_a_url(self) -> None:
        """No URL at all, or one twice, is a usage error (ValueError, exit status 2)."""
        for argv in (["relay"], ["relay", "ws://a/ws", "--url", "ws://a/ws"]):
            self.assertRaises(ValueError, urls_from_args, build_parser().parse_args(argv))


def imported_modules(source: str, package: str) -> set[str]:
    """The absolute names of the modules (and C{from} imports) a module of C{package} imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else str(node.module)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


class LayoutTests(SynchronousTestCase):
    """The load tool is a client of the server, never a part of it."""

    def test_imported_modules(self) -> None:
        """The helper resolves absolute and relative imports, including C{from . import x}."""
        source = "import a.b\nfrom . import load\nfrom .load.stats import Report\nfrom x import y\n"
        self.assertEqual(
            imported_modules(source, "chatroulette"),
            {"a.b", "chatroulette", "chatroulette.load", "chatroulette.load.stats",
             "chatroulette.load.stats.Report", "x", "x.y"},
        )

    def test_server_does_not_import_the_load_tool(self) -> None:
        """No server module (nor the twistd plugin) imports chatroulette.load."""
        root = Path(__file__).resolve().parent.parent
        sources = [(path, "chatroulette") for path in (root / "chatroulette").glob("*.py")]
        sources.append((root / "twisted" / "plugins" / "chatroulette_plugin.py", "twisted.plugins"))
        self.assertIn((root / "chatroulette" / "tap.py", "chatroulette"), sources)
        for path, package in sources:
            for name in imported_modules(path.read_text(), package):
                self.assertFalse(
                    name == "chatroulette.load" or name.startswith("chatroulette.load."),
                    f"{path.name} imports {name}",
                )
