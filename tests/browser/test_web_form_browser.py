"""The resident's report form in a real browser: Debian's Chromium driven by Playwright, headless.

The services' questions (``schemas/attributes.py``) are all on the page; the form's small script
shows only the chosen service's. Checked with the script (choosing "missed pickup" shows its
question and hides the pothole's; Send without an answer is refused, with one it gives a ticket
and the answer is on the published contact) and without it (every service's questions show,
under its name, and the form still works). No broker: the contact goes to a recording publisher.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.web import AcceptedRequests, create_app
from intake311.settings import Settings
from schemas.taxonomy import load_taxonomy
from tests.browser.test_console_browser import CHROMIUM, _browser_or_skip
from tests.support import FakePublisher, serving


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[str, FakePublisher]]:
    publisher = FakePublisher()
    # The packaged taxonomy: missed-pickup asks which collection (required), pothole whether it is
    # in a bike lane.
    app = create_app(
        Settings(data_dir=tmp_path), publisher, load_taxonomy(None), lookup=AcceptedRequests(tmp_path / "a")
    )
    async with serving(app) as base:
        yield base, publisher


async def test_choosing_a_service_shows_its_questions_and_sends_the_answer(
    site: tuple[str, FakePublisher],
) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    base, publisher = site
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{base}/")
            pickup = page.locator('fieldset[data-service="missed-pickup"]')
            pothole = page.locator('fieldset[data-service="pothole"]')
            # "Not sure": no service's questions.
            await expect(pickup).to_be_hidden()
            await expect(pothole).to_be_hidden()

            await page.get_by_label("What kind of problem is it?").select_option("pothole")
            await expect(pothole).to_be_visible()
            await expect(pothole.get_by_text("Is it in a bike lane?")).to_be_visible()
            await expect(pickup).to_be_hidden()

            await page.get_by_label("What kind of problem is it?").select_option("missed-pickup")
            await expect(pickup).to_be_visible()
            await expect(pickup.get_by_text("Which collection was missed?")).to_be_visible()
            await expect(pothole).to_be_hidden()
            await expect(page.get_by_text("Is it in a bike lane?")).to_be_hidden()

            await page.get_by_label("What is the problem?").fill("They skipped our street this week")
            await page.get_by_label("Where is it?").fill("100 Orange Street")
            # Sent without the required answer: refused, the question still shown, with its error.
            await page.get_by_role("button", name="Send report").click()
            await expect(page.get_by_role("alert")).to_contain_text("Which collection was missed?")
            await expect(pickup).to_be_visible()
            await expect(pothole).to_be_hidden()
            assert publisher.contacts == []

            await pickup.get_by_label("Recycling").check()
            await page.get_by_role("button", name="Send report").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Report received")
            [contact] = publisher.contacts
            assert contact.service_code == "missed-pickup"
            assert contact.attributes == {"stream": "recycling"}
            await expect(page.locator(".ticket strong")).to_have_text(contact.request_id)
        finally:
            await browser.close()


async def test_without_javascript_every_question_shows_and_the_form_still_works(
    site: tuple[str, FakePublisher],
) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    base, publisher = site
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(java_script_enabled=False)
            page = await context.new_page()
            await page.goto(f"{base}/")
            pickup = page.locator('fieldset[data-service="missed-pickup"]')
            pothole = page.locator('fieldset[data-service="pothole"]')
            await expect(pickup).to_be_visible()
            await expect(pothole).to_be_visible()
            await expect(pickup.locator("legend").first).to_contain_text("Questions about")

            await page.get_by_label("What kind of problem is it?").select_option("missed-pickup")
            await page.get_by_label("What is the problem?").fill("They skipped our street this week")
            await page.get_by_label("Where is it?").fill("100 Orange Street")
            await pickup.get_by_label("Trash", exact=True).check()
            await pothole.get_by_label("Yes", exact=True).check()  # another service's: ignored
            await page.get_by_role("button", name="Send report").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Report received")
            [contact] = publisher.contacts
            assert contact.attributes == {"stream": "trash"}
        finally:
            await browser.close()
