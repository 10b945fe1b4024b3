"""The PostgreSQL case store against a real server (127.0.0.1:5432, user postgres, trust auth).

Each module gets a throwaway database (dropped afterwards); tests that need a database of their
own (migrations) make one more. Without a reachable server the module is skipped, saying why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from schemas.contact import Media, RawContact, ReplyVia, Sender, SenderKind
from schemas.request import ServiceRequest, Status
from schemas.taxonomy import Service, Taxonomy
from sinks.base import Delivery, DeliveryError, SinkContext, parse_sink_config
from sinks.postgres import (
    ADVISORY_LOCK_KEY,
    OPEN311_FIELDS,
    CaseStore,
    Migration,
    MigrationError,
    PostgresSink,
    State,
    load_migrations,
    migrate,
)
from tests.support import throwaway_database

pytestmark = pytest.mark.integration

PHONE = "+12035550142"
T0 = datetime(2026, 3, 1, tzinfo=UTC)

TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works", sla_hours=72),
        Service(code="graffiti", name="Graffiti", department="public-works"),  # no service level
        Service(code="streetlight", name="Street light out", department="transportation", sla_hours=120),
        Service(code="other", name="Something else", department="triage"),
    )
)


@pytest.fixture
def fresh_db(postgres: None) -> Iterator[str]:
    """A database of its own for one test (migration tests)."""
    with throwaway_database() as dsn:
        yield dsn


def make_request(request_id: str = "K7M4-QPXA", event_id: str = "e1", **changes: Any) -> ServiceRequest:
    requested = changes.pop("requested_datetime", T0)
    values: dict[str, Any] = {
        "request_id": request_id,
        "event_id": event_id,
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Deep pothole",
        "lat": 41.3,
        "long": -72.9,
        "address_string": "12 Elm Street",
        "media_url": "https://cdn.example.org/1.jpg",
        "media": (Media(url="https://cdn.example.org/1.jpg", content_type="image/jpeg"),),
        "requested_datetime": requested,
        "updated_datetime": requested,
        "expected_datetime": requested + timedelta(hours=72),
        "agency_responsible": "public-works",
        "channel": "sms",
        "reporter": Sender(kind=SenderKind.PHONE, address=PHONE, name="Dana Resident"),
        "reply": ReplyVia(channel="sms", address=PHONE),
        "confidence": 0.9,
        "source_contact_ids": ("sms:SM1",),
    }
    values.update(changes)
    return ServiceRequest(**values)


async def _scalar(store: CaseStore, sql: str, *params: Any) -> Any:
    async with store.pool.connection() as conn:
        cur = await conn.execute(sql.encode(), params or None)
        row = await cur.fetchone()
    return row[0] if row else None


# -- migrations ----------------------------------------------------------------------------


async def test_migrations_apply_once_and_a_rerun_does_nothing(fresh_db: str) -> None:
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        assert await migrate(conn) == [m.version for m in load_migrations()]
        assert await migrate(conn) == []
        cur = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        assert await cur.fetchall() == [
            (1, "case_store"),
            (2, "districts_incidents"),
            (3, "priority"),
            (4, "console"),
            (5, "request_feed"),
            (6, "attributes"),
            (7, "external_refs"),
            (8, "console_sessions"),
        ]
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
        tables = [r[0] for r in await cur.fetchall()]
    assert tables == [
        "console_ended_sessions",
        "external_refs_waiting",
        "request_events",
        "requests",
        "schema_migrations",
        "status_history",
    ]


async def test_concurrent_starts_apply_each_migration_once(fresh_db: str) -> None:
    async def start() -> list[int]:
        async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
            return await migrate(conn)

    results = await asyncio.gather(*(start() for _ in range(8)))
    assert sorted(v for r in results for v in r) == [m.version for m in load_migrations()]
    # Whole stores starting together (what several sink processes do) also just work.
    stores = [CaseStore(fresh_db, max_size=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await stores[0].get("NONE-0000") is None
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_an_edited_or_unknown_migration_is_refused(fresh_db: str) -> None:
    first, *later = load_migrations()
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        await migrate(conn)
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [Migration(1, first.name, first.sql + "\n-- edited\n"), *later])
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (99, 'x', 'y')")
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(conn)
        # The advisory lock was released despite the errors: another session can take it.
        async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as other:
            cur = await other.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            assert (await cur.fetchone()) == (True,)


async def test_a_failing_migration_leaves_no_trace(fresh_db: str) -> None:
    good = load_migrations()
    broken = Migration(len(good) + 1, "broken", "CREATE TABLE ok_part (x int); SELECT nonsense FROM nowhere;")
    bad = [*good, broken]
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            await migrate(conn, bad)
        cur = await conn.execute("SELECT max(version) FROM schema_migrations")
        assert (await cur.fetchone()) == (len(good),)
        cur = await conn.execute("SELECT to_regclass('ok_part')")
        assert (await cur.fetchone()) == (None,)


# -- upserts ---------------------------------------------------------------------------------


async def test_the_same_event_twice_changes_nothing(store: CaseStore) -> None:
    assert await store.upsert_requests([make_request()], "public-works") == 1
    assert await store.upsert_requests([make_request()], "public-works") == 0
    assert await store.upsert_requests([make_request(), make_request()], "public-works") == 0
    assert await _scalar(store, "SELECT count(*) FROM request_events") == 1
    [event] = await store.history("K7M4-QPXA")
    assert (event.event_id, event.status, event.state, event.at, event.source) == (
        "e1",
        "open",
        "new",
        T0,
        "pipeline:public-works",
    )


async def test_an_older_event_never_overwrites_a_newer_one(store: CaseStore) -> None:
    newer = make_request(
        event_id="e2", updated_datetime=T0 + timedelta(hours=2), description="Now a sinkhole"
    )
    older = make_request(event_id="e0", updated_datetime=T0 + timedelta(hours=1), description="stale")
    assert await store.upsert_requests([make_request()], "public-works") == 1
    assert await store.upsert_requests([newer], "public-works") == 1
    assert await store.upsert_requests([make_request()], "public-works") == 0  # replay of the first
    assert await store.upsert_requests([older], "public-works") == 0  # late, never seen before
    found = await store.get("K7M4-QPXA")
    assert found is not None
    assert found["description"] == "Now a sinkhole"
    assert found["updated_datetime"] == T0 + timedelta(hours=2)
    case = await store.get_case("K7M4-QPXA")
    assert case is not None and case.event_id == "e2"
    # The late event is logged once, as history, but did not win.
    assert await _scalar(store, "SELECT count(*) FROM request_events WHERE request_id = 'K7M4-QPXA'") == 3


async def test_any_arrival_order_ends_in_the_same_row(store: CaseStore) -> None:
    events = [
        make_request(
            request_id=rid,
            event_id=f"{rid}-{n}",
            updated_datetime=T0 + timedelta(hours=n),
            description=f"version {n}",
        )
        for rid in ("AAAA-1111", "BBBB-2222")
        for n in (1, 2, 3)
    ]
    await store.upsert_requests(events[:3], "public-works")  # in order, one batch
    for event in reversed(events[3:]):  # newest first, one by one
        await store.upsert_requests([event], "public-works")
    a, b = await store.get("AAAA-1111"), await store.get("BBBB-2222")
    assert a is not None and b is not None
    assert a["description"] == b["description"] == "version 3"
    assert a["updated_datetime"] == b["updated_datetime"] == T0 + timedelta(hours=3)


async def test_departments_accumulate_and_personal_data_is_kept(store: CaseStore) -> None:
    await store.upsert_requests([make_request()], "public-works")
    await store.upsert_requests([make_request()], "parks")  # the same event routed to two departments
    await store.upsert_requests([make_request()], "parks")
    case = await store.get_case("K7M4-QPXA")
    assert case is not None
    assert case.departments == ("public-works", "parks")
    assert case.agency_responsible == "public-works"
    assert case.reporter == {"kind": "phone", "address": PHONE, "name": "Dana Resident"}
    assert case.reply == {"channel": "sms", "address": PHONE, "thread": None, "language": "en"}
    assert (case.state, case.status, case.closed_datetime) == (State.NEW, Status.OPEN, None)


async def test_nul_characters_are_dropped_not_fatal(store: CaseStore) -> None:
    await store.upsert_requests([make_request(description="pot\x00hole", address_string="12\x00 Elm")], "pw")
    found = await store.get("K7M4-QPXA")
    assert found is not None and (found["description"], found["address"]) == ("pothole", "12 Elm")


async def test_a_stale_copy_does_not_reopen_a_closed_request(store: CaseStore) -> None:
    await store.upsert_requests([make_request()], "public-works")
    assert await store.record_status("K7M4-QPXA", "closed", "Filled", T0 + timedelta(hours=5), "slack:U1")
    # A follow-up event written before the close (stale) arrives afterwards.
    late = make_request(event_id="e2", updated_datetime=T0 + timedelta(hours=4), description="bigger")
    assert await store.upsert_requests([late], "public-works") == 1
    found = await store.get("K7M4-QPXA")
    assert found is not None
    assert (found["status"], found["status_notes"], found["description"]) == ("closed", "Filled", "bigger")
    # A newer request event whose status differs (a follow-up reopening it) does change it.
    reopening = make_request(
        event_id="e3",
        updated_datetime=T0 + timedelta(hours=6),
        status=Status.OPEN,
        status_notes="Reopened by resident follow-up",
    )
    await store.upsert_requests([reopening], "public-works")
    case = await store.get_case("K7M4-QPXA")
    assert case is not None
    assert (case.status, case.state, case.closed_datetime) == (Status.OPEN, State.NEW, None)
    assert case.status_notes == "Reopened by resident follow-up"


# -- status ----------------------------------------------------------------------------------


async def test_status_changes_and_their_history(store: CaseStore) -> None:
    await store.upsert_requests([make_request()], "public-works")
    t = T0 + timedelta(hours=1)
    assert await store.record_status("K7M4-QPXA", State.ACKNOWLEDGED, None, t, "slack:U1", "s1")
    assert not await store.record_status("K7M4-QPXA", State.ACKNOWLEDGED, None, t, "slack:U1", "s1")  # dup
    assert await store.record_status(
        "K7M4-QPXA", "in_progress", "Crew on the way", t + timedelta(hours=1), "slack:U2", "s2"
    )
    # Older than the current status: kept in the history, does not rewind the request.
    assert not await store.record_status(
        "K7M4-QPXA", "acknowledged", None, t + timedelta(minutes=30), "email", "s-late"
    )
    case = await store.get_case("K7M4-QPXA")
    assert case is not None and (case.state, case.status) == (State.IN_PROGRESS, Status.OPEN)
    assert case.status_notes == "Crew on the way"

    closed_at = t + timedelta(hours=3)
    assert await store.record_status("K7M4-QPXA", Status.CLOSED, "Filled", closed_at, "slack:U2")
    case = await store.get_case("K7M4-QPXA")
    assert case is not None
    assert (case.state, case.status, case.closed_datetime, case.updated_datetime) == (
        State.CLOSED,
        Status.CLOSED,
        closed_at,
        closed_at,
    )
    # Without an event id, the same change derives the same id: a retried call is a duplicate.
    assert not await store.record_status("K7M4-QPXA", Status.CLOSED, "Filled", closed_at, "slack:U2")

    history = await store.history("K7M4-QPXA")
    assert [(h.state, h.source) for h in history] == [
        ("new", "pipeline:public-works"),
        ("acknowledged", "slack:U1"),
        ("acknowledged", "email"),
        ("in_progress", "slack:U2"),
        ("closed", "slack:U2"),
    ]
    assert [h.status for h in history] == ["open", "open", "open", "open", "closed"]

    assert await store.record_status("K7M4-QPXA", "open", "Not fixed", closed_at + timedelta(days=1), "api")
    case = await store.get_case("K7M4-QPXA")
    assert case is not None
    assert (case.state, case.status, case.closed_datetime) == (State.NEW, Status.OPEN, None)


async def test_status_for_unknown_requests_and_states(store: CaseStore) -> None:
    with pytest.raises(LookupError):
        await store.record_status("NONE-0000", "closed", at=T0, source="x")
    await store.upsert_requests([make_request()], "public-works")
    with pytest.raises(ValueError, match="unknown status"):
        await store.record_status("K7M4-QPXA", "done", at=T0, source="x")
    with pytest.raises(ValueError, match="timezone"):
        await store.record_status("K7M4-QPXA", "closed", at=datetime(2026, 3, 1), source="x")


# -- Open311 lookups -------------------------------------------------------------------------


async def test_get_returns_exactly_the_open311_fields_and_no_personal_data(store: CaseStore) -> None:
    from channels.web.lookup import REQUEST_FIELDS

    assert OPEN311_FIELDS == REQUEST_FIELDS
    await store.upsert_requests([make_request()], "public-works")
    found = await store.get("K7M4-QPXA")
    assert found is not None
    # The spec's fields, plus the extended attributes under their own key (shown for extensions=true).
    assert found.pop("extended_attributes") == {
        "districts": {},
        "incident_id": "K7M4-QPXA",
        "incident_reports": 1,
        "location_precision": None,
        "priority": "normal",
        "priority_reason": None,
        "emergency": None,
    }
    assert found == {
        "service_request_id": "K7M4-QPXA",
        "status": "open",
        "status_notes": None,
        "service_name": "Pothole",
        "service_code": "pothole",
        "description": "Deep pothole",
        "agency_responsible": "public-works",
        "service_notice": "Overdue: expected by 2026-03-04 00:00 UTC.",  # open, past its expected time
        "requested_datetime": T0,
        "updated_datetime": T0,
        "expected_datetime": T0 + timedelta(hours=72),
        "address": "12 Elm Street",
        "address_id": None,
        "zipcode": None,
        "lat": 41.3,
        "long": -72.9,
        "media_url": "https://cdn.example.org/1.jpg",
    }
    assert list(found) == list(REQUEST_FIELDS)
    assert PHONE not in repr(found) and "Dana" not in repr(found)
    assert await store.get("NONE-0000") is None


async def test_search_filters(store: CaseStore) -> None:
    rows = [
        make_request("AAAA-0001", "a", requested_datetime=T0),
        make_request(
            "AAAA-0002",
            "b",
            requested_datetime=T0 + timedelta(days=1),
            service_code="graffiti",
            service_name="Graffiti",
        ),
        make_request("AAAA-0003", "c", requested_datetime=T0 + timedelta(days=2)),
        make_request("AAAA-0004", "d", requested_datetime=T0 + timedelta(days=3)),
    ]
    await store.upsert_requests(rows, "public-works")
    await store.record_status("AAAA-0003", "closed", at=T0 + timedelta(days=4), source="t")

    async def ids(**query: Any) -> list[str]:
        base: dict[str, Any] = {
            "service_request_ids": [],
            "service_code": [],
            "status": [],
            "start_date": None,
            "end_date": None,
            "limit": 100,
        }
        return [r["service_request_id"] for r in await store.search(**{**base, **query})]

    assert await ids() == ["AAAA-0004", "AAAA-0003", "AAAA-0002", "AAAA-0001"]  # newest first
    by_id = await ids(service_request_ids=["AAAA-0001", "AAAA-0003", "NONE-0000"])
    assert by_id == ["AAAA-0003", "AAAA-0001"]
    assert await ids(service_code=["graffiti"]) == ["AAAA-0002"]
    assert await ids(service_code=["pothole"], status=["open"]) == ["AAAA-0004", "AAAA-0001"]
    assert await ids(status=["closed"]) == ["AAAA-0003"]
    # Dates bound requested_datetime inclusively.
    assert await ids(start_date=T0 + timedelta(days=1), end_date=T0 + timedelta(days=2)) == [
        "AAAA-0003",
        "AAAA-0002",
    ]
    assert await ids(limit=2) == ["AAAA-0004", "AAAA-0003"]
    assert await ids(service_code=["nothing"]) == []


async def test_the_open311_endpoints_read_the_case_store(store: CaseStore) -> None:
    from channels.web import create_app
    from intake311.settings import Settings

    class NoPublisher:
        async def publish(self, contact: RawContact) -> None:  # pragma: no cover - GET only
            raise AssertionError("GET requests must not publish")

    now = datetime.now(UTC).replace(microsecond=0)
    await store.upsert_requests([make_request(requested_datetime=now - timedelta(hours=3))], "public-works")
    await store.record_status("K7M4-QPXA", "closed", "Filled", now - timedelta(hours=1), "slack:U1")
    app = create_app(Settings(), NoPublisher(), TAXONOMY, lookup=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        one = await client.get("/open311/v2/requests/k7m4qpxa.json")
        listed = await client.get("/open311/v2/requests.json", params={"status": "closed"})
        xml = await client.get("/open311/v2/requests/K7M4-QPXA.xml")
    assert one.status_code == 200, one.text
    [body] = one.json()
    assert (body["service_request_id"], body["status"], body["status_notes"]) == (
        "K7M4-QPXA",
        "closed",
        "Filled",
    )
    assert body["agency_responsible"] == "public-works"
    assert [r["service_request_id"] for r in listed.json()] == ["K7M4-QPXA"]
    assert "<status>closed</status>" in xml.text
    for response in (one, listed, xml):
        assert PHONE not in response.text and "Dana" not in response.text


# -- the report ------------------------------------------------------------------------------


async def test_report_figures_on_a_known_data_set(store: CaseStore) -> None:
    h = timedelta(hours=1)
    d = timedelta(days=1)

    def req(rid: str, code: str, channel: str, requested: datetime, due: datetime | None) -> ServiceRequest:
        service = TAXONOMY.get(code)
        assert service is not None
        return make_request(
            rid,
            f"ev-{rid}",
            service_code=code,
            service_name=service.name,
            channel=channel,
            requested_datetime=requested,
            expected_datetime=due,
            agency_responsible=service.department,
        )

    requests = [
        # public-works, reported in the window
        req("PWPW-0001", "pothole", "web", T0, T0 + 3 * d),  # closed after 24 h: within 72
        req("PWPW-0002", "pothole", "sms", T0, T0 + 3 * d),  # closed after 96 h: late
        req("PWPW-0003", "pothole", "web", T0 + d, T0 + 4 * d),  # closed after 36 h: within
        req("PWPW-0004", "graffiti", "email", T0 + d, None),  # closed after 10 h: no SLA
        req("PWPW-0005", "pothole", "web", T0 + 2 * d, T0 + 5 * d),  # open, overdue at T0+8d
        # transportation
        req("TRTR-0001", "streetlight", "sms", T0, T0 + 5 * d),  # closed after 144 h: late
        req("TRTR-0002", "streetlight", "web", T0 + 3 * d, T0 + 8 * d),  # closed after 24 h: within
        req("TRTR-0003", "streetlight", "web", T0 + 3 * d, T0 + 8 * d + 12 * h),  # open, not yet due
        # reported before the window
        req("TRTR-0004", "streetlight", "sms", T0 - 9 * d, T0 - 4 * d),  # open, overdue
        req("TRTR-0005", "streetlight", "web", T0 - 4 * d, T0 + d),  # closed in window after 120 h: within
        # reported and closed after the window
        req("PWPW-0009", "pothole", "web", T0 + 8 * d, T0 + 11 * d),
    ]
    await store.upsert_requests(requests, None)
    closes = {
        "PWPW-0001": T0 + 24 * h,
        "PWPW-0002": T0 + 96 * h,
        "PWPW-0003": T0 + d + 36 * h,
        "PWPW-0004": T0 + d + 10 * h,
        "TRTR-0001": T0 + 144 * h,
        "TRTR-0002": T0 + 3 * d + 24 * h,
        "TRTR-0005": T0 - 4 * d + 120 * h,
        "PWPW-0009": T0 + 9 * d,
    }
    for rid, at in closes.items():
        assert await store.record_status(rid, "closed", None, at, "test")

    report = await store.report(T0, T0 + 7 * d, now=T0 + 8 * d)

    assert report.received == 8
    assert report.by_channel == {"web": 5, "sms": 2, "email": 1}
    assert report.by_service == {"pothole": 4, "streetlight": 3, "graffiti": 1}
    pw, tr = report.departments["public-works"], report.departments["transportation"]
    assert (pw.received, pw.closed, pw.median_hours_to_close) == (5, 4, 30.0)  # median of 10, 24, 36, 96
    assert (pw.closed_with_sla, pw.closed_within_sla, pw.share_within_sla) == (3, 2, pytest.approx(2 / 3))
    assert (tr.received, tr.closed, tr.median_hours_to_close) == (3, 3, 120.0)  # median of 24, 120, 144
    assert (tr.closed_with_sla, tr.closed_within_sla, tr.share_within_sla) == (3, 2, pytest.approx(2 / 3))
    assert (pw.open_overdue, tr.open_overdue, report.open_overdue) == (1, 1, 2)
    assert set(report.departments) == {"public-works", "transportation"}

    data = report.as_dict()
    assert data["since"] == "2026-03-01T00:00:00+00:00"
    assert data["departments"]["public-works"]["share_within_sla"] == pytest.approx(2 / 3)

    empty = await store.report(T0 + 100 * d, T0 + 101 * d, now=T0 - 10 * d)
    assert (empty.received, empty.by_channel, empty.departments, empty.open_overdue) == (0, {}, {}, 0)


# -- the sink --------------------------------------------------------------------------------


async def test_postgres_sink_delivers_batches_and_shares_one_pool(
    store: CaseStore, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASE_STORE_DSN", dsn)
    config = parse_sink_config(
        {"name": "cases", "type": "postgres", "dsn_env": "CASE_STORE_DSN", "pool_size": 2}
    )
    assert dsn not in repr(config)
    ctx = SinkContext(data_dir=Path("."))
    first, second = config.build(ctx), config.build(ctx)
    assert isinstance(first, PostgresSink) and isinstance(second, PostgresSink)
    await first.start()
    await second.start()
    try:
        assert first.store is second.store  # one pool per DSN in a process
        batch = [
            Delivery(make_request(f"BTCH-000{n}", f"b{n}"), "public-works", f"d{n}") for n in range(1, 6)
        ]
        await first.deliver_many(batch)
        await first.deliver_many(batch)  # a replayed batch
        await second.deliver(make_request("BTCH-0001", "b1"), department="parks", delivery_id="x")
    finally:
        await first.close()
        await first.close()
        assert second.store.pool.closed is False  # still used by the second sink
        await second.close()
    assert await _scalar(store, "SELECT count(*) FROM requests WHERE request_id LIKE 'BTCH-%'") == 5
    case = await store.get_case("BTCH-0001")
    assert case is not None and case.departments == ("public-works", "parks")


async def test_postgres_sink_unreachable_database_is_retryable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = parse_sink_config(
        {
            "name": "cases",
            "type": "postgres",
            "dsn": f"postgresql://postgres@127.0.0.1:{port}/x",
            "connect_timeout_s": 2,
        }
    )
    sink = config.build(SinkContext(data_dir=Path(".")))
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(make_request(), department="public-works", delivery_id="d1")
    assert caught.value.retryable
    await sink.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of"),
        ({"dsn": "postgresql://x", "dsn_env": "X"}, "exactly one of"),
        ({"dsn_env": "INTAKE311_TEST_UNSET_VAR"}, "not set"),
        ({"dsn": "host=x port=1 bogus_option=1"}, "not valid"),
    ],
)
def test_postgres_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sink_config({"name": "cases", "type": "postgres", **data})


async def test_open311_flags_overdue_open_requests(store: CaseStore) -> None:
    now = datetime.now(UTC)
    late = make_request(
        "LATE-0001",
        "late-1",
        requested_datetime=now - timedelta(hours=100),
        updated_datetime=now - timedelta(hours=100),
        expected_datetime=now - timedelta(hours=28),
    )
    on_time = make_request(
        "ONTM-0002",
        "ontime-1",
        requested_datetime=now,
        updated_datetime=now,
        expected_datetime=now + timedelta(hours=72),
    )
    await store.upsert_requests([late, on_time], "public-works")
    flagged = await store.get("LATE-0001")
    assert flagged is not None and flagged["service_notice"].startswith("Overdue: expected by ")
    fine = await store.get("ONTM-0002")
    assert fine is not None and not (fine["service_notice"] or "").startswith("Overdue")
    await store.record_status("LATE-0001", "closed", at=now, source="test")
    closed = await store.get("LATE-0001")
    assert closed is not None and not (closed["service_notice"] or "").startswith("Overdue")


# -- districts and incidents -----------------------------------------------------------------


async def test_districts_and_incident_columns_follow_the_newest_event(store: CaseStore) -> None:
    from schemas.request import IncidentReport, Precision

    first = make_request(
        districts={"ward": "Ward 7", "neighborhood": "Dixwell"},
        location_precision=Precision.ADDRESS,
        triage_reason=None,
        incident_id="K7M4-QPXA",
    )
    later = make_request(
        "ZZZZ-0002",
        "e-later",
        channel="web",
        districts={"ward": "Ward 7"},
        location_precision=Precision.INTERSECTION,
        triage_reason="low confidence",
        incident_id="K7M4-QPXA",
        related_incident_id="OLD0-0001",
        requested_datetime=T0 + timedelta(hours=2),
    )
    grown = first.model_copy(
        update={
            "event_id": "e2",
            "updated_datetime": T0 + timedelta(hours=2),
            "incident_reports": 2,
            "incident_updates": (
                IncidentReport(request_id="ZZZZ-0002", channel="web", reported_at=T0 + timedelta(hours=2)),
            ),
        }
    )
    assert await store.upsert_requests([first, later], "public-works") == 2
    assert await store.upsert_requests([grown], "public-works") == 1
    assert await store.upsert_requests([first], "public-works") == 0  # a late older copy changes nothing
    case = await store.get_case("K7M4-QPXA")
    assert case is not None
    assert (case.districts, case.location_precision, case.incident_id, case.incident_reports) == (
        {"ward": "Ward 7", "neighborhood": "Dixwell"},
        "address",
        "K7M4-QPXA",
        2,
    )
    assert not case.is_later_report
    other = await store.get_case("ZZZZ-0002")
    assert other is not None and other.is_later_report
    assert (other.triage_reason, other.related_incident_id, other.location_precision) == (
        "low confidence",
        "OLD0-0001",
        "intersection",
    )
    # A request without an incident id is its own incident: the column is never NULL.
    await store.upsert_requests([make_request("SOLO-0001", "e-solo")], None)
    solo = await store.get_case("SOLO-0001")
    assert solo is not None and (solo.incident_id, solo.districts) == ("SOLO-0001", {})
    found = await store.get("K7M4-QPXA")
    assert found is not None and found["extended_attributes"] == {
        "districts": {"ward": "Ward 7", "neighborhood": "Dixwell"},
        "incident_id": "K7M4-QPXA",
        "incident_reports": 2,
        "location_precision": "address",
        "priority": "normal",
        "priority_reason": None,
        "emergency": None,
    }
    searched = await store.search(service_request_ids=["ZZZZ-0002"])
    assert searched[0]["extended_attributes"]["incident_id"] == "K7M4-QPXA"
    cur_count = await _scalar(store, "SELECT count(*) FROM requests WHERE incident_id = %s", "K7M4-QPXA")
    assert cur_count == 2


async def test_migration_2_upgrades_a_database_with_requests(fresh_db: str) -> None:
    first, *later = load_migrations()
    async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
        assert await migrate(conn, [first]) == [1]
        await conn.execute(
            "INSERT INTO requests (request_id, event_id, event_updated_datetime, service_code, service_name,"
            " status, state, status_changed_at, channel, requested_datetime, updated_datetime, confidence)"
            " VALUES ('OLDR-0001', 'e', now(), 'pothole', 'Pothole', 'open', 'new', now(), 'web', now(),"
            " now(), 0.5)"
        )
        assert await migrate(conn) == [m.version for m in later]
        cur = await conn.execute("SELECT incident_id, incident_reports, districts FROM requests")
        assert await cur.fetchall() == [("OLDR-0001", 1, {})]
        cur = await conn.execute("SELECT indexname FROM pg_indexes WHERE indexname = 'requests_incident'")
        assert await cur.fetchone() == ("requests_incident",)


async def test_the_open311_endpoints_show_extended_attributes(store: CaseStore) -> None:
    import xml.etree.ElementTree as ET

    from channels.web import create_app
    from intake311.settings import Settings

    class NoPublisher:
        async def publish(self, contact: RawContact) -> None:  # pragma: no cover - GET only
            raise AssertionError("GET requests must not publish")

    now = datetime.now(UTC).replace(microsecond=0)
    request = make_request(
        requested_datetime=now - timedelta(hours=3),
        districts={"ward": "Ward 7", "Police District": "District 2"},
        incident_id="K7M4-QPXA",
        incident_reports=3,
    )
    await store.upsert_requests([request], "public-works")
    app = create_app(Settings(), NoPublisher(), TAXONOMY, lookup=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        plain = await client.get("/open311/v2/requests/K7M4-QPXA.json")
        one = await client.get("/open311/v2/requests/K7M4-QPXA.json", params={"extensions": "true"})
        listed = await client.get("/open311/v2/requests.json", params={"extensions": "true"})
        xml = await client.get("/open311/v2/requests/K7M4-QPXA.xml", params={"extensions": "true"})
    assert "extended_attributes" not in plain.json()[0]
    expected = {
        "districts": {"ward": "Ward 7", "Police District": "District 2"},
        "incident_id": "K7M4-QPXA",
        "incident_reports": 3,
        "location_precision": None,
        "priority": "normal",
        "priority_reason": None,
        "emergency": None,
    }
    assert one.json()[0]["extended_attributes"] == expected
    assert listed.json()[0]["extended_attributes"] == expected
    ext = ET.fromstring(xml.content).find("request/extended_attributes")
    assert ext is not None
    assert ext.findtext("districts/ward") == "Ward 7"
    assert ext.findtext("districts/police_district") == "District 2"
    assert (ext.findtext("incident_id"), ext.findtext("incident_reports")) == ("K7M4-QPXA", "3")


async def test_report_by_district(store: CaseStore) -> None:
    from intake311.ops import format_report
    from sinks.postgres import NO_DISTRICT

    h = timedelta(hours=1)

    def req(rid: str, code: str, districts: dict[str, str], due: datetime | None) -> ServiceRequest:
        service = TAXONOMY.get(code)
        assert service is not None
        return make_request(
            rid,
            f"ev-{rid}",
            service_code=code,
            service_name=service.name,
            districts=districts,
            expected_datetime=due,
            agency_responsible=service.department,
        )

    requests = [
        req("WARD-0071", "pothole", {"ward": "Ward 7"}, T0 + 72 * h),  # closed after 24 h: within
        req("WARD-0072", "pothole", {"ward": "Ward 7", "neighborhood": "Dixwell"}, T0 + 72 * h),  # 96 h: late
        req("WARD-0081", "streetlight", {"ward": "Ward 8"}, T0 + 120 * h),  # open, overdue
        req("NONE-0001", "graffiti", {}, None),  # closed after 10 h, no service level
        req("NONE-0002", "pothole", {"neighborhood": "Dixwell"}, T0 + 72 * h),  # no ward, open, not due
    ]
    await store.upsert_requests(requests, None)
    for rid, hours in (("WARD-0071", 24), ("WARD-0072", 96), ("NONE-0001", 10)):
        assert await store.record_status(rid, "closed", None, T0 + hours * h, "test")

    report = await store.report(T0, T0 + 7 * 24 * h, now=T0 + 6 * 24 * h, by="ward")

    assert report.by == "ward"
    assert list(report.districts) == [NO_DISTRICT, "Ward 7", "Ward 8"]
    w7, w8, none = report.districts["Ward 7"], report.districts["Ward 8"], report.districts[NO_DISTRICT]
    assert (w7.received, w7.closed, w7.median_hours_to_close, w7.share_within_sla) == (2, 2, 60.0, 0.5)
    assert (w8.received, w8.closed, w8.median_hours_to_close, w8.open_overdue) == (1, 0, None, 1)
    assert (none.received, none.closed, none.closed_with_sla, none.share_within_sla) == (2, 1, 0, None)
    assert sum(d.received for d in report.districts.values()) == report.received == 5
    # The department figures are the plain report's.
    plain = await store.report(T0, T0 + 7 * 24 * h, now=T0 + 6 * 24 * h)
    assert plain.departments == report.departments and plain.districts == {}

    data = report.as_dict()
    assert data["by"] == "ward" and data["districts"]["Ward 7"]["share_within_sla"] == 0.5
    assert "by" not in plain.as_dict() and "districts" not in plain.as_dict()
    by_hood = await store.report(T0, T0 + 7 * 24 * h, by="neighborhood")
    assert {k: v.received for k, v in by_hood.districts.items()} == {NO_DISTRICT: 3, "Dixwell": 2}
    with pytest.raises(ValueError, match="district layer"):
        await store.report(T0, T0 + h, by="  ")

    text = format_report(data)
    table = text[text.index("by ward") :].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["Ward", "Ward", NO_DISTRICT]  # "(none)" last
    assert "50%" in table[1] and table[3].split()[1:3] == ["2", "1"]


def test_report_command_by_ward(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``intake311 report --by ward`` as an operator types it: text and --json from the store."""
    import json

    from typer.testing import CliRunner

    from intake311.cli import app

    async def fill() -> None:
        async with CaseStore(dsn) as store:
            async with store.pool.connection() as conn:
                await conn.execute("TRUNCATE requests CASCADE")
            now = datetime.now(UTC)
            await store.upsert_requests(
                [
                    make_request(
                        "CLIW-0001",
                        "c1",
                        requested_datetime=now - timedelta(days=1),
                        districts={"ward": "Ward 7"},
                    ),
                    make_request("CLIW-0002", "c2", requested_datetime=now - timedelta(days=2)),
                ],
                "public-works",
            )

    asyncio.run(fill())
    monkeypatch.setenv("INTAKE311_CASE_STORE_DSN", dsn)
    runner = CliRunner()
    text = runner.invoke(app, ["report", "--by", "ward"])
    assert text.exit_code == 0, text.output
    assert "by ward" in text.output and "Ward 7" in text.output and "(none)" in text.output
    as_json = runner.invoke(app, ["report", "--by", "ward", "--json"])
    assert as_json.exit_code == 0, as_json.output
    figures = json.loads(as_json.output)
    assert figures["by"] == "ward"
    assert {k: v["received"] for k, v in figures["districts"].items()} == {"(none)": 1, "Ward 7": 1}


