"""The Slack sink against a fake Slack Web API: a real HTTP server on localhost (uvicorn)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from schemas.contact import ReplyVia, Sender, SenderKind
from schemas.request import ServiceRequest
from schemas.taxonomy import Taxonomy, load_taxonomy
from sinks.base import DeliveryError, SinkContext, parse_sink_config
from sinks.retry import deliver_with_retry
from sinks.slack import (
    ANSWERS_BLOCK_ID,
    SlackMessages,
    SlackSink,
    SlackSinkConfig,
    build_blocks,
    build_reply_blocks,
)
from tests.support import serving

TOKEN = "xoxb-test-token"
PHONE = "+1 203 555 0142"
EMAIL = "resident@example.org"
REQUESTED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
DUE = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)


def make_request(**changes: Any) -> ServiceRequest:
    values: dict[str, Any] = {
        "request_id": "K7M4-QPXA",
        "event_id": "e" * 32,
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": f"Deep pothole <!channel> & more. Call me on {PHONE} or {EMAIL}",
        "lat": 41.308274,
        "long": -72.927883,
        "address_string": "12 Elm Street",
        "media_url": "https://cdn.example.org/p/1.jpg",
        "requested_datetime": REQUESTED,
        "updated_datetime": REQUESTED,
        "expected_datetime": DUE,
        "agency_responsible": "public-works",
        "channel": "sms",
        "reporter": Sender(kind=SenderKind.PHONE, address=PHONE, name="Dana Resident"),
        "reply": ReplyVia(channel="sms", address=PHONE),
        "confidence": 0.91,
        "source_contact_ids": ("sms:SM1",),
    }
    values.update(changes)
    return ServiceRequest(**values)


@dataclass
class Call:
    method: str
    authorization: str | None
    body: dict[str, Any]
    raw: bytes


@dataclass
class FakeSlack:
    """Slack's Web API as far as the sink uses it; ``script[method]`` answers first, then ok."""

    calls: list[Call] = field(default_factory=list)
    script: dict[str, list[Response]] = field(default_factory=dict)
    base_url: str = ""
    _ts: int = 0

    async def handle(self, request: Request) -> Response:
        method = request.path_params["method"]
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.calls.append(Call(method, request.headers.get("authorization"), body, raw))
        if self.script.get(method):
            return self.script[method].pop(0)
        if method == "chat.postMessage":
            self._ts += 1
            return JSONResponse({"ok": True, "channel": "C0PUBLIC", "ts": f"1767000000.{self._ts:06d}"})
        if method == "chat.update":
            return JSONResponse({"ok": True, "channel": body["channel"], "ts": body["ts"]})
        return JSONResponse({"ok": False, "error": "unknown_method"}, status_code=404)

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    async with serving(Starlette(routes=[Route("/api/{method}", fake.handle, methods=["POST"])])) as url:
        fake.base_url = f"{url}/api/"
        yield fake


@pytest.fixture
async def slack(server: FakeSlack) -> FakeSlack:
    server.calls.clear()
    server.script.clear()
    server._ts = 0
    return server


def config(base_url: str, **extra: Any) -> SlackSinkConfig:
    data = {
        "name": "pw-slack",
        "type": "slack",
        "token": TOKEN,
        "channel": "#public-works",
        "base_url": base_url,
        **extra,
    }
    cfg = parse_sink_config(data)
    assert isinstance(cfg, SlackSinkConfig)
    return cfg


@pytest.fixture
async def sink(slack: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackSink]:
    built = config(slack.base_url).build(SinkContext(data_dir=tmp_path))
    assert isinstance(built, SlackSink)
    await built.start()
    yield built
    await built.close()


def _date(value: datetime) -> str:
    return f"<!date^{int(value.timestamp())}^{{date_short_pretty}} {{time}}|{value:%Y-%m-%d %H:%M} UTC>"


