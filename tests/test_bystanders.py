"""
The bystanders' own checks: a L{ChattingPair} that was hurt says so, with
its numbers, so that a passing attack test means the pair really was fine.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from .bystanders import MAX_LATENCY, PAIR_ARGS, ChattingPair
from .loopback import RunningService


@pytest_twisted.ensureDeferred
async def test_healthy_pair_reports_its_numbers() -> None:
    """On an idle server every message arrives once, in order, well within the latency bound."""
    running = await RunningService.start(*PAIR_ARGS)
    try:
        pair = await ChattingPair.start(running)
        health = await pair.finish(min_messages=20)
    finally:
        await running.stop()
    for direction in health.directions:
        assert direction.sent == direction.received >= 20 and direction.in_order_once
        assert direction.max_latency < MAX_LATENCY
    assert "max latency" in str(health)


@pytest_twisted.ensureDeferred
async def test_stalled_server_fails_the_latency_check() -> None:
    """A server turn blocked past the bound while a message is in flight fails finish(), naming the latency."""
    running = await RunningService.start(*PAIR_ARGS)
    try:
        pair = await ChattingPair.start(running)
        pair.a.send_next()  # written to the socket only once the reactor runs again
        # Not synchronisation: the sleep *is* the attack, a reactor turn that
        # blocks the whole process (server and pair share the reactor).
        time.sleep(MAX_LATENCY + 0.1)
        with pytest.raises(AssertionError, match=r"max latency [6-9]\d\d ms"):
            await pair.finish()
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_refused_messages_fail_the_check() -> None:
    """Without room in --message-rate the pair is refused (rate_limited), and finish() says so."""
    running = await RunningService.start()  # the default 5 messages a second: too few for the pair
    try:
        pair = await ChattingPair.start(running)
        with pytest.raises(AssertionError, match="rate_limited"):
            await pair.finish(min_messages=15, timeout=1.0)
    finally:
        await running.stop()
