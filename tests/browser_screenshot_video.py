"""
Regenerate C{docs/screenshot-video.png}: a video chat in progress, 900x600,
between two pages with Chromium's fake camera (its test pattern).

Run from the checkout when the client's look changes (the test suite never
rewrites it)::

    .venv/bin/python -m tests.browser_screenshot_video
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from .browser_support import CHECKOUT, FAKE_MEDIA_ARGS, ServerProcess, launch_chromium

SCREENSHOT = CHECKOUT / "docs" / "screenshot-video.png"


def start_video(page: Page, interest: str) -> None:
    """Type an interest, tick Video, press Start and acknowledge the first-time notice."""
    interests = page.get_by_role("textbox", name="Interests")
    interests.fill(interest)
    interests.press("Enter")
    page.get_by_role("switch", name="Video").check()
    expect(page.get_by_label("Your video").filter(visible=True)).to_be_visible()
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_role("button", name="I understand", exact=True).click()


def main(path: Path = SCREENSHOT) -> None:
    server = ServerProcess(extra_args=["--interest-timeout", "600"])
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, FAKE_MEDIA_ARGS)
            you = browser.new_context(viewport={"width": 900, "height": 600}).new_page()
            stranger = browser.new_context().new_page()
            for page in (you, stranger):
                page.goto(server.url)
                start_video(page, "hiking")
            expect(you.get_by_text("You both like hiking.")).to_be_visible()
            for page in (you, stranger):
                expect(page.get_by_role("status").filter(has_text="Video connected")).to_be_visible(
                    timeout=30000
                )
                remote = page.get_by_label("Stranger's video")
                page.wait_for_function("v => v.videoWidth > 0", arg=remote.element_handle())
            lines = [
                (stranger, "hi! is that a test pattern? :)"),
                (you, "My camera is shy today. Where are you calling from?"),
                (stranger, "Near the mountains, just back from a hike."),
            ]
            for page, text in lines:
                box = page.get_by_role("textbox", name="Message")
                box.fill(text)
                box.press("Enter")
                other = you if page is stranger else stranger
                expect(other.get_by_role("log")).to_contain_text(text)
            you.get_by_role("textbox", name="Message").blur()
            you.screenshot(path=str(path))
            browser.close()
    finally:
        server.stop()
    print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SCREENSHOT)
