"""
The browser client in real headless Chromium, against the service running as
a subprocess of this checkout. Pages are driven only as a person would: by
roles, labels and visible text.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from chatroulette import messages

from .browser_support import Person, ServerProcess

PAIRED = "You're now chatting with a random stranger. Say hi!"
LOOKING = "Looking for someone you can chat with..."


OpenPerson = Callable[..., Person]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    running = ServerProcess()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def open_person(browser: Browser, server: ServerProcess) -> Iterator[OpenPerson]:
    """Open a new person (own browser context); visits the server unless told otherwise."""
    contexts: list[BrowserContext] = []

    def open_one(
        url: str | None = None, *, visit: bool = True, **context_options: Any
    ) -> Person:
        context = browser.new_context(**context_options)
        contexts.append(context)
        person = Person(context.new_page())
        if visit:
            person.visit(url or server.url)
        return person

    yield open_one
    for context in contexts:
        context.close()


def unique_interest() -> str:
    """An interest nobody else in the suite has, so exactly the intended pages pair."""
    return f"topic {uuid.uuid4().hex[:10]}"


def pair(alice: Person, bob: Person) -> str:
    """Have both press Start with one shared interest and wait until they chat."""
    interest = unique_interest()
    alice.start(interest)
    expect(alice.log).to_contain_text(LOOKING)
    bob.start(interest)
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)
        expect(person.message_box).to_be_enabled()
    return interest


def test_two_strangers_chat_both_ways(open_person: OpenPerson, server: ServerProcess) -> None:
    """Two strangers with a shared interest are paired and chat both ways, with no page errors."""
    alice = open_person(visit=False)
    headers = alice.visit(server.url)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    bob = open_person()
    expect(bob.page.get_by_text(re.compile(r"^\d+ people online now\.$"))).to_be_visible()
    expect(alice.message_box).to_be_hidden()

    interest = pair(alice, bob)
    expect(alice.log).to_contain_text(f"You both like {interest}.")

    alice.say("Hello from Alice")
    expect(bob.log).to_contain_text("Stranger: Hello from Alice")
    expect(alice.log).to_contain_text("You: Hello from Alice")
    expect(alice.message_box).to_have_value("")

    # Shift+Enter is a newline; the Send button sends.
    bob.message_box.press_sequentially("line one")
    bob.message_box.press("Shift+Enter")
    bob.message_box.press_sequentially("line two")
    bob.button("Send").click()
    received = alice.log.get_by_text("Stranger: line one")
    expect(received).to_have_text("Stranger: line one\nline two", use_inner_text=True)

    # Whitespace-only is not sent: the next real message is the only new line.
    alice.say("   ")
    alice.message_box.fill("")
    alice.say("second")
    expect(bob.log).to_contain_text("Stranger: second")
    expect(bob.log.get_by_text("Stranger:")).to_have_count(2)

    # Own and stranger's messages look different.
    own = alice.log.get_by_text("You: Hello from Alice")
    theirs = alice.log.get_by_text("Stranger: line one")
    style = "e => getComputedStyle(e).backgroundColor + getComputedStyle(e).borderLeftColor"
    assert own.evaluate(style) != theirs.evaluate(style)

    # Typing anywhere goes to the composer.
    bob.log.click()
    bob.page.keyboard.type("typed anywhere")
    expect(bob.message_box).to_have_value("typed anywhere")
    bob.message_box.press("Enter")
    expect(alice.log).to_contain_text("Stranger: typed anywhere")

    for person in (alice, bob):
        assert person.problems.console_errors == []
        assert person.problems.page_errors == []


def test_hostile_text_is_shown_literally(open_person: OpenPerson) -> None:
    """Markup from a stranger is displayed as text and runs nothing."""
    alice, bob = open_person(), open_person()
    pair(alice, bob)
    hostile = '<img src=x onerror=alert(1)><script>alert(2)</script><a href="javascript:alert(3)">x</a>'
    alice.say(hostile)
    expect(bob.log).to_contain_text("Stranger: " + hostile)
    expect(bob.log.get_by_role("img")).to_have_count(0)
    expect(bob.log.get_by_role("link")).to_have_count(0)
    alice.say("https://example.com/ is not a link")
    expect(bob.log).to_contain_text("https://example.com/ is not a link")
    expect(bob.log.get_by_role("link")).to_have_count(0)
    for person in (alice, bob):
        assert person.problems.dialogs == []
        assert person.problems.page_errors == []
        assert person.problems.console_errors == []


def save_chat(person: Person) -> tuple[str, list[str]]:
    """Press Save chat; the downloaded file's name and its lines (read as UTF-8)."""
    with person.page.expect_download() as info:
        person.button("Save chat").click()
    download = info.value
    path = download.path()
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n")
    return download.suggested_filename, text[:-1].split("\n")


