"""
Helpers for the browser tests: the service as a subprocess of this checkout,
and Debian's Chromium driven by Playwright (never Playwright's own download).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, Sequence

from playwright.sync_api import Browser, ConsoleMessage, Dialog, Error, Locator, Page, Playwright, expect

from .ports import free_port

CHECKOUT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ServerProcess:
    """
    C{python -m twisted chatroulette} from the checkout, on one loopback port;
    it can be stopped and started again on the same port.
    """

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until C{/healthz} answers."""
        assert self._process is None, "already running"
        self._output = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "chatroulette",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1",
                *self.extra_args,
            ],
            cwd=CHECKOUT,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not come up:\n{self.output()}")
            time.sleep(0.05)  # polling interval while waiting for the port to answer

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it hangs."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): a crash, with nothing said to anyone."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.kill()
        process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def health(self) -> dict[str, Any]:
        """The body of C{/healthz}, also when it answers 503 (a cluster node that lost Redis)."""
        try:
            with urllib.request.urlopen(self.url + "healthz", timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        result: dict[str, Any] = json.loads(body)
        return result

    def wait_for_health(self, status: str, timeout: float = 15.0) -> None:
        """Wait until C{/healthz} says C{status} ("ok", or "degraded" while Redis is away)."""
        deadline = time.monotonic() + timeout
        while (seen := self.health()["status"]) != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"/healthz still says {seen!r}, not {status!r}:\n{self.output()}")
            time.sleep(0.05)  # polling interval while waiting for the server to notice

    def output(self) -> str:
        """What the server logged so far."""
        if self._output is None:
            return ""
        self._output.seek(0)
        return self._output.read().decode(errors="replace")


# A fake camera and microphone (a test pattern and a beep) ...
FAKE_MEDIA_DEVICES = ["--use-fake-device-for-media-stream"]
# ... and every camera and microphone request allowed without asking.
FAKE_MEDIA_ARGS = ["--use-fake-ui-for-media-stream", *FAKE_MEDIA_DEVICES]


# How long an expectation may take to come true.  Playwright's default (5 s)
# is generous on an idle machine; a CI machine running the server, Chromium
# and the suite on two busy cores needs more.  Nothing waits this long when
# the page behaves: expectations return as soon as they hold.
EXPECT_TIMEOUT_MS = 15_000


def launch_chromium(playwright: Playwright, extra_args: Sequence[str] = ()) -> Browser:
    """Debian's Chromium, headless; C{extra_args} such as L{FAKE_MEDIA_ARGS}."""
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])


class PageProblems:
    """Console errors, CSP violations, uncaught exceptions and dialogs on a page."""

    def __init__(self, page: Page) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _page_error(self, error: Error) -> None:
        self.page_errors.append(str(error))

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


class Person:
    """Someone using the client in one browser page."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems = PageProblems(page)

    @property
    def log(self) -> Locator:
        return self.page.get_by_role("log")

    @property
    def message_box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message")

    def button(self, label: str) -> Locator:
        return self.page.get_by_role("button", name=label, exact=True)

    def visit(self, url: str) -> dict[str, str]:
        """Open C{url}; the response headers of the page."""
        response = self.page.goto(url)
        assert response is not None
        return response.all_headers()

    def enter_interests(self, *interests: str) -> None:
        """Type each interest into the Interests field and press Enter."""
        field = self.page.get_by_role("textbox", name="Interests")
        for interest in interests:
            field.fill(interest)
            field.press("Enter")

    def start(self, *interests: str) -> None:
        """Type interests (if any) and press Start."""
        self.enter_interests(*interests)
        self.button("Start").click()

    def say(self, text: str) -> None:
        """Type a message and press Enter."""
        self.message_box.fill(text)
        self.message_box.press("Enter")

