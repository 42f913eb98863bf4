"""
Video chat in real headless Chromium with a fake camera and microphone,
against the service running as a subprocess of this checkout (and, for the
relay test, a real coturn). Pages are driven as a person would; what a person
cannot see (the RTCPeerConnection, its statistics, the WebSocket) is watched
through a script added to each page before it loads, never through a hook in
the client.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Callable, Generator, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Playwright, expect, sync_playwright

from .browser_support import FAKE_MEDIA_ARGS, FAKE_MEDIA_DEVICES, ServerProcess, launch_chromium
from .browser_support import Person as BasePerson
from .coturn import Coturn

PAIRED = "You're now chatting with a random stranger. Say hi!"
LOOKING = "Looking for someone you can chat with..."
TURN_SECRET = "test-turn-secret"

# Instruments the page: every RTCPeerConnection and WebSocket it creates, every
# remote ICE candidate it adds, and small readers for getStats().
WATCH = """
(() => {
  const NativePeerConnection = window.RTCPeerConnection;
  window.__peerConnections = [];
  window.__candidatesAdded = 0;
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      window.__peerConnections.push(this);
    }
    addIceCandidate(...args) {
      window.__candidatesAdded += 1;
      return super.addIceCandidate(...args);
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
  };
  window.__framesDecoded = async (pc) => {
    let frames = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") frames += report.framesDecoded || 0;
    });
    return frames;
  };
  window.__selectedPair = async (pc) => {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((report) => {
      if (report.type === "transport" && report.selectedCandidatePairId) {
        pair = stats.get(report.selectedCandidatePairId);
      }
    });
    if (!pair) return null;
    return [stats.get(pair.localCandidateId).candidateType, stats.get(pair.remoteCandidateId).candidateType];
  };
})();
"""


class Person(BasePerson):
    """Someone using the client in one browser page, with a camera."""

    @property
    def video_switch(self) -> Locator:
        return self.page.get_by_role("switch", name="Video")

    @property
    def strangers_video(self) -> Locator:
        return self.page.get_by_label("Stranger's video")

    @property
    def own_video(self) -> Locator:
        """Your video where it is shown: the preview on the start screen, or beside the stranger's."""
        return self.page.get_by_label("Your video").filter(visible=True)

    def status(self, text: str) -> Locator:
        return self.page.get_by_role("status").filter(has_text=text)

    def start(self, *interests: str, video: bool = False) -> None:
        """Type interests, choose video (acknowledging the first-time notice) or text, press Start."""
        self.enter_interests(*interests)
        if video:
            self.video_switch.check()
            expect(self.own_video).to_be_visible()
            self.button("Start").click()
            expect(self.page.get_by_text("Strangers can see and hear you")).to_be_visible()
            self.button("I understand").click()
        else:
            expect(self.video_switch).not_to_be_checked()
            self.button("Start").click()

    def peer_connections(self) -> int:
        """How many RTCPeerConnections the page has made."""
        count: int = self.page.evaluate("window.__peerConnections.length")
        return count

    def expect_video_plays(self, index: int = -1) -> None:
        """The stranger's video has a picture and connection C{index} keeps decoding frames."""
        expect(self.status("Video connected")).to_be_visible(timeout=30000)
        self.page.wait_for_function("v => v.videoWidth > 0", arg=self.strangers_video.element_handle())
        before = self.page.evaluate("i => __framesDecoded(__peerConnections.at(i))", index)
        self.page.wait_for_function(
            "([i, before]) => __framesDecoded(__peerConnections.at(i)).then((n) => n > before + 10)",
            arg=[index, before],
            polling=100,
            timeout=30000,
        )

    def connection_state(self, index: int) -> str:
        """The C{connectionState} of the page's C{index}th RTCPeerConnection."""
        state: str = self.page.evaluate("i => __peerConnections.at(i).connectionState", index)
        return state


OpenPerson = Callable[..., Person]


def open_people(browser: Browser, server: ServerProcess) -> Generator[OpenPerson, None, None]:
    """New people, each with an own browser context, watched by L{WATCH}."""
    contexts: list[BrowserContext] = []

    def open_one(url: str | None = None, **context_options: Any) -> Person:
        context = browser.new_context(**context_options)
        contexts.append(context)
        context.add_init_script(WATCH)
        person = Person(context.new_page())
        person.page.goto(url or server.url)
        return person

    try:
        yield open_one
    finally:
        for context in contexts:
            context.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # Waiters with interests meet only someone who shares one, for the whole test.
    running = ServerProcess(extra_args=["--interest-timeout", "600"])
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch_chromium(playwright, FAKE_MEDIA_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def open_person(browser: Browser, server: ServerProcess) -> Iterator[OpenPerson]:
    """Open a new person with a fake camera that is allowed without asking."""
    yield from open_people(browser, server)


def unique_interest() -> str:
    """An interest nobody else in the suite has, so exactly the intended pages pair."""
    return f"topic {uuid.uuid4().hex[:10]}"


def pair_video(alice: Person, bob: Person) -> None:
    """Both start a video chat with one shared interest; wait until they chat."""
    interest = unique_interest()
    alice.start(interest, video=True)
    expect(alice.log).to_contain_text(LOOKING)
    bob.start(interest, video=True)
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)