BUTTONS = [
    {
        "type": "button",
        "action_id": "intake311_status_acknowledged",
        "text": {"type": "plain_text", "text": "Acknowledge"},
        "value": "K7M4-QPXA",
    },
    {
        "type": "button",
        "action_id": "intake311_status_in_progress",
        "text": {"type": "plain_text", "text": "In progress"},
        "value": "K7M4-QPXA",
    },
    {
        "type": "button",
        "action_id": "intake311_status_closed",
        "text": {"type": "plain_text", "text": "Close"},
        "value": "K7M4-QPXA",
        "style": "primary",
    },
]
EXPECTED_BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "Pothole · K7M4-QPXA"}},
    {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": (
                "Deep pothole &lt;!channel&gt; &amp; more. Call me on [contact removed] or [contact removed]"
            ),
        },
    },
    {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": "*Ticket*\nK7M4-QPXA"},
            {"type": "mrkdwn", "text": "*Service*\nPothole (`pothole`)"},
            {"type": "mrkdwn", "text": "*Address*\n12 Elm Street"},
            {"type": "mrkdwn", "text": f"*Due*\n{_date(DUE)}"},
            {
                "type": "mrkdwn",
                "text": (
                    "*Location*\n<https://www.openstreetmap.org/?mlat=41.308274&mlon=-72.927883"
                    "#map=18/41.308274/-72.927883|Open map>"
                ),
            },
            {"type": "mrkdwn", "text": "*Photo*\n<https://cdn.example.org/p/1.jpg|View photo>"},
        ],
    },
    {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": f"Reported via sms {_date(REQUESTED)} · public-works"}],
    },
    {
        "type": "context",
        "block_id": "intake311_state",
        "elements": [{"type": "mrkdwn", "text": "*Status:* New"}],
    },
    {"type": "actions", "block_id": "intake311_status", "elements": BUTTONS},
]


