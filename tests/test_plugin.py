"""
The twistd plugin: found, documented, validating, and working when installed.
"""

from __future__ import annotations

import configparser
import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatroulette import tap
from chatroulette.ice import IceConfig
from chatroulette.tap import Options

from .ports import free_port

ROOT = Path(__file__).resolve().parent.parent


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
        for option in ["--listen", "--static", "--interest-timeout", "--repeat-cooldown", "--max-connections",
                       "--proxy-header"]:
            self.assertIn(option, result.stdout)

    def test_help_texts_stand_alone(self) -> None:
        """Every option's help is a sentence of its own (sorted alphabetically, none can lean on its neighbour)."""
        texts = {name: text for name, text in _help_texts(Options())}
        self.assertGreater(len(texts), 30)
        for name, text in texts.items():
            first = text.split()[0]
            self.assertTrue(first[0].isupper() or first.startswith(("--", "yes:")), (name, text))
            self.assertNotIn(first.rstrip(",").lower(), {"such", "these", "those", "it", "they", "same"}, name)
            self.assertNotIn("the same way", text, name)

    def test_every_option_documented(self) -> None:
        """Every option --help lists is described in docs/operations.md or the README."""
        docs = (ROOT / "docs" / "operations.md").read_text() + (ROOT / "README.md").read_text()
        missing = [name for name, _ in _help_texts(Options()) if f"--{name}" not in docs]
        self.assertEqual(missing, [])

    def test_help_is_aligned(self) -> None:
        """--help lays every option's text out in one column, with no stray spacing inside a text."""
        help_text = str(Options())
        column = None
        for line in help_text.splitlines():
            if line.startswith("      --"):
                name, _, rest = line.strip().partition(" ")
                start = line.index(rest.strip()) if rest.strip() else None
                if start is not None:
                    column = column or start
                    self.assertEqual(start, column, line)
            self.assertNotIn("  ", line.strip().split(" ", 1)[-1].strip() if line.startswith("      --") else line.strip(), line)