def test_video_chat_plays_both_ways_beside_the_text_chat(open_person: OpenPerson) -> None:
    """Two video pages are paired, each one's stranger video plays, and the text chat works beside it."""
    alice, bob = open_person(), open_person()
    pair_video(alice, bob)
    for person in (alice, bob):
        expect(person.status("Connecting video...").or_(person.status("Video connected"))).to_be_visible()
    for person in (alice, bob):
        person.expect_video_plays()
        expect(person.strangers_video).to_be_visible()
        expect(person.own_video).to_be_visible()
        expect(person.button("Mute")).to_have_attribute("aria-pressed", "false")
        expect(person.button("Camera off")).to_have_attribute("aria-pressed", "false")

    # The text chat is beside the video, and works.
    stage = alice.strangers_video.bounding_box()
    log = alice.log.bounding_box()
    assert stage is not None and log is not None
    assert stage["x"] + stage["width"] <= log["x"]
    alice.say("hello on video")
    expect(bob.log).to_contain_text("Stranger: hello on video")
    bob.say("hi back")
    expect(alice.log).to_contain_text("Stranger: hi back")

    # Mute and camera off are toggles that turn the local tracks off, not stop them.
    alice.button("Mute").click()
    alice.button("Camera off").click()
    expect(alice.button("Mute")).to_have_attribute("aria-pressed", "true")
    expect(alice.button("Camera off")).to_have_attribute("aria-pressed", "true")
    enabled = alice.page.evaluate(
        "() => document.querySelector('#self-video').srcObject.getTracks().map((t) => [t.kind, t.enabled, t.readyState])"
    )
    assert sorted(enabled) == [["audio", False, "live"], ["video", False, "live"]]

    for person in (alice, bob):
        assert person.problems.console_errors == []
        assert person.problems.page_errors == []


def test_a_burst_of_60_candidates_all_arrive(open_person: OpenPerson) -> None:
    """60 ICE candidates signalled at once through the page's own socket all reach the stranger's connection."""
    alice, bob = open_person(), open_person()
    pair_video(alice, bob)
    alice.expect_video_plays()
    bob.expect_video_plays()
    alice.page.wait_for_function("() => __peerConnections.at(-1).iceGatheringState === 'complete'")
    bob.page.wait_for_function("() => __peerConnections.at(-1).iceGatheringState === 'complete'")
    before: int = bob.page.evaluate("window.__candidatesAdded")
    # Alice's own candidates (from her local description), sent again 60 times in one go.
    sent: int = alice.page.evaluate(
        """() => {
            const candidates = [];
            let mid = null;
            for (const line of __peerConnections.at(-1).localDescription.sdp.split("\\r\\n")) {
                if (line.startsWith("a=mid:")) mid = line.slice(6);
                if (line.startsWith("a=candidate:")) candidates.push({ candidate: line.slice(2), sdpMid: mid });
            }
            const socket = __sockets.at(-1);
            for (let n = 0; n < 60; n += 1) {
                const candidate = candidates[n % candidates.length];
                socket.send(JSON.stringify({ type: "signal", data: { candidate } }));
            }
            return 60;
        }"""
    )
    bob.page.wait_for_function("expected => window.__candidatesAdded >= expected", arg=before + sent)
    assert bob.page.evaluate("window.__candidatesAdded") == before + sent
    expect(alice.page.get_by_text("You're going a bit fast")).to_have_count(0)
    bob.expect_video_plays()  # still connected and decoding
    expect(bob.status("Video connected")).to_be_visible()


def test_next_gives_both_a_new_stranger_and_closes_the_old_connection(open_person: OpenPerson) -> None:
    """Next (Esc, Esc, Esc) closes the old connection on both sides at once, and both get a new stranger on video."""
    p, q, r = unique_interest(), unique_interest(), unique_interest()
    alice, bob, carol, dave = (open_person() for _ in range(4))
    alice.start(p, q, video=True)
    expect(alice.log).to_contain_text(LOOKING)
    bob.start(p, r, video=True)
    for person in (alice, bob):
        expect(person.log).to_contain_text(PAIRED)
    carol.start(q, video=True)  # shares only q, with alice
    dave.start(r, video=True)  # shares only r, with bob
    for person in (carol, dave):
        expect(person.log).to_contain_text(LOOKING)
    alice.expect_video_plays()
    bob.expect_video_plays()

    alice.page.keyboard.press("Escape")
    expect(alice.button("Really?")).to_be_visible()
    alice.page.keyboard.press("Escape")
    expect(alice.log).to_contain_text("You have disconnected.")
    assert alice.connection_state(0) == "closed"
    expect(alice.strangers_video).to_have_js_property("srcObject", None)
    expect(bob.log).to_contain_text("Stranger has disconnected.")
    bob.page.wait_for_function("() => __peerConnections[0].connectionState === 'closed'")
    expect(bob.strangers_video).to_have_js_property("srcObject", None)

    alice.page.keyboard.press("Escape")  # New
    bob.button("New").click()
    for person in (alice, bob, carol, dave):
        expect(person.log).to_contain_text(PAIRED)
    for person in (alice, bob):
        person.expect_video_plays()
        assert person.peer_connections() == 2
        assert person.connection_state(0) == "closed"
        assert person.connection_state(1) == "connected"
    carol.say("carol here")
    expect(alice.log).to_contain_text("Stranger: carol here")
    dave.say("dave here")
    expect(bob.log).to_contain_text("Stranger: dave here")


