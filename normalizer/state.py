"""Request and incident state, shared by every normalizer process: PostgreSQL, or SQLite on one host.

What it holds: the latest version of each request (so a follow-up contact merges into it), its
status as departments set it (so "thanks" after a close reopens nothing), and the open and
recently closed incidents with their members (so a report near an open incident joins it).

Why a shared SQL store with one lock, and not a changelog topic or Redis GEO: deciding whether
a report joins an incident is read-decide-write across partitions (the pothole texted and the
pothole emailed have different tickets, so they reach different normalizers). A state store
rebuilt from a compacted topic (Kafka Streams' GlobalKTable) is eventually consistent: two
normalizers would each open an incident for the same pothole and a later merge would have to
retract work a department already has. Re-keying contacts by area adds a Kafka hop to every
request and still splits incidents at cell edges. A transaction under one advisory lock makes
the decision linearizable, costs a few queries per batch (the stateless work, classifying and
geocoding, happens before the lock), and PostgreSQL is what the city's case store already runs
on. Without a DSN the same tables live in SQLite under the data directory, locked with
``BEGIN IMMEDIATE``: right for one machine (the embedded broker is one machine too), and
``intake311 run normalizer`` warns when it is used against an external cluster.

The work done under the lock is a plain function of a ``Snapshot`` (see ``normalizer.incidents``)
so it is tested without any database; this module only loads, locks and writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from intake311.logging import get_logger
from intake311.sqlite import connect, transaction
from schemas.request import ServiceRequest
from schemas.status import State

T = TypeVar("T")
log = get_logger(__name__)

# One key for every normalizer's state transaction; derived from a name nothing else uses.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"intake311.normalizer.state").digest()[:8], "big", signed=True)
_CHUNK = 500

_TABLES = (
    """CREATE TABLE IF NOT EXISTS normalizer_requests (
        request_id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        state TEXT NOT NULL,
        state_at REAL NOT NULL,
        absorbed TEXT NOT NULL DEFAULT '[]',
        touched_at REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS normalizer_incidents (
        incident_id TEXT PRIMARY KEY,
        service_code TEXT NOT NULL,
        lat REAL NOT NULL,
        long REAL NOT NULL,
        state TEXT NOT NULL,
        opened_at REAL NOT NULL,
        last_report_at REAL NOT NULL,
        closed_at REAL,
        members TEXT NOT NULL,
        touched_at REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS normalizer_incidents_area"
    " ON normalizer_incidents (service_code, last_report_at, lat)",
    """CREATE TABLE IF NOT EXISTS normalizer_members (
        request_id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL
    )""",
)
# ``touched_at`` (wall clock of the last write, for pruning) came later: files and databases
# made before it get the column in place, stamped "now", so their rows age out from the upgrade.
_TOUCHED = ("normalizer_requests", "normalizer_incidents")
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS normalizer_requests_touched ON normalizer_requests (touched_at)",
    "CREATE INDEX IF NOT EXISTS normalizer_incidents_touched ON normalizer_incidents (touched_at)",
    "CREATE INDEX IF NOT EXISTS normalizer_members_incident ON normalizer_members (incident_id)",
)


@dataclass(frozen=True)
class Retention:
    """What the normalizer's state keeps, and how often it prunes the rest.

    Only *closed* requests and incidents are pruned, once their last write is older than
    ``keep_s``: an open one is a department's live work (its close still has to fan out to the
    incident's reports, its follow-ups still merge), so it stays however old it is. A closed
    incident is also kept for ``horizon_s`` (the longest incident window plus the cool-off over
    the taxonomy), so a late report can still join, reopen or link to it; a request is kept while
    an incident still lists it. ``keep_s`` must cover the topic retention plus the longest replay
    delay: a replayed contact of a pruned request would open it again.

    ``service_horizon_s`` narrows the horizon per service (a pothole's 30-day window need not keep
    it as long as a 90-day one); a service not listed there gets ``horizon_s``, the longest.
    """

    keep_s: float
    horizon_s: float = 0.0
    every_s: float = 600.0
    batch: int = 1000
    service_horizon_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def incident_keep_s(self) -> float:
        return max(self.keep_s, self.horizon_s)

    def incident_groups(self) -> list[tuple[float, list[str]]]:
        """(keep seconds, service codes) per distinct keep; ``[]`` codes: every service not listed."""
        by_keep: dict[float, list[str]] = {}
        for code, horizon in sorted(self.service_horizon_s.items()):
            by_keep.setdefault(max(self.keep_s, horizon), []).append(code)
        return [*sorted(by_keep.items()), (self.incident_keep_s, [])]