async def test_priority_columns_sla_by_priority_and_report_by_priority(store: CaseStore, dsn: str) -> None:
    """Priority, its reason and the emergency are stored; the SLA share uses the request's
    priority (a high pothole closed in 30 h missed its 24 h, a normal one made its 72 h)."""
    from intake311.ops import format_report
    from schemas.request import Priority

    h = timedelta(hours=1)
    taxonomy = Taxonomy(
        services=(
            Service(
                code="pothole",
                name="Pothole",
                department="public-works",
                sla_by_priority={Priority.HIGH: 24, Priority.NORMAL: 72},
                sla_hours=72,
            ),
            Service(code="graffiti", name="Graffiti", department="public-works", priority=Priority.LOW),
            Service(code="other", name="Something else", department="triage"),
        ),
        priority_sla_hours={Priority.EMERGENCY: 4},
    )
    requests = [
        make_request(
            "PRIO-0001",
            "p1",
            priority=Priority.HIGH,
            priority_reason="cue: blocking the road",
            expected_datetime=T0 + 24 * h,
        ),
        make_request("PRIO-0002", "p2", priority=Priority.NORMAL, priority_reason="service default"),
        make_request(
            "PRIO-0003",
            "p3",
            priority=Priority.HIGH,
            priority_reason="3 reports of this incident",
            expected_datetime=T0 + 24 * h,
        ),  # open, overdue
        make_request(
            "PRIO-0004",
            "p4",
            service_code="graffiti",
            service_name="Graffiti",
            priority=Priority.LOW,
            expected_datetime=None,
        ),
        make_request(
            "PRIO-0005",
            "p5",
            priority=Priority.EMERGENCY,
            emergency="gas",
            priority_reason="emergency: gas",
            expected_datetime=T0 + 4 * h,
        ),
    ]
    await store.upsert_requests(requests, None)
    for rid, hours in (("PRIO-0001", 30), ("PRIO-0002", 30), ("PRIO-0004", 10), ("PRIO-0005", 3)):
        assert await store.record_status(rid, "closed", None, T0 + hours * h, "test")
    case = await store.get_case("PRIO-0005")
    assert case is not None and (case.priority, case.priority_reason, case.emergency) == (
        Priority.EMERGENCY,
        "emergency: gas",
        "gas",
    )
    found = await store.get("PRIO-0001")
    assert found is not None and found["extended_attributes"]["priority"] == "high"
    assert found["extended_attributes"]["priority_reason"] == "cue: blocking the road"

    async with CaseStore(dsn, taxonomy=taxonomy, migrate=False) as priced:
        report = await priced.report(T0, T0 + 7 * 24 * h, now=T0 + 48 * h, by="priority")
    assert report.by == "priority" and report.districts == {}
    assert list(report.priorities) == ["emergency", "high", "normal", "low"]  # most urgent first
    emergency, high, normal, low = report.priorities.values()
    assert (emergency.closed, emergency.closed_with_sla, emergency.closed_within_sla) == (1, 1, 1)
    assert (high.received, high.closed, high.closed_with_sla, high.closed_within_sla) == (2, 1, 1, 0)
    assert high.open_overdue == 1
    assert (normal.closed_with_sla, normal.closed_within_sla) == (1, 1)
    assert (low.closed, low.closed_with_sla) == (1, 0)  # graffiti has no service level
    assert sum(p.received for p in report.priorities.values()) == report.received == 5
    data = report.as_dict()
    assert "districts" not in data and data["priorities"]["high"]["share_within_sla"] == 0.0
    text = format_report(data)
    table = text[text.index("by priority") :].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["emergency", "high", "normal", "low"]


