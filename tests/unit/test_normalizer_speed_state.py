"""The normalizer's state reads, made cheaper without changing what a batch decides.

* the incident cells: ``Snapshot.incidents_in`` finds exactly what a scan of every incident
  finds (boxes over several cells, either side of the equator and the meridian);
* a report loads the first requests of the incidents within its radius only, not of every one
  in the box around it;
* a batch of status changes is loaded in a few queries, and decides what it decided change by
  change, a change that does not parse dead-lettered in its place;
* an incident's members column is read and written without ``json`` when its ids need no
  escaping, byte for byte what ``json`` writes and reads;
* an incident decoded in an earlier batch is reused only while its row is unchanged: what
  another normalizer wrote to the shared file is read afresh;
* a report's area, remembered between planning a batch and placing the report, is the one
  computed afresh.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from intake311.stage import Record
from normalizer.app import status_batch
from normalizer.incidents import IncidentDesk, area_around
from normalizer.normalize import Normalizer
from normalizer.state import Area, Incident, Snapshot, StateStore, StoredRequest, _members, _members_json
from schemas import Location
from schemas.request import ServiceRequest
from schemas.status import State, StatusChange
from schemas.taxonomy import load_taxonomy
from schemas.topics import Topics
from tests.conftest import make_contact

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ELM = (41.30712, -72.92652)


@pytest.fixture(scope="module")
def desk() -> IncidentDesk:
    return IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()))


class Counting:
    """A loader over fixed rows that counts the ids and queries asked of it."""

    def __init__(
        self, requests: dict[str, StoredRequest] | None = None, incidents: dict[str, Incident] | None = None
    ) -> None:
        self.rows_r = requests or {}
        self.rows_i = incidents or {}
        self.asked: Counter[str] = Counter()
        self.queries = 0

    def requests(self, ids: Sequence[str]) -> dict[str, StoredRequest]:
        self.queries += 1
        self.asked.update(ids)
        return {i: self.rows_r[i] for i in ids if i in self.rows_r}

    def incidents(self, ids: Sequence[str]) -> dict[str, Incident]:
        self.queries += 1
        return {i: self.rows_i[i] for i in ids if i in self.rows_i}

    def incidents_in(self, areas: Sequence[Area]) -> dict[str, Incident]:
        self.queries += 1
        return {
            i.incident_id: i
            for a in areas
            for i in self.rows_i.values()
            if i.service_code == a.service_code
            and a.min_lat <= i.lat <= a.max_lat
            and a.min_long <= i.long <= a.max_long
            and max(i.last_report_at, i.closed_at or 0.0) >= a.since
        }

    def memberships(self, request_ids: Sequence[str]) -> dict[str, str]:
        self.queries += 1
        return {m: i.incident_id for i in self.rows_i.values() for m in i.members if m in request_ids}


@pytest.mark.parametrize("origin", [(41.3, -72.9), (-33.9, 18.4), (0.0005, -0.0005), (51.47, 0.0)])
def test_incident_cells_find_what_a_full_scan_finds(origin: tuple[float, float]) -> None:
    rng = random.Random(7)
    incidents = {}
    for n in range(400):
        lat = origin[0] + rng.uniform(-0.01, 0.01)
        long = origin[1] + rng.uniform(-0.01, 0.01)
        code = rng.choice(["pothole", "graffiti"])
        at = rng.uniform(0, 100)
        incidents[f"i{n}"] = Incident(f"i{n}", code, lat, long, State.NEW, at, at, None, (f"i{n}",))
    loader = Counting(incidents=incidents)
    snap = Snapshot(loader=loader)
    for _ in range(200):
        lat = origin[0] + rng.uniform(-0.01, 0.01)
        long = origin[1] + rng.uniform(-0.01, 0.01)
        area = area_around(rng.choice(["pothole", "graffiti"]), lat, long, rng.choice([10, 40, 150, 900]), 50)
        found = {i.incident_id for i in snap.incidents_in(area)}
        assert found == set(loader.incidents_in([area]))


def _stored(request: ServiceRequest) -> StoredRequest:
    return StoredRequest(request)


def test_a_report_loads_only_the_first_requests_within_its_radius(desk: IncidentDesk) -> None:
    """Incidents in the corners of the box around the radius are never candidates: their first
    requests are neither loaded nor compared."""
    rule = desk.rule("pothole")
    first = desk.normalizer.normalize(
        make_contact(
            "Huge pothole outside 45 Elm Street",
            provider_id="w1",
            location=Location(lat=ELM[0], long=ELM[1]),
            received_at=T0,
        )
    )
    assert first.service_code == "pothole"
    # Inside the box (same latitude offset, same longitude offset), outside the circle.
    box = area_around("pothole", ELM[0], ELM[1], rule.radius_m, 0)
    corner = (ELM[0] + (box.max_lat - ELM[0]) * 0.95, ELM[1] + (box.max_long - ELM[1]) * 0.95)
    inside = (ELM[0] + (box.max_lat - ELM[0]) * 0.3, ELM[1])
    at = T0.timestamp()
    heads = {}
    incidents = {}
    for name, point in (("corner", corner), ("inside", inside)):
        head = desk.normalizer.normalize(
            make_contact(
                "pothole here",
                provider_id=name,
                location=Location(lat=point[0], long=point[1]),
                received_at=T0 - timedelta(hours=1),
            )
        )
        heads[head.request_id] = _stored(head)
        incidents[head.request_id] = Incident(
            head.request_id,
            "pothole",
            point[0],
            point[1],
            State.NEW,
            at - 3600,
            at - 3600,
            None,
            (head.request_id,),
        )
    loader = Counting(requests=heads, incidents=incidents)
    snap = Snapshot(loader=loader)
    contact = make_contact(
        "Huge pothole outside 45 Elm Street",
        provider_id="w1",
        location=Location(lat=ELM[0], long=ELM[1]),
        received_at=T0,
    )
    out = desk.handle(contact, snap, first)
    corner_id, inside_id = list(heads)
    assert out.requests[0].incident_id == inside_id  # joined the one within the radius
    assert loader.asked[inside_id] == 1
    assert loader.asked[corner_id] == 0


def _close(request_id: str, minutes: float, event: str) -> StatusChange:
    return StatusChange(
        event_id=event,
        request_id=request_id,
        state=State.CLOSED,
        at=T0 + timedelta(minutes=minutes),
        source="api:public-works",
        department="public-works",
    )


def test_a_status_batch_is_loaded_in_a_few_queries_and_decides_as_one_by_one(
    desk: IncidentDesk, tmp_path: Path
) -> None:
    topics = Topics()
    contacts = [
        make_contact(
            "Huge pothole outside 45 Elm Street",
            provider_id=f"p{n}",
            location=Location(lat=ELM[0] + (n // 3) * 0.01, long=ELM[1]),
            received_at=T0 + timedelta(minutes=n),
        )
        for n in range(9)
    ]  # three incidents of three reports each
    store, other = (StateStore.sqlite(tmp_path / f"{name}.sqlite3") for name in ("state", "reference"))
    ids = store.run(lambda snap: [r.request_id for c in contacts for r in desk.handle(c, snap).requests])
    other.run(lambda snap: [desk.handle(c, snap) for c in contacts])
    heads = sorted({i for i in ids if store.incident(i) is not None})
    assert len(heads) == 3
    changes = [_close(h, 60 + n, f"close-{n}") for n, h in enumerate(heads)]
    values = [c.model_dump_json().encode() for c in changes]
    values.insert(1, b'{"not": "a status change"}')
    records = [Record(value=v, topic=topics.status, offset=n) for n, v in enumerate(values)]

    def rows(out: list) -> list[tuple[str, str | None, dict]]:
        parsed = []
        for o in out:
            body = json.loads(o.value)
            body.pop("failed_at", None)
            parsed.append((o.topic, o.key, body))
        return parsed

    # The same changes one record per batch, on a store with the same reports (the reference).
    one_by_one = []
    for r in records:
        one_by_one += other.run(lambda snap, r=r: status_batch([r], desk, snap, topics))

    counting: list[Counting] = []

    class Spy(Counting):
        def __init__(self, inner: object) -> None:
            super().__init__()
            self.inner = inner

        def requests(self, ids: Sequence[str]) -> dict[str, StoredRequest]:
            super().requests(ids)
            return self.inner.requests(ids)  # type: ignore[attr-defined,no-any-return]

        def incidents(self, ids: Sequence[str]) -> dict[str, Incident]:
            super().incidents(ids)
            return self.inner.incidents(ids)  # type: ignore[attr-defined,no-any-return]

        def memberships(self, request_ids: Sequence[str]) -> dict[str, str]:
            super().memberships(request_ids)
            return self.inner.memberships(request_ids)  # type: ignore[attr-defined,no-any-return]

    def batch(snap: Snapshot) -> list:
        spy = Spy(snap.loader)
        counting.append(spy)
        snap.loader = spy
        return status_batch(records, desk, snap, topics)

    together = store.run(batch)
    assert rows(together) == rows(one_by_one)
    assert [o.topic for o in together].count(topics.deadletter) == 1
    assert rows(together)[2][0] == topics.deadletter  # in the bad record's place, after the first's two
    assert sum(1 for o in together if o.topic == topics.status) == 6  # two other reports each
    assert counting[0].queries <= 6  # not three per change
    assert all(store.request(i).state is State.CLOSED for i in heads)  # type: ignore[union-attr]


def test_members_column_is_what_json_writes_and_reads() -> None:
    rng = random.Random(11)
    alphabet = 'AZ09-_.:" ,\\\u00e9\n['
    cases: list[tuple[str, ...]] = [
        (),
        ("0FAJ-CVYK",),
        ("A1B2-C3D4", "E5F6-G7H8"),
        ("",),
        ('x", "y',),
        ('x", "y', "z"),
    ]
    for _ in range(5000):
        cases.append(
            tuple(
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
                for _ in range(rng.randint(0, 3))
            )
        )
    for members in cases:
        assert _members_json(members) == json.dumps(list(members)), members
        assert _members(json.dumps(list(members))) == members, members


def test_an_incident_changed_by_another_normalizer_is_read_afresh(desk: IncidentDesk, tmp_path: Path) -> None:
    """Two normalizers share one file: each one's decoded incidents follow what the other wrote."""
    path = tmp_path / "state.sqlite3"
    one, two = StateStore.sqlite(path), StateStore.sqlite(path)
    contacts = [
        make_contact(
            "Huge pothole outside 45 Elm Street",
            provider_id=f"e{n}",
            location=Location(lat=ELM[0], long=ELM[1]),
            received_at=T0 + timedelta(minutes=n),
        )
        for n in range(3)
    ]
    first = one.run(lambda snap: desk.handle(contacts[0], snap)).requests[0]
    seen = one.incident(first.request_id)
    assert seen is not None and seen.members == (first.request_id,)
    assert one.incident(first.request_id) is seen  # decoded once, the row unchanged
    two.run(lambda snap: desk.handle(contacts[1], snap))  # the other normalizer: a second report
    again = one.incident(first.request_id)
    assert again is not None and again.reports == 2 and again == two.incident(first.request_id)
    # ... and a report placed by the first normalizer now joins the incident as the other left it.
    out = one.run(lambda snap: desk.handle(contacts[2], snap))
    assert out.requests[0].incident_id == first.request_id
    assert [r.incident_reports for r in out.requests] == [3, 3]
    assert two.incident(first.request_id).reports == 3  # type: ignore[union-attr]


def test_a_remembered_area_is_the_one_computed_afresh(desk: IncidentDesk) -> None:
    requests = [
        desk.normalizer.normalize(
            make_contact(
                "Huge pothole outside 45 Elm Street",
                provider_id=f"a{n}",
                location=Location(lat=ELM[0] + n * 1e-4, long=ELM[1]),
                received_at=T0 + timedelta(minutes=n),
            )
        )
        for n in range(5000)
    ]
    for request in [*requests, *requests[:10]]:  # past the bound, and asked again
        assert desk.areas_for(request) == desk._area_for(request)
    unplaced = desk.normalizer.normalize(make_contact("Huge pothole", provider_id="nowhere"))
    assert desk.areas_for(unplaced) is None