def test_save_chat_downloads_the_transcript(open_person: OpenPerson) -> None:
    """Save chat downloads the log as plain UTF-8 text, during the chat and after it, and then the next chat."""
    alice, bob = open_person(), open_person()
    interest = unique_interest()
    alice.start(interest)
    expect(alice.log).to_contain_text(LOOKING)
    expect(alice.button("Save chat")).to_be_disabled()  # no chat yet
    bob.start(interest)
    expect(alice.log).to_contain_text(PAIRED)
    expect(alice.button("Save chat")).to_be_enabled()

    alice.say("<b>x</b>")
    expect(bob.log).to_contain_text("Stranger: <b>x</b>")
    bob.say("h\u00e9llo \U0001f600 \u2713")
    expect(alice.log).to_contain_text("Stranger: h\u00e9llo \U0001f600 \u2713")
    alice.message_box.press_sequentially("line one")
    alice.message_box.press("Shift+Enter")
    alice.message_box.press_sequentially("line two")
    alice.message_box.press("Enter")
    expect(bob.log).to_contain_text("line two")

    name, lines = save_chat(alice)
    assert re.fullmatch(r"chatroulette-\d{4}-\d{2}-\d{2}-\d{4}\.txt", name), name
    assert re.fullmatch(r"chatroulette chat, saved \d{4}-\d{2}-\d{2} \d{2}:\d{2}", lines[0]), lines[0]
    conversation = [
        LOOKING,
        PAIRED,
        f"You both like {interest}.",
        "You: <b>x</b>",
        "Stranger: h\u00e9llo \U0001f600 \u2713",
        "You: line one",
        "line two",
    ]
    assert lines[1:] == ["", *conversation]

    # The stranger leaves: the chat can still be saved, with how it ended.
    bob.button("Stop").click()
    bob.button("Really?").click()
    expect(alice.log).to_contain_text("Stranger has disconnected.")
    expect(alice.button("New")).to_be_visible()
    expect(alice.button("Save chat")).to_be_enabled()
    _, lines = save_chat(alice)
    assert lines[1:] == ["", *conversation, "Stranger has disconnected."]

    # A new search clears the log; Save chat then saves the new chat.
    alice.button("New").click()
    expect(alice.log).to_contain_text(LOOKING)
    expect(alice.button("Save chat")).to_be_disabled()
    carol = open_person()
    carol.start(interest)
    expect(alice.log).to_contain_text(PAIRED)
    carol.say("a new stranger")
    expect(alice.log).to_contain_text("Stranger: a new stranger")
    _, lines = save_chat(alice)
    assert lines[1:] == ["", LOOKING, PAIRED, f"You both like {interest}.", "Stranger: a new stranger"]

    for person in (alice, bob, carol):
        assert person.problems.console_errors == []  # a CSP violation would be one
        assert person.problems.page_errors == []


