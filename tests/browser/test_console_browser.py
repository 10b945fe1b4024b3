"""The operator console in a real browser: Debian's Chromium driven by Playwright, headless.

One whole shift in one test, against the real pipeline (every stage, the SMS channel with a fake
Twilio REST API, the case store in PostgreSQL): an operator logs in, sees a resident's text
arrive in the live stream, re-routes it from the triage queue, and the department's sink
receives it; then answers the resident, whose phone (the fake Twilio) gets the text; the map,
the service-level charts and the dead letters render. Screenshots go to
``$INTAKE311_CONSOLE_SCREENSHOTS`` when it is set (docs/console/ holds the committed ones).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from intake311.pipeline import running, web_app
from sinks.console.auth import hash_password
from tests.integration.conftest import wait_for
from tests.support import (
    DepartmentFiles,
    asgi_client,
    pipeline_settings,
    serving,
    shared_file,
    throwaway_database,
)
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    PUBLIC,
    FakeTwilio,
    post_signed,
    serve_fake_twilio,
    sms_params,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("postgres")]

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery staple"


def _browser_or_skip() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing (Debian's chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the browser tests must run")
    pytest.skip(reason)


class Shots:
    """Screenshots, kept only when asked for (they are documentation, not assertions)."""

    def __init__(self) -> None:
        where = os.environ.get("INTAKE311_CONSOLE_SCREENSHOTS")
        self.dir = Path(where) if where else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    async def take(self, page: Any, name: str) -> None:
        if self.dir:
            await page.screenshot(path=str(self.dir / f"{name}.png"), full_page=True)


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async for fake in serve_fake_twilio(FakeTwilio()):
        yield fake


async def test_an_operator_reroutes_a_texted_report_from_triage_and_answers_the_resident(
    tmp_path: Path, kafka_bootstrap: str, twilio: FakeTwilio
) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright, expect

    with throwaway_database() as dsn:
        subscriptions = tmp_path / "subscriptions.yaml"
        subscriptions.write_text(
            'departments:\n  "*":\n    sinks:\n      - {name: file, type: jsonl}\n'
            f"      - {{name: cases, type: postgres, dsn: '{dsn}'}}\n"
        )
        settings = pipeline_settings(
            tmp_path / "var",
            kafka_bootstrap,
            "console",
            subscriptions_file=subscriptions,
            case_store_dsn=dsn,
            web={"base_url": "http://testserver"},
            # The real New Haven addresses and wards: the report is placed, and the map draws wards.
            geo={
                "address_points": shared_file("newhaven_address_points.csv"),
                "boundaries": {"ward": shared_file("newhaven_wards_2012.geojson")},
            },
            console={"operators": {"alice": hash_password(PASSWORD)}, "session_secret": "k" * 48},
            channels={
                "sms": {
                    "account_sid": ACCOUNT_SID,
                    "auth_token": AUTH_TOKEN,
                    "public_base_url": PUBLIC,
                    "phone_numbers": [CITY_NUMBER],
                    "api_base_url": twilio.url,
                }
            },
        )
        files = DepartmentFiles(settings)
        shots = Shots()
        async with (
            running(settings, ["web", "channels", "normalizer", "router", "sinks"]) as runtime,
            serving(web_app(runtime)) as base,
            asgi_client(web_app(runtime)) as web,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 900})

            # Not logged in: the console sends you to the login page, and a wrong password stays there.
            await page.goto(f"{base}/console/")
            await expect(page).to_have_url(f"{base}/console/login?next=%2Fconsole%2F")
            await page.get_by_label("Name").fill("alice")
            await page.get_by_label("Password").fill("not the password")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("alert")).to_contain_text("Wrong name or password")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("New and changed requests")

            # A resident texts a report the classifier cannot place: it must show up live.
            sent = await post_signed(
                web,
                "/channels/sms/inbound",
                sms_params("Help, there is a problem at 100 Orange Street", sender="+12035550142"),
            )
            assert sent.status_code == 200, sent.text
            ticket = _ticket_in(sent.text)
            row = page.locator(f"#row-{ticket}")
            await expect(row).to_be_visible(timeout=30_000)  # the page's own poll, no reload
            await expect(row).to_contain_text("sms")
            await expect(row).to_contain_text("triage")
            await shots.take(page, "live")

            # Triage: send it to parks.
            await page.get_by_role("link", name="Triage").click()
            item = page.locator(f"#triage-{ticket}")
            await expect(item).to_be_visible()
            await shots.take(page, "triage")
            await item.get_by_label("Department").select_option("parks")
            await item.get_by_role("button", name="Re-route").click()
            await expect(page.get_by_role("status").first).to_contain_text("Re-routed")

            # The parks department's sink receives it, as parks' work, no longer triage.
            lines = await wait_for(
                lambda: (
                    [
                        line
                        for line in files.for_ticket("parks", ticket)
                        if line["agency_responsible"] == "parks"
                    ]
                    or None
                ),
                what=f"{ticket} in parks.jsonl",
                timeout=30,
            )
            assert lines[-1]["triage"] is False
            assert files.for_ticket("triage", ticket), "the triage copy came first"

            # The request's page: its history says who re-routed it; the operator answers the resident.
            await page.goto(f"{base}/console/requests/{ticket}")
            await expect(page.get_by_role("heading", level=1)).to_have_text(f"Request {ticket}")
            await _until(page, lambda text: "parks" in text, "the department on the request page")
            await page.get_by_label("Answer the resident").fill("A crew from Parks will look at it today.")
            await page.get_by_role("button", name="Send answer").click()
            await expect(page.get_by_role("status").first).to_contain_text("on its way")
            await expect(page.locator("table.history")).to_contain_text("message to resident")
            await shots.take(page, "request")
            await wait_for(
                lambda: [m for m in twilio.sent if "crew from Parks" in m.get("Body", "")] or None,
                what="the answer at the fake Twilio",
                timeout=30,
            )
            answer = next(m for m in twilio.sent if "crew from Parks" in m.get("Body", ""))
            assert answer["To"] == "+12035550142"

            # The map, the service levels and the dead letters render for an operator.
            await page.get_by_role("link", name="Map").click()
            await expect(page.locator("figure.map svg")).to_be_visible()
            await expect(page.locator(f'figure.map a[href="/console/requests/{ticket}"]')).to_have_count(1)
            await shots.take(page, "map")
            await page.get_by_role("link", name="Service levels").click()
            await expect(page.get_by_role("img", name="Requests received by department")).to_be_visible()
            await shots.take(page, "levels")
            await page.get_by_role("link", name="Dead letters").click()
            await expect(page.get_by_role("heading", level=1)).to_have_text("Dead letters")

            # Keyboard only: the skip link is the first stop and lands on the content.
            await page.goto(f"{base}/console/")
            await page.keyboard.press("Tab")
            await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()

            await page.get_by_role("button", name="Log out").click()
            await expect(page).to_have_url(f"{base}/console/login")
            await page.goto(f"{base}/console/triage")
            await expect(page).to_have_url(f"{base}/console/login?next=%2Fconsole%2Ftriage")
            await browser.close()


def _ticket_in(twiml: str) -> str:
    from schemas.ids import parse_ticket

    for word in twiml.replace("<", " ").replace(">", " ").split():
        if "-" in word and (ticket := parse_ticket(word.strip(".,?!"))):
            return ticket
    raise AssertionError(f"no ticket in {twiml}")


async def _until(page: Any, ok: Any, what: str, timeout: float = 20) -> None:
    """Reload ``page`` until its text satisfies ``ok`` (the case store is written a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await page.inner_text("main")
        if ok(text):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not on the page after {timeout} s:\n{text[:2000]}")
        await asyncio.sleep(0.5)
        await page.reload()