@dataclass(frozen=True)
class Pruned:
    requests: int = 0
    incidents: int = 0
    members: int = 0


@dataclass(frozen=True)
class StoredRequest:
    """A request as the normalizer last emitted it, with the workflow state departments set."""

    request: ServiceRequest
    state: State = State.NEW
    state_at: float = 0.0  # epoch seconds of the status change that set ``state``
    absorbed: tuple[str, ...] = ()  # follow-ups that changed nothing ("thanks" after a close)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED


@dataclass(frozen=True)
class Incident:
    """One problem at one place: the first request's ticket, where, and every report of it."""

    incident_id: str
    service_code: str
    lat: float
    long: float
    state: State
    opened_at: float
    last_report_at: float
    closed_at: float | None = None
    members: tuple[str, ...] = ()  # request ids, the first one first

    @property
    def reports(self) -> int:
        return len(self.members)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED


@dataclass(frozen=True)
class Area:
    """Where a batch needs incidents: one service, a lat/long box, active since ``since``."""

    service_code: str
    min_lat: float
    max_lat: float
    min_long: float
    max_long: float
    since: float


class Loader(Protocol):
    """What a snapshot asks the store for when something was not prefetched."""

    def requests(self, ids: Sequence[str]) -> dict[str, StoredRequest]: ...
    def incidents(self, ids: Sequence[str]) -> dict[str, Incident]: ...
    def incidents_in(self, areas: Sequence[Area]) -> dict[str, Incident]: ...
    def memberships(self, request_ids: Sequence[str]) -> dict[str, str]: ...


class _NoLoader:
    """A snapshot with nothing behind it (tests, and the pure core's examples)."""

    def requests(self, ids: Sequence[str]) -> dict[str, StoredRequest]:
        return {}

    def incidents(self, ids: Sequence[str]) -> dict[str, Incident]:
        return {}

    def incidents_in(self, areas: Sequence[Area]) -> dict[str, Incident]:
        return {}

    def memberships(self, request_ids: Sequence[str]) -> dict[str, str]:
        return {}