def _help_texts(options: Options) -> list[tuple[str, str]]:
    """Each option's help text, as --help shows it (parameters, flags and opt_ methods)."""
    texts = [(p[0], " ".join(str(p[3]).split())) for p in options.optParameters]
    texts += [(f[0], " ".join((f[2] or "").split())) for f in options.optFlags]
    for attr in dir(options):
        if attr.startswith("opt_") and attr not in ("opt_help", "opt_version"):
            doc = getattr(options, attr).__doc__ or ""
            texts.append((attr[4:].replace("_", "-"), " ".join(doc.split())))
    return texts


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
        per_type = (
            (settings.message_rate, settings.message_burst),
            (settings.typing_rate, settings.typing_burst),
            (settings.request_rate, settings.request_burst),
            (settings.signal_rate, settings.signal_burst),
        )
        self.assertGreater(settings.frame_burst, sum(burst for _, burst in per_type))
        self.assertGreater(settings.frame_rate, sum(rate for rate, _ in per_type))
        settings = self.parse("--frame-rate", "0", "--frame-burst", "50").settings()
        self.assertEqual((settings.frame_rate, settings.frame_burst), (0.0, 50))
        for args in (["--frame-rate", "-1"], ["--frame-burst", "0"]):
            with self.assertRaises(usage.UsageError):
                self.parse(*args)

    def test_signal_options(self) -> None:
        """--signal-rate and --signal-burst reach the settings (defaults 20/s and 100)."""
        settings = self.parse().settings()
        self.assertEqual((settings.signal_rate, settings.signal_burst), (20.0, 100))
        settings = self.parse("--signal-rate", "5", "--signal-burst", "40").settings()
        self.assertEqual((settings.signal_rate, settings.signal_burst), (5.0, 40))
        for args in (["--signal-rate", "fast"], ["--signal-burst", "0"]):
            with self.assertRaises(usage.UsageError):
                self.parse(*args)

    def test_ice_options(self) -> None:
        """--ice-server (repeatable), --turn-secret, --turn-ttl and --ice-relay-only make the ICE configuration."""
        self.assertEqual(self.parse().ice(), IceConfig())
        ice = self.parse(
            "--ice-server", "stun:s.example:3478",
            "--ice-server", "turn:t.example:3478?transport=udp",
            "--turn-secret", "sécret",
            "--turn-ttl", "600",
            "--ice-relay-only",
        ).ice()
        self.assertEqual(
            ice,
            IceConfig(("stun:s.example:3478", "turn:t.example:3478?transport=udp"), "sécret".encode(), 600.0, True),
        )

    def test_secrets_from_files(self) -> None:
        """--turn-secret-file and --redis-file read the secret (the URL) from a file's first line, off the command line."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "turn").write_text("from-a-file\n")
        (directory / "redis").write_text("redis://:pw@127.0.0.1:6390/2\n")
        options = self.parse(
            "--ice-server", "turn:t.example",
            "--turn-secret-file", str(directory / "turn"),
            "--redis-file", str(directory / "redis"),
        )
        self.assertEqual(options.ice().turn_secret, b"from-a-file")
        self.assertEqual(options["redis"].password, "pw")
        (directory / "empty").write_text("")
        for args, words in [
            (["--turn-secret-file", str(directory / "missing")], "cannot be read"),
            (["--turn-secret-file", str(directory / "empty")], "is empty"),
            (["--turn-secret-file", str(directory / "turn"), "--turn-secret", "x"], "give one"),
            (["--redis-file", str(directory / "turn")], "--redis"),
        ]:
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))

    def test_ice_usage_errors(self) -> None:
        """Bad ICE URLs and unusable combinations are usage errors naming the problem."""
        for args, words in [
            (["--ice-server", "http://t.example"], "stun:, turn: or turns:"),
            (["--ice-server", "turn:"], "no host"),
            (["--ice-server", "turn:t.example"], "--turn-secret"),
            (["--ice-server", "stun:s.example", "--turn-secret", "x"], "turn:"),
            (["--ice-server", "stun:s.example", "--ice-relay-only"], "--ice-relay-only"),
            (["--ice-relay-only"], "--ice-relay-only"),
            (["--turn-ttl", "60"], "--turn-secret"),
            (["--ice-server", "turn:t", "--turn-secret", "x", "--turn-ttl", "0"], "--turn-ttl"),
            (["--ice-server", "turn:t", "--turn-secret", ""], "empty"),
        ]:
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))

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

    def test_proxy_header(self) -> None:
        """--proxy-header names the one trusted header (default X-Forwarded-For); needs --trust-proxy-headers."""
        self.assertEqual(self.parse().settings().proxy_header, "X-Forwarded-For")
        settings = self.parse("--trust-proxy-headers", "--proxy-header", "Forwarded").settings()
        self.assertEqual((settings.trust_proxy_headers, settings.proxy_header), (True, "Forwarded"))
        for args, words in [
            (["--trust-proxy-headers", "--proxy-header", "X Forwarded"], "header name"),
            (["--trust-proxy-headers", "--proxy-header", "X-Real-IP:"], "header name"),
            (["--proxy-header", "X-Real-IP"], "--trust-proxy-headers"),
        ]:
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertIn(words, str(e.exception))

    def test_max_connections_default_from_open_file_limit(self) -> None:
        """--max-connections defaults to the open-file limit less 128 (half a tiny one; none without a limit)."""
        for limit, expected in [(1024, 896), (65536, 65408), (100, 50), (None, 0)]:
            self.patch(tap, "open_file_limit", lambda: limit)
            self.assertEqual(self.parse().settings().max_connections, expected, limit)

    def test_max_connections_within_the_open_file_limit(self) -> None:
        """An explicit --max-connections must leave the reserve of descriptors free; 0 turns the cap off."""
        self.patch(tap, "open_file_limit", lambda: 1024)
        self.assertEqual(self.parse("--max-connections", "500").settings().max_connections, 500)
        self.assertEqual(self.parse("--max-connections", "0").settings().max_connections, 0)
        with self.assertRaises(usage.UsageError) as e:
            self.parse("--max-connections", "1000")
        self.assertIn("ulimit -n", str(e.exception))

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


# What a build must not pick up from a working tree: virtualenvs, earlier
# builds (setuptools ships whatever is left in build/lib) and caches.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*", ".mypy_cache",
    ".pytest_cache", ".hypothesis", "node_modules", "dropin.cache",
)


def _copy_source(directory: str, names: list[str]) -> set[str]:
    """What to leave out when copying the checkout: the patterns above, and any virtualenv."""
    skip = set(_NOT_SOURCE(directory, names))
    return skip | {name for name in names if os.path.isfile(os.path.join(directory, name, "pyvenv.cfg"))}


@dataclass(frozen=True)
class Installation:
    """The package installed into a scratch virtualenv, and how to run things there."""

    python: Path
    bin: Path
    site_packages: Path
    elsewhere: Path
    """An empty directory: commands run from here, far from the checkout."""
    env: dict[str, str]
    keep: tempfile.TemporaryDirectory[str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(arg) for arg in args], cwd=self.elsewhere, env=self.env, capture_output=True, text=True, timeout=120
        )


def pip(*args: str | Path) -> None:
    """Run this environment's pip; its output only when it fails."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