async def test_posts_the_block_kit_message_without_personal_data(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")

    [call] = slack.calls
    assert call.method == "chat.postMessage"
    assert call.authorization == f"Bearer {TOKEN}"
    assert call.body == {
        "channel": "#public-works",
        "text": "New Pothole request K7M4-QPXA at 12 Elm Street",
        "blocks": EXPECTED_BLOCKS,
        "unfurl_links": False,
        "unfurl_media": False,
        "metadata": {
            "event_type": "intake311_request",
            # The delivery id travels with the message: Slack cannot dedupe a repeated post
            # (a kill between posting and recording it), whoever reads the channel can.
            "event_payload": {"request_id": "K7M4-QPXA", "department": "public-works", "delivery_id": "d1"},
        },
    }
    raw = call.raw.decode()
    for personal in (PHONE, EMAIL, "203 555", "Dana", "555 0142"):
        assert personal not in raw

    [ref] = await sink.messages.get("K7M4-QPXA")
    assert (ref.channel, ref.ts, ref.delivery_id, ref.state) == ("C0PUBLIC", "1767000000.000001", "d1", "new")


async def test_minimal_request_has_no_map_or_photo_and_flags_triage(
    slack: FakeSlack, sink: SlackSink
) -> None:
    request = make_request(
        lat=None,
        long=None,
        media_url=None,
        expected_datetime=None,
        address_string=None,
        description="",
        triage=True,
        confidence=0.2,
    )
    await sink.deliver(request, department="triage", delivery_id="d1")
    blocks = slack.calls[0].body["blocks"]
    assert blocks[1]["text"]["text"] == "_No description given._"
    assert [f["text"] for f in blocks[2]["fields"]] == [
        "*Ticket*\nK7M4-QPXA",
        "*Service*\nPothole (`pothole`)",
        "*Address*\n—",
        "*Due*\nno service level",
    ]
    assert "low classifier confidence (0.20)" in blocks[3]["elements"][0]["text"]
    assert slack.calls[0].body["text"] == "New Pothole request K7M4-QPXA"


async def test_a_replayed_delivery_is_not_posted_twice(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert [c.method for c in slack.calls] == ["chat.postMessage"]


async def test_a_newer_event_edits_the_message_in_place(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    newer = make_request(description="Now a sinkhole")
    await sink.deliver(newer, department="public-works", delivery_id="d2")
    assert [c.method for c in slack.calls] == ["chat.postMessage", "chat.update"]
    update = slack.calls[1].body
    assert (update["channel"], update["ts"]) == ("C0PUBLIC", "1767000000.000001")
    assert update["blocks"][1]["text"]["text"] == "Now a sinkhole"
    [ref] = await sink.messages.get("K7M4-QPXA")
    assert ref.delivery_id == "d2"


async def test_update_message_shows_the_status_and_the_buttons_left(
    slack: FakeSlack, sink: SlackSink
) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    [ref] = await sink.messages.get("K7M4-QPXA")
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    await sink.update_message("K7M4-QPXA", ref.channel, ref.ts, "acknowledged", "U024BE7LH", at=at)
    update = slack.calls[-1]
    assert update.method == "chat.update"
    assert (update.body["channel"], update.body["ts"]) == (ref.channel, ref.ts)
    assert update.body["text"] == "New Pothole request K7M4-QPXA at 12 Elm Street"
    assert update.body["blocks"][:4] == EXPECTED_BLOCKS[:4]
    assert update.body["blocks"][4:] == [
        {
            "type": "context",
            "block_id": "intake311_state",
            "elements": [{"type": "mrkdwn", "text": f"*Status:* Acknowledged by <@U024BE7LH> · {_date(at)}"}],
        },
        {"type": "actions", "block_id": "intake311_status", "elements": BUTTONS[1:]},
    ]

    await sink.update_message("K7M4-QPXA", ref.channel, ref.ts, "closed", "Crew <7>", at=at)
    blocks = slack.calls[-1].body["blocks"]
    assert blocks[-1] == {
        "type": "context",
        "block_id": "intake311_state",
        "elements": [{"type": "mrkdwn", "text": f"*Status:* Closed by Crew &lt;7&gt; · {_date(at)}"}],
    }
    assert all(b["type"] != "actions" for b in blocks)
    [stored] = await sink.messages.get("K7M4-QPXA")
    assert stored.state == "closed"

    # A later version of the request keeps the status the crew set.
    await sink.deliver(make_request(description="more"), department="public-works", delivery_id="d2")
    blocks = slack.calls[-1].body["blocks"]
    assert blocks[-1]["elements"][0]["text"].startswith("*Status:* Closed by Crew")
    assert all(b["type"] != "actions" for b in blocks)


async def test_update_message_for_an_unknown_message(sink: SlackSink) -> None:
    with pytest.raises(LookupError):
        await sink.update_message("K7M4-QPXA", "C0PUBLIC", "1.2", "closed", "U1")
    with pytest.raises(ValueError):
        await sink.update_message("K7M4-QPXA", "C0PUBLIC", "1.2", "done", "U1")


async def test_message_map_survives_a_new_sink(slack: FakeSlack, sink: SlackSink, tmp_path: Path) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    again = SlackMessages(tmp_path / "slack" / "messages.sqlite3")
    [ref] = await again.get("K7M4-QPXA")
    assert ref.ts == "1767000000.000001"
    assert await again.find("K7M4-QPXA", target="#public-works") == ref
    assert await again.find("K7M4-QPXA", channel="C0OTHER") is None


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_rate_limit_is_retried_after_the_retry_after(slack: FakeSlack, sink: SlackSink) -> None:
    slack.script["chat.postMessage"] = [
        JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "7"})
    ]
    sleeps = Sleeps()
    outcome = await deliver_with_retry(
        sink,
        make_request(),
        department="public-works",
        delivery_id="d1",
        attempts=3,
        backoff_s=0.01,
        sleep=sleeps,
    )
    assert outcome.delivered and outcome.attempts == 2
    assert sleeps.delays == [7.0]
    assert len(slack.of("chat.postMessage")) == 2


async def test_retry_after_is_capped(slack: FakeSlack, tmp_path: Path) -> None:
    slack.script["chat.postMessage"] = [
        JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "3600"})
    ]
    sink = config(slack.base_url, max_retry_after_s=30).build(SinkContext(data_dir=tmp_path))
    try:
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    finally:
        await sink.close()
    assert caught.value.retryable and caught.value.retry_after_s == 30
    assert "429" in caught.value.reason and TOKEN not in caught.value.reason


async def test_server_errors_are_retryable(slack: FakeSlack, sink: SlackSink) -> None:
    slack.script["chat.postMessage"] = [PlainTextResponse("<html>bad gateway</html>", status_code=502)]
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert caught.value.retryable
    assert "HTTP 502" in caught.value.reason


