"""``CaseStore``: the system of record for service requests and their status history.

Everything that must survive replays lives in the SQL: a request event is applied only if it
is newer (``(updated_datetime, event_id)`` ordering, so any arrival order ends in the same
row), every event is logged once by ``event_id``, and status changes older than the current
status are kept in the history without rewinding the request. The same store answers the
web channel's Open311 ``GET requests`` (``get``/``search``, the ``RequestLookup`` protocol),
the budget office's figures (``report``) and the operator console (``recent``, ``triage_queue``,
``open_points``, ``events``, ``backlog``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from intake311.logging import get_logger
from schemas.external import ExternalRef
from schemas.open311 import REQUEST_FIELDS
from schemas.outbound import OutboundMessage
from schemas.request import Priority, ServiceRequest, Status
from schemas.status import State, parse_state, status_event_id
from schemas.taxonomy import PRIORITY_ORDER, Taxonomy, load_taxonomy
from sinks.postgres.migrations import migrate

log = get_logger(__name__)

OPEN311_FIELDS = REQUEST_FIELDS  # what Open311 GET answers: no personal data


def _clean(value: Any) -> Any:
    """Strip NUL characters, which PostgreSQL text and jsonb refuse (residents paste odd bytes)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value


# Columns a newer request event replaces (requested_datetime keeps the earliest, see below).
_CONTENT_COLUMNS = (
    "event_id",
    "event_updated_datetime",
    "service_code",
    "service_name",
    "description",
    "lat",
    "long",
    "address",
    "media_url",
    "media",
    "channel",
    "expected_datetime",
    "confidence",
    "triage",
    "reporter",
    "reply",
    "language",
    "source_contact_ids",
    "districts",
    "location_precision",
    "triage_reason",
    "incident_id",
    "incident_reports",
    "related_incident_id",
    "priority",
    "priority_reason",
    "emergency",
    "assigned_department",
    "decided_by",
    "attributes",
)
_INSERT_COLUMNS = (
    *_CONTENT_COLUMNS,
    "request_id",
    "status",
    "state",
    "status_notes",
    "status_changed_at",
    "closed_datetime",
    "agency_responsible",
    "requested_datetime",
    "updated_datetime",
    "departments",
)
_NEWER = "(EXCLUDED.event_updated_datetime, EXCLUDED.event_id) > (r.event_updated_datetime, r.event_id)"
# The event may change the status only if it is newer than the last status change, so a
# stale copy of the request never reopens what a person closed.
_STATUS_FROM_EVENT = (
    f"({_NEWER} AND EXCLUDED.updated_datetime > r.status_changed_at AND EXCLUDED.status <> r.status)"
)
_NOTES_FROM_EVENT = (
    f"({_NEWER} AND EXCLUDED.updated_datetime > r.status_changed_at"
    " AND (EXCLUDED.status <> r.status OR EXCLUDED.status_notes IS NOT NULL))"
)

_UPSERT_SQL = f"""
WITH up AS (
    INSERT INTO requests AS r ({", ".join(_INSERT_COLUMNS)})
    VALUES ({", ".join(f"%({c})s" for c in _INSERT_COLUMNS)})
    ON CONFLICT (request_id) DO UPDATE SET
        {", ".join(f"{c} = CASE WHEN {_NEWER} THEN EXCLUDED.{c} ELSE r.{c} END" for c in _CONTENT_COLUMNS)},
        agency_responsible = CASE WHEN {_NEWER}
            THEN COALESCE(EXCLUDED.agency_responsible, r.agency_responsible) ELSE r.agency_responsible END,
        requested_datetime = LEAST(r.requested_datetime, EXCLUDED.requested_datetime),
        updated_datetime = GREATEST(r.updated_datetime, EXCLUDED.updated_datetime),
        status = CASE WHEN {_STATUS_FROM_EVENT} THEN EXCLUDED.status ELSE r.status END,
        state = CASE WHEN {_STATUS_FROM_EVENT} THEN EXCLUDED.state ELSE r.state END,
        closed_datetime = CASE WHEN {_STATUS_FROM_EVENT}
            THEN (CASE WHEN EXCLUDED.status = 'closed' THEN EXCLUDED.updated_datetime END)
            ELSE r.closed_datetime END,
        status_changed_at = CASE WHEN {_STATUS_FROM_EVENT}
            THEN EXCLUDED.updated_datetime ELSE r.status_changed_at END,
        status_notes = CASE WHEN {_NOTES_FROM_EVENT} THEN EXCLUDED.status_notes ELSE r.status_notes END,
        departments = CASE WHEN %(department)s::text IS NULL OR %(department)s = ANY (r.departments)
            THEN r.departments ELSE array_append(r.departments, %(department)s) END
    RETURNING (xmax = 0) AS inserted, event_id
), ev AS (
    INSERT INTO request_events (event_id, request_id, kind, status, state, notes, at, source)
    SELECT %(event_id)s, %(request_id)s,
           CASE WHEN up.inserted THEN 'received' ELSE 'updated' END,
           %(status)s, CASE WHEN up.inserted THEN %(state)s END, %(status_notes)s,
           CASE WHEN up.inserted THEN %(requested_datetime)s ELSE %(event_updated_datetime)s END, %(source)s
    FROM up
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
)
SELECT up.inserted, up.event_id = %(event_id)s AS current, EXISTS (SELECT 1 FROM ev) AS new_event FROM up
"""