def test_online_count_stays_current(open_person: OpenPerson) -> None:
    """The start screen's online count follows people arriving and leaving, without a reload."""
    live = ServerProcess(extra_args=["--online-interval", "0.5"])
    live.start()
    try:
        alice = open_person(live.url)
        expect(alice.page.get_by_text("1 person online: just you, for now.")).to_be_visible()
        bob, carol = open_person(live.url), open_person(live.url)
        expect(alice.page.get_by_text("3 people online now.")).to_be_visible()

        # Chatting pages are counted; their start screen (and its count) is out of sight.
        pair(bob, carol)
        for person in (bob, carol):
            expect(person.page.get_by_text(re.compile(r"online"))).to_be_hidden()
        carol.page.context.close()
        expect(alice.page.get_by_text("2 people online now.")).to_be_visible()
        assert alice.problems.page_errors == []
    finally:
        live.stop()


def test_typing_indicator_appears_and_clears(open_person: OpenPerson, server: ServerProcess) -> None:
    """'Stranger is typing...' shows on typing and clears after 4 s idle, on send, and at chat end."""
    alice = open_person(visit=False)
    alice.page.clock.install()
    alice.visit(server.url)
    bob = open_person()
    pair(alice, bob)
    indicator = bob.page.get_by_text("Stranger is typing...")
    expect(indicator).to_be_hidden()

    alice.message_box.press_sequentially("hel")
    expect(indicator).to_be_visible()
    alice.page.clock.fast_forward(3000)
    expect(indicator).to_be_visible()
    alice.page.clock.fast_forward(1100)
    expect(indicator).to_be_hidden()

    alice.message_box.press_sequentially("lo")
    expect(indicator).to_be_visible()
    alice.message_box.press("Enter")
    expect(bob.log).to_contain_text("Stranger: hello")
    expect(indicator).to_be_hidden()

    alice.message_box.press_sequentially("bye")
    expect(indicator).to_be_visible()
    alice.page.keyboard.press("Escape")
    alice.page.keyboard.press("Escape")
    expect(bob.log).to_contain_text("Stranger has disconnected.")
    expect(indicator).to_be_hidden()


def test_stop_really_new_and_escape(open_person: OpenPerson) -> None:
    """Stop asks 'Really?', a message disarms it, Esc drives it, and New searches at once."""
    alice, bob = open_person(), open_person()
    pair(alice, bob)

    alice.button("Stop").click()
    expect(alice.button("Really?")).to_be_visible()
    alice.say("still here")
    expect(alice.button("Stop")).to_be_visible()
    expect(bob.log).to_contain_text("Stranger: still here")

    alice.message_box.press("Escape")
    expect(alice.button("Really?")).to_be_visible()
    alice.page.keyboard.press("Escape")
    expect(alice.log).to_contain_text("You have disconnected.")
    expect(bob.log).to_contain_text("Stranger has disconnected.")
    for person in (alice, bob):
        expect(person.message_box).to_be_disabled()
        expect(person.button("Send")).to_be_disabled()
        expect(person.button("New")).to_be_visible()

    alice.page.keyboard.press("Escape")
    expect(alice.log).to_contain_text(LOOKING)
    expect(alice.log).not_to_contain_text("You have disconnected.")
    expect(alice.button("Stop")).to_be_visible()
    bob.button("New").click()
    expect(bob.log).to_contain_text(LOOKING)
    expect(alice.message_box).to_be_disabled()


def test_invite_link_pairs_two_pages(open_person: OpenPerson, server: ServerProcess) -> None:
    """An invite link opened in another browser starts a private chat with the inviter."""
    alice = open_person()
    alice.button("Invite a friend").click()
    link_box = alice.page.get_by_role("textbox", name="Invite link")
    expect(link_box).to_have_value(re.compile(re.escape(server.url) + "#invite=.+"))
    expect(alice.button("Copy link")).to_be_visible()
    link = link_box.input_value()

    bob = open_person(link)
    for person in (alice, bob):
        expect(person.log).to_contain_text("You're now chatting with your friend. Say hi!")
    bob.say("it's me")
    expect(alice.log).to_contain_text("Stranger: it's me")
    assert "#invite" not in bob.page.url

    # A used link is refused, in plain words.
    carol = open_person(link)
    expect(carol.log).to_contain_text("That invite link is invalid, already used, or expired.")
    expect(carol.button("New")).to_be_visible()


