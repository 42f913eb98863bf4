"""
Regenerate the README's screenshots, 900x600 each: C{docs/screenshot.png}
(a text chat in progress) and C{docs/screenshot-video.png} (a video chat
between two pages with Chromium's fake camera, its test pattern).

Run from the checkout when the client's look changes (the test suite never
rewrites them)::

    .venv/bin/python -m tests.browser_screenshot
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

from .browser_support import CHECKOUT, FAKE_MEDIA_ARGS, ServerProcess, launch_chromium

TEXT_SCREENSHOT = CHECKOUT / "docs" / "screenshot.png"
VIDEO_SCREENSHOT = CHECKOUT / "docs" / "screenshot-video.png"


def two_pages(browser: Browser, url: str) -> tuple[Page, Page]:
    """Yours (900x600, the one photographed) and the stranger's, both on the start screen."""
    you = browser.new_context(viewport={"width": 900, "height": 600}).new_page()
    stranger = browser.new_context().new_page()
    for page in (you, stranger):
        page.goto(url)
    return you, stranger


def start(page: Page, interest: str, video: bool = False) -> None:
    """Type an interest, tick Video if asked (acknowledging the first-time notice), press Start."""
    interests = page.get_by_role("textbox", name="Interests")
    interests.fill(interest)
    interests.press("Enter")
    if video:
        page.get_by_role("switch", name="Video").check()
        expect(page.get_by_label("Your video").filter(visible=True)).to_be_visible()
    page.get_by_role("button", name="Start", exact=True).click()
    if video:
        page.get_by_role("button", name="I understand", exact=True).click()


def exchange(you: Page, stranger: Page, lines: list[tuple[Page, str]]) -> None:
    """Each page in turn sends its line; wait until the other one shows it."""
    for page, text in lines:
        box = page.get_by_role("textbox", name="Message")
        box.fill(text)
        box.press("Enter")
        other = you if page is stranger else stranger
        expect(other.get_by_role("log")).to_contain_text(text.split("\n")[0])


def text_chat(browser: Browser, url: str, path: Path) -> None:
    you, stranger = two_pages(browser, url)
    for page in (you, stranger):
        start(page, "photography")
    expect(you.get_by_text("You both like photography.")).to_be_visible()
    exchange(you, stranger, [
        (stranger, "hi! film or digital?"),
        (you, "Mostly digital, but I just got an old Pentax K1000 :)"),
        (stranger, "nice, that's a classic. what are you shooting with it?"),
        (you, "Street photos around the harbour so far.\nFirst roll is at the lab."),
    ])
    stranger.get_by_role("textbox", name="Message").press_sequentially("post some")
    expect(you.get_by_text("Stranger is typing...")).to_be_visible()
    you.get_by_role("textbox", name="Message").blur()
    you.screenshot(path=str(path))


def video_chat(browser: Browser, url: str, path: Path) -> None:
    you, stranger = two_pages(browser, url)
    for page in (you, stranger):
        start(page, "hiking", video=True)
    expect(you.get_by_text("You both like hiking.")).to_be_visible()
    for page in (you, stranger):
        expect(page.get_by_role("status").filter(has_text="Video connected")).to_be_visible(timeout=30000)
        remote = page.get_by_label("Stranger's video")
        page.wait_for_function("v => v.videoWidth > 0", arg=remote.element_handle())
    exchange(you, stranger, [
        (stranger, "hi! is that a test pattern? :)"),
        (you, "My camera is shy today. Where are you calling from?"),
        (stranger, "Near the mountains, just back from a hike."),
    ])
    you.get_by_role("textbox", name="Message").blur()
    you.screenshot(path=str(path))


def main() -> None:
    server = ServerProcess(extra_args=["--interest-timeout", "600"])
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, FAKE_MEDIA_ARGS)
            text_chat(browser, server.url, TEXT_SCREENSHOT)
            video_chat(browser, server.url, VIDEO_SCREENSHOT)
            browser.close()
    finally:
        server.stop()
    print(f"wrote {TEXT_SCREENSHOT} and {VIDEO_SCREENSHOT}")


if __name__ == "__main__":
    main()