@pytest.mark.parametrize("error", ["invalid_auth", "channel_not_found", "not_in_channel"])
async def test_auth_and_channel_errors_are_not_retried(slack: FakeSlack, sink: SlackSink, error: str) -> None:
    slack.script["chat.postMessage"] = [JSONResponse({"ok": False, "error": error})]
    outcome = await deliver_with_retry(
        sink,
        make_request(),
        department="public-works",
        delivery_id="d1",
        attempts=5,
        backoff_s=0.01,
        sleep=Sleeps(),
    )
    assert not outcome.delivered and not outcome.retryable and outcome.attempts == 1
    assert error in (outcome.reason or "")
    assert await sink.messages.get("K7M4-QPXA") == []


async def test_a_deleted_message_is_posted_again(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    slack.script["chat.update"] = [JSONResponse({"ok": False, "error": "message_not_found"})]
    await sink.deliver(make_request(description="again"), department="public-works", delivery_id="d2")
    assert [c.method for c in slack.calls] == ["chat.postMessage", "chat.update", "chat.postMessage"]
    [ref] = await sink.messages.get("K7M4-QPXA")
    assert (ref.ts, ref.delivery_id) == ("1767000000.000002", "d2")


async def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = config(f"http://127.0.0.1:{port}/api/").build(SinkContext(data_dir=tmp_path))
    await sink.start()
    try:
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    finally:
        await sink.close()
        await sink.close()
    assert caught.value.retryable


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_SLACK_TOKEN", "xoxb-env")
    cfg = parse_sink_config({"name": "s", "type": "slack", "token_env": "PW_SLACK_TOKEN", "channel": "C1"})
    assert isinstance(cfg, SlackSinkConfig)
    assert cfg.bot_token.get_secret_value() == "xoxb-env"
    assert "xoxb-env" not in repr(cfg)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"token": "x", "token_env": "X"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"token_env": "INTAKE311_TEST_UNSET_VAR"}, "not set"),
        ({"token": "x", "base_url": "ftp://x"}, "base_url"),
        ({"token": "x", "map_url": "https://maps.example/?q=1"}, "map_url"),
        ({"token": "x", "colour": "red"}, "colour"),
    ],
)
def test_config_errors(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_sink_config({"name": "s", "type": "slack", "channel": "C1", **extra})


# -- districts and incidents -----------------------------------------------------------------


LATER_REQUESTED = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)


def later_report(**changes: Any) -> ServiceRequest:
    """The second resident's report of the same pothole: its own ticket, the incident's id."""
    values: dict[str, Any] = {
        "request_id": "ZZZZ-0002",
        "event_id": "l" * 32,
        "incident_id": "K7M4-QPXA",
        "incident_reports": 2,
        "description": f"Same hole, worse now. Text me {PHONE}",
        "channel": "web",
        "requested_datetime": LATER_REQUESTED,
        "updated_datetime": LATER_REQUESTED,
        "reporter": Sender(),
        "reply": None,
        "source_contact_ids": ("web:w2",),
    }
    values.update(changes)
    return make_request(**values)


def grown_incident(reports: int = 2) -> ServiceRequest:
    """The incident's first request sent again: more reporters, the later reports on it."""
    from schemas.contact import Media
    from schemas.request import IncidentReport

    updates = tuple(
        IncidentReport(
            request_id=f"ZZZZ-000{n}",
            channel="web" if n % 2 else "email",
            reported_at=LATER_REQUESTED.replace(hour=10 + n),
            description=f"Report {n}: still there, call {PHONE}",
            media=(Media(url=f"https://cdn.example.org/p/{n}.jpg"),) if n == 2 else (),
        )
        for n in range(2, reports + 1)
    )
    return make_request(
        event_id="g" * 32, incident_id="K7M4-QPXA", incident_reports=reports, incident_updates=updates
    )