# -- where the request is in the city's own system (ExternalRef, migration 0007) --------------------

SYSTEM = "open311:public-works/city"


async def test_an_external_id_is_recorded_once_with_a_history_event_and_no_message(store: CaseStore) -> None:
    from schemas.external import ExternalRef

    assert (7, "external_refs") in [(m.version, m.name) for m in load_migrations()]
    await store.upsert_requests([make_request("EX11-EX11")], "public-works")
    before = await store.get_case("EX11-EX11")
    assert before is not None and before.external_ids == {}
    ref = ExternalRef.new("EX11-EX11", system=SYSTEM, external_id="1001", at=T0 + timedelta(minutes=1))
    assert await store.record_external(ref) is True
    assert await store.record_external(ref) is False  # a replay, or a second host's announcement
    case = await store.get_case("EX11-EX11")
    assert case is not None and case.external_ids == {SYSTEM: "1001"}
    assert (case.state, case.status) == (before.state, before.status)  # not a status change
    assert (
        case.changed_at is not None and before.changed_at is not None and case.changed_at > before.changed_at
    )
    kinds = [(e.kind, e.source, e.notes) for e in await store.events("EX11-EX11")]
    assert kinds == [("received", "pipeline:public-works", None), ("external", SYSTEM, f"{SYSTEM} #1001")]
    assert [h.event_id for h in await store.history("EX11-EX11")] == ["e1"]  # the status history is unchanged
    # Another system (a second open311 sink) adds to the map.
    other = ExternalRef.new("EX11-EX11", system="open311:public-works/county", external_id="C-7")
    assert await store.record_external(other) is True
    case = await store.get_case("EX11-EX11")
    assert case is not None and case.external_ids == {SYSTEM: "1001", "open311:public-works/county": "C-7"}


