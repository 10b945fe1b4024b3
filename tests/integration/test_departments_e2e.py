"""Issue 5 end to end: a report in, a Slack message, a signed Close click, the case store,
the resident's notification and Open311 showing "closed" — on the embedded broker and a real
PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.routing import Route

from intake311.pipeline import Runtime, running, web_app
from intake311.settings import Settings
from schemas.outbound import OutboundMessage
from sinks.postgres.store import CaseStore
from tests.integration.conftest import wait_for
from tests.support import serving, throwaway_database
from tests.unit.test_sinks_slack import FakeSlack
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    PUBLIC,
    FakeTwilio,
    serve_fake_twilio,
)

pytestmark = pytest.mark.integration
SIGNING_SECRET = "slack-signing-secret-for-tests"
TOKENS = {"public-works": "pw-token-0123456789", "parks": "parks-token-0123456789"}
PHONE = "+12035550142"


@dataclass
class Departments:
    runtime: Runtime
    web: httpx.AsyncClient
    store: CaseStore
    slack: FakeSlack
    settings: Settings
    twilio: FakeTwilio


@pytest.fixture(scope="module")
async def twilio() -> AsyncIterator[FakeTwilio]:
    async for fake in serve_fake_twilio(FakeTwilio()):
        yield fake


@pytest.fixture(scope="module")
async def slack_server() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    async with serving(Starlette(routes=[Route("/api/{method}", fake.handle, methods=["POST"])])) as url:
        fake.base_url = f"{url}/api/"
        yield fake


@pytest.fixture(scope="module")
async def departments(
    postgres: None,
    slack_server: FakeSlack,
    twilio: FakeTwilio,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Departments]:
    with throwaway_database() as dsn:
        os.environ["INTAKE311_TEST_CASE_STORE_DSN"] = dsn
        try:
            async for running_departments in _departments(
                dsn, slack_server, twilio, kafka_bootstrap, tmp_path_factory
            ):
                yield running_departments
        finally:
            os.environ.pop("INTAKE311_TEST_CASE_STORE_DSN", None)


async def _departments(
    dsn: str,
    slack_server: FakeSlack,
    twilio: FakeTwilio,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Departments]:
    data_dir = tmp_path_factory.mktemp("var")
    subscriptions = data_dir / "subscriptions.yaml"
    subscriptions.write_text(
        "departments:\n"
        '  "*":\n'
        "    sinks:\n"
        "      - {name: file, type: jsonl}\n"
        "      - {name: cases, type: postgres, dsn_env: INTAKE311_TEST_CASE_STORE_DSN}\n"
        "  public-works:\n"
        "    sinks:\n"
        f"      - {{name: slack, type: slack, token: xoxb-test, channel: '#public-works', "
        f"base_url: '{slack_server.base_url}'}}\n"
    )
    settings = Settings(
        data_dir=data_dir,
        subscriptions_file=subscriptions,
        case_store_dsn=dsn,
        department_tokens=TOKENS,
        slack_signing_secret=SIGNING_SECRET,
        kafka={
            "bootstrap_servers": [kafka_bootstrap],
            "topic_prefix": f"dep{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2000,
        },
        retry_backoff_s=0.05,
        # The resident's channel: their status texts go out through it (to a fake Twilio).
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
    async with running(settings, ["web", "channels", "normalizer", "router", "sinks"]) as runtime:
        transport = httpx.ASGITransport(app=web_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as web:
            yield Departments(runtime, web, runtime.case_store, slack_server, settings, twilio)


def slack_click(request_id: str, state: str, *, secret: str = SIGNING_SECRET) -> tuple[bytes, dict[str, str]]:
    payload = {
        "type": "block_actions",
        "user": {"id": "U024BE7LH", "name": "crew-lead"},
        "actions": [
            {
                "action_id": f"intake311_status_{state}",
                "block_id": "intake311_status",
                "value": request_id,
                "type": "button",
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    return body, {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def outbound_messages(settings: Settings, channel: str) -> list[OutboundMessage]:
    consumer = AIOKafkaConsumer(
        settings.topics.outbound(channel),
        auto_offset_reset="earliest",
        bootstrap_servers=settings.kafka.bootstrap_servers,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=1500)
        return [OutboundMessage.model_validate_json(r.value) for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()


async def report_pothole(d: Departments, address: str) -> str:
    response = await d.web.post(
        "/",
        data={
            "description": "Deep pothole, cars swerve into the other lane",
            "address": address,
            "contact": PHONE,
        },
    )
    assert response.status_code == 200, response.text
    ticket = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", response.text)
    assert ticket
    return ticket.group(1)


async def test_close_click_updates_store_resident_and_open311(departments: Departments) -> None:
    d = departments
    ticket = await report_pothole(d, "12 Elm Street")
    case = await wait_for(lambda: d.store.get_case(ticket), what="the request in the case store")
    assert case.departments == ("public-works",) and case.state == "new"
    posted = await wait_for(
        lambda: [c for c in d.slack.of("chat.postMessage") if ticket in json.dumps(c.body)],
        what="the Slack message",
    )
    assert PHONE not in json.dumps(posted[0].body)  # no personal data in Slack

    body, headers = slack_click(ticket, "closed")
    response = await d.web.post("/slack/interactivity", content=body, headers=headers)
    assert response.status_code == 200, response.text

    closed = await wait_for(lambda: _closed(d.store, ticket), what="closed in the case store")
    assert closed["status"] == "closed"
    history = await d.store.history(ticket)
    assert [e.state for e in history][-1] == "closed" and history[-1].source == "slack:U024BE7LH"
    updates = await wait_for(
        lambda: [c for c in d.slack.of("chat.update") if ticket in json.dumps(c.body)],
        what="the Slack message updated",
    )
    assert "Closed" in json.dumps(updates[-1].body["blocks"])

    async def notified() -> list[OutboundMessage]:
        return [m for m in await outbound_messages(d.settings, "sms") if m.request_id == ticket]

    messages = await wait_for(notified, what="the resident's SMS notification")
    assert len(messages) == 1
    assert messages[0].to == PHONE and messages[0].kind == "status"
    assert ticket in messages[0].text and "closed" in messages[0].text
    texts = await wait_for(
        lambda: [m for m in d.twilio.sent if m.get("To") == PHONE and ticket in m.get("Body", "")],
        what="the status text at (fake) Twilio",
    )
    assert len(texts) == 1 and "closed" in texts[0]["Body"]

    got = await d.web.get(f"/open311/v2/requests/{ticket}.json")
    assert got.status_code == 200
    assert got.json()[0]["status"] == "closed"
    assert PHONE not in got.text


async def test_a_high_cue_reaches_the_case_store_and_open311_as_high(departments: Departments) -> None:
    """Priority end to end: the text's cue -> normalizer -> router -> case store -> Open311 GET."""
    d = departments
    response = await d.web.post(
        "/",
        data={"description": "Deep pothole blocking the lane near the school", "address": "30 Elm Street"},
    )
    assert response.status_code == 200, response.text
    found = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", response.text)
    assert found
    ticket = found.group(1)
    case = await wait_for(lambda: d.store.get_case(ticket), what="the request in the case store")
    assert (case.priority, case.emergency) == ("high", None)
    assert case.priority_reason is not None and case.priority_reason.startswith("cue: blocking the lane")
    assert case.expected_datetime == case.requested_datetime + timedelta(hours=24)  # high: within a day

    got = await d.web.get(f"/open311/v2/requests/{ticket}.json", params={"extensions": "true"})
    assert got.status_code == 200
    record = got.json()[0]
    assert record["priority"] == "high"
    assert (
        record["extended_attributes"]["priority"] == "high"
        and record["extended_attributes"]["emergency"] is None
    )
    xml = await d.web.get(f"/open311/v2/requests/{ticket}.xml", params={"extensions": "true"})
    assert "<priority>high</priority>" in xml.text