@dataclass
class Snapshot:
    """The state one batch reads and changes; writes are collected and stored in one go.

    Reads are cached, so what the batch wrote is what a later record in the same batch reads
    (a follow-up later in the batch sees the request the batch just opened).
    """

    loader: Loader = field(default_factory=_NoLoader)
    _requests: dict[str, StoredRequest | None] = field(default_factory=dict)
    _incidents: dict[str, Incident | None] = field(default_factory=dict)
    _cells: dict[tuple[str, int, int], set[str]] = field(default_factory=dict)  # where each incident is
    _members: dict[str, str | None] = field(default_factory=dict)
    _areas: dict[str, list[Area]] = field(default_factory=dict)  # loaded already, by service
    _json: dict[int, tuple[ServiceRequest, bytes]] = field(default_factory=dict)
    dirty_requests: set[str] = field(default_factory=set)
    dirty_incidents: set[str] = field(default_factory=set)
    dirty_members: set[str] = field(default_factory=set)

    # -- reads --------------------------------------------------------------------------------
    def prefetch(
        self, request_ids: Iterable[str] = (), areas: Iterable[Area] = (), incident_ids: Iterable[str] = ()
    ) -> None:
        """Load what a batch will need in a few queries instead of one per record."""
        ids = [i for i in dict.fromkeys(request_ids) if i not in self._requests]
        if ids:
            found = self.loader.requests(ids)
            for i in ids:
                self._requests[i] = found.get(i)
            members = self.loader.memberships(ids)
            for i in ids:
                self._members.setdefault(i, members.get(i))
        wanted_ids = [i for i in dict.fromkeys(incident_ids) if i not in self._incidents]
        if wanted_ids:
            incidents = self.loader.incidents(wanted_ids)
            for i in wanted_ids:
                incident = incidents.get(i)
                if incident is None:
                    self._incidents[i] = None
                else:
                    self._remember(incident)
        self._load_areas(areas)

    def _covered(self, area: Area) -> bool:
        """Whether one area loaded already contains ``area`` (asked twice for every report)."""
        for k in self._areas.get(area.service_code, ()):
            if (
                k.since <= area.since
                and k.min_lat <= area.min_lat
                and k.max_lat >= area.max_lat
                and k.min_long <= area.min_long
                and k.max_long >= area.max_long
            ):
                return True
        return False

    def _load_areas(self, areas: Iterable[Area]) -> None:
        known = self._areas
        wanted = [a for a in areas if not self._covered(a)]
        if wanted:
            for incident_id, incident in self.loader.incidents_in(wanted).items():
                if incident_id not in self._incidents:
                    self._remember(incident)
            for a in wanted:
                known.setdefault(a.service_code, []).append(a)

    def request(self, request_id: str) -> StoredRequest | None:
        if request_id not in self._requests:
            self._requests[request_id] = self.loader.requests([request_id]).get(request_id)
        return self._requests[request_id]

    def incident(self, incident_id: str) -> Incident | None:
        if incident_id not in self._incidents:
            found = self.loader.incidents([incident_id]).get(incident_id)
            if found is None:
                self._incidents[incident_id] = None
            else:
                self._remember(found)
        return self._incidents[incident_id]

    def _remember(self, incident: Incident) -> None:
        """Cache an incident and index it by service and ~500 m cell (a batch holds thousands)."""
        old = self._incidents.get(incident.incident_id)
        if old is not None and (old.lat, old.long) != (incident.lat, incident.long):
            self._cells.get(_cell(old.service_code, old.lat, old.long), set()).discard(old.incident_id)
        self._incidents[incident.incident_id] = incident
        self._cells.setdefault(_cell(incident.service_code, incident.lat, incident.long), set()).add(
            incident.incident_id
        )

    def incident_of(self, request_id: str) -> str | None:
        """The incident a request belongs to (None: never placed in one)."""
        if request_id not in self._members:
            self._members[request_id] = self.loader.memberships([request_id]).get(request_id)
        return self._members[request_id]

    def incidents_in(self, area: Area) -> list[Incident]:
        """Incidents of ``area``'s service inside its box, active since ``area.since``."""
        if not self._covered(area):
            self._load_areas((area,))
        code, cells, incidents = area.service_code, self._cells, self._incidents
        lat0, long0 = math.floor(area.min_lat / CELL_DEG), math.floor(area.min_long / CELL_DEG)
        lat1, long1 = math.floor(area.max_lat / CELL_DEG), math.floor(area.max_long / CELL_DEG)
        found = [
            incidents.get(incident_id)
            for y in range(lat0, lat1 + 1)
            for x in range(long0, long1 + 1)
            for incident_id in cells.get((code, y, x), ())
        ]
        return [
            i
            for i in found
            if i is not None
            and area.min_lat <= i.lat <= area.max_lat
            and area.min_long <= i.long <= area.max_long
            and max(i.last_report_at, i.closed_at or 0.0) >= area.since
        ]

    def json_of(self, request: ServiceRequest) -> bytes:
        """``request`` as JSON, serialised once for both Kafka and the store (it is the costly part)."""
        cached = self._json.get(id(request))
        if cached is not None and cached[0] is request:
            return cached[1]
        body = request.model_dump_json().encode()
        self._json[id(request)] = (request, body)
        return body

    # -- writes -------------------------------------------------------------------------------
    def put_request(self, stored: StoredRequest) -> None:
        self._requests[stored.request.request_id] = stored
        self.dirty_requests.add(stored.request.request_id)

    def put_incident(self, incident: Incident) -> None:
        self._remember(incident)
        self.dirty_incidents.add(incident.incident_id)
        for member in incident.members:
            if self._members.get(member) != incident.incident_id:
                self._members[member] = incident.incident_id
                self.dirty_members.add(member)

    def changed(self) -> tuple[list[StoredRequest], list[Incident], list[tuple[str, str]]]:
        requests = [r for i in sorted(self.dirty_requests) if (r := self._requests.get(i)) is not None]
        incidents = [x for i in sorted(self.dirty_incidents) if (x := self._incidents.get(i)) is not None]
        members = [(m, i) for m in sorted(self.dirty_members) if (i := self._members.get(m)) is not None]
        return requests, incidents, members