_OPEN311_SELECT = """
SELECT request_id AS service_request_id, status, status_notes, service_name, service_code, description,
       agency_responsible, service_notice, requested_datetime, updated_datetime, expected_datetime,
       address, NULL::text AS address_id, NULL::text AS zipcode, lat, long, media_url,
       districts, incident_id, incident_reports, location_precision, priority, priority_reason, emergency
FROM requests
"""
# What Open311 ``extensions=true`` adds per request (GeoReport v2 ``extended_attributes``): where
# the city placed it, the incident it is part of, how urgent it is and why, and the emergency its
# text describes (null: none). The web channel shows them only when asked (priority also as a
# top-level JSON field).
EXTENDED_ATTRIBUTES = (
    "districts",
    "incident_id",
    "incident_reports",
    "location_precision",
    "priority",
    "priority_reason",
    "emergency",
)


def _row_params(request: ServiceRequest, department: str | None) -> dict[str, Any]:
    closed = request.status == Status.CLOSED
    state = State.CLOSED if closed else State.NEW
    dump = request.model_dump(mode="json")
    params: dict[str, Any] = {
        "request_id": request.request_id,
        "event_id": request.event_id,
        "event_updated_datetime": request.updated_datetime,
        "service_code": request.service_code,
        "service_name": _clean(request.service_name),
        "description": _clean(request.description),
        "lat": request.lat,
        "long": request.long,
        "address": _clean(request.address_string),
        "media_url": _clean(request.media_url),
        "media": Jsonb(_clean(dump["media"])),
        "channel": request.channel,
        "expected_datetime": request.expected_datetime,
        "confidence": request.confidence,
        "triage": request.triage,
        "reporter": Jsonb(_clean(dump["reporter"])),
        "reply": Jsonb(_clean(dump["reply"])) if request.reply is not None else None,
        "language": request.language,
        "source_contact_ids": list(request.source_contact_ids),
        "districts": Jsonb(_clean(request.districts)),
        "location_precision": request.location_precision.value if request.location_precision else None,
        "triage_reason": _clean(request.triage_reason),
        "incident_id": request.incident,  # never NULL: a first request is its own incident
        "incident_reports": request.incident_reports,
        "related_incident_id": request.related_incident_id,
        "priority": request.priority.value,
        "priority_reason": _clean(request.priority_reason),
        "emergency": _clean(request.emergency),
        "assigned_department": request.assigned_department,
        "decided_by": _clean(request.decided_by),
        "attributes": Jsonb(_clean(dump["attributes"])),
        "status": request.status.value,
        "state": state.value,
        "status_notes": _clean(request.status_notes),
        "status_changed_at": request.updated_datetime if closed else request.requested_datetime,
        "closed_datetime": request.updated_datetime if closed else None,
        "agency_responsible": request.agency_responsible or department,
        "requested_datetime": request.requested_datetime,
        "updated_datetime": request.updated_datetime,
        "departments": [department] if department else [],
        "department": department,
        "source": f"pipeline:{department}" if department else "pipeline",
    }
    return params


@dataclass(frozen=True)
class StatusEvent:
    """One row of a request's status history."""

    event_id: str
    status: str
    state: str | None
    notes: str | None
    at: datetime
    source: str


@dataclass(frozen=True)
class CaseEvent:
    """One row of a request's whole history (``events``): every kind, not only status changes.

    ``kind``: ``received`` (the event that created the request), ``updated`` (a later request
    event), ``status`` (a status change), ``message`` (a message to the resident was queued;
    ``notes`` is its text), ``external`` (the city's own system gave it an id: ``source`` is the
    system, ``notes`` ``"<system> #<id>"``). ``status``/``state`` are the request's at that event
    (``state`` is None on ``updated`` rows).
    """

    kind: str
    event_id: str
    status: str
    state: str | None
    notes: str | None
    at: datetime
    source: str


EVENT_KINDS = ("received", "updated", "status", "message", "external")

EXTERNAL_LOCK = (3110007, 0)
"""The advisory lock (two-key form) migration 0007's insert trigger takes shared, once per
transaction that inserts requests, and ``record_external`` takes exclusively before an id waits
for its request: so an id recorded while its request is being inserted is taken by the request,
never left waiting. One lock, not one per request: a batch of 500 inserts holds one lock-table
slot (per-request advisory locks would fill PostgreSQL's shared lock table under load)."""

