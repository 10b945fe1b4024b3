"""Hostile input at every HTTP door: bodies capped before authentication, bad bodies a clear 4xx.

The size tests send their bodies from a counting async generator and assert on how many bytes
the app pulled, not on time or memory: a door that refuses by ``Content-Length`` must pull
nothing, and one that refuses a chunked body must stop within one chunk of its cap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from slack_sdk.signature import SignatureVerifier

from channels.sms import SmsChannel, SmsConfig
from channels.sms.signing import MAX_BODY_BYTES as TWILIO_MAX_BODY
from channels.voice import VoiceChannel, VoiceConfig, sign_transcript
from channels.voice.plugin import MAX_TRANSCRIPT_BYTES
from intake311.http import BadBody, BodyTooLarge, parse_json, read_body
from intake311.settings import Settings
from schemas import make_contact_id, ticket_for
from sinks.api import MAX_SLACK_BYTES, MAX_STATUS_BYTES, department_routes
from tests.support import asgi_client
from tests.unit.test_email_support import harness
from tests.unit.test_sms_support import ACCOUNT_SID, AUTH_TOKEN, PUBLIC, app_for, make_context, signed_form

MB = 1024 * 1024
CHUNK = 64 * 1024
TOKEN = "public-works-token-0123456789"
SLACK_SECRET = "slack-signing-secret-for-tests"
TICKET = ticket_for(make_contact_id("web", "hostile-1"))


@dataclass
class Counting:
    """A request body of ``total`` bytes that counts what the server pulled from it."""

    total: int
    chunk: int = CHUNK
    pulled: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            piece = b"x" * min(self.chunk, self.total - sent)
            sent += len(piece)
            self.pulled = sent
            yield piece


async def post_counted(
    client: httpx.AsyncClient, path: str, total: int, *, declared: bool, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, Counting]:
    """POST ``total`` bytes, with a ``Content-Length`` (``declared``) or chunked (without one)."""
    body = Counting(total)
    sent = dict(headers or {})
    if declared:
        sent["Content-Length"] = str(total)
    response = await client.post(path, content=body, headers=sent)
    return response, body


def assert_refused_early(response: httpx.Response, body: Counting, cap: int, *, declared: bool) -> None:
    assert response.status_code == 413, response.text
    if declared:
        assert body.pulled == 0, "a declared oversize body must be refused before it is read"
    else:
        assert body.pulled <= cap + CHUNK, f"read {body.pulled} bytes of a body capped at {cap}"


# ---- the helper itself -------------------------------------------------------------------------


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    request = Request(scope, receive)
    try:
        body = await read_body(request, 1000)
    except BodyTooLarge as exc:
        await PlainTextResponse(str(exc), status_code=413)(scope, receive, send)
        return
    form = await request.form()  # parses the capped bytes, not the consumed stream
    await PlainTextResponse(f"{len(body)} {form.get('a')}")(scope, receive, send)


async def test_read_body_keeps_the_body_for_form_parsing_and_stops_at_the_cap() -> None:
    async with asgi_client(_echo_app) as client:
        ok = await client.post("/", data={"a": "b"})
        assert ok.text == "3 b"
        for declared in (True, False):
            response, body = await post_counted(client, "/", 20 * MB, declared=declared)
            assert_refused_early(response, body, 1000, declared=declared)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a": "caf\xe9"}', "not UTF-8"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"{", "not JSON"),
    ],
)
def test_parse_json_turns_every_defect_into_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadBody, match=reason):
        parse_json(data)


def test_parse_json_accepts_real_surrogate_pairs() -> None:
    assert parse_json(b'{"a": "\\ud83d\\udea7"}') == {"a": "\N{CONSTRUCTION SIGN}"}


# ---- the department side: Slack buttons and the status API ---------------------------------------


@dataclass
class FakeBroker:
    published: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, value: bytes, topic: str, **_: Any) -> None:
        self.published.append((topic, value))


class FakeStore:
    async def get_case(self, request_id: str) -> Any:
        if request_id != TICKET:
            return None
        return SimpleNamespace(
            request_id=TICKET,
            departments=("public-works",),
            agency_responsible="public-works",
            incident_id=None,
        )


@pytest.fixture
async def departments() -> AsyncIterator[tuple[FakeBroker, httpx.AsyncClient]]:
    settings = Settings(department_tokens={"public-works": TOKEN}, slack_signing_secret=SLACK_SECRET)
    broker = FakeBroker()
    app = FastAPI()
    app.include_router(department_routes(settings, broker, FakeStore()))  # type: ignore[arg-type]
    async with asgi_client(app) as client:
        yield broker, client


def slack_signed(body: bytes) -> dict[str, str]:
    """Slack's v0 signature over the raw bytes (the SDK's helper only signs text)."""
    timestamp = str(int(time.time()))
    digest = hmac.new(SLACK_SECRET.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    if body.isascii():  # the same as Slack's own SDK computes
        assert SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=timestamp, body=body) == (
            f"v0={digest.hexdigest()}"
        )
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": f"v0={digest.hexdigest()}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def slack_body(payload: object) -> bytes:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    return urlencode({"payload": raw}).encode()


def click(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "type": "block_actions",
        "user": {"id": "U024BE7LH"},
        "actions": [{"action_id": "intake311_status_closed", "value": TICKET, "type": "button"}],
    }
    payload.update(overrides)
    return payload


async def test_a_signed_slack_click_still_publishes(
    departments: tuple[FakeBroker, httpx.AsyncClient],
) -> None:
    broker, client = departments
    body = slack_body(click())
    response = await client.post("/slack/interactivity", content=body, headers=slack_signed(body))
    assert response.status_code == 200, response.text
    assert len(broker.published) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"payload=%7B%22type%22%3A%22block_actions%22%7D\xff\xfe",  # not UTF-8
        slack_body(click(actions="intake311_status_closed")),
        slack_body(click(actions=[5, None])),
        slack_body(click(actions={"action_id": "intake311_status_closed"})),
        slack_body(click(actions=[{"action_id": ["x"], "value": {"a": 1}}])),
        slack_body(click(user="U024BE7LH")),
        slack_body(click(type=["block_actions"])),
        slack_body("[" * 30_000),  # deeper than any recursion limit, inside the cap
        slack_body('{"type": "block_actions", "user": {"id": "\\ud800"}, "actions": []}'),
        slack_body("not json"),
        slack_body([1, 2]),
    ],
    ids=[
        "non-utf8",
        "actions-str",
        "actions-scalars",
        "actions-object",
        "action-fields",
        "user-str",
        "type-list",
        "deep",
        "surrogate",
        "not-json",
        "not-object",
    ],
)
async def test_signed_slack_payloads_of_the_wrong_shape_are_400(
    departments: tuple[FakeBroker, httpx.AsyncClient], body: bytes
) -> None:
    broker, client = departments
    response = await client.post("/slack/interactivity", content=body, headers=slack_signed(body))
    assert response.status_code == 400, response.text
    assert response.json()[0]["description"]
    assert broker.published == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"state": "\\ud800"}',
        b'{"state": "closed", "notes": "\\ud800"}',
        b'{"state": 5, "notes": "\\udc00"}',
        b'{"state": "closed", "notes": "caf\xe9"}',
        b"[" * 100_000,
        b'{"state": ["closed"]}',
        b"[]",
    ],
    ids=["surrogate-state", "surrogate-notes", "surrogate-in-422", "non-utf8", "deep", "state-list", "array"],
)
async def test_bad_status_bodies_get_a_4xx_that_can_be_rendered(
    departments: tuple[FakeBroker, httpx.AsyncClient], body: bytes
) -> None:
    broker, client = departments
    response = await client.post(
        f"/api/requests/{TICKET}/status",
        content=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()  # the error rendered, as JSON
    assert broker.published == []


async def test_a_good_status_body_is_published(departments: tuple[FakeBroker, httpx.AsyncClient]) -> None:
    broker, client = departments
    response = await client.post(
        f"/api/requests/{TICKET}/status",
        json={"state": "closed", "notes": "filled \N{CONSTRUCTION SIGN}"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 202, response.text
    assert len(broker.published) == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/slack/interactivity", MAX_SLACK_BYTES),
        (f"/api/requests/{TICKET}/status", MAX_STATUS_BYTES),
        (f"/open311/v2/requests/{TICKET}.json", MAX_STATUS_BYTES),
    ],
)
async def test_department_doors_refuse_big_bodies_before_reading_them(
    departments: tuple[FakeBroker, httpx.AsyncClient], path: str, cap: int, declared: bool
) -> None:
    _, client = departments
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    response, body = await post_counted(client, path, 20 * MB, declared=declared, headers=headers)
    assert_refused_early(response, body, cap, declared=declared)


# ---- Twilio: SMS and voice ----------------------------------------------------------------------


@pytest.fixture
async def twilio(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    sms = SmsChannel(
        SmsConfig.model_validate(
            {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "phone_numbers": ["+12035550100"]}
            | {"public_base_url": PUBLIC}
        ),
        make_context(tmp_path / "sms"),
    )
    voice = VoiceChannel(
        VoiceConfig.model_validate(
            {
                "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN,
                "public_base_url": PUBLIC,
                "transcripts_secret": "call-centre-secret-0123456789",
            }
        ),
        make_context(tmp_path / "voice", channels={"sms": {}}),
    )
    async with asgi_client(app_for(sms, voice)) as client:
        yield client
    await sms.stop()
    for plugin in (sms, voice):
        await plugin.context.http.aclose()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "cap"),
    [
        ("/channels/sms/inbound", TWILIO_MAX_BODY),
        ("/channels/sms/status", TWILIO_MAX_BODY),
        ("/channels/voice/incoming", TWILIO_MAX_BODY),
        ("/channels/voice/speech", TWILIO_MAX_BODY),
        ("/channels/voice/transcripts", MAX_TRANSCRIPT_BYTES),
    ],
)
async def test_twilio_doors_refuse_big_bodies_before_reading_them(
    twilio: httpx.AsyncClient, path: str, cap: int, declared: bool
) -> None:
    # Signed-looking headers: the cap must not depend on the signature being checked first.
    _, headers = signed_form(path, {"Body": "x"})
    headers |= {"X-Intake311-Timestamp": "1", "X-Intake311-Signature": "v1=00"}
    response, body = await post_counted(twilio, path, 20 * MB, declared=declared, headers=headers)
    assert_refused_early(response, body, cap, declared=declared)


async def test_signed_json_transcript_that_is_not_utf8_or_too_deep_is_422(twilio: httpx.AsyncClient) -> None:
    for body in (b'{"call_id": "caf\xe9"}', b"[" * 100_000, b'{"call_id": "\\ud800"}'):
        stamp = str(int(time.time()))
        response = await twilio.post(
            "/channels/voice/transcripts",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Intake311-Timestamp": stamp,
                "X-Intake311-Signature": sign_transcript("call-centre-secret-0123456789", stamp, body),
            },
        )
        assert response.status_code == 422, (body[:20], response.text)
        assert response.json()["errors"]


# ---- email webhooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "path", ["/channels/email/mailgun", "/channels/email/postmark?token=pm-token-0123456789"]
)
async def test_email_webhooks_refuse_big_bodies_before_reading_them(
    tmp_path: Path, path: str, declared: bool
) -> None:
    overrides: dict[str, Any] = {
        "smtp": None,
        "mailgun": {"signing_key": "key-mailgun-signing-0123456789"},
        "postmark": {"token": "pm-token-0123456789"},
        "max_message_bytes": 1_000_000,
    }
    async with harness(tmp_path, **overrides) as h:
        app = FastAPI()
        app.include_router(h.channel.http_routes(), prefix="/channels/email")
        cap = 1_000_000 * 4 // 3 + 256 * 1024
        async with asgi_client(app) as client:
            response, body = await post_counted(
                client, path, 20 * MB, declared=declared, headers={"Content-Type": "application/json"}
            )
        assert_refused_early(response, body, cap, declared=declared)


# ---- the web channel (form and Open311 POST live in channels/web/accept.py) -------------------