# ~110 m of latitude (~85 m of longitude at 41° N): a box around an incident radius (10-150 m)
# spans a few cells, so a report looks at the incidents near it, not at every one within 500 m.
CELL_DEG = 0.001


def _cell(service_code: str, lat: float, long: float) -> tuple[str, int, int]:
    return service_code, math.floor(lat / CELL_DEG), math.floor(long / CELL_DEG)


def merge_areas(areas: Iterable[Area]) -> list[Area]:
    """One box per service around all of a batch's boxes: one query per service, not per record."""
    by_service: dict[str, Area] = {}
    for a in areas:
        b = by_service.get(a.service_code)
        by_service[a.service_code] = (
            a
            if b is None
            else Area(
                a.service_code,
                min(a.min_lat, b.min_lat),
                max(a.max_lat, b.max_lat),
                min(a.min_long, b.min_long),
                max(a.max_long, b.max_long),
                min(a.since, b.since),
            )
        )
    return list(by_service.values())


_STATES = {s.value: s for s in State}  # ``State(value)`` goes through the enum machinery: slow


def _state(value: str) -> State:
    return _STATES.get(value) or State(value)  # an unknown value fails as ``State`` fails


# Request ids as ``json.dumps`` writes them with nothing escaped: the members column is then
# read and written by slicing and joining (``json`` was a fifth of decoding a loaded incident).
_PLAIN_IDS = re.compile(r'[A-Za-z0-9_.:-]+(?:", "[A-Za-z0-9_.:-]+)*')


def _members_json(members: tuple[str, ...]) -> str:
    """``json.dumps(list(members))``, byte for byte."""
    if not members:
        return "[]"
    joined = '", "'.join(members)
    if _PLAIN_IDS.fullmatch(joined) is None or joined.count('"') != 2 * len(members) - 2:
        return json.dumps(list(members))
    return f'["{joined}"]'


def _members(text: str) -> tuple[str, ...]:
    """What ``_members_json`` wrote (or any JSON list of strings), as a tuple."""
    if text == "[]":
        return ()
    if text.startswith('["') and text.endswith('"]') and _PLAIN_IDS.fullmatch(text, 2, len(text) - 2):
        return tuple(text[2:-2].split('", "'))
    return tuple(json.loads(text))


_new = object.__new__


def _make_incident(row: tuple[Any, ...]) -> Incident:
    """An ``Incident`` from its row; its ``__dict__`` filled in one go (a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, the costly part of a row)."""
    iid, code, lat, long, state, opened, last, closed, members = row
    incident: Incident = _new(Incident)
    incident.__dict__.update(
        incident_id=iid,
        service_code=code,
        lat=float(lat),
        long=float(long),
        state=_state(state),
        opened_at=float(opened),
        last_report_at=float(last),
        closed_at=None if closed is None else float(closed),
        members=_members(members),
    )
    return incident