FEED_SETTLE_S = 2.0
"""How long a change waits before ``CaseStore.changed`` lists it: longer than any transaction
that writes requests takes to commit (they are one batch of upserts or one status change)."""


@dataclass(frozen=True)
class Case:
    """A request as the city holds it, personal data included: for internal use, never Open311."""

    request_id: str
    event_id: str
    status: Status
    state: State
    status_notes: str | None
    service_code: str
    service_name: str
    description: str
    agency_responsible: str | None
    departments: tuple[str, ...]
    channel: str
    requested_datetime: datetime
    updated_datetime: datetime
    expected_datetime: datetime | None
    closed_datetime: datetime | None
    address: str | None
    lat: float | None
    long: float | None
    media_url: str | None
    confidence: float
    triage: bool
    language: str
    reporter: dict[str, Any]
    reply: dict[str, Any] | None
    source_contact_ids: tuple[str, ...]
    districts: dict[str, str] = field(default_factory=dict)
    location_precision: str | None = None
    triage_reason: str | None = None
    incident_id: str | None = None
    incident_reports: int = 1
    related_incident_id: str | None = None
    priority: Priority = Priority.NORMAL
    priority_reason: str | None = None
    emergency: str | None = None
    assigned_department: str | None = None  # an operator re-routed it here (the console)
    decided_by: str | None = None  # who re-classified or re-routed it; None: the classifier
    changed_at: datetime | None = None  # when the city's record last changed (this server's clock)
    attributes: dict[str, Any] = field(default_factory=dict)  # answers to the service's questions
    external_ids: dict[str, str] = field(default_factory=dict)  # system -> its id ("open311:…/city")

    @property
    def is_later_report(self) -> bool:
        """Another resident reported this incident first (as ``ServiceRequest.is_later_report``)."""
        return self.incident_id is not None and self.incident_id != self.request_id


@dataclass(frozen=True, kw_only=True)
class ServiceLevels:
    """Volume and service-level figures of one group of requests; hours are from report to close."""

    received: int = 0
    closed: int = 0
    median_hours_to_close: float | None = None
    closed_with_sla: int = 0
    closed_within_sla: int = 0
    open_overdue: int = 0

    @property
    def share_within_sla(self) -> float | None:
        """Closed within the service level / closed with a service level (None when 0)."""
        return self.closed_within_sla / self.closed_with_sla if self.closed_with_sla else None


@dataclass(frozen=True, kw_only=True)
class DepartmentFigures(ServiceLevels):
    """One department's figures in a report."""

    department: str


NO_DISTRICT = "(none)"  # the report row for requests outside every district of the layer
BY_PRIORITY = "priority"  # report(by=...): per priority instead of per district of a layer


@dataclass(frozen=True, kw_only=True)
class DistrictFigures(ServiceLevels):
    """One district's figures in a report by layer (``report(by="ward")``)."""

    district: str


@dataclass(frozen=True, kw_only=True)
class PriorityFigures(ServiceLevels):
    """One priority's figures in a report by priority (``report(by="priority")``)."""

    priority: str


@dataclass(frozen=True)
class CaseReport:
    """What a budget office asks for, over ``[since, until)``; overdue is as of ``as_of``.

    ``by`` and ``districts`` are set for a report by district layer (``report(by="ward")``),
    ``by`` and ``priorities`` for one by priority (``report(by="priority")``).
    """

    since: datetime
    until: datetime
    as_of: datetime
    received: int
    by_channel: dict[str, int]
    by_service: dict[str, int]
    departments: dict[str, DepartmentFigures] = field(default_factory=dict)
    open_overdue: int = 0
    by: str | None = None
    districts: dict[str, DistrictFigures] = field(default_factory=dict)
    priorities: dict[str, PriorityFigures] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (datetimes as ISO 8601, each group with its SLA share); ``by``/``districts``
        only in a report by district and ``by``/``priorities`` only in one by priority, so the
        plain report's JSON is what it always was."""
        data = asdict(self)
        for key in ("since", "until", "as_of"):
            data[key] = getattr(self, key).isoformat()
        for name, figures in self.departments.items():
            data["departments"][name]["share_within_sla"] = figures.share_within_sla
        for name, district in self.districts.items():
            data["districts"][name]["share_within_sla"] = district.share_within_sla
        for name, group in self.priorities.items():
            data["priorities"][name]["share_within_sla"] = group.share_within_sla
        if self.by is None:
            del data["by"]
        if self.by is None or self.by == BY_PRIORITY:
            del data["districts"]
        if self.by != BY_PRIORITY:
            del data["priorities"]
        return data