@functools.cache
def installation() -> Installation:
    """
    Install the checkout, not editable, into a new virtualenv (once, shared by
    the tests below), in the two steps of C{pip install .}: build a wheel,
    install it.  Offline: the wheel is built here, from a clean copy of the
    checkout, with this environment's setuptools (no build isolation, which
    would download one; the test extra installs it); it is installed without
    dependencies, and the virtualenv then sees this environment's
    site-packages, after its own, through a C{.pth} file.  So a module or data
    file that setup.cfg leaves out is missing there.
    """
    keep = tempfile.TemporaryDirectory(prefix="chatroulette-install-")
    scratch = Path(keep.name)
    shutil.copytree(ROOT, scratch / "source", ignore=_copy_source)
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    wheels = scratch / "wheel"
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, scratch / "source")
    pip("--python", python, "install", "--no-deps", "--no-index", *wheels.glob("chatroulette-*.whl"))
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    )
    dependencies = "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
    (site_packages / "_test_dependencies.pth").write_text(dependencies)
    elsewhere = scratch / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return Installation(python, venv / "bin", site_packages, elsewhere, env, keep)


class InstalledTests(SynchronousTestCase):
    """A plain, non-editable install into a fresh virtualenv carries every module and data file."""

    def test_installed_package_is_the_one_used(self) -> None:
        """The scratch virtualenv imports chatroulette from its own install, not from the checkout."""
        installed = installation()
        result = installed.run(installed.python, "-c", "import chatroulette.load.cli; print(chatroulette.__file__)")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(Path(result.stdout.strip()).parent, installed.site_packages / "chatroulette")

    def test_installed_every_file(self) -> None:
        """Every module and data file of the package, the client and the plugin file are installed."""
        installed = installation()
        expected = {
            ROOT / "chatroulette": installed.site_packages / "chatroulette",
            ROOT / "static": installed.site_packages / "chatroulette" / "static",
            ROOT / "twisted" / "plugins": installed.site_packages / "twisted" / "plugins",
        }
        checked, missing = [], []
        for source, target in expected.items():
            for path in source.rglob("*"):
                if path.is_dir() or "__pycache__" in path.parts or path.name == "dropin.cache":
                    continue
                checked.append(path.relative_to(ROOT).as_posix())
                if not (target / path.relative_to(source)).is_file():
                    missing.append(checked[-1])
        self.assertIn("chatroulette/load/cli.py", checked)
        self.assertEqual(missing, [])

    def test_installed_load_tool(self) -> None:
        """The chatroulette-load console script and python -m chatroulette.load work from anywhere."""
        installed = installation()
        script = installed.run(installed.bin / "chatroulette-load", "--help")
        self.assertEqual(script.returncode, 0, script.stderr)
        self.assertIn("usage: chatroulette-load", script.stdout)
        for scenario in ("relay", "churn", "soak"):
            self.assertIn(scenario, script.stdout)
        module = installed.run(installed.python, "-m", "chatroulette.load", "relay", "--help")
        self.assertEqual(module.returncode, 0, module.stderr)
        self.assertIn("--pairs", module.stdout)
        self.assertIn("--max-rate", module.stdout)

    def test_installed_plugin(self) -> None:
        """twistd finds the installed plugin and lists its options, run from anywhere."""
        installed = installation()
        self.assertTrue((installed.site_packages / "twisted" / "plugins" / "chatroulette_plugin.py").is_file())
        twistd = Path(sysconfig.get_path("scripts")) / "twistd"
        result = installed.run(installed.python, twistd, "chatroulette", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ["--listen", "--static", "--interest-timeout", "--repeat-cooldown"]:
            self.assertIn(option, result.stdout)

    def test_installed_package_serves_client(self) -> None:
        """A plain (non-editable) install runs from any directory and serves the client."""
        installed = installation()
        self.assertTrue((installed.site_packages / "chatroulette" / "static" / "index.html").is_file())
        port = free_port()
        server = subprocess.Popen(
            [str(installed.python), "-m", "twisted", "chatroulette", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=installed.elsewhere,
            env=installed.env,
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


class ConstraintsTests(SynchronousTestCase):
    def test_every_requirement_pinned(self) -> None:
        """constraints.txt pins each requirement of setup.cfg (with the test extra) within its bounds."""
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        requirements = [
            Requirement(line)
            for text in (config["options"]["install_requires"], config["options.extras_require"]["test"])
            for line in text.splitlines()
            if line.strip()
        ]
        pins: dict[str, str] = {}
        for line in (ROOT / "constraints.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, version = line.partition("==")
                self.assertTrue(version, f"{line!r} is not a pin (name==version)")
                pins[canonicalize_name(name)] = version.strip()
        self.assertIn("twisted", pins)
        for requirement in requirements:
            pinned = pins.get(canonicalize_name(requirement.name))
            self.assertIsNotNone(pinned, f"{requirement.name} is not in constraints.txt")
            self.assertIn(pinned, requirement.specifier, f"the pin of {requirement.name} is outside setup.cfg's bounds")


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
