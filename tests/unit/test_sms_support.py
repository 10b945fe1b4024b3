"""Shared by the SMS/voice tests: a fake Twilio REST API on a real port, and signed requests.

Generic fakes (publisher, outbox, servers) are in ``tests.support``.

Named ``test_*`` only so it lives beside the tests that use it; the one test here checks the
fake itself answers like Twilio (so the SDK parses its errors).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from channels.plugin import ChannelContext, ChannelPlugin
from channels.sms import SmsChannel
from intake311.settings import Settings
from schemas import parse_ticket
from tests.support import (
    DepartmentFiles,
    FakeOutbox,
    FakePublisher,
    asgi_client,
    jsonl_subscriptions,
    pipeline_settings,
    serving,
)

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
CITY_NUMBER = "+12035550100"
POOL_NUMBER = "+12035550199"
PUBLIC = "https://311.example.gov"
RESIDENT = "+12035551234"


@dataclass
class FakeTwilio:
    """Stands in for api.twilio.com: records each Messages.json POST, fails on request."""

    account_sid: str = ACCOUNT_SID
    token: str = AUTH_TOKEN
    sent: list[dict[str, str]] = field(default_factory=list)
    failures: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # To -> (status, code)
    unauthorised: int = 0
    url: str = ""

    async def messages(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.token}".encode()).decode()
        if request.headers.get("authorization") != expected or request.path_params["sid"] != self.account_sid:
            self.unauthorised += 1
            return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401}, status_code=401)
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        to = form.get("To", "")
        if to in self.failures:
            status, code = self.failures[to]
            return JSONResponse(
                {"code": code, "message": f"fake failure {code}", "more_info": "", "status": status},
                status_code=status,
            )
        self.sent.append(form)
        sid = "SM" + secrets.token_hex(16)
        return JSONResponse(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": to,
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form.get("Body"),
                "status": "accepted" if form.get("MessagingServiceSid") else "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            status_code=201,
        )

    def to(self, number: str) -> list[dict[str, str]]:
        return [m for m in self.sent if m.get("To") == number]


async def serve_fake_twilio(fake: FakeTwilio) -> AsyncIterator[FakeTwilio]:
    app = Starlette(
        routes=[Route("/2010-04-01/Accounts/{sid}/Messages.json", fake.messages, methods=["POST"])]
    )
    async with serving(app) as url:
        fake.url = url
        yield fake


def signed_form(
    path: str, params: dict[str, str], *, token: str = AUTH_TOKEN, base: str = PUBLIC
) -> tuple[str, dict[str, str]]:
    """The body and headers Twilio would send to ``base + path`` (path may carry a query)."""
    signature = RequestValidator(token).compute_signature(base + path, params)
    return urlencode(params), {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def post_signed(
    client: httpx.AsyncClient, path: str, params: dict[str, str], *, token: str = AUTH_TOKEN
) -> httpx.Response:
    body, headers = signed_form(path, params, token=token)
    return await client.post(path, content=body, headers=headers)


def sms_params(body: str, *, sid: str | None = None, sender: str = RESIDENT, **extra: str) -> dict[str, str]:
    params = {
        "AccountSid": ACCOUNT_SID,
        "MessageSid": sid or "SM" + secrets.token_hex(16),
        "From": sender,
        "To": CITY_NUMBER,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
    }
    params.update(extra)
    return params


def make_context(tmp_path: Path, *, channels: dict[str, Any] | None = None) -> ChannelContext:
    settings = Settings(
        data_dir=tmp_path, channels=channels or {}, kafka={"topic_prefix": "t" + secrets.token_hex(4)}
    )
    return ChannelContext(
        settings=settings,
        publisher=FakePublisher(),
        outbox=FakeOutbox(),  # type: ignore[arg-type]
        http=httpx.AsyncClient(timeout=5),
        data_dir=tmp_path / "channels",
    )


def app_for(*plugins: ChannelPlugin) -> FastAPI:
    app = FastAPI()
    for plugin in plugins:
        router = plugin.http_routes()
        assert router is not None
        app.include_router(router, prefix=f"/channels/{plugin.name}")
    return app


def message_of(response: httpx.Response) -> str:
    """The text of a TwiML answer ("" for an empty one: nothing is texted back)."""
    assert response.status_code == 200, response.text
    return ET.fromstring(response.text).findtext("Message") or ""


def ticket_of(text: str) -> str:
    """The first ticket number in a text we sent."""
    tickets = [parse_ticket(word.strip(".,?")) for word in text.split() if "-" in word]
    found = [t for t in tickets if t]
    assert found, text
    return found[0]


@dataclass
class TwilioPipeline(DepartmentFiles):
    """Every stage on the test broker with the Twilio channels, the web app in process, texts
    going to a fake Twilio REST API."""

    web: httpx.AsyncClient
    twilio: FakeTwilio
    sms: SmsChannel


@contextlib.asynccontextmanager
async def twilio_pipeline(
    kafka_bootstrap: str,
    twilio: FakeTwilio,
    data_dir: Path,
    topic_prefix: str,
    *,
    sms: dict[str, Any] | None = None,
    channels: dict[str, Any] | None = None,
) -> AsyncIterator[TwilioPipeline]:
    """web, channels, normalizer, router and sinks (every department to its JSONL file), with the
    ``sms`` channel on ``CITY_NUMBER`` sending to ``twilio`` (``sms``: more of its config) and any
    other ``channels`` (e.g. voice)."""
    account = twilio_account()
    settings = pipeline_settings(
        data_dir,
        kafka_bootstrap,
        topic_prefix,
        subscriptions_file=jsonl_subscriptions(data_dir),
        web={"base_url": "http://testserver"},
        channels={
            "sms": {**account, "phone_numbers": [CITY_NUMBER], "api_base_url": twilio.url, **(sms or {})},
            **(channels or {}),
        },
    )
    from intake311.pipeline import running, web_app

    async with running(settings, ["web", "channels", "normalizer", "router", "sinks"]) as runtime:
        assert runtime.channels is not None
        plugin = next(p for p in runtime.channels.plugins if isinstance(p, SmsChannel))
        async with asgi_client(web_app(runtime)) as web:
            yield TwilioPipeline(settings, web, twilio, plugin)


def twilio_account() -> dict[str, str]:
    """The config every Twilio channel of the tests shares: the account, as reached at ``PUBLIC``."""
    return {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "public_base_url": PUBLIC}


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async for fake in serve_fake_twilio(FakeTwilio()):
        yield fake


async def test_fake_twilio_speaks_twilio_errors(fake_twilio: FakeTwilio) -> None:
    from twilio.base.exceptions import TwilioRestException

    from channels.sms.rest import make_client

    fake_twilio.failures["+15005550009"] = (400, 21610)
    async with httpx.AsyncClient() as http:
        client = make_client(http, ACCOUNT_SID, AUTH_TOKEN, fake_twilio.url)
        sent = await client.messages.create_async(to=RESIDENT, from_=CITY_NUMBER, body="hello")
        assert sent.sid and sent.sid.startswith("SM")
        assert sent.status == "queued"
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to="+15005550009", from_=CITY_NUMBER, body="hello")
    assert caught.value.code == 21610
    assert fake_twilio.sent == [{"To": RESIDENT, "From": CITY_NUMBER, "Body": "hello"}]