async def test_forged_clicks_and_wrong_tokens_change_nothing(departments: Departments) -> None:
    d = departments
    ticket = await report_pothole(d, "40 Chapel Street")
    await wait_for(lambda: d.store.get_case(ticket), what="the request in the case store")

    body, headers = slack_click(ticket, "closed", secret="not-the-secret")
    assert (await d.web.post("/slack/interactivity", content=body, headers=headers)).status_code == 401
    wrong = await d.web.post(
        f"/api/requests/{ticket}/status",
        json={"state": "closed"},
        headers={"Authorization": f"Bearer {TOKENS['parks']}"},
    )
    assert wrong.status_code == 403
    unknown = await d.web.post(
        f"/api/requests/{ticket}/status", json={"state": "closed"}, headers={"Authorization": "Bearer nope"}
    )
    assert unknown.status_code == 403
    bad_open311 = await d.web.post(
        f"/open311/v2/requests/{ticket}.json", data={"api_key": TOKENS["parks"], "status": "closed"}
    )
    assert bad_open311.status_code == 403

    right = await d.web.post(
        f"/api/requests/{ticket}/status",
        json={"state": "in_progress", "notes": "crew sent"},
        headers={"Authorization": f"Bearer {TOKENS['public-works']}"},
    )
    assert right.status_code == 202, right.text
    case = await wait_for(lambda: _state(d.store, ticket, "in_progress"), what="in progress")
    history = await d.store.history(ticket)
    assert [e.state for e in history] == ["new", "in_progress"]  # the refused ones left no trace
    assert case.status_notes == "crew sent"