def test_report_ends_the_chat(open_person: OpenPerson) -> None:
    """Report (with a reason) ends the chat for both."""
    alice, bob = open_person(), open_person()
    pair(alice, bob)
    alice.button("Report").click()
    dialog = alice.page.get_by_role("dialog", name="Report this stranger")
    dialog.get_by_label("Reason").fill("rude")
    dialog.get_by_role("button", name="Send report").click()
    expect(dialog).to_be_hidden()
    expect(alice.log).to_contain_text("You reported the stranger and left the chat.")
    expect(bob.log).to_contain_text("Stranger has disconnected.")
    expect(alice.button("Report")).to_be_disabled()


def test_message_limit_is_shown_before_sending(open_person: OpenPerson) -> None:
    """Over 2000 characters the counter says so and the message cannot be sent."""
    alice, bob = open_person(), open_person()
    pair(alice, bob)
    alice.message_box.fill("\U0001f600" * 2000)  # emoji count as one character, as on the server
    expect(alice.page.get_by_text("2000 / 2000")).to_be_visible()
    expect(alice.button("Send")).to_be_enabled()
    alice.message_box.press("End")
    alice.message_box.press_sequentially("!")
    expect(alice.page.get_by_text("2001 / 2000 - too long to send")).to_be_visible()
    expect(alice.button("Send")).to_be_disabled()
    alice.message_box.press("Enter")
    expect(alice.page.get_by_role("status").filter(has_text="too long")).to_be_visible()
    alice.message_box.press("Backspace")
    alice.message_box.press("Enter")
    expect(bob.log).to_contain_text("Stranger: \U0001f600\U0001f600")
    expect(alice.message_box).to_have_value("")


def test_interests_are_remembered(open_person: OpenPerson) -> None:
    """Interests become tags, are normalised, survive a reload and can be removed."""
    alice = open_person()
    field = alice.page.get_by_role("textbox", name="Interests")
    field.fill("  Board   Games ")
    field.press("Enter")
    field.fill("chess, go,")
    interests = alice.page.get_by_role("list", name="Your interests")
    expect(interests.get_by_role("listitem")).to_have_text(
        ["board games\u00d7", "chess\u00d7", "go\u00d7"]
    )
    alice.page.reload()
    expect(interests.get_by_role("listitem")).to_have_count(3)
    alice.button("Remove chess").click()
    expect(interests.get_by_role("listitem")).to_have_count(2)
    alice.page.reload()
    expect(interests).to_contain_text("board games")
    expect(interests).not_to_contain_text("chess")


def test_small_phone_layout(open_person: OpenPerson) -> None:
    """At 320 px wide and a short viewport (keyboard open) the composer is visible and usable."""
    phone = open_person(
        viewport={"width": 320, "height": 568},
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
        reduced_motion="reduce",
    )
    expect(phone.button("Start")).to_be_in_viewport()
    desktop = open_person()
    pair(phone, desktop)
    phone.page.set_viewport_size({"width": 320, "height": 300})  # the on-screen keyboard opens
    for control in (phone.message_box, phone.button("Send"), phone.button("Stop")):
        expect(control).to_be_in_viewport()
    phone.message_box.tap()
    phone.say("from a phone")
    expect(desktop.log).to_contain_text("Stranger: from a phone")
    desktop.say("w" * 400)  # one long word must wrap, not widen the page
    expect(phone.log).to_contain_text("w" * 400)
    expect(phone.message_box).to_be_in_viewport()
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 320
    # Dark colour scheme and reduced motion are honoured.
    background = phone.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 22, 26)"
    transition = phone.button("Send").evaluate("e => getComputedStyle(e).transitionDuration")
    assert transition == "0s"