class CaseStore:
    """The case store on a PostgreSQL connection pool.

    Use ``async with CaseStore(dsn) as store`` or ``await store.open()`` / ``close()``. ``open``
    applies pending migrations (under an advisory lock) unless ``migrate=False``.
    ``taxonomy`` supplies service levels for ``report`` (default: the packaged taxonomy).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        migrate: bool = True,
        taxonomy: Taxonomy | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._migrate = migrate
        self._taxonomy = taxonomy
        self._timeout = connect_timeout_s
        self._dsn = dsn
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            open=False,
            timeout=connect_timeout_s,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            name="intake311-case-store",
        )

    async def open(self) -> None:
        """Open the pool and bring the schema up to date."""
        if self._migrate:
            async with await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
            ) as conn:
                await migrate(conn)
        await self.pool.open(wait=True, timeout=self._timeout)

    async def close(self) -> None:
        """Close the pool; safe to call more than once."""
        await self.pool.close()

    async def __aenter__(self) -> CaseStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing -------------------------------------------------------------------------

    async def upsert_requests(self, requests: Iterable[ServiceRequest], department: str | None) -> int:
        """Store request events delivered to ``department``; return how many changed a request.

        Replays and duplicates change nothing; an event older than the stored one is logged
        (once) but does not overwrite the newer content.
        """
        return await self.upsert_many([(r, department) for r in requests])

    async def upsert_many(self, items: Sequence[tuple[ServiceRequest, str | None]]) -> int:
        """``upsert_requests`` for (request, department) pairs, in one transaction."""
        if not items:
            return 0
        # One lock order for every writer: concurrent department sinks cannot deadlock.
        ordered = sorted(items, key=lambda item: (item[0].request_id, item[0].updated_datetime))
        params = [_row_params(request, department) for request, department in ordered]
        changed = 0
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_UPSERT_SQL.encode(), params, returning=True)
            while True:
                row = await cur.fetchone()
                if row is not None:
                    inserted, current, new_event = row
                    changed += bool(new_event and (inserted or current))
                if not cur.nextset():
                    break
        return changed

    async def record_status(
        self,
        request_id: str,
        status: State | Status | str,
        notes: str | None = None,
        at: datetime | None = None,
        source: str = "unknown",
        event_id: str | None = None,
    ) -> bool:
        """Record a status change; True if it became the request's current status.

        ``status`` is a ``State`` (``new``, ``acknowledged``, ``in_progress``, ``closed``) or
        Open311 ``open``/``closed`` (``open`` reopens as ``new``). A repeated ``event_id``
        returns False and changes nothing; a change older than the current status is kept in
        the history but returns False. Raises ``LookupError`` for an unknown request.
        """
        state = parse_state(status)
        when = _aware(at) if at is not None else datetime.now(UTC)
        event = event_id or status_event_id(request_id, state, when, source)
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT status_changed_at FROM requests WHERE request_id = %s FOR UPDATE", (request_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise LookupError(f"no service request {request_id!r}")
            cur = await conn.execute(
                "INSERT INTO request_events (event_id, request_id, kind, status, state, notes, at, source)"
                " VALUES (%s, %s, 'status', %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING 1",
                (event, request_id, state.status.value, state.value, _clean(notes), when, _clean(source)),
            )
            if await cur.fetchone() is None:
                return False
            if when < row[0]:
                return False
            await conn.execute(
                "UPDATE requests SET status = %s, state = %s, status_notes = %s, status_changed_at = %s,"
                " closed_datetime = %s, updated_datetime = GREATEST(updated_datetime, %s)"
                " WHERE request_id = %s",
                (
                    state.status.value,
                    state.value,
                    _clean(notes),
                    when,
                    when if state is State.CLOSED else None,
                    when,
                    request_id,
                ),
            )
        return True

    async def record_message(self, message: OutboundMessage, *, source: str) -> bool:
        """Log that ``message`` was queued for the resident: one ``message`` row in the history.

        ``notes`` is the message text, ``at`` its ``created_at``, ``event_id`` its
        ``message_id`` (so a replay records it once: False for a duplicate), and
        ``status``/``state`` the request's current ones. The request itself does not change.
        Raises ``ValueError`` for a message without a ``request_id`` and ``LookupError`` for an
        unknown request.
        """
        if not message.request_id:
            raise ValueError(f"message {message.message_id!r} names no service request")
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "WITH r AS (SELECT request_id, status, state FROM requests"
                "           WHERE request_id = %(request_id)s FOR SHARE),"
                " ins AS (INSERT INTO request_events"
                "             (event_id, request_id, kind, status, state, notes, at, source)"
                "         SELECT %(event_id)s, r.request_id, 'message', r.status, r.state,"
                "                %(notes)s, %(at)s, %(source)s"
                "         FROM r ON CONFLICT (event_id) DO NOTHING RETURNING 1)"
                " SELECT EXISTS (SELECT 1 FROM r), EXISTS (SELECT 1 FROM ins)",
                {
                    "request_id": message.request_id,
                    "event_id": message.message_id,
                    "notes": _clean(message.text),
                    "at": _aware(message.created_at),
                    "source": _clean(source),
                },
            )
            row = await cur.fetchone()
        assert row is not None
        known, inserted = row
        if not known:
            raise LookupError(f"no service request {message.request_id!r}")
        return bool(inserted)

    async def record_external(self, ref: ExternalRef) -> bool:
        """Record that the request is ``ref.external_id`` in ``ref.system`` (the city's system);
        True if the request learnt it now.

        Sets ``external_ids[system]`` and logs one ``external`` event (``event_id`` is the ref's,
        so a replay or a second announcement changes nothing: False). The resident is told
        nothing. An id whose request is not in the store yet waits (False) and the request's
        first insert takes it (migration 0007): the open311 sink may reach the city before the
        postgres sink has stored the request.
        """
        notes = _clean(f"{ref.system} #{ref.external_id}")
        find = "SELECT status, state FROM requests WHERE request_id = %s FOR UPDATE"
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(find, (ref.request_id,))).fetchone()
            if row is None:
                # Not there, or being inserted: wait for the inserts in flight, then look again.
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", EXTERNAL_LOCK)
                row = await (await conn.execute(find, (ref.request_id,))).fetchone()
            if row is None:
                await conn.execute(
                    "INSERT INTO external_refs_waiting (event_id, request_id, system, external_id, at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                    (ref.event_id, ref.request_id, _clean(ref.system), _clean(ref.external_id), ref.at),
                )
                log.info("external id waits for its request", request_id=ref.request_id, system=ref.system)
                return False
            status, state = row
            cur = await conn.execute(
                "INSERT INTO request_events (event_id, request_id, kind, status, state, notes, at, source)"
                " VALUES (%s, %s, 'external', %s, %s, %s, %s, %s)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING 1",
                (ref.event_id, ref.request_id, status, state, notes, ref.at, _clean(ref.system)),
            )
            if await cur.fetchone() is None:
                return False
            await conn.execute(
                "UPDATE requests SET external_ids = external_ids || jsonb_build_object(%s::text, %s::text)"
                " WHERE request_id = %s",
                (_clean(ref.system), _clean(ref.external_id), ref.request_id),
            )
        return True

    # -- reading ---------------------------------------------------------------------------

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """One request as an Open311 dict (no personal data), or None."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute((_OPEN311_SELECT + " WHERE request_id = %s").encode(), (request_id,))
            row = await cur.fetchone()
        return _open311(row) if row else None

    async def search(
        self,
        *,
        service_request_ids: Sequence[str] = (),
        service_code: Sequence[str] = (),
        status: Sequence[str] = (),
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Open311 ``GET requests``: filters AND together, empty means any; newest first."""
        where: list[str] = []
        params: list[Any] = []
        for column, values in (
            ("request_id", service_request_ids),
            ("service_code", service_code),
            ("status", status),
        ):
            if values:
                where.append(f"{column} = ANY(%s)")
                params.append(list(values))
        if start_date is not None:
            where.append("requested_datetime >= %s")
            params.append(_aware(start_date))
        if end_date is not None:
            where.append("requested_datetime <= %s")
            params.append(_aware(end_date))
        sql = _OPEN311_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY requested_datetime DESC, request_id DESC LIMIT %s"
        params.append(max(0, limit))
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql.encode(), params)
            rows = await cur.fetchall()
        return [_open311(row) for row in rows]

    async def end_session(self, session_hash: str, expires_at: datetime) -> None:
        """Record a console session as ended (logged out) until ``expires_at``; drop expired ones."""
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM console_ended_sessions WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO console_ended_sessions (session_hash, expires_at) VALUES (%s, %s)"
                " ON CONFLICT (session_hash) DO NOTHING",
                (session_hash, _aware(expires_at)),
            )

    async def session_ended(self, session_hash: str) -> bool:
        """Whether that console session was logged out (``end_session``)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM console_ended_sessions WHERE session_hash = %s", (session_hash,)
            )
            return await cur.fetchone() is not None

    async def get_case(self, request_id: str) -> Case | None:
        """The full internal record, personal data included (for replying to the resident)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM requests WHERE request_id = %s", (request_id,))
            row = await cur.fetchone()
        return _case(row) if row is not None else None

    async def history(self, request_id: str) -> list[StatusEvent]:
        """The request's status history (opening event and status changes), oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id, status, state, notes, at, source FROM status_history"
                " WHERE request_id = %s ORDER BY at, recorded_at, event_id",
                (request_id,),
            )
            rows = await cur.fetchall()
        return [StatusEvent(*row) for row in rows]

    async def events(self, request_id: str) -> list[CaseEvent]:
        """The request's whole history, every kind (``EVENT_KINDS``), oldest first; [] if unknown.

        ``history`` stays what a resident-facing status history shows (opening + status changes).
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT kind, event_id, status, state, notes, at, source FROM request_events"
                " WHERE request_id = %s ORDER BY at, id",
                (request_id,),
            )
            rows = await cur.fetchall()
        return [CaseEvent(*row) for row in rows]

    async def recent(
        self, *, limit: int = 50, since: datetime | None = None, department: str | None = None
    ) -> list[Case]:
        """The most recently updated requests, newest first (``updated_datetime``, then ticket).

        ``since``: only requests updated after it (strictly), for polling a live stream.
        ``department``: only requests delivered to it (in ``departments`` or ``agency_responsible``).
        """
        where, params = _department_filter(department)
        if since is not None:
            where.append("updated_datetime > %(since)s")
            params["since"] = _aware(since)
        params["limit"] = max(0, limit)
        return await self._cases(
            f"SELECT * FROM requests {_where(where)}"
            " ORDER BY updated_datetime DESC, request_id DESC LIMIT %(limit)s",
            params,
        )

    async def changed(
        self,
        *,
        department: str | None = None,
        service_codes: Sequence[str] = (),
        statuses: Sequence[str] = (),
        states: Sequence[str] = (),
        priorities: Sequence[str] = (),
        districts: Sequence[tuple[str, str]] = (),
        since: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        settle_s: float = FEED_SETTLE_S,
        limit: int = 100,
    ) -> list[Case]:
        """Requests in the order their record last changed (``changed_at``, then ticket), oldest
        first: the feed a department system pulls, page by page, without missing a change.

        ``after`` is the (``changed_at``, ticket) of the last request of the previous page; a
        request that changes again moves behind it and comes again. Changes of the last
        ``settle_s`` seconds are held back: a transaction that took its ``changed_at`` before
        another's but committed after it would otherwise land behind a cursor already past it.
        Filters AND together, empty means any; ``districts`` are (layer, name) pairs, all of
        which must hold; ``department`` as in ``recent``.
        """
        where, params = _department_filter(department)
        for column, key, values in (
            ("service_code", "codes", service_codes),
            ("status", "statuses", statuses),
            ("state", "states", states),
            ("priority", "priorities", priorities),
        ):
            if values:
                where.append(f"{column} = ANY (%({key})s)")
                params[key] = list(values)
        for n, (layer, name) in enumerate(districts):
            where.append(f"districts ->> %(layer{n})s = %(district{n})s")
            params[f"layer{n}"], params[f"district{n}"] = layer, name
        if since is not None:
            where.append("changed_at >= %(since)s")
            params["since"] = _aware(since)
        if after is not None:
            where.append("(changed_at, request_id) > (%(after_at)s, %(after_id)s)")
            params["after_at"], params["after_id"] = _aware(after[0]), after[1]
        where.append("changed_at < clock_timestamp() - make_interval(secs => %(settle)s)")
        params["settle"] = max(0.0, settle_s)
        params["limit"] = max(0, limit)
        return await self._cases(
            f"SELECT * FROM requests {_where(where)} ORDER BY changed_at, request_id LIMIT %(limit)s",
            params,
        )

    async def triage_queue(self, *, limit: int = 100) -> list[Case]:
        """Open requests flagged for a person (``triage``): emergency, then high priority, then
        the rest; oldest reported first within each."""
        return await self._cases(
            "SELECT * FROM requests WHERE status = 'open' AND triage"
            f" ORDER BY {_URGENCY}, requested_datetime, request_id LIMIT %(limit)s",
            {"limit": max(0, limit)},
        )

    async def open_points(self, *, department: str | None = None, limit: int = 5000) -> list[Case]:
        """Open requests with coordinates, for the map: emergency and high first (so a limit
        keeps them), then newest reported first. ``department`` as in ``recent``."""
        where, params = _department_filter(department)
        where += ["status = 'open'", "lat IS NOT NULL", "long IS NOT NULL"]
        params["limit"] = max(0, limit)
        return await self._cases(
            f"SELECT * FROM requests {_where(where)}"
            f" ORDER BY {_URGENCY}, requested_datetime DESC, request_id LIMIT %(limit)s",
            params,
        )

    async def backlog(
        self, *, since: datetime, until: datetime, days: int = 366, department: str | None = None
    ) -> list[tuple[date, int]]:
        """How many requests were open at the end of each day, in one query: ``[(date, count)]``.

        One point per UTC date from ``since``'s to ``until``'s, at most ``days`` of them (the
        latest: ``since=until - timedelta(days=30), days=30`` gives the last 30 days). A day's
        figure counts requests reported before its end and not closed by then; its end is the
        following midnight UTC, or ``until`` for the day ``until`` falls in. "Closed" is the
        request's current ``closed_datetime``: a request closed and reopened counts as open all
        along. ``department`` as in ``recent``.
        """
        since, until = _aware(since), _aware(until)
        if days < 1:
            raise ValueError("days must be at least 1")
        if until < since:
            raise ValueError("until must not be before since")
        where, params = _department_filter(department)
        where += ["r.requested_datetime < d.cut", "(r.closed_datetime IS NULL OR r.closed_datetime > d.cut)"]
        last = until.astimezone(UTC).date()
        first = max(since.astimezone(UTC).date(), last - timedelta(days=days - 1))
        params.update(first=first, last=last, until=until)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT d.day, count(r.request_id)"
                " FROM (SELECT g::date AS day,"
                "              LEAST((g::date + 1)::timestamp AT TIME ZONE 'UTC', %(until)s) AS cut"
                "       FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS g) AS d"
                f" LEFT JOIN requests AS r ON {' AND '.join(where)}"
                " GROUP BY d.day ORDER BY d.day".encode(),
                params,
            )
            rows = await cur.fetchall()
        return [(day, int(n)) for day, n in rows]

    async def _cases(self, sql: str, params: dict[str, Any]) -> list[Case]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql.encode(), params)
            rows = await cur.fetchall()
        return [_case(row) for row in rows]

    async def report(
        self, since: datetime, until: datetime, *, now: datetime | None = None, by: str | None = None
    ) -> CaseReport:
        """Volume, time to close, SLA share and overdue count, for a budget office.

        Volume counts requests reported in ``[since, until)``; time to close and the SLA share
        count requests closed in it (hours from report to close; the service level is the
        taxonomy's for the request's service at the request's priority,
        ``Taxonomy.sla_hours``; services without one are left out of the share). Overdue is a
        snapshot at ``now``: open requests whose ``expected_datetime`` (set from the same
        service level when the request was made or its priority raised) has passed.

        ``by`` names a boundary layer (``"ward"``): the same figures per district of that layer
        as well, requests without a district in it under ``NO_DISTRICT`` so the rows still add
        up to the totals. ``by="priority"`` gives them per priority instead (emergency first).
        """
        since, until = _aware(since), _aware(until)
        as_of = _aware(now) if now is not None else datetime.now(UTC)
        layer = by.strip() if by is not None else None
        if layer == "":
            raise ValueError("by must name a district layer, e.g. 'ward'")
        taxonomy = self._taxonomy or load_taxonomy()
        sla = taxonomy.sla_table()
        codes, levels, hours = [c for c, _, _ in sla], [p.value for _, p, _ in sla], [h for *_, h in sla]
        dept = "COALESCE(agency_responsible, departments[1], 'unassigned')"
        district = "COALESCE(NULLIF(districts ->> %(layer)s, ''), %(no_district)s)"
        window = "requested_datetime >= %(since)s AND requested_datetime < %(until)s"
        params = {
            "since": since,
            "until": until,
            "now": as_of,
            "codes": codes,
            "priorities": levels,
            "hours": hours,
            "layer": layer,
            "no_district": NO_DISTRICT,
        }
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # One snapshot for every figure, so the parts of a report add up.
            await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            by_channel = await _counts(cur, "channel", window, params)
            by_service = await _counts(cur, "service_code", window, params)
            departments = {
                name: DepartmentFigures(department=name, **figures)
                for name, figures in (await _group_figures(cur, dept, window, params)).items()
            }
            districts = (
                {
                    name: DistrictFigures(district=name, **figures)
                    for name, figures in (await _group_figures(cur, district, window, params)).items()
                }
                if layer and layer != BY_PRIORITY
                else {}
            )
            by_priority = (
                await _group_figures(cur, "priority", window, params) if layer == BY_PRIORITY else {}
            )
            order = [p.value for p in PRIORITY_ORDER]
            priorities = {
                name: PriorityFigures(priority=name, **by_priority[name])
                for name in sorted(by_priority, key=lambda n: order.index(n) if n in order else len(order))
            }
        return CaseReport(
            since=since,
            until=until,
            as_of=as_of,
            received=sum(d.received for d in departments.values()),
            by_channel=by_channel,
            by_service=by_service,
            departments=departments,
            open_overdue=sum(d.open_overdue for d in departments.values()),
            by=layer,
            districts=districts,
            priorities=priorities,
        )


# Emergency, then high, then every other priority (the triage queue and the map's order).
_URGENCY = "CASE priority WHEN 'emergency' THEN 0 WHEN 'high' THEN 1 ELSE 2 END"


def _department_filter(department: str | None) -> tuple[list[str], dict[str, Any]]:
    """The WHERE parts (and params) for "delivered to ``department``"; none when it is None."""
    if department is None:
        return [], {}
    return ["(%(department)s = ANY (departments) OR agency_responsible = %(department)s)"], {
        "department": department
    }


def _where(parts: list[str]) -> str:
    return "WHERE " + " AND ".join(parts) if parts else ""


async def _counts(
    cur: psycopg.AsyncCursor[Any], key: str, window: str, params: dict[str, Any]
) -> dict[str, int]:
    """Requests reported in the window per ``key`` (an SQL expression), largest first."""
    await cur.execute(
        f"SELECT {key}, count(*) FROM requests WHERE {window} GROUP BY 1 ORDER BY 2 DESC, 1".encode(),
        params,
    )
    return {str(k): int(n) for k, n in await cur.fetchall()}


async def _group_figures(
    cur: psycopg.AsyncCursor[Any], key: str, window: str, params: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Received, closed, median hours, SLA counts and overdue per ``key``: one query each, sorted.

    Shared by the department and the district breakdowns so both define every figure the same way.
    """
    received = await _counts(cur, key, window, params)
    await cur.execute(
        f"""
        SELECT c.grp, count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY c.hours),
               count(*) FILTER (WHERE s.hours IS NOT NULL),
               count(*) FILTER (WHERE c.hours <= s.hours)
        FROM (SELECT {key} AS grp, service_code, priority,
                     EXTRACT(EPOCH FROM closed_datetime - requested_datetime) / 3600.0 AS hours
              FROM requests
              WHERE closed_datetime >= %(since)s AND closed_datetime < %(until)s) AS c
        LEFT JOIN unnest(%(codes)s::text[], %(priorities)s::text[], %(hours)s::float8[])
               AS s(code, priority, hours)
               ON s.code = c.service_code AND s.priority = c.priority
        GROUP BY c.grp
        """.encode(),
        params,
    )
    closed = {str(row[0]): row[1:] for row in await cur.fetchall()}
    await cur.execute(
        f"SELECT {key}, count(*) FROM requests WHERE status = 'open'"
        " AND expected_datetime < %(now)s GROUP BY 1".encode(),
        params,
    )
    overdue = {str(k): int(n) for k, n in await cur.fetchall()}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({*received, *closed, *overdue}):
        n_closed, median, with_sla, within = closed.get(name, (0, None, 0, 0))
        out[name] = {
            "received": received.get(name, 0),
            "closed": int(n_closed),
            "median_hours_to_close": float(median) if median is not None else None,
            "closed_with_sla": int(with_sla),
            "closed_within_sla": int(within),
            "open_overdue": overdue.get(name, 0),
        }
    return out