class RowCache:
    """Incidents as they were decoded from their rows, across batches, by incident id.

    An entry is used only when the row read now is equal to the row it was decoded from, so
    what another normalizer wrote meanwhile is decoded afresh; an ``Incident`` is immutable, so
    one object can be shared by every snapshot. Most incidents a batch loads (those near its
    reports) were loaded by the batch before, unchanged. Bounded: emptied when it is full.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._rows: dict[str, tuple[tuple[Any, ...], Incident]] = {}

    def incident(self, row: tuple[Any, ...]) -> Incident:
        rows = self._rows
        hit = rows.get(row[0])
        if hit is not None and hit[0] == row:
            return hit[1]
        incident = _make_incident(row)
        if len(rows) >= self.limit:
            rows.clear()
        rows[row[0]] = (row, incident)
        return incident


# -- the SQL, one dialect for both backends ("?" placeholders; PostgreSQL gets "%s") -----------


class _Sql:
    """Reads and writes over a DB-API connection; ``ph`` is the placeholder style."""

    def __init__(self, conn: Any, ph: str, now: float = 0.0, cache: RowCache | None = None) -> None:
        self.conn = conn
        self.ph = ph
        self.now = now  # stamped into ``touched_at`` of every row written
        self.cache = cache or RowCache()

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.ph) if self.ph != "?" else sql

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(self._q(sql), tuple(params))
        return list(cur.fetchall())

    def _in(self, sql: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = list(ids[start : start + _CHUNK])
            rows += self._rows(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return rows

    def requests(self, ids: Sequence[str]) -> dict[str, StoredRequest]:
        rows = self._in(
            "SELECT body, state, state_at, absorbed FROM normalizer_requests WHERE request_id IN ({marks})",
            ids,
        )
        out = {}
        for body, state, state_at, absorbed in rows:
            request = ServiceRequest.model_validate_json(body)
            absorbed_ids = () if absorbed == "[]" else tuple(json.loads(absorbed))
            out[request.request_id] = StoredRequest(request, _state(state), float(state_at), absorbed_ids)
        return out

    _INCIDENT_COLS = (
        "incident_id, service_code, lat, long, state, opened_at, last_report_at, closed_at, members"
    )

    def incidents(self, ids: Sequence[str]) -> dict[str, Incident]:
        rows = self._in(
            f"SELECT {self._INCIDENT_COLS} FROM normalizer_incidents WHERE incident_id IN ({{marks}})", ids
        )
        decode = self.cache.incident
        return {row[0]: decode(row) for row in rows}

    def incidents_in(self, areas: Sequence[Area]) -> dict[str, Incident]:
        out: dict[str, Incident] = {}
        for a in areas:
            rows = self._rows(
                f"SELECT {self._INCIDENT_COLS} FROM normalizer_incidents WHERE service_code = ?"
                " AND (last_report_at >= ? OR closed_at >= ?)"
                " AND lat BETWEEN ? AND ? AND long BETWEEN ? AND ?",
                (a.service_code, a.since, a.since, a.min_lat, a.max_lat, a.min_long, a.max_long),
            )
            decode = self.cache.incident
            out.update({row[0]: decode(row) for row in rows})
        return out

    def memberships(self, request_ids: Sequence[str]) -> dict[str, str]:
        rows = self._in(
            "SELECT request_id, incident_id FROM normalizer_members WHERE request_id IN ({marks})",
            request_ids,
        )
        return {r: i for r, i in rows}

    def write(self, snapshot: Snapshot) -> None:
        requests, incidents, members = snapshot.changed()
        cur = self.conn.cursor()
        if requests:
            cur.executemany(
                self._q(
                    "INSERT INTO normalizer_requests"
                    " (request_id, body, state, state_at, absorbed, touched_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET body = excluded.body,"
                    " state = excluded.state, state_at = excluded.state_at, absorbed = excluded.absorbed,"
                    " touched_at = excluded.touched_at"
                ),
                [
                    (
                        s.request.request_id,
                        snapshot.json_of(s.request).decode(),
                        s.state.value,
                        s.state_at,
                        json.dumps(list(s.absorbed)) if s.absorbed else "[]",
                        self.now,
                    )
                    for s in requests
                ],
            )
        if incidents:
            cur.executemany(
                self._q(
                    f"INSERT INTO normalizer_incidents ({self._INCIDENT_COLS}, touched_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (incident_id) DO UPDATE SET state = excluded.state,"
                    " last_report_at = excluded.last_report_at, closed_at = excluded.closed_at,"
                    " members = excluded.members, lat = excluded.lat, long = excluded.long,"
                    " touched_at = excluded.touched_at"
                ),
                [
                    (
                        i.incident_id,
                        i.service_code,
                        i.lat,
                        i.long,
                        i.state.value,
                        i.opened_at,
                        i.last_report_at,
                        i.closed_at,
                        _members_json(i.members),
                        self.now,
                    )
                    for i in incidents
                ],
            )
        if members:
            cur.executemany(
                self._q(
                    "INSERT INTO normalizer_members (request_id, incident_id) VALUES (?, ?)"
                    " ON CONFLICT (request_id) DO UPDATE SET incident_id = excluded.incident_id"
                ),
                members,
            )

    def prune(self, retention: Retention, now: float) -> Pruned:
        """Delete up to ``retention.batch`` closed incidents and requests past their keep time."""
        closed = State.CLOSED.value
        incidents: list[str] = []
        listed = sorted(retention.service_horizon_s)
        for keep_s, codes in retention.incident_groups():
            left = retention.batch - len(incidents)
            if left <= 0:
                break
            if codes:
                which, params = f"service_code IN ({','.join('?' * len(codes))})", codes
            elif listed:
                which, params = f"service_code NOT IN ({','.join('?' * len(listed))})", listed
            else:
                which, params = "1 = 1", []
            incidents += [
                row[0]
                for row in self._rows(
                    f"SELECT incident_id FROM normalizer_incidents WHERE state = ? AND touched_at < ?"
                    f" AND {which} ORDER BY touched_at LIMIT ?",
                    (closed, now - keep_s, *params, left),
                )
            ]
        members = 0
        cur = self.conn.cursor()
        for start in range(0, len(incidents), _CHUNK):
            chunk = incidents[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur.execute(self._q(f"DELETE FROM normalizer_members WHERE incident_id IN ({marks})"), chunk)
            members += max(cur.rowcount, 0)
            cur.execute(self._q(f"DELETE FROM normalizer_incidents WHERE incident_id IN ({marks})"), chunk)
        # A request an incident still lists stays: the incident's close and replays read it.
        requests = [
            row[0]
            for row in self._rows(
                "SELECT request_id FROM normalizer_requests r WHERE state = ? AND touched_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM normalizer_members m WHERE m.request_id = r.request_id)"
                " ORDER BY touched_at LIMIT ?",
                (closed, now - retention.keep_s, retention.batch),
            )
        ]
        for start in range(0, len(requests), _CHUNK):
            chunk = requests[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            cur.execute(self._q(f"DELETE FROM normalizer_requests WHERE request_id IN ({marks})"), chunk)
        return Pruned(requests=len(requests), incidents=len(incidents), members=members)

    def counts(self) -> dict[str, int]:
        return {
            table: int(self._rows(f"SELECT count(*) FROM {table}", ())[0][0])
            for table in ("normalizer_requests", "normalizer_incidents", "normalizer_members")
        }


def _migrate(conn: Any, kind: str, now: float) -> None:
    """Add ``touched_at`` to tables made before it (stamped ``now``), then the indexes."""
    for table in _TOUCHED:
        if kind == "postgres":
            cols = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
                ).fetchall()
            }
        else:
            cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
        if "touched_at" not in cols:
            real = "DOUBLE PRECISION" if kind == "postgres" else "REAL"
            conn.execute(f"ALTER TABLE {table} ADD COLUMN touched_at {real} NOT NULL DEFAULT 0")
            ph = "%s" if kind == "postgres" else "?"
            conn.execute(f"UPDATE {table} SET touched_at = {ph}", (now,))
    for ddl in _INDEXES:
        conn.execute(ddl)


class StateStore:
    """Runs a batch's read-decide-write under the one lock every normalizer shares.

    ``run(work)`` calls ``work(snapshot)`` inside a transaction holding the lock and writes
    what it changed before committing; the caller publishes the outcome after ``run`` returns.
    A crash between the commit and the publish is replayed from Kafka: the work sees its own
    contacts already applied and re-emits the same events (same ids), which downstream dedupes.
    """

    def __init__(
        self,
        conn: Any,
        *,
        kind: str,
        lock: Callable[[Any], Any],
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self.kind = kind
        self._lock_tx = lock
        self._thread_lock = threading.Lock()
        self.retention = retention  # None: keep everything
        self.clock = clock
        self._last_prune = clock()  # the first pass one interval after start, not at start
        self._rows = RowCache()

    @classmethod
    def sqlite(
        cls, path: Path, *, retention: Retention | None = None, clock: Callable[[], float] = time.time
    ) -> StateStore:
        db = connect(path)
        with transaction(db, immediate=True):
            for ddl in _TABLES:
                db.execute(ddl)
            _migrate(db, "sqlite", clock())

        def lock(conn: sqlite3.Connection) -> Any:
            return transaction(conn, immediate=True)

        return cls(db, kind="sqlite", lock=lock, retention=retention, clock=clock)

    @classmethod
    def postgres(
        cls, dsn: str, *, retention: Retention | None = None, clock: Callable[[], float] = time.time
    ) -> StateStore:
        import psycopg

        conn = psycopg.connect(dsn, autocommit=False)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))  # concurrent CREATEs race
            for ddl in _TABLES:
                conn.execute(ddl.replace(" REAL", " DOUBLE PRECISION"))
            _migrate(conn, "postgres", clock())

        def lock(c: Any) -> Any:
            return _PgLocked(c)

        return cls(conn, kind="postgres", lock=lock, retention=retention, clock=clock)

    def _sql(self) -> _Sql:
        return _Sql(self._conn, "%s" if self.kind == "postgres" else "?", self.clock(), self._rows)

    def run(self, work: Callable[[Snapshot], T]) -> T:
        """``work`` under the lock, its writes committed with it (blocking: call in a thread).

        At most once per ``retention.every_s`` a small prune pass follows, in a transaction of
        its own under the same lock (so a batch's commit never waits on it).
        """
        with self._thread_lock:
            with self._lock_tx(self._conn):
                sql = self._sql()
                snapshot = Snapshot(loader=sql)
                result = work(snapshot)
                sql.write(snapshot)
            if self.retention is not None and self.clock() - self._last_prune >= self.retention.every_s:
                try:
                    pruned = self._prune_locked(self.retention)
                except Exception:  # the batch is committed: a failed prune is retried next interval
                    log.warning("normalizer state prune failed", exc_info=True)
                else:
                    if pruned.requests or pruned.incidents:
                        log.info(
                            "normalizer state pruned", requests=pruned.requests, incidents=pruned.incidents
                        )
            return result

    def prune(self, retention: Retention | None = None) -> Pruned:
        """One prune pass now (at most ``batch`` rows per table); tools, tests and the bench."""
        chosen = retention or self.retention
        if chosen is None:
            return Pruned()
        with self._thread_lock:
            return self._prune_locked(chosen)

    def _prune_locked(self, retention: Retention) -> Pruned:
        self._last_prune = self.clock()
        with self._lock_tx(self._conn):
            sql = self._sql()
            return sql.prune(retention, sql.now)

    def counts(self) -> dict[str, int]:
        """Rows per state table (the bench and operators)."""
        with self._thread_lock, self._lock_tx(self._conn):
            return self._sql().counts()

    def request(self, request_id: str) -> StoredRequest | None:
        """One stored request (operator tools and tests)."""
        return self.run(lambda snap: snap.request(request_id))

    def incident(self, incident_id: str) -> Incident | None:
        return self.run(lambda snap: snap.incident(incident_id))

    def close(self) -> None:
        with self._thread_lock:
            self._conn.close()


class _PgLocked:
    """A PostgreSQL transaction that first takes the normalizers' advisory lock."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.tx: Any = None

    def __enter__(self) -> Any:
        self.tx = self.conn.transaction()
        self.tx.__enter__()
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        return self.conn

    def __exit__(self, *exc: Any) -> Any:
        return self.tx.__exit__(*exc)