def test_reconnects_after_server_restart(open_person: OpenPerson) -> None:
    """When the server restarts, both see a banner and the ended chat, then reconnect by themselves."""
    restarting = ServerProcess()
    restarting.start()
    try:
        alice, bob = open_person(restarting.url), open_person(restarting.url)
        pair(alice, bob)
        restarting.stop()
        # The server closes one connection first, so its partner may be told
        # "Stranger has disconnected." before losing its own connection.
        chat_over = re.compile(
            r"Connection lost: your chat with the stranger has ended\.|Stranger has disconnected\."
        )
        for person in (alice, bob):
            expect(person.page.get_by_role("alert")).to_contain_text("Reconnecting in")
            expect(person.log).to_contain_text(chat_over)
            expect(person.message_box).to_be_disabled()
        assert any(
            "Connection lost: your chat with the stranger has ended." in person.log.inner_text()
            for person in (alice, bob)
        )
        restarting.start()
        for person in (alice, bob):
            expect(person.log).to_contain_text("Reconnected.", timeout=15000)
            expect(person.page.get_by_role("alert")).to_be_hidden()
        pair_again = unique_interest()
        for person in (alice, bob):
            person.button("Change interests").click()
            person.start(pair_again)
        for person in (alice, bob):
            expect(person.log).to_contain_text(PAIRED)
        alice.say("back again")
        expect(bob.log).to_contain_text("Stranger: back again")
    finally:
        restarting.stop()


@pytest.fixture(scope="module")
def slow_server() -> Iterator[ServerProcess]:
    """
    A server whose message bucket refills once every 10 s: the burst of 10 is
    then all a quick typist gets, however slowly a busy machine types.
    """
    running = ServerProcess(extra_args=["--message-rate", "0.1"])
    running.start()
    yield running
    running.stop()


def test_rate_limit_is_shown_inline(open_person: OpenPerson, slow_server: ServerProcess) -> None:
    """Messages refused for going too fast are reported inline in plain words; the chat goes on."""
    alice = open_person(visit=False)
    alice.page.clock.install()
    alice.visit(slow_server.url)
    bob = open_person(slow_server.url)
    pair(alice, bob)
    for n in range(1, 16):
        alice.say(f"quick {n}")
    notice = alice.page.get_by_role("status").filter(
        has_text="You're going a bit fast: some of your last messages were not delivered."
    )
    expect(notice).to_be_visible()
    expect(bob.log).to_contain_text("Stranger: quick 10")
    bob.say("calm down")
    expect(alice.log).to_contain_text("Stranger: calm down")
    expect(alice.message_box).to_be_enabled()
    alice.page.clock.fast_forward(6100)
    expect(notice).to_be_hidden()  # the notice goes away by itself


def test_background_tab_title(browser: Browser, server: ServerProcess) -> None:
    """In a background tab, a found stranger and unread messages show in the title."""
    context = browser.new_context()
    try:
        # Two tabs of one window: only the tab in front has focus, as for a person.
        alice, bob = Person(context.new_page()), Person(context.new_page())
        for person in (alice, bob):
            person.visit(server.url)
            context.new_cdp_session(person.page).send(
                "Emulation.setFocusEmulationEnabled", {"enabled": False}
            )
        base_title = "chatroulette: talk to strangers"
        expect(alice.page).to_have_title(base_title)
        interest = unique_interest()
        alice.page.bring_to_front()
        alice.start(interest)
        bob.page.bring_to_front()
        bob.start(interest)
        expect(alice.page).to_have_title(f"Stranger found! - {base_title}")
        expect(bob.page).to_have_title(base_title)
        bob.say("psst")
        bob.say("are you there?")
        expect(alice.page).to_have_title(f"(2) New messages - {base_title}")
        alice.page.bring_to_front()
        expect(alice.page).to_have_title(base_title)
        expect(alice.log).to_contain_text("Stranger: are you there?")
    finally:
        context.close()


