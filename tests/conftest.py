"""
pytest configuration shared by the whole suite.

The load tests are twisted.trial TestCases that run the reactor themselves
(so that trial can run them too); pytest-twisted, used by the loopback tests,
keeps the reactor running in a greenlet once its first test has run, after
which trial's own reactor spinning no longer sees its connections close in
time.  Running the trial-style reactor tests first keeps both kinds honest.
"""

from __future__ import annotations

import pytest

_TRIAL_REACTOR_MODULES = ("test_load.py",)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.path.name in _TRIAL_REACTOR_MODULES else 1)
