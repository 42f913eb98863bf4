"""
The browser client against cluster nodes (C{--redis}) on a real
C{redis-server}, in real headless Chromium: what a person sees while the
shared lobby is away (C{unavailable}), and that the page retries by itself,
with backoff, only as long as the person still wants it to.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, WebSocket, expect

from .browser_support import Person, ServerProcess
from .redis_server import RedisServer

PAIRED = "You're now chatting with a random stranger. Say hi!"
LOOKING = "Looking for someone you can chat with..."
RETRYING = "The service is briefly unavailable. Retrying..."
BACK = "The service is back. Looking for someone you can chat with..."
NOT_DELIVERED = "Your message was not delivered: the service is briefly unavailable. Try again in a moment."
# Longer than the longest wait the page's backoff can add to Redis coming
# back (the node reconnects within 2 s; the page's next retry is at most 8 s
# away after the few attempts a test makes).
RECOVERY_TIMEOUT_MS = 30_000

Node = Callable[..., ServerProcess]


@pytest.fixture
def node(redis: RedisServer) -> Iterator[Node]:
    """Start cluster nodes on C{redis} (Redis must be up for them to start)."""
    started: list[ServerProcess] = []

    def start_one(*extra_args: str) -> ServerProcess:
        server = ServerProcess(extra_args=["--redis", redis.url, *extra_args])
        started.append(server)
        server.start()
        return server

    yield start_one
    for server in started:
        server.stop()


@pytest.fixture
def open_person(browser: Browser) -> Iterator[Callable[[], Person]]:
    """A new person in their own browser context (not visiting anything yet)."""
    contexts: list[BrowserContext] = []

    def open_one() -> Person:
        context = browser.new_context()
        contexts.append(context)
        return Person(context.new_page())

    yield open_one
    for context in contexts:
        context.close()


def frame_type(payload: str | bytes) -> Any:
    return json.loads(payload).get("type")


def is_unavailable(payload: str | bytes) -> bool:
    frame = json.loads(payload)
    return bool(frame.get("type") == "error" and frame.get("code") == "unavailable")


class Wire:
    """The frames a page sends on its WebSocket, in order."""

    def __init__(self, person: Person) -> None:
        self.sent: list[Any] = []
        self.sockets: list[WebSocket] = []
        person.page.on("websocket", self._opened)

    def _opened(self, socket: WebSocket) -> None:
        self.sockets.append(socket)
        socket.on("framesent", lambda payload: self.sent.append(frame_type(payload)))

    @property
    def socket(self) -> WebSocket:
        assert len(self.sockets) == 1, "one connection, never reconnected"
        return self.sockets[0]


def test_search_retries_until_the_shared_lobby_is_back(
    open_person: Callable[[], Person], node: Node, redis: RedisServer
) -> None:
    """Start while Redis is away shows 'Retrying...'; once Redis is back the search goes on by itself and pairs."""
    server = node()
    redis.stop()
    server.wait_for_health("degraded")

    alice = open_person()
    alice.visit(server.url)
    alice.start()
    expect(alice.log).to_contain_text(RETRYING)
    expect(alice.button("Stop")).to_be_visible()  # still looking, not given up

    redis.start()  # the same port, empty
    expect(alice.log).to_contain_text(BACK, timeout=RECOVERY_TIMEOUT_MS)
    server.wait_for_health("ok")

    bob = open_person()
    bob.visit(server.url)
    bob.start()
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)
    expect(bob.log).not_to_contain_text(RETRYING)
    alice.say("made it")
    expect(bob.log).to_contain_text("Stranger: made it")
    for person in (alice, bob):
        assert person.problems.page_errors == []
        assert person.problems.console_errors == []


def test_invite_is_retried_too(open_person: Callable[[], Person], node: Node, redis: RedisServer) -> None:
    """Invite a friend while Redis is away retries by itself until the link is there, and the link works."""
    server = node()
    redis.stop()
    server.wait_for_health("degraded")

    alice = open_person()
    alice.visit(server.url)
    alice.button("Invite a friend").click()
    expect(alice.log).to_contain_text(RETRYING)
    link_box = alice.page.get_by_role("textbox", name="Invite link")
    expect(link_box).to_be_hidden()

    redis.start()
    expect(link_box).to_have_value(re.compile(re.escape(server.url) + "#invite=.+"), timeout=RECOVERY_TIMEOUT_MS)
    expect(alice.log).to_contain_text("Waiting for your friend to open the link...")

    bob = open_person()
    bob.visit(link_box.input_value())
    for person in (alice, bob):
        expect(person.log).to_contain_text("You're now chatting with your friend. Say hi!")


def test_stop_ends_the_retries(open_person: Callable[[], Person], node: Node, redis: RedisServer) -> None:
    """Refused searches are retried while Redis is away; after Stop nothing is sent again, however long after."""
    server = node()
    redis.stop()
    server.wait_for_health("degraded")

    alice = open_person()
    alice.page.clock.install()
    wire = Wire(alice)
    alice.visit(server.url)
    alice.start()
    expect(alice.log).to_contain_text(RETRYING)
    assert wire.sent == ["find"]

    # The first retry comes within 1 s, the next within 2 s more: each is
    # refused again while Redis is away.
    for wait_ms in (1000, 2000):
        with wire.socket.expect_event("framereceived", is_unavailable):
            alice.page.clock.fast_forward(wait_ms)
    assert wire.sent == ["find", "find", "find"]
    expect(alice.log.get_by_text(RETRYING)).to_have_count(1)  # said once, not once per attempt

    alice.button("Stop").click()
    expect(alice.log).to_contain_text("You stopped looking.")
    alice.page.clock.run_for(10 * 60 * 1000)  # ten minutes: every timer due meanwhile runs
    # New sends a find: any frame sent after Stop's leave and before it was sent in those ten minutes.
    with wire.socket.expect_event("framesent", lambda payload: frame_type(payload) == "find"):
        alice.button("New").click()
    assert wire.sent == ["find", "find", "find", "leave", "find"]

    # The new search starts its own retries, from the shortest wait again.
    expect(alice.log).to_contain_text(RETRYING)
    with wire.socket.expect_event("framereceived", is_unavailable):
        alice.page.clock.fast_forward(1000)
    assert wire.sent[-2:] == ["find", "find"]
    assert alice.problems.page_errors == []


def test_message_to_a_crashed_node_is_marked_not_delivered(
    open_person: Callable[[], Person], node: Node
) -> None:
    """A message to a partner whose server crashed is shown as not delivered, given back, never resent."""
    first, second = node("--node-dead-after", "10"), node("--node-dead-after", "10")
    alice, bob = open_person(), open_person()
    wire = Wire(alice)
    alice.visit(first.url)
    bob.visit(second.url)
    alice.start()
    expect(alice.log).to_contain_text(LOOKING)
    bob.start()
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)
    bob.say("hello across servers")
    expect(alice.log).to_contain_text("Stranger: hello across servers")

    second.kill()
    alice.say("are you there?")
    expect(alice.log).to_contain_text(NOT_DELIVERED)
    sent_line = alice.log.get_by_text("You: are you there?")
    expect(sent_line).to_contain_text("(not delivered: try again)")
    expect(alice.message_box).to_have_value("are you there?")  # given back, to send again by hand
    assert wire.sent.count("message") == 1

    # The crashed server is declared dead: the chat ends; nothing was sent again meanwhile.
    expect(alice.log).to_contain_text("Stranger has disconnected.", timeout=RECOVERY_TIMEOUT_MS)
    assert wire.sent.count("message") == 1
    assert alice.problems.page_errors == []
    assert alice.problems.console_errors == []


def test_refused_report_can_be_sent_again(
    open_person: Callable[[], Person], node: Node, redis: RedisServer
) -> None:
    """A report refused while Redis is away says so, still ends the chat for both, and can be sent again later."""
    server = node()
    alice, bob = open_person(), open_person()
    for person in (alice, bob):
        person.visit(server.url)
    alice.start()
    expect(alice.log).to_contain_text(LOOKING)
    bob.start()
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)

    redis.stop()
    server.wait_for_health("degraded")
    report = alice.button("Report")
    report.click()
    alice.page.get_by_role("dialog", name="Report this stranger").get_by_role("button", name="Send report").click()
    expect(alice.log).to_contain_text(
        "Your report was not sent: the service is briefly unavailable. Try again in a moment."
    )
    expect(bob.log).to_contain_text("Stranger has disconnected.")
    expect(alice.message_box).to_be_disabled()
    expect(report).to_be_enabled()

    redis.start()
    server.wait_for_health("ok")
    report.click()
    alice.page.get_by_role("dialog", name="Report this stranger").get_by_role("button", name="Send report").click()
    expect(alice.log).to_contain_text("You reported the stranger. You won't be paired with them again.")
    expect(report).to_be_disabled()


def test_backoff_schedule(open_person: Callable[[], Person], node: Node) -> None:
    """The retry waits double from 1 s up to 30 s, each randomised between half and all of it."""
    server = node()
    person = open_person()
    person.visit(server.url)
    delays = person.page.evaluate(
        """async () => {
            const { backoffDelay } = await import("/connection.js");
            const attempts = [0, 1, 2, 3, 4, 5, 6, 10];
            return attempts.map((n) => [backoffDelay(n, () => 0), backoffDelay(n, () => 0.999999)]);
        }"""
    )
    ceilings = [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    assert delays == [[ceiling // 2, ceiling] for ceiling in ceilings]