def test_scrolling_up_is_not_interrupted(open_person: OpenPerson) -> None:
    """New messages scroll the log only when the reader is at the bottom."""
    alice = open_person(viewport={"width": 480, "height": 480})
    bob = open_person()
    pair(alice, bob)
    for n in range(1, 7):
        bob.say("\n".join(f"message {n}, line {line}" for line in range(1, 7)))
    latest = alice.log.get_by_text("message 6, line 6")
    expect(latest).to_be_in_viewport()  # following along: the log scrolled by itself

    alice.log.hover()
    alice.page.mouse.wheel(0, -2000)  # scroll up to reread
    expect(alice.log.get_by_text("message 1, line 1")).to_be_in_viewport()
    bob.say("are you still reading?")
    jump = alice.button("New messages below")
    expect(jump).to_be_visible()
    newest = alice.log.get_by_text("are you still reading?")
    expect(newest).not_to_be_in_viewport()
    expect(alice.log.get_by_text("message 1, line 1")).to_be_in_viewport()

    jump.click()
    expect(newest).to_be_in_viewport()
    expect(jump).to_be_hidden()


def test_every_error_code_has_plain_words(open_person: OpenPerson) -> None:
    """Every error code the server can send (banned included) has the client's own plain-words text."""
    person = open_person()
    texts = person.page.evaluate('async () => (await import("/main.js")).ERROR_TEXT')
    assert set(texts) == set(messages.ERROR_CODES)
    assert "can't start new chats for a while" in texts["banned"]


def test_client_limits_match_the_server(open_person: OpenPerson) -> None:
    """The limits and the interest normalisation the page applies are the server's own."""
    person = open_person()
    client = person.page.evaluate(
        """async () => {
            const main = await import("/main.js");
            const interests = await import("/interests.js");
            return {
                MAX_TEXT_CHARS: main.MAX_TEXT_CHARS,
                MAX_INTERESTS: interests.MAX_INTERESTS,
                MAX_INTEREST_CHARS: interests.MAX_INTEREST_CHARS,
            };
        }"""
    )
    assert client == {
        "MAX_TEXT_CHARS": messages.MAX_TEXT_CHARS,
        "MAX_INTERESTS": messages.MAX_INTERESTS,
        "MAX_INTEREST_CHARS": messages.MAX_INTEREST_CHARS,
    }
    samples = [
        "  Music ", "ROCK\tand\nroll", "a\u00a0b", "\u2003jazz\u2003", "\u200bzero\u200bwidth",
        "\ufeffbom", "\u3164", "\u3000", "ÉCOLE", "İstanbul", "ß", "x" * 40, "  ", "",
        "emoji \U0001f600 ok", "tab\u000bvt", "\u0085nel", "a\u2028b", "\u180e", "ǅ",
        "\u115f\u1160", "\uffa0", "\u2060 \u200d", "\u200bx\u200b", "\u061c", "\U000e0001",
    ]
    in_page = person.page.evaluate(
        """async (samples) => {
            const { validInterest } = await import("/interests.js");
            return samples.map(validInterest);
        }""",
        samples,
    )
    on_server: list[str | None] = []
    for raw in samples:
        try:
            on_server.append(messages.normalise_interest(raw))
        except messages.ProtocolError:
            on_server.append(None)
    assert dict(zip(samples, in_page)) == dict(zip(samples, on_server))
    blank = person.page.evaluate(
        'async (samples) => { const { isBlank } = await import("/interests.js"); return samples.map(isBlank); }',
        samples,
    )
    assert dict(zip(samples, blank)) == {raw: messages.is_blank(raw) for raw in samples}