def test_text_page_is_never_paired_with_a_video_page(open_person: OpenPerson) -> None:
    """A text page and a video page sharing an interest both wait; each is paired with its own mode."""
    interest = unique_interest()
    texter, viewer = open_person(), open_person()
    texter.start(interest, video=False)
    expect(texter.log).to_contain_text(LOOKING)
    viewer.start(interest, video=True)
    expect(viewer.log).to_contain_text(LOOKING)

    second_viewer = open_person()
    second_viewer.start(interest, video=True)
    for person in (viewer, second_viewer):
        expect(person.log).to_contain_text(PAIRED)
    expect(texter.log).not_to_contain_text(PAIRED)
    viewer.expect_video_plays()

    second_texter = open_person()
    second_texter.start(interest, video=False)
    expect(texter.log).to_contain_text(PAIRED)
    expect(texter.page.get_by_label("Stranger's video")).to_be_hidden()
    assert texter.peer_connections() == 0
    texter.say("text only")
    expect(second_texter.log).to_contain_text("Stranger: text only")


def test_video_switch_remembered_and_off_stops_every_track(open_person: OpenPerson) -> None:
    """The video choice survives a reload; switching it off ends every local track and hides the preview."""
    person = open_person()
    expect(person.own_video).to_have_count(0)
    person.video_switch.check()
    preview = person.page.locator("#preview")
    expect(person.own_video).to_be_visible()
    person.page.reload()
    expect(person.video_switch).to_be_checked()
    expect(preview).to_be_visible()
    person.page.wait_for_function("v => v.srcObject && v.videoWidth > 0", arg=preview.element_handle())
    person.page.evaluate("() => { window.__tracks = document.querySelector('#preview').srcObject.getTracks(); }")
    assert person.page.evaluate("__tracks.map((t) => t.readyState)") == ["live", "live"]
    person.video_switch.uncheck()
    expect(preview).to_be_hidden()
    assert person.page.evaluate("__tracks.map((t) => t.readyState)") == ["ended", "ended"]
    person.page.reload()
    expect(person.video_switch).not_to_be_checked()


def test_permission_denied_falls_back_to_text(playwright: Playwright, server: ServerProcess) -> None:
    """Without camera permission the page says so plainly, unticks Video, and Start begins a text chat."""
    # A fake camera exists, but nothing grants access to it: the browser refuses.
    chromium = launch_chromium(playwright, FAKE_MEDIA_DEVICES)
    people = open_people(chromium, server)
    try:
        open_one = next(people)
        denied = open_one(permissions=[])
        denied.video_switch.check()
        expect(denied.status("You did not allow the camera and microphone")).to_be_visible()
        expect(denied.video_switch).not_to_be_checked()
        expect(denied.own_video).to_have_count(0)
        interest = unique_interest()
        denied.start(interest, video=False)
        other = open_one()
        other.start(interest, video=False)
        expect(denied.log).to_contain_text(PAIRED)
        other.say("text works")
        expect(denied.log).to_contain_text("Stranger: text works")
    finally:
        people.close()
        chromium.close()


def test_video_through_turn_relay_only(open_person: OpenPerson) -> None:
    """With --ice-relay-only and TURN credentials, two pages connect video through a real coturn relay."""
    coturn = Coturn(TURN_SECRET)
    coturn.start()
    relayed = ServerProcess(
        extra_args=["--ice-relay-only", "--turn-secret", TURN_SECRET, "--ice-server", coturn.url]
    )
    relayed.start()
    try:
        alice, bob = open_person(relayed.url), open_person(relayed.url)
        pair_video(alice, bob)
        for person in (alice, bob):
            person.expect_video_plays()
            pair = person.page.wait_for_function(
                "() => __selectedPair(__peerConnections.at(-1))", polling=100
            ).json_value()
            assert pair == ["relay", "relay"]
        log = coturn.log
        allocations = re.findall(r"ALLOCATE processed, success", log)
        assert len(allocations) >= 2, log[-2000:]  # one relay address for each browser
    finally:
        relayed.stop()
        coturn.stop()
