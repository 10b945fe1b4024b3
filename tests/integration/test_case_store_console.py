"""The case store's operator-console queries against a real PostgreSQL (127.0.0.1:5432, trust).

``recent``, ``triage_queue``, ``open_points``, ``events`` (with ``message`` rows from
``record_message`` and the status flow) and ``backlog``. The module gets a throwaway database
(dropped afterwards); every test starts from empty tables. Skipped, saying why, without a server.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from intake311.stage import Record
from schemas.contact import ReplyVia, Sender, SenderKind
from schemas.outbound import MessageKind, OutboundMessage
from schemas.request import Priority, ServiceRequest, Status
from schemas.status import State, StatusChange
from schemas.taxonomy import Service, Taxonomy, load_taxonomy
from schemas.topics import Topics
from sinks.postgres import CaseStore, load_migrations
from sinks.postgres.store import EVENT_KINDS, CaseEvent
from sinks.status import apply_external_batch, apply_status_batch

pytestmark = pytest.mark.integration

PHONE = "+12035550142"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)

TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works", sla_hours=72),
        Service(code="streetlight", name="Street light out", department="transportation", sla_hours=120),
        Service(code="other", name="Something else", department="triage"),
    )
)


def make_request(request_id: str, event_id: str | None = None, **changes: Any) -> ServiceRequest:
    requested = changes.pop("requested_datetime", T0)
    values: dict[str, Any] = {
        "request_id": request_id,
        "event_id": event_id or f"ev-{request_id}",
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Deep pothole",
        "lat": 41.3,
        "long": -72.9,
        "address_string": "12 Elm Street",
        "requested_datetime": requested,
        "updated_datetime": changes.pop("updated_datetime", requested),
        "expected_datetime": requested + timedelta(hours=72),
        "agency_responsible": "public-works",
        "channel": "sms",
        "reporter": Sender(kind=SenderKind.PHONE, address=PHONE, name="Dana Resident"),
        "reply": ReplyVia(channel="sms", address=PHONE),
        "confidence": 0.9,
        "source_contact_ids": (f"sms:{request_id}",),
    }
    values.update(changes)
    return ServiceRequest(**values)


def message(request_id: str, message_id: str, text: str, at: datetime) -> OutboundMessage:
    return OutboundMessage(
        message_id=message_id,
        request_id=request_id,
        channel="sms",
        to=PHONE,
        kind=MessageKind.STATUS,
        text=text,
        created_at=at,
    )


# -- migration 0004 ------------------------------------------------------------------------


async def test_migration_4_adds_the_message_kind_and_still_refuses_others(store: CaseStore) -> None:
    assert (4, "console") in [(m.version, m.name) for m in load_migrations()]
    assert EVENT_KINDS[:4] == ("received", "updated", "status", "message")  # 0007 adds external
    await store.upsert_requests([make_request("K7M4-QPXA")], "public-works")
    async with store.pool.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(
                "INSERT INTO request_events (event_id, request_id, kind, status, at, source)"
                " VALUES ('x', 'K7M4-QPXA', 'gossip', 'open', now(), 'test')"
            )


# -- recent --------------------------------------------------------------------------------


async def test_recent_is_newest_updated_first_with_since_and_department(store: CaseStore) -> None:
    await store.upsert_requests(
        [
            make_request("AAAA-0001", updated_datetime=T0 + 1 * H),
            make_request("AAAA-0002", updated_datetime=T0 + 2 * H),
            make_request("AAAA-0003", updated_datetime=T0 + 3 * H, agency_responsible="transportation"),
        ],
        "public-works",
    )
    # Delivered to parks too, though public works is responsible.
    await store.upsert_requests([make_request("AAAA-0004", updated_datetime=T0 + 4 * H)], "parks")
    # A status change is an update: the oldest request becomes the newest.
    assert await store.record_status("AAAA-0001", State.IN_PROGRESS, "Crew out", T0 + 5 * H, "slack:U1")

    recent = await store.recent()
    assert [c.request_id for c in recent] == ["AAAA-0001", "AAAA-0004", "AAAA-0003", "AAAA-0002"]
    assert recent[0].updated_datetime == T0 + 5 * H
    assert recent[0].state is State.IN_PROGRESS and recent[0].status_notes == "Crew out"
    assert recent[0].reporter["address"] == PHONE  # the internal record, not Open311

    assert [c.request_id for c in await store.recent(limit=2)] == ["AAAA-0001", "AAAA-0004"]
    # since is strict: the request updated exactly at T0+3h is not "after" it.
    assert [c.request_id for c in await store.recent(since=T0 + 3 * H)] == ["AAAA-0001", "AAAA-0004"]
    assert await store.recent(since=T0 + 5 * H) == []
    # department: in departments (delivered there) or agency_responsible.
    assert [c.request_id for c in await store.recent(department="parks")] == ["AAAA-0004"]
    assert [c.request_id for c in await store.recent(department="transportation")] == ["AAAA-0003"]
    assert [c.request_id for c in await store.recent(department="public-works")] == [
        "AAAA-0001",
        "AAAA-0004",
        "AAAA-0003",
        "AAAA-0002",
    ]
    assert await store.recent(department="nobody") == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.recent(since=datetime(2026, 3, 1))


# -- triage queue --------------------------------------------------------------------------


async def test_triage_queue_puts_emergency_and_high_first_then_oldest(store: CaseStore) -> None:
    await store.upsert_requests(
        [
            make_request("TTTT-0001", triage=True, requested_datetime=T0, priority=Priority.LOW),
            make_request("TTTT-0002", triage=True, requested_datetime=T0 + 1 * H),
            make_request("TTTT-0003", triage=True, requested_datetime=T0 + 2 * H, priority=Priority.HIGH),
            make_request(
                "TTTT-0004",
                triage=True,
                requested_datetime=T0 + 3 * H,
                priority=Priority.EMERGENCY,
                emergency="gas",
            ),
            make_request("TTTT-0005", triage=True, requested_datetime=T0 + 4 * H, priority=Priority.HIGH),
            make_request("TTTT-0006", triage=False, requested_datetime=T0 - 1 * H),  # no person needed
            make_request("TTTT-0007", triage=True, requested_datetime=T0 - 2 * H),  # closed below
        ],
        "triage",
    )
    await store.record_status("TTTT-0007", "closed", at=T0 + 6 * H, source="slack:U1")

    queue = await store.triage_queue()
    assert [c.request_id for c in queue] == ["TTTT-0004", "TTTT-0003", "TTTT-0005", "TTTT-0001", "TTTT-0002"]
    assert queue[0].priority is Priority.EMERGENCY and queue[0].emergency == "gas"
    assert all(c.triage and c.status is Status.OPEN for c in queue)
    assert [c.request_id for c in await store.triage_queue(limit=2)] == ["TTTT-0004", "TTTT-0003"]


# -- map points ----------------------------------------------------------------------------


async def test_open_points_are_open_requests_with_coordinates(store: CaseStore) -> None:
    await store.upsert_requests(
        [
            make_request("PPPP-0001", lat=41.31, long=-72.92, requested_datetime=T0),
            make_request("PPPP-0002", lat=41.30, long=-72.93, requested_datetime=T0 + H),
            make_request("PPPP-0003", lat=None, long=None, requested_datetime=T0 + 2 * H),  # not located
            make_request("PPPP-0004", requested_datetime=T0 + 3 * H),  # closed below
            make_request(
                "PPPP-0005",
                lat=41.32,
                long=-72.91,
                requested_datetime=T0 - H,
                priority=Priority.HIGH,
                agency_responsible="transportation",
            ),
        ],
        "public-works",
    )
    await store.record_status("PPPP-0004", "closed", at=T0 + 4 * H, source="t")

    points = await store.open_points()
    # High first (a limit keeps it), then newest reported first.
    assert [(c.request_id, c.lat, c.long) for c in points] == [
        ("PPPP-0005", 41.32, -72.91),
        ("PPPP-0002", 41.30, -72.93),
        ("PPPP-0001", 41.31, -72.92),
    ]
    assert [c.request_id for c in await store.open_points(limit=1)] == ["PPPP-0005"]
    assert [c.request_id for c in await store.open_points(department="transportation")] == ["PPPP-0005"]
    assert await store.open_points(department="parks") == []


# -- whole history and messages ------------------------------------------------------------


async def test_events_hold_every_kind_oldest_first_and_messages_are_recorded_once(store: CaseStore) -> None:
    rid = "K7M4-QPXA"
    await store.upsert_requests([make_request(rid, "e1")], "public-works")
    await store.upsert_requests(
        [make_request(rid, "e2", updated_datetime=T0 + H, description="Deeper now")], "public-works"
    )
    assert await store.record_status(rid, State.ACKNOWLEDGED, "Seen", T0 + 2 * H, "slack:U1", "s1")
    queued = message(rid, "m" * 32, "We have seen your pothole report K7M4-QPXA.", T0 + 2 * H)
    assert await store.record_message(queued, source="outbound:sms")
    assert not await store.record_message(queued, source="outbound:sms")  # a replay: once

    events = await store.events(rid)
    assert events == [
        CaseEvent("received", "e1", "open", "new", None, T0, "pipeline:public-works"),
        CaseEvent("updated", "e2", "open", None, None, T0 + H, "pipeline:public-works"),
        CaseEvent("status", "s1", "open", "acknowledged", "Seen", T0 + 2 * H, "slack:U1"),
        CaseEvent(
            "message",
            "m" * 32,
            "open",
            "acknowledged",
            "We have seen your pothole report K7M4-QPXA.",
            T0 + 2 * H,
            "outbound:sms",
        ),
    ]
    # history() is still the resident-facing status history: no updates, no messages.
    assert [e.event_id for e in await store.history(rid)] == ["e1", "s1"]
    # The request itself did not change.
    case = await store.get_case(rid)
    assert case is not None
    assert (case.state, case.updated_datetime, case.status_notes) == (State.ACKNOWLEDGED, T0 + 2 * H, "Seen")
    assert await store.events("NONE-0000") == []

    with pytest.raises(LookupError):
        await store.record_message(message("NONE-0000", "n" * 32, "hi", T0), source="outbound:sms")
    no_request = OutboundMessage(
        message_id="h" * 32, channel="sms", to=PHONE, kind=MessageKind.HELP, text="x"
    )
    with pytest.raises(ValueError, match="names no service request"):
        await store.record_message(no_request, source="outbound:sms")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.backlog(since=datetime(2026, 3, 1), until=T0, days=1)


async def test_the_status_flow_records_the_messages_it_queues(store: CaseStore) -> None:
    rid = "K7M4-QPXA"
    await store.upsert_requests([make_request(rid, "e1")], "public-works")
    topics = Topics(prefix="console-test")
    changes = [
        StatusChange(event_id="s1", request_id=rid, state=State.IN_PROGRESS, at=T0 + H, source="slack:U1"),
        StatusChange(
            event_id="s2",
            request_id=rid,
            state=State.CLOSED,
            notes="Filled",
            at=T0 + 2 * H,
            source="slack:U2",
        ),
    ]
    records = [
        Record(c.model_dump_json().encode(), topic=topics.status, offset=i) for i, c in enumerate(changes)
    ]
    out = await apply_status_batch(records, store, topics)
    assert [o.topic for o in out] == [topics.outbound("sms")] * 2
    sent = [OutboundMessage.model_validate_json(o.value) for o in out]

    # A replay of the batch queues the current (closed) message again but records nothing twice.
    await apply_status_batch(records, store, topics)

    messages = [e for e in await store.events(rid) if e.kind == "message"]
    assert [(e.event_id, e.notes, e.at, e.source) for e in messages] == [
        (m.message_id, m.text, m.created_at, "outbound:sms") for m in sent
    ]
    assert [(e.status, e.state) for e in messages] == [("open", "in_progress"), ("closed", "closed")]
    assert "Filled" in sent[1].text
    kinds = [e.kind for e in await store.events(rid)]
    assert kinds == ["received", "status", "message", "status", "message"]


# -- backlog -------------------------------------------------------------------------------


async def test_backlog_counts_requests_open_at_the_end_of_each_day(store: CaseStore) -> None:
    mar = lambda day, hour=0: datetime(2026, 3, day, hour, tzinfo=UTC)  # noqa: E731
    await store.upsert_requests(
        [
            make_request("BBBB-0001", requested_datetime=mar(1, 2)),  # closed Mar 3 10:00
            make_request("BBBB-0002", requested_datetime=mar(2, 12), agency_responsible="transportation"),
            make_request("BBBB-0003", requested_datetime=mar(1, 23)),  # closed at midnight
            make_request("BBBB-0004", requested_datetime=datetime(2026, 2, 27, tzinfo=UTC)),  # before
            make_request("BBBB-0005", requested_datetime=mar(4, 13)),  # after until
        ],
        "public-works",
    )
    await store.record_status("BBBB-0001", "closed", at=mar(3, 10), source="t")
    await store.record_status("BBBB-0003", "closed", at=mar(2, 0), source="t")

    since, until = mar(1, 6), mar(4, 12)
    assert await store.backlog(since=since, until=until, days=30) == [
        (date(2026, 3, 1), 2),  # 0001, 0004 (0003 was closed by midnight)
        (date(2026, 3, 2), 3),  # 0001, 0002, 0004
        (date(2026, 3, 3), 2),  # 0002, 0004
        (date(2026, 3, 4), 2),  # as of until: 0005 came later
    ]
    # days caps the points, keeping the latest: what "the last N days" asks.
    assert await store.backlog(since=since, until=until, days=2) == [
        (date(2026, 3, 3), 2),
        (date(2026, 3, 4), 2),
    ]
    assert await store.backlog(since=until - timedelta(days=3), until=until, days=3) == [
        (date(2026, 3, 2), 3),
        (date(2026, 3, 3), 2),
        (date(2026, 3, 4), 2),
    ]
    assert await store.backlog(since=since, until=until, days=30, department="transportation") == [
        (date(2026, 3, 1), 0),
        (date(2026, 3, 2), 1),
        (date(2026, 3, 3), 1),
        (date(2026, 3, 4), 1),
    ]
    assert await store.backlog(since=since, until=since, days=1) == [(date(2026, 3, 1), 2)]
    with pytest.raises(ValueError, match="days"):
        await store.backlog(since=since, until=until, days=0)
    with pytest.raises(ValueError, match="before"):
        await store.backlog(since=until, until=since, days=1)


async def test_report_gives_the_console_its_service_level_figures(store: CaseStore) -> None:
    """The console reuses report(): volume, median time to close and share on time per department."""
    await store.upsert_requests(
        [make_request(f"RRRR-000{i}", requested_datetime=T0 + i * H) for i in range(1, 4)], "public-works"
    )
    await store.record_status("RRRR-0001", "closed", at=T0 + 11 * H, source="t")  # 10 h
    await store.record_status("RRRR-0002", "closed", at=T0 + 102 * H, source="t")  # 100 h > 72
    report = await store.report(T0, T0 + 7 * 24 * H, now=T0 + 200 * H)
    works = report.departments["public-works"]
    assert (works.received, works.closed, works.median_hours_to_close) == (3, 2, 55.0)
    assert works.share_within_sla == 0.5
    assert works.open_overdue == 1


# -- the city's id: recorded by the status stage, shown on the request page ------------------------

SYSTEM = "open311:public-works/city"


async def test_the_status_stage_records_external_ids_tells_nobody_and_dead_letters_junk(
    store: CaseStore,
) -> None:
    from schemas.external import ExternalRef

    topics = Topics("it")
    rid = "EXTC-0001"
    await store.upsert_requests([make_request(rid)], "public-works")
    ref = ExternalRef.new(rid, system=SYSTEM, external_id="1001", at=T0 + H)
    records = [
        Record(ref.model_dump_json().encode(), topic=topics.external_refs, offset=0),
        Record(b'{"not": "a ref"}', topic=topics.external_refs, offset=1),
    ]
    out = await apply_external_batch(records, store, topics)
    assert [o.topic for o in out] == [topics.deadletter]  # the junk; no message to the resident
    assert await apply_external_batch(records[:1], store, topics) == []  # a replay: nothing new
    case = await store.get_case(rid)
    assert case is not None and case.external_ids == {SYSTEM: "1001"}
    assert [e.kind for e in await store.events(rid)] == ["received", "external"]


async def test_the_request_page_shows_the_answers_and_where_it_is_in_the_citys_system(
    store: CaseStore,
) -> None:
    from html import unescape

    import httpx
    from fastapi import FastAPI
    from pydantic import SecretStr

    from intake311.bus import make_broker
    from intake311.settings import Settings
    from schemas.external import ExternalRef
    from sinks.console.app import PREFIX, Console, console_app

    token = "works-token-console-0123456789"
    settings = Settings(
        department_tokens={"public-works": SecretStr(token)},  # type: ignore[dict-item]
        console={"session_secret": "s" * 48},  # type: ignore[arg-type]
    )
    console = Console(
        settings=settings,
        broker=make_broker(settings.kafka, ["127.0.0.1:1"]),  # never started: the page publishes nothing
        store=store,
        taxonomy=load_taxonomy(),  # the packaged one: a pothole asks "Is it in a bike lane?"
        departments=["public-works"],
        bootstrap=[],
        configured_channels=frozenset({"sms"}),
    )
    app = FastAPI()
    app.mount(PREFIX, console_app(console))
    rid = "EXTC-0002"
    await store.upsert_requests([make_request(rid, attributes={"bike-lane": "yes"})], "public-works")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as web:
        login = await web.post(f"{PREFIX}/login", data={"name": "public-works", "password": token})
        assert login.status_code == 303, login.text
        before = await web.get(f"{PREFIX}/requests/{rid}")
        assert before.status_code == 200 and "In the city's system" not in unescape(before.text)
        await store.record_external(ExternalRef.new(rid, system=SYSTEM, external_id="1001", at=T0 + H))
        page = await web.get(f"{PREFIX}/requests/{rid}")
    assert page.status_code == 200
    text = unescape(page.text)
    assert f"In the city's system: {SYSTEM} #1001" in text
    assert "<td>in the city's system</td>" in text  # the history row
    assert "Is it in a bike lane? Yes" in text  # labelled by the taxonomy, not "bike-lane: yes"