async def test_districts_are_fields(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(
        make_request(districts={"ward": "Ward 7", "police_district": "District <2>"}),
        department="public-works",
        delivery_id="d1",
    )
    fields = [f["text"] for f in slack.calls[0].body["blocks"][2]["fields"]]
    assert fields[-2:] == ["*Ward*\nWard 7", "*Police district*\nDistrict &lt;2&gt;"]


async def test_a_high_priority_request_says_so_and_why(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(
        make_request(priority="high", priority_reason="cue: blocking the road"),
        department="public-works",
        delivery_id="d1",
    )
    body = slack.calls[0].body
    assert body["blocks"][0]["text"]["text"].startswith("HIGH · Pothole")
    assert body["text"].startswith("HIGH · New Pothole request")
    fields = [f["text"] for f in body["blocks"][2]["fields"]]
    assert "*Priority*\nhigh (cue: blocking the road)" in fields


async def test_a_normal_request_shows_no_priority(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    body = slack.calls[0].body
    assert not any("*Priority*" in f["text"] for f in body["blocks"][2]["fields"])
    assert body["blocks"][0]["text"]["text"].startswith("Pothole")


async def test_many_district_layers_share_the_last_field(slack: FakeSlack, sink: SlackSink) -> None:
    layers = {f"layer_{n}": f"D{n}" for n in range(6)}
    await sink.deliver(make_request(districts=layers), department="public-works", delivery_id="d1")
    fields = [f["text"] for f in slack.calls[0].body["blocks"][2]["fields"]]
    assert len(fields) == 10  # Slack's limit: six facts, three layers, and the rest together
    assert fields[6:9] == ["*Layer 0*\nD0", "*Layer 1*\nD1", "*Layer 2*\nD2"]
    assert fields[9] == "*Districts*\nLayer 3: D3 · Layer 4: D4 · Layer 5: D5"


async def test_a_later_report_is_a_thread_reply_under_the_incident(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    [ref] = await sink.messages.get("K7M4-QPXA")

    later = later_report(districts={"ward": "Ward 7"})
    await sink.deliver(later, department="public-works", delivery_id="l1")
    await sink.deliver(later, department="public-works", delivery_id="l1")  # a replay: nothing more
    reply = slack.calls[1]
    assert [c.method for c in slack.calls] == ["chat.postMessage", "chat.postMessage"]
    assert (reply.body["channel"], reply.body["thread_ts"]) == (ref.channel, ref.ts)
    assert reply.body["text"] == "Another report of Pothole K7M4-QPXA: ZZZZ-0002"
    assert reply.body["metadata"]["event_payload"]["incident_id"] == "K7M4-QPXA"
    assert all(b["type"] != "actions" for b in reply.body["blocks"])  # the incident's message has them
    context = reply.body["blocks"][1]["elements"][0]["text"]
    assert "ZZZZ-0002 via web" in context and "*Ward:* Ward 7" in context
    assert PHONE not in reply.raw.decode()
    # The map still points at the incident's message only; the reply is kept apart.
    assert [r.request_id for r in await sink.messages.get("ZZZZ-0002")] == []
    stored = await sink.messages.find_reply("ZZZZ-0002", channel="C0PUBLIC")
    assert stored is not None and (stored.thread_ts, stored.delivery_id) == (ref.ts, "l1")

    # A newer version of the later report edits its reply.
    await sink.deliver(later_report(description="Now two holes"), department="public-works", delivery_id="l2")
    edit = slack.calls[-1]
    assert edit.method == "chat.update" and edit.body["ts"] == stored.ts
    assert edit.body["blocks"][0]["text"]["text"] == "Now two holes"


async def test_a_later_report_without_the_incident_message_is_skipped(
    slack: FakeSlack, sink: SlackSink
) -> None:
    outcome = await deliver_with_retry(
        sink, later_report(), department="public-works", delivery_id="l1", attempts=1, backoff_s=0
    )
    assert outcome.delivered
    assert slack.calls == []  # never a top-level message: it would read as new work


async def test_the_incident_message_shows_the_reporters_and_latest_reports(
    slack: FakeSlack, sink: SlackSink
) -> None:
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    [ref] = await sink.messages.get("K7M4-QPXA")
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    await sink.update_message("K7M4-QPXA", ref.channel, ref.ts, "acknowledged", "U024BE7LH", at=at)

    await sink.deliver(grown_incident(5), department="public-works", delivery_id="d2")
    update = slack.calls[-1]
    assert update.method == "chat.update" and (update.body["channel"], update.body["ts"]) == (
        ref.channel,
        ref.ts,
    )
    assert update.body["text"] == "New Pothole request K7M4-QPXA at 12 Elm Street, reported by 5 residents"
    blocks = update.body["blocks"]
    [incident] = [b for b in blocks if b.get("block_id") == "intake311_incident"]
    lines = incident["text"]["text"].split("\n")
    assert lines[0] == "*Reported by 5 residents*"
    # The newest three (ticket, channel, excerpt), then how many more; contact details removed.
    assert [line.split(" ")[1:4] for line in lines[1:4]] == [
        ["ZZZZ-0005", "via", "web"],
        ["ZZZZ-0004", "via", "email"],
        ["ZZZZ-0003", "via", "web"],
    ]
    assert "“Report 5: still there, call [contact removed]”" in lines[1]
    assert lines[4] == "_and 1 earlier report_"
    assert PHONE not in update.raw.decode()
    # The status a person set stays.
    [status] = [b for b in blocks if b.get("block_id") == "intake311_state"]
    assert "Acknowledged" in status["elements"][0]["text"]
    assert blocks.index(incident) < blocks.index(status)

    await sink.deliver(grown_incident(2), department="public-works", delivery_id="d3")
    [incident] = [b for b in slack.calls[-1].body["blocks"] if b.get("block_id") == "intake311_incident"]
    assert "<https://cdn.example.org/p/2.jpg|photo>" in incident["text"]["text"]


async def test_a_lone_report_has_no_incident_block(slack: FakeSlack, sink: SlackSink) -> None:
    await sink.deliver(make_request(incident_id="K7M4-QPXA"), department="public-works", delivery_id="d1")
    assert slack.calls[0].body["blocks"] == EXPECTED_BLOCKS


async def test_triage_reason_is_shown(slack: FakeSlack, sink: SlackSink) -> None:
    request = make_request(triage=True, confidence=0.3, triage_reason="no address <given>")
    await sink.deliver(request, department="triage", delivery_id="d1")
    context = slack.calls[0].body["blocks"][3]["elements"][0]["text"]
    assert context.endswith(":warning: no address &lt;given&gt;")


# -- the resident's answers to the service's questions ---------------------------------------

TAXONOMY = load_taxonomy()  # missed-pickup asks `stream` (required), pothole `bike-lane` (optional)
BULK = Taxonomy.model_validate(
    {
        "services": [
            {
                "code": "bulk-pickup",
                "name": "Bulk pickup",
                "department": "sanitation",
                "attributes": [
                    {
                        "code": "notes",
                        "datatype": "text",
                        "order": 3,
                        "description": "Anything <else> & more?",
                    },
                    {
                        "code": "items",
                        "datatype": "multivaluelist",
                        "order": 1,
                        "description": "What was left?",
                        "values": [{"key": "couch", "name": "Couch"}, {"key": "tv", "name": "TV <set>"}],
                    },
                    {
                        "code": "gate",
                        "datatype": "singlevaluelist",
                        "order": 2,
                        "required": True,
                        "description": "Which gate?",
                        "values": [{"key": "north", "name": "North"}],
                    },
                ],
            },
            {"code": "other", "name": "Other", "department": "triage"},
        ]
    }
)


def answers_of(blocks: list[dict[str, Any]]) -> str | None:
    found = [b["text"]["text"] for b in blocks if b.get("block_id") == ANSWERS_BLOCK_ID]
    assert len(found) <= 1
    return found[0] if found else None


def missed_pickup(**changes: Any) -> ServiceRequest:
    return make_request(
        service_code="missed-pickup", service_name="Missed trash or recycling pickup", **changes
    )


def test_answers_are_labelled_in_the_services_order_and_escaped() -> None:
    hostile = f"<!channel> & <https://evil.example|click here> call {PHONE}"
    request = make_request(
        service_code="bulk-pickup",
        service_name="Bulk pickup",
        attributes={"notes": hostile, "items": ("tv", "couch")},
    )
    blocks, _ = build_blocks(request, department="sanitation", taxonomy=BULK)
    assert answers_of(blocks) == (
        "*What was left?* TV &lt;set&gt;, Couch\n"
        "*Which gate?* _not answered yet_\n"
        "*Anything &lt;else&gt; &amp; more?* &lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt;"
        " call [contact removed]"
    )
    raw = json.dumps(blocks)
    assert "<!channel>" not in raw and "<https://evil" not in raw and "555 0142" not in raw
    # After the facts, before the context line and the buttons.
    kinds = [b.get("block_id") or b["type"] for b in blocks]
    assert kinds.index(ANSWERS_BLOCK_ID) == kinds.index("section", 2) + 1
    assert kinds.index(ANSWERS_BLOCK_ID) < kinds.index("context")


def test_without_answers_to_show_there_is_no_answers_block() -> None:
    # The pothole's bike-lane question is optional: unanswered, it is left out.
    blocks, _ = build_blocks(make_request(), department="public-works", taxonomy=TAXONOMY)
    assert blocks == EXPECTED_BLOCKS
    blocks, _ = build_blocks(
        make_request(attributes={"bike-lane": "yes"}), department="public-works", taxonomy=TAXONOMY
    )
    assert answers_of(blocks) == "*Is it in a bike lane?* Yes"


def test_a_required_question_still_open_says_so() -> None:
    blocks, _ = build_blocks(missed_pickup(), department="public-works", taxonomy=TAXONOMY)
    assert answers_of(blocks) == "*Which collection was missed?* _not answered yet_"


async def test_a_spanish_request_shows_the_departments_labels(slack: FakeSlack, tmp_path: Path) -> None:
    sink = config(slack.base_url).build(SinkContext(data_dir=tmp_path, taxonomy=TAXONOMY))
    request = missed_pickup(
        language="es", description="No recogieron el reciclaje", attributes={"stream": "recycling"}
    )
    await sink.deliver(request, department="public-works", delivery_id="d1")
    blocks = slack.calls[0].body["blocks"]
    # In the taxonomy's language, as the service name is: not "¿Qué recolección no pasó? Reciclaje".
    assert answers_of(blocks) == "*Which collection was missed?* Recycling"
    assert "Reciclaje" not in slack.calls[0].raw.decode("utf-8")

    # A status change keeps the answers on the message.
    [ref] = await sink.messages.get("K7M4-QPXA")
    await sink.update_message("K7M4-QPXA", ref.channel, ref.ts, "in_progress", "U024BE7LH")
    assert answers_of(slack.calls[-1].body["blocks"]) == "*Which collection was missed?* Recycling"
    await sink.close()


def test_long_answers_stay_within_slacks_limits() -> None:
    many = Taxonomy.model_validate(
        {
            "services": [
                {
                    "code": "survey",
                    "name": "Survey",
                    "department": "parks",
                    "attributes": [
                        {
                            "code": f"q{n:02d}",
                            "datatype": "text",
                            "order": n,
                            "description": "Why & how? " * 40,
                        }
                        for n in range(20)
                    ],
                },
                {"code": "other", "name": "Other", "department": "triage"},
            ]
        }
    )
    answers = {f"q{n:02d}": "&" * 2000 for n in range(20)}
    request = make_request(service_code="survey", service_name="Survey", attributes=answers)
    blocks, _ = build_blocks(request, department="parks", taxonomy=many)
    text = answers_of(blocks)
    assert text is not None and len(text) <= 3000
    lines = text.split("\n")
    shown, last = lines[:-1], lines[-1]
    assert last == f"_and {20 - len(shown)} more answers_" and shown
    for line in shown:
        label, _, answer = line.partition("* ")
        assert len(label.replace("&amp;", "&")) <= 151 and label.endswith("…")
        assert answer.count("&amp;") <= 299 and answer.endswith("…")
    assert len(blocks) <= 50


async def test_a_later_reports_reply_shows_its_answers_but_asks_nothing(
    slack: FakeSlack, tmp_path: Path
) -> None:
    blocks, _ = build_reply_blocks(later_report(attributes={"bike-lane": "yes"}), taxonomy=TAXONOMY)
    assert answers_of(blocks) == "*Is it in a bike lane?* Yes"
    assert [b["type"] for b in blocks] == ["section", "section", "context"]
    # A later report is not asked: an open required question is not shown under it.
    unasked = later_report(service_code="missed-pickup", service_name="Missed trash or recycling pickup")
    blocks, _ = build_reply_blocks(unasked, taxonomy=TAXONOMY)
    assert answers_of(blocks) is None

    sink = config(slack.base_url).build(SinkContext(data_dir=tmp_path, taxonomy=TAXONOMY))
    await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    await sink.deliver(
        later_report(attributes={"bike-lane": "no"}), department="public-works", delivery_id="l1"
    )
    assert answers_of(slack.calls[-1].body["blocks"]) == "*Is it in a bike lane?* No"
    await sink.close()
