"""The webhook sink against a real HTTP/1.1 server on localhost that verifies every signature."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from schemas.ids import delivery_id_for, event_id_for, make_contact_id, ticket_for
from schemas.request import ServiceRequest
from sinks.base import DeliveryError, SinkContext, parse_sink_config
from sinks.retry import deliver_with_retry
from sinks.webhook import (
    HEADER_DELIVERY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WebhookSink,
    WebhookSinkConfig,
    parse_retry_after,
    sign,
    verify_signature,
)

SECRET = "whsec-test-0123456789"
CTX = SinkContext(data_dir=Path("."))


def make_request(provider_id: str = "SM1") -> ServiceRequest:
    contact_id = make_contact_id("sms", provider_id)
    ticket = ticket_for(contact_id)
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    return ServiceRequest(
        request_id=ticket,
        event_id=event_id_for(ticket, [contact_id]),
        service_code="pothole",
        service_name="Pothole",
        description="pothole on Main St",
        address_string="12 Main St",
        requested_datetime=now,
        updated_datetime=now,
        channel="sms",
        confidence=0.9,
        source_contact_ids=(contact_id,),
    )


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server: verifies the signature, records, answers from a script.

    Unverifiable requests get 401 (as a real receiver would); otherwise each request takes the
    next scripted (status, headers, body), and 200 once the script runs out.
    """

    secret: str = SECRET
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/intake?token=query-secret"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            verified = verify_signature(
                self.secret,
                headers.get(HEADER_TIMESTAMP.lower()),
                body,
                headers.get(HEADER_SIGNATURE.lower()),
            )
            self.requests.append(Received(method, path, headers, body, verified))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not verified:
                status, extra, reply = 401, {}, b"bad signature"
            else:
                status, extra, reply = self.script.pop(0) if self.script else (200, {}, b"ok")
            head = [
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                f"Content-Length: {len(reply)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in extra.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Sleeps:
    """Records backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def webhook(url: str, **extra: object) -> WebhookSinkConfig:
    data = {"name": "crew-dispatch", "type": "webhook", "url": url, "secret": SECRET, **extra}
    config = parse_sink_config(data)
    assert isinstance(config, WebhookSinkConfig)
    return config


async def run(sink: WebhookSink, *, attempts: int = 3, backoff_s: float = 0.01, sleep: Sleeps | None = None):
    request = make_request()
    delivery_id = delivery_id_for(request.event_id, "public-works", sink.name)
    await sink.start()
    try:
        outcome = await deliver_with_retry(
            sink,
            request,
            department="public-works",
            delivery_id=delivery_id,
            attempts=attempts,
            backoff_s=backoff_s,
            sleep=sleep or Sleeps(),
        )
    finally:
        await sink.close()
    return request, delivery_id, outcome


async def test_retries_server_errors_with_the_same_delivery_id_then_delivers() -> None:
    async with Receiver(script=[(500, {}, b"boom"), (503, {}, b"")]) as receiver:
        sink = webhook(receiver.url, headers={"X-City": "springfield"}).build(CTX)
        sleeps = Sleeps()
        before = int(time.time())
        request, delivery_id, outcome = await run(sink, attempts=5, backoff_s=0.01, sleep=sleeps)

    assert (outcome.delivered, outcome.attempts, outcome.reason) == (True, 3, None)
    assert len(receiver.requests) == 3
    assert all(r.verified for r in receiver.requests)
    assert [r.headers[HEADER_DELIVERY.lower()] for r in receiver.requests] == [delivery_id] * 3
    first = receiver.requests[0]
    assert (first.method, first.path) == ("POST", "/hooks/intake?token=query-secret")
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-city"] == "springfield"
    assert first.headers["user-agent"].startswith("intake311-webhook")
    assert before <= int(first.headers["x-intake311-timestamp"]) <= int(time.time())
    body = json.loads(first.body)
    expected = request.model_dump(mode="json") | {"department": "public-works", "delivery_id": delivery_id}
    assert body == expected
    signed = first.headers["x-intake311-timestamp"].encode() + b"." + first.body
    expected_mac = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert first.headers["x-intake311-signature"] == f"v1={expected_mac}"
    assert len(sleeps.delays) == 2
    assert 0.01 <= sleeps.delays[0] <= 0.011
    assert 0.02 <= sleeps.delays[1] <= 0.022


async def test_client_error_is_not_retried() -> None:
    async with Receiver(script=[(400, {}, b"missing field: service_code\n")]) as receiver:
        sink = webhook(receiver.url).build(CTX)
        _, _, outcome = await run(sink, attempts=5)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 1, False)
    assert outcome.error == "DeliveryError"
    assert outcome.reason is not None
    assert "HTTP 400: missing field: service_code" in outcome.reason
    assert "query-secret" not in outcome.reason  # query strings often carry tokens
    assert len(receiver.requests) == 1


async def test_connection_refused_is_a_retryable_failure_after_all_attempts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = webhook(f"http://127.0.0.1:{port}/hook").build(CTX)
    sleeps = Sleeps()
    _, _, outcome = await run(sink, attempts=4, backoff_s=0.001, sleep=sleeps)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 4, True)
    assert outcome.reason is not None
    assert "ConnectError" in outcome.reason
    assert len(sleeps.delays) == 3


async def test_wrong_secret_fails_verification_and_is_not_retried() -> None:
    async with Receiver(secret="another-secret") as receiver:
        sink = webhook(receiver.url).build(CTX)
        _, _, outcome = await run(sink, attempts=3)
    assert [r.verified for r in receiver.requests] == [False]
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 1, False)
    assert outcome.reason is not None
    assert "HTTP 401: bad signature" in outcome.reason


async def test_stale_timestamp_is_rejected_by_the_receiver() -> None:
    async with Receiver() as receiver:
        sink = WebhookSink(webhook(receiver.url), clock=lambda: time.time() - 3600)
        _, _, outcome = await run(sink, attempts=2)
    assert [r.verified for r in receiver.requests] == [False]
    assert outcome.delivered is False
    # The MAC itself is right; only the age makes it fail.
    stale = receiver.requests[0]
    assert verify_signature(
        SECRET,
        stale.headers["x-intake311-timestamp"],
        stale.body,
        stale.headers["x-intake311-signature"],
        now=time.time() - 3600,
    )


async def test_timeout_is_retryable() -> None:
    async with Receiver(delay_s=0.5) as receiver:
        sink = webhook(receiver.url, timeout_s=0.05).build(CTX)
        _, _, outcome = await run(sink, attempts=2, backoff_s=0)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 2, True)
    assert outcome.reason is not None
    assert "timed out after 0.05s" in outcome.reason


async def test_retry_after_is_honoured_and_capped() -> None:
    script = [(429, {"Retry-After": "2"}, b""), (503, {"Retry-After": "86400"}, b"")]
    async with Receiver(script=script) as receiver:
        sink = webhook(receiver.url, max_retry_after_s=5).build(CTX)
        sleeps = Sleeps()
        _, _, outcome = await run(sink, attempts=3, backoff_s=0.01, sleep=sleeps)
    assert (outcome.delivered, outcome.attempts) == (True, 3)
    assert sleeps.delays == [2.0, 5.0]


async def test_redirect_is_not_followed_or_retried() -> None:
    async with Receiver(script=[(301, {"Location": "https://new.example/hook"}, b"")]) as receiver:
        sink = webhook(receiver.url).build(CTX)
        _, _, outcome = await run(sink, attempts=3)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 1, False)
    assert outcome.reason is not None
    assert "redirect to https://new.example/hook" in outcome.reason


async def test_shared_client_is_used_and_left_open() -> None:
    async with Receiver() as receiver, httpx.AsyncClient(headers={"X-Shared": "yes"}) as client:
        sink = webhook(receiver.url).build(SinkContext(data_dir=Path("."), http_client=client))
        _, _, outcome = await run(sink)
        assert outcome.delivered
        assert receiver.requests[0].headers["x-shared"] == "yes"
        assert not client.is_closed


async def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TEST_WEBHOOK_AUTH", "Bearer t0k")
    async with Receiver() as receiver:
        config = parse_sink_config(
            {
                "name": "crew",
                "type": "webhook",
                "url": receiver.url,
                "secret_env": "TEST_WEBHOOK_SECRET",
                "headers_env": {"Authorization": "TEST_WEBHOOK_AUTH"},
            }
        )
        _, _, outcome = await run(config.build(CTX))
    assert outcome.delivered
    assert receiver.requests[0].verified
    assert receiver.requests[0].headers["authorization"] == "Bearer t0k"
    assert "t0k" not in repr(config) and SECRET not in repr(config)


async def test_deliver_raises_delivery_error_directly() -> None:
    async with Receiver(script=[(502, {}, b"")]) as receiver:
        sink = webhook(receiver.url).build(CTX)
        await sink.start()
        with pytest.raises(DeliveryError) as info:
            await sink.deliver(make_request(), department="roads", delivery_id="d1")
        await sink.close()
    assert info.value.retryable is True
    assert "HTTP 502" in str(info.value)


# --- signature helper -------------------------------------------------------------------------


def test_verify_signature_accepts_the_right_signature_only() -> None:
    body, ts = b'{"a":1}', 1_700_000_000
    header = sign(SECRET, ts, body)
    assert verify_signature(SECRET, str(ts), body, header, now=ts + 10)
    assert verify_signature(SecretStr(SECRET), ts, body, header, now=ts)
    assert verify_signature(SECRET.encode(), ts, body, header, now=ts)
    assert not verify_signature("wrong", ts, body, header, now=ts)
    assert not verify_signature(SECRET, ts, b'{"a":2}', header, now=ts)
    assert not verify_signature(SECRET, ts + 1, body, header, now=ts)
    assert not verify_signature(SECRET, ts, body, header.replace("v1=", "v0="), now=ts)
    assert not verify_signature(SECRET, ts, body, None, now=ts)
    assert not verify_signature(SECRET, None, body, header, now=ts)
    assert not verify_signature(SECRET, "-5", body, header, now=ts)
    assert not verify_signature(SECRET, ts, body, "v1=é", now=ts)


def test_verify_signature_rejects_stale_and_future_timestamps() -> None:
    body, ts = b"{}", 1_700_000_000
    header = sign(SECRET, ts, body)
    assert verify_signature(SECRET, ts, body, header, now=ts + 300)
    assert not verify_signature(SECRET, ts, body, header, now=ts + 301)
    assert not verify_signature(SECRET, ts, body, header, now=ts - 301)
    assert verify_signature(SECRET, ts, body, header, tolerance_s=3600, now=ts + 3000)


def test_verify_signature_accepts_any_of_several_signatures() -> None:
    body, ts = b"{}", 1_700_000_000
    header = f"{sign('old-secret', ts, body)}, {sign(SECRET, ts, body)}"
    assert verify_signature(SECRET, ts, body, header, now=ts)
    assert verify_signature("old-secret", ts, body, header, now=ts)
    assert not verify_signature("third", ts, body, header, now=ts)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"url": "ftp://x.example/hook"}, "url must be an http:// or https:// URL"),
        ({"url": "not a url"}, "url must be an http:// or https:// URL"),
        ({"secret": None}, "exactly one of 'secret_env'"),
        ({"secret_env": "X"}, "both were given"),
        ({"secret": ""}, "secret must not be empty"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"headers": {"X-Intake311-Delivery": "x"}}, "set by the sink"),
        ({"headers": {"Content-Type": "text/plain"}}, "set by the sink"),
        ({"headers": {"Bad Header": "x"}}, "not a valid HTTP header name"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "line breaks"),
        ({"retries": 3}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(extra: dict[str, object], message: str) -> None:
    data = {"name": "hook", "type": "webhook", "url": "https://x.example/hook", "secret": "s"} | extra
    with pytest.raises(ValidationError) as info:
        parse_sink_config(data)
    assert message in str(info.value)


def test_secret_env_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ValidationError, match="environment variable TEST_UNSET_SECRET is not set"):
        WebhookSinkConfig(name="hook", url="https://x.example", secret_env="TEST_UNSET_SECRET")


async def test_close_is_idempotent_and_start_is_lazy() -> None:
    async with Receiver() as receiver:
        sink = webhook(receiver.url).build(CTX)
        await sink.deliver(make_request(), department="roads", delivery_id="d1")  # no start()
        await sink.close()
        with contextlib.suppress(Exception):
            await sink.close()
    assert len(receiver.requests) == 1
    assert receiver.requests[0].verified


async def test_a_later_report_is_delivered_with_its_incident() -> None:
    """Machines get every report (no incident logic here): the payload says which incident it joins."""
    later = make_request("SM2").model_copy(
        update={"incident_id": "K7M4-QPXA", "incident_reports": 2, "districts": {"ward": "Ward 7"}}
    )
    async with Receiver() as receiver:
        sink = webhook(receiver.url).build(SinkContext(data_dir=Path(".")))
        await sink.start()
        try:
            await sink.deliver(later, department="public-works", delivery_id="l1")
        finally:
            await sink.close()
    [received] = receiver.requests
    payload = json.loads(received.body)
    assert (payload["request_id"], payload["incident_id"], payload["incident_reports"]) == (
        later.request_id,
        "K7M4-QPXA",
        2,
    )
    assert payload["districts"] == {"ward": "Ward 7"} and payload["incident_updates"] == []
