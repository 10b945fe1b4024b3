"""Bounded local state: the normalizer's state, the sinks' delivered ids and the web's accepted
requests are pruned by age, and only what is safe to forget goes (clock injected, no sleeping)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.web.lookup import AcceptedRequests, accepted_requests
from intake311.dedupe import SeenStore
from intake311.settings import Settings
from normalizer.app import state_retention
from normalizer.incidents import IncidentDesk
from normalizer.normalize import Normalizer
from normalizer.state import Retention, Snapshot, StateStore
from schemas import Location, RawContact
from schemas.status import State, StatusChange
from schemas.taxonomy import load_taxonomy
from tests.conftest import make_contact

DAY = 86400.0
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ELM = (41.30712, -72.92652)
NEAR = (41.30722, -72.92660)  # ~13 m from ELM
FAR = (41.31900, -72.92652)  # >1 km away
# every_s: never from run() here, so each test says when it prunes.
KEEP = Retention(keep_s=30 * DAY, horizon_s=40 * DAY, every_s=1e12, batch=100)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t

    def days(self, n: float) -> None:
        self.t = T0.timestamp() + n * DAY

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


@pytest.fixture(scope="module")
def desk() -> IncidentDesk:
    return IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()))


def contact(text: str, clock: Clock, *, pid: str, at: tuple[float, float] | None = None) -> RawContact:
    fields: dict[str, object] = {"received_at": clock.now}
    if at is not None:
        fields["location"] = Location(lat=at[0], long=at[1])
    return make_contact(text, provider_id=pid, **fields)


def handle(store: StateStore, desk: IncidentDesk, c: RawContact) -> list[str | None]:
    return store.run(lambda snap: [r.incident_id for r in desk.handle(c, snap).requests])


def close(store: StateStore, desk: IncidentDesk, request_id: str, clock: Clock) -> None:
    """A department closes ``request_id``; the closes it fans out come back on the status topic."""

    def work(snap: Snapshot) -> None:
        change = StatusChange.new(request_id, State.CLOSED, source="api:public-works", at=clock.now)
        for fanned in desk.handle_status(change, snap).status:
            desk.handle_status(fanned, snap)

    store.run(work)


StoreFactory = Callable[[Clock, Retention | None], StateStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[StateStore] = []
    if request.param == "sqlite":

        def factory(clock: Clock, retention: Retention | None) -> StateStore:
            opened.append(StateStore.sqlite(tmp_path / "state.sqlite3", retention=retention, clock=clock))
            return opened[-1]

        yield factory
    else:
        request.getfixturevalue("postgres")  # skips, saying why, without a local server
        from tests.support import throwaway_database

        with throwaway_database() as dsn:

            def pg(clock: Clock, retention: Retention | None) -> StateStore:
                opened.append(StateStore.postgres(dsn, retention=retention, clock=clock))
                return opened[-1]

            yield pg
            for s in opened:
                s.close()
            opened.clear()
    for s in opened:
        s.close()


def test_prune_removes_only_closed_state_past_its_keep_time(
    desk: IncidentDesk, make_store: StoreFactory
) -> None:
    clock = Clock()
    store = make_store(clock, KEEP)
    # Day 0: a request with no place, closed; one with no place, left open; an incident of two
    # reports, closed; an incident far away, left open.
    closed_alone = contact("the bins were not collected", clock, pid="closed-alone")
    open_alone = contact("the bins were not collected again", clock, pid="open-alone")
    first = contact("pothole", clock, pid="i1", at=ELM)
    second = contact("pothole", clock, pid="i2", at=NEAR)
    open_first = contact("pothole", clock, pid="o1", at=FAR)
    for c in (closed_alone, open_alone, first, second, open_first):
        handle(store, desk, c)
    assert store.incident(first.request_id).members == (first.request_id, second.request_id)  # type: ignore[union-attr]
    close(store, desk, closed_alone.request_id, clock)
    close(store, desk, first.request_id, clock)
    assert store.request(second.request_id).closed  # type: ignore[union-attr]

    # Day 25: another report of the open incident (its last report moves on).
    clock.days(25)
    open_second = contact("pothole", clock, pid="o2", at=FAR)
    assert handle(store, desk, open_second) == [open_first.request_id, open_first.request_id]

    # Day 31: past the 30-day keep, inside the incidents' 40-day horizon.
    clock.days(31)
    recent_closed = contact("graffiti on the wall", clock, pid="recent")
    handle(store, desk, recent_closed)
    close(store, desk, recent_closed.request_id, clock)
    pruned = store.prune()
    assert (pruned.requests, pruned.incidents) == (1, 0)
    assert store.request(closed_alone.request_id) is None
    assert store.request(recent_closed.request_id) is not None
    assert store.request(open_alone.request_id) is not None
    # The closed incident is still matchable (a late report may still reopen or link to it),
    # and its reports stay while it lists them.
    assert store.incident(first.request_id) is not None
    assert store.request(second.request_id) is not None
    # The open incident inside its window is kept, and a new report still joins it.
    third = contact("pothole", clock, pid="o3", at=FAR)
    assert handle(store, desk, third)[0] == open_first.request_id
    assert store.incident(open_first.request_id).reports == 3  # type: ignore[union-attr]

    # Day 41: past the horizon: the closed incident, its memberships and its reports go.
    clock.days(41)
    pruned = store.prune()
    assert (pruned.requests, pruned.incidents, pruned.members) == (2, 1, 2)
    assert store.incident(first.request_id) is None
    assert store.request(first.request_id) is None and store.request(second.request_id) is None

    # Day 400: open work is never pruned, however old.
    clock.days(400)
    store.prune()
    assert store.request(open_alone.request_id) is not None
    assert store.incident(open_first.request_id) is not None
    assert store.request(open_first.request_id) is not None
    counts = store.counts()
    assert counts == {"normalizer_requests": 4, "normalizer_incidents": 1, "normalizer_members": 3}


def test_run_prunes_at_most_once_per_interval_in_batches(
    desk: IncidentDesk, make_store: StoreFactory
) -> None:
    clock = Clock()
    store = make_store(clock, Retention(keep_s=DAY, every_s=600.0, batch=2))
    ids = []
    for n in range(5):
        c = contact(f"the bins were not collected {n}", clock, pid=f"b{n}")
        handle(store, desk, c)
        close(store, desk, c.request_id, clock)
        ids.append(c.request_id)
    assert store.counts()["normalizer_requests"] == 5  # less than an interval since open: no pass
    clock.days(2)
    store.run(lambda snap: None)  # due: one pass, one batch of 2
    assert store.counts()["normalizer_requests"] == 3
    clock.t += 599
    store.run(lambda snap: None)  # pruned less than an interval ago: not again yet
    assert store.counts()["normalizer_requests"] == 3
    clock.t += 2
    store.run(lambda snap: None)
    assert store.counts()["normalizer_requests"] == 1
    clock.t += 601
    store.run(lambda snap: None)
    assert store.counts()["normalizer_requests"] == 0


_OLD_REQUESTS = """CREATE TABLE normalizer_requests (
    request_id TEXT PRIMARY KEY, body TEXT NOT NULL, state TEXT NOT NULL, state_at REAL NOT NULL,
    absorbed TEXT NOT NULL DEFAULT '[]')"""
_OLD_INCIDENTS = """CREATE TABLE normalizer_incidents (
    incident_id TEXT PRIMARY KEY, service_code TEXT NOT NULL, lat REAL NOT NULL, long REAL NOT NULL,
    state TEXT NOT NULL, opened_at REAL NOT NULL, last_report_at REAL NOT NULL, closed_at REAL,
    members TEXT NOT NULL)"""


def test_state_made_before_retention_is_migrated_in_place(desk: IncidentDesk, tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    c = make_contact("the bins were not collected", provider_id="old")
    body = desk.normalizer.normalize(c).model_dump_json()
    with sqlite3.connect(path) as db:
        db.execute(_OLD_REQUESTS)
        db.execute(_OLD_INCIDENTS)
        db.execute("INSERT INTO normalizer_requests VALUES (?, ?, 'closed', 1.0, '[]')", (c.request_id, body))
    clock = Clock()
    store = StateStore.sqlite(path, retention=KEEP, clock=clock)
    assert store.request(c.request_id) is not None
    clock.days(29)
    assert store.prune().requests == 0  # stamped at the upgrade, not at epoch 0
    clock.days(31)
    assert store.prune().requests == 1
    store.close()
    StateStore.sqlite(path).close()  # a second open: nothing left to migrate


def test_postgres_state_made_before_retention_is_migrated(desk: IncidentDesk, postgres: None) -> None:
    import psycopg

    from tests.support import throwaway_database

    c = make_contact("the bins were not collected", provider_id="old-pg")
    body = desk.normalizer.normalize(c).model_dump_json()
    with throwaway_database() as dsn:
        with psycopg.connect(dsn) as conn:
            conn.execute(_OLD_REQUESTS.replace(" REAL", " DOUBLE PRECISION"))
            conn.execute(_OLD_INCIDENTS.replace(" REAL", " DOUBLE PRECISION"))
            conn.execute(
                "INSERT INTO normalizer_requests VALUES (%s, %s, 'closed', 1.0, '[]')", (c.request_id, body)
            )
        clock = Clock()
        store = StateStore.postgres(dsn, retention=KEEP, clock=clock)
        clock.days(29)
        assert store.prune().requests == 0
        clock.days(31)
        assert store.prune().requests == 1
        store.close()


def test_state_retention_covers_the_longest_incident_window() -> None:
    settings = Settings(retention={"state_days": 30})  # type: ignore[arg-type]
    retention = state_retention(settings)
    taxonomy = load_taxonomy()
    longest = max(taxonomy.incident_rule(code).window_hours for code in taxonomy.codes)
    assert retention.keep_s == 30 * DAY
    assert retention.horizon_s == (longest + taxonomy.incidents.cooloff_hours) * 3600
    assert retention.incident_keep_s >= retention.keep_s
    assert Settings().retention.state_days >= 7 + 7  # Kafka's default retention, with margin
    pothole = taxonomy.incident_rule("pothole").window_hours + taxonomy.incidents.cooloff_hours
    assert retention.service_horizon_s["pothole"] == pothole * 3600
    blight = taxonomy.incident_rule("property-maintenance").window_hours + taxonomy.incidents.cooloff_hours
    assert retention.service_horizon_s["property-maintenance"] == blight * 3600 == retention.horizon_s


def test_closed_incidents_are_kept_for_their_own_service_horizon(
    desk: IncidentDesk, make_store: StoreFactory
) -> None:
    horizons = {"pothole": 32 * DAY, "property-maintenance": 92 * DAY}
    clock = Clock()
    store = make_store(
        clock, Retention(keep_s=30 * DAY, horizon_s=92 * DAY, every_s=1e12, service_horizon_s=horizons)
    )
    pothole = contact("pothole", clock, pid="p1", at=ELM)
    blight = contact("abandoned house, overgrown lot and trash", clock, pid="h1", at=FAR)
    for c in (pothole, blight):
        handle(store, desk, c)
        close(store, desk, c.request_id, clock)
    assert store.incident(blight.request_id).service_code == "property-maintenance"  # type: ignore[union-attr]
    clock.days(31)
    assert store.prune().incidents == 0  # past keep_s, inside both horizons
    clock.days(33)
    assert (store.prune().incidents, store.incident(pothole.request_id)) == (1, None)
    assert store.incident(blight.request_id) is not None  # its 90-day window still runs
    clock.days(93)
    assert store.prune().incidents == 1
    assert store.counts() == {"normalizer_requests": 0, "normalizer_incidents": 0, "normalizer_members": 0}


# -- the sinks' delivered ids --------------------------------------------------------------------


def test_seen_store_forgets_old_marks_and_still_dedupes_recent_ones(tmp_path: Path) -> None:
    clock = Clock()
    seen = SeenStore(tmp_path / "seen.sqlite3", retention_s=30 * DAY, prune_every_s=600, clock=clock)
    seen.mark("sink", ["old-1", "old-2"])
    clock.days(20)
    seen.mark("sink", ["recent"])
    clock.days(31)
    assert seen.prune() == 2
    assert seen.unseen("sink", ["old-1", "recent", "new"]) == {"old-1", "new"}
    assert seen.count() == 1
    seen.close()


def test_seen_store_prunes_from_mark_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    seen = SeenStore(
        tmp_path / "seen.sqlite3", retention_s=DAY, prune_every_s=600, prune_batch=10, clock=clock
    )
    seen.mark("sink", [f"k{n}" for n in range(25)])
    clock.days(2)
    seen.mark("sink", ["a"])  # 2 days since open: due, one batch of 10
    assert seen.count() == 16
    seen.mark("sink", ["b"])  # just pruned
    assert seen.count() == 17
    clock.t += 601
    seen.mark("sink", ["c"])
    assert seen.count() == 8
    assert seen.unseen("sink", ["a", "b", "c"]) == set()
    seen.close()


def test_seen_store_without_retention_keeps_everything(tmp_path: Path) -> None:
    clock = Clock()
    seen = SeenStore(tmp_path / "seen.sqlite3", clock=clock)
    seen.mark("sink", ["x"])
    clock.days(1000)
    seen.mark("sink", ["y"])
    assert seen.prune() == 0 and seen.count() == 2
    seen.close()


# -- the web's accepted requests -----------------------------------------------------------------


def test_accepted_requests_drop_rows_past_retention(tmp_path: Path) -> None:
    clock = Clock()
    lookup = AcceptedRequests(tmp_path / "accepted.sqlite3", retention_s=30 * DAY, clock=clock)
    old, recent = make_contact(provider_id="w-old"), make_contact(provider_id="w-recent")
    asyncio.run(lookup.record(old, None))
    clock.days(20)
    asyncio.run(lookup.record(recent, None))
    clock.days(31)
    assert lookup.prune() == 1
    assert asyncio.run(lookup.get(old.request_id)) is None
    assert asyncio.run(lookup.get(recent.request_id)) is not None
    # A replayed contact keeps the first record while it is kept.
    asyncio.run(lookup.record(recent, "renamed"))
    row = asyncio.run(lookup.get(recent.request_id))
    assert row is not None and row["service_name"] is None


def test_accepted_requests_made_before_retention_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "accepted.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE accepted (request_id TEXT PRIMARY KEY, contact_id TEXT NOT NULL,"
            " channel TEXT NOT NULL, service_code TEXT, service_name TEXT,"
            " description TEXT NOT NULL DEFAULT '', address TEXT, address_id TEXT, lat REAL, long REAL,"
            " media_url TEXT, requested_datetime TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open')"
        )
        db.execute(
            "INSERT INTO accepted (request_id, contact_id, channel, requested_datetime)"
            " VALUES ('AAAA-AAAA', 'c1', 'web', ?)",
            ((T0 - timedelta(days=400)).isoformat(timespec="microseconds"),),
        )
    clock = Clock()
    lookup = AcceptedRequests(path, retention_s=30 * DAY, clock=clock)
    assert asyncio.run(lookup.get("AAAA-AAAA")) is not None  # migrated, stamped at the upgrade
    clock.days(29)
    assert lookup.prune() == 0
    clock.days(31)
    assert lookup.prune() == 1


def test_accepted_requests_prune_from_record_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    lookup = AcceptedRequests(tmp_path / "a.sqlite3", retention_s=DAY, prune_every_s=600, clock=clock)
    asyncio.run(lookup.record(make_contact(provider_id="p1"), None))
    clock.days(2)
    fresh = make_contact(provider_id="p2")
    asyncio.run(lookup.record(fresh, None))  # due: the day-0 row goes
    found = asyncio.run(
        lookup.search(
            service_request_ids=(), service_code=(), status=(), start_date=None, end_date=None, limit=10
        )
    )
    assert [r["service_request_id"] for r in found] == [fresh.request_id]


def test_accepted_requests_from_settings_use_the_retention(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, retention={"state_days": 3})  # type: ignore[arg-type]
    lookup = accepted_requests(settings)
    assert lookup.retention_s == 3 * DAY
    assert lookup.path == tmp_path / "web" / "accepted.sqlite3"


def test_a_failed_prune_does_not_fail_the_committed_batch(
    desk: IncidentDesk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    store = StateStore.sqlite(
        tmp_path / "s.sqlite3", retention=Retention(keep_s=DAY, every_s=1.0), clock=clock
    )

    def broken(retention: Retention) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_prune_locked", broken)
    clock.t += 5
    c = contact("the bins were not collected", clock, pid="x")
    handle(store, desk, c)  # the prune was due and raised: logged, the batch still returns
    assert store.request(c.request_id) is not None
    store.close()
