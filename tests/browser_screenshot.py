"""
Regenerate C{docs/screenshot.png}: a chat in progress, 900x600.

Run from the checkout when the client's look changes (the test suite never
rewrites it)::

    .venv/bin/python -m tests.browser_screenshot
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from .browser_support import CHECKOUT, ServerProcess, launch_chromium

SCREENSHOT = CHECKOUT / "docs" / "screenshot.png"


def main(path: Path = SCREENSHOT) -> None:
    server = ServerProcess()
    server.start()
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            you = browser.new_context(viewport={"width": 900, "height": 600}).new_page()
            stranger = browser.new_context().new_page()
            for page in (you, stranger):
                page.goto(server.url)
                interests = page.get_by_role("textbox", name="Interests")
                interests.fill("photography")
                interests.press("Enter")
                page.get_by_role("button", name="Start", exact=True).click()
            expect(you.get_by_text("You both like photography.")).to_be_visible()
            lines = [
                (stranger, "hi! film or digital?"),
                (you, "Mostly digital, but I just got an old Pentax K1000 :)"),
                (stranger, "nice, that's a classic. what are you shooting with it?"),
                (you, "Street photos around the harbour so far.\nFirst roll is at the lab."),
            ]
            for page, text in lines:
                box = page.get_by_role("textbox", name="Message")
                box.fill(text)
                box.press("Enter")
                other = you if page is stranger else stranger
                expect(other.get_by_role("log")).to_contain_text(text.split("\n")[0])
            stranger.get_by_role("textbox", name="Message").press_sequentially("post some")
            expect(you.get_by_text("Stranger is typing...")).to_be_visible()
            you.get_by_role("textbox", name="Message").blur()
            you.screenshot(path=str(path))
            browser.close()
    finally:
        server.stop()
    print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SCREENSHOT)