def _case(row: dict[str, Any]) -> Case:
    """A ``requests`` row (``SELECT *``, dict rows) as a ``Case``."""
    return Case(
        request_id=row["request_id"],
        event_id=row["event_id"],
        status=Status(row["status"]),
        state=State(row["state"]),
        status_notes=row["status_notes"],
        service_code=row["service_code"],
        service_name=row["service_name"],
        description=row["description"],
        agency_responsible=row["agency_responsible"],
        departments=tuple(row["departments"]),
        channel=row["channel"],
        requested_datetime=row["requested_datetime"],
        updated_datetime=row["updated_datetime"],
        expected_datetime=row["expected_datetime"],
        closed_datetime=row["closed_datetime"],
        address=row["address"],
        lat=row["lat"],
        long=row["long"],
        media_url=row["media_url"],
        confidence=row["confidence"],
        triage=row["triage"],
        language=row["language"],
        reporter=row["reporter"] or {},
        reply=row["reply"],
        source_contact_ids=tuple(row["source_contact_ids"]),
        districts=dict(row["districts"] or {}),
        location_precision=row["location_precision"],
        triage_reason=row["triage_reason"],
        incident_id=row["incident_id"],
        incident_reports=row["incident_reports"],
        related_incident_id=row["related_incident_id"],
        priority=Priority(row["priority"]),
        priority_reason=row["priority_reason"],
        emergency=row["emergency"],
        assigned_department=row["assigned_department"],
        decided_by=row["decided_by"],
        changed_at=row.get("changed_at"),
        attributes=dict(row.get("attributes") or {}),
        external_ids={str(k): str(v) for k, v in (row.get("external_ids") or {}).items()},
    )


