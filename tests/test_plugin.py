"""
The twistd plugin: found, documented, validating, and working when installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette.tap import Options

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """twistd finds exactly one service maker called chatroulette."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "chatroulette"]
        self.assertEqual(len(makers), 1)
        self.assertIn("chat", makers[0].description.lower())

    def test_help(self) -> None:
        """twistd chatroulette --help documents the options."""
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "chatroulette", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ["--listen", "--static", "--interest-timeout", "--repeat-cooldown"]:
            self.assertIn(option, result.stdout)


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """With no options it listens on tcp:8080 and serves the bundled client."""
        options = self.parse()
        self.assertEqual(options["listen"], ["tcp:8080"])
        self.assertEqual(options["interest-timeout"], 10.0)
        self.assertEqual(options["repeat-cooldown"], 30.0)
        self.assertTrue((options["static"] / "index.html").is_file())

    def test_frame_budget_options(self) -> None:
        """--frame-rate and --frame-burst reach the settings; the defaults leave room above every per-type burst."""
        settings = self.parse().settings()
        self.assertEqual((settings.frame_rate, settings.frame_burst), (100.0, 300))
        self.assertGreater(settings.frame_burst, settings.message_burst + settings.typing_burst + settings.request_burst + 100)
        settings = self.parse("--frame-rate", "0", "--frame-burst", "50").settings()
        self.assertEqual((settings.frame_rate, settings.frame_burst), (0.0, 50))
        for args in (["--frame-rate", "-1"], ["--frame-burst", "0"]):
            with self.assertRaises(usage.UsageError):
                self.parse(*args)

    def test_repeatable_listen(self) -> None:
        """--listen can be given several times."""
        options = self.parse("--listen", "tcp:8081", "--listen", "tcp6:8082")
        self.assertEqual(options["listen"], ["tcp:8081", "tcp6:8082"])

    def test_invalid_values_are_usage_errors(self) -> None:
        """Bad values are usage errors with a clear message, not tracebacks."""
        for args, words in [
            (["--interest-timeout", "soon"], "interest-timeout"),
            (["--repeat-cooldown", "-1"], "repeat-cooldown"),
            (["--listen", "carrier-pigeon:12"], "carrier-pigeon"),
            (["--listen", "tcp:notaport"], "tcp:notaport"),
            (["--static", "/nonexistent"], "/nonexistent"),
        ]:
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))

    def test_usage_error_from_twistd(self) -> None:
        """twistd prints the usage error and exits non-zero without a traceback."""
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "chatroulette", "--interest-timeout", "soon"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("interest-timeout", output)
        self.assertNotIn("Traceback", output)


class InstalledTests(SynchronousTestCase):
    def test_installed_package_serves_client(self) -> None:
        """A plain (non-editable) install runs from any directory and serves the client."""
        scratch = tempfile.TemporaryDirectory()
        self.addCleanup(scratch.cleanup)
        target = Path(scratch.name) / "site"
        workdir = Path(scratch.name) / "elsewhere"
        workdir.mkdir()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        self.assertTrue((target / "chatroulette" / "static" / "index.html").is_file())
        self.assertTrue((target / "twisted" / "plugins" / "chatroulette_plugin.py").is_file())
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(target))
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "chatroulette", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(server.wait, 10)
        self.addCleanup(server.terminate)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)  # polling for the server to listen, not synchronisation
        self.assertIn(b"<html", page.lower())


class TypeCheckTests(SynchronousTestCase):
    def test_mypy_strict(self) -> None:
        """The code base passes mypy --strict (configured in setup.cfg)."""
        from mypy import api

        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            stdout, stderr, status = api.run([])
        finally:
            os.chdir(cwd)
        self.assertEqual(status, 0, stdout + stderr)
