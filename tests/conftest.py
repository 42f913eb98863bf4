"""
pytest configuration shared by the whole suite.

The load tests are twisted.trial TestCases that run the reactor themselves
(so that trial can run them too); pytest-twisted, used by the loopback tests,
keeps the reactor running in a greenlet once its first test has run, after
which trial's own reactor spinning no longer sees its connections close in
time.  Running the trial-style reactor tests first keeps both kinds honest.

Hypothesis profiles, chosen by the HYPOTHESIS_PROFILE environment variable
(default "dev"; .ci/run sets "ci"):

- "dev" explores: new random examples on every run, failures kept in the
  local example database and replayed first next time.
- "ci" is reproducible: each test's examples derive from the test alone
  (derandomize), no database is carried between runs, and a failure prints
  the blob that replays it (@reproduce_failure).

Neither fails on timing: examples have no deadline and the too_slow health
check is off, because on a small shared machine a slow example says nothing
about the code under test.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest
from hypothesis import HealthCheck, settings

from .redis_server import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_NO_TIMING: dict[str, Any] = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", **_NO_TIMING)
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_NO_TIMING)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_TRIAL_REACTOR_MODULES = ("test_load.py",)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.path.name in _TRIAL_REACTOR_MODULES else 1)


@pytest.fixture(autouse=True)
def _trial_mktemp_in_tmp_path(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """
    trial's TestCase.mktemp() makes its directories under the working
    directory, which is the checkout when pytest runs the suite: give each
    call a fresh directory under the test's own tmp_path instead.
    """
    instance = request.instance
    if instance is not None and hasattr(instance, "mktemp"):
        instance.mktemp = lambda: os.path.join(tempfile.mkdtemp(dir=tmp_path), "temp")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium (Debian's) per test module."""
    from playwright.sync_api import sync_playwright

    from .browser_support import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