def _open311(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    # UTC whatever the server's TimeZone setting, so answers do not depend on the database host.
    out = {
        name: value.astimezone(UTC) if isinstance(value := row.get(name), datetime) else value
        for name in OPEN311_FIELDS
    }
    # Under one key, apart from the spec's fields: the web channel adds it only for extensions=true.
    out["extended_attributes"] = {name: row.get(name) for name in EXTENDED_ATTRIBUTES}
    expected = out.get("expected_datetime")
    if out.get("status") == "open" and expected is not None and expected < (now or datetime.now(UTC)):
        # Flag overdue requests where residents and apps look: Open311's free-text notice.
        flag = f"Overdue: expected by {expected:%Y-%m-%d %H:%M} UTC."
        out["service_notice"] = f"{flag} {out['service_notice']}" if out.get("service_notice") else flag
    return out


__all__ = [
    "BY_PRIORITY",
    "EVENT_KINDS",
    "EXTENDED_ATTRIBUTES",
    "EXTERNAL_LOCK",
    "NO_DISTRICT",
    "OPEN311_FIELDS",
    "Case",
    "CaseEvent",
    "CaseReport",
    "CaseStore",
    "DepartmentFigures",
    "DistrictFigures",
    "PriorityFigures",
    "State",
    "StatusEvent",
    "parse_state",
    "status_event_id",
]