async def test_an_external_id_that_beats_its_request_waits_for_it(store: CaseStore) -> None:
    from schemas.external import ExternalRef

    async with store.pool.connection() as conn:
        await conn.execute("DELETE FROM external_refs_waiting")
    ref = ExternalRef.new("EW11-EW11", system=SYSTEM, external_id="1002", at=T0 + timedelta(minutes=1))
    assert await store.record_external(ref) is False  # no request yet: not an error, it waits
    assert await store.record_external(ref) is False
    assert await store.get_case("EW11-EW11") is None
    await store.upsert_requests([make_request("EW11-EW11", event_id="ew1")], "public-works")
    case = await store.get_case("EW11-EW11")
    assert case is not None and case.external_ids == {SYSTEM: "1002"}
    assert [e.kind for e in await store.events("EW11-EW11")] == ["received", "external"]
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM external_refs_waiting")
        assert (await cur.fetchone()) == (0,)
    # Announced again later (a replay): the request has it, nothing changes.
    assert await store.record_external(ref) is False
    # A later version of the request keeps it.
    await store.upsert_requests(
        [
            make_request(
                "EW11-EW11", event_id="ew2", description="Deeper", updated_datetime=T0 + timedelta(hours=1)
            )
        ],
        "public-works",
    )
    case = await store.get_case("EW11-EW11")
    assert case is not None and case.external_ids == {SYSTEM: "1002"} and case.description == "Deeper"


async def test_external_ids_recorded_while_their_requests_are_inserted_are_never_left_waiting(
    store: CaseStore,
) -> None:
    from schemas.external import ExternalRef

    async with store.pool.connection() as conn:
        await conn.execute("DELETE FROM external_refs_waiting")
    tickets = [f"RC{i:02d}-RC{i:02d}" for i in range(10, 40)]
    refs = [ExternalRef.new(t, system=SYSTEM, external_id=f"r{t}") for t in tickets]

    async def ids() -> None:
        for ref in refs:
            await store.record_external(ref)

    async def requests() -> None:
        for ticket in tickets:
            await store.upsert_requests([make_request(ticket, event_id=f"ev-{ticket}")], "public-works")

    await asyncio.gather(ids(), requests())
    for ticket in tickets:
        case = await store.get_case(ticket)
        assert case is not None and case.external_ids == {SYSTEM: f"r{ticket}"}, ticket