# --- checks polled by wait_for ---------------------------------------------------------------


async def _closed(store: CaseStore, ticket: str) -> dict[str, Any] | None:
    got = await store.get(ticket)
    return got if got and got["status"] == "closed" else None


async def _state(store: CaseStore, ticket: str, state: str) -> Any:
    case = await store.get_case(ticket)
    return case if case and case.state == state else None


async def test_report_and_departments_views(departments: Departments) -> None:
    from datetime import UTC, datetime, timedelta

    from intake311.ops import add_backlog, department_rows, format_report, service_report

    d = departments
    ticket = await report_pothole(d, "7 Orange Street")
    await wait_for(lambda: d.store.get_case(ticket), what="the request in the case store")
    now = datetime.now(UTC)
    report = await service_report(d.settings, now - timedelta(days=1), now + timedelta(minutes=1))
    stored = await d.store.search(
        service_request_ids=[], service_code=[], status=[], start_date=None, end_date=None, limit=1000
    )
    assert report["received"] == len(stored) >= 3
    assert report["by_channel"]["web"] == report["received"]
    assert report["by_service"]["pothole"] == report["received"]
    works = report["departments"]["public-works"]
    assert works["received"] == report["received"]
    assert works["closed"] >= 1 and works["median_hours_to_close"] is not None
    assert works["share_within_sla"] == 1.0  # closed within seconds of a 72 h service level
    text = format_report(report)
    assert "public-works" in text and "100%" in text

    rows = {r["department"]: r for r in department_rows(d.settings)}
    assert [s["name"] for s in rows["public-works"]["sinks"]] == ["file", "cases", "slack"]
    assert [s["name"] for s in rows["parks"]["sinks"]] == ["file", "cases"]
    await add_backlog(d.settings, d.settings.kafka.bootstrap_servers, list(rows.values()))
    backlog = {s["name"]: s["backlog"] for s in rows["public-works"]["sinks"]}
    assert set(backlog) == {"file", "cases", "slack"}
    assert all(isinstance(v, int) and v >= 0 for v in backlog.values())
