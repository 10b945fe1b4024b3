"""The department systems' pull API: ``GET /api/requests`` and ``GET /api/requests/{id}``.

A city's work-order or CRM system that does not take pushed deliveries pulls instead: every
request routed to its department, filtered, page by page, and each request with its whole
history. The same department tokens as the status doors (``sinks.api``) authenticate it
(``Authorization: Bearer <token>``), and a token sees its own department's requests only.

Pages follow the order in which the city's record of a request last changed (``changed_at``,
kept by the database: migration 0005), so the cursor a system got with its last page is also
where it resumes tomorrow: everything that changed since comes next, and a request that
changed again comes again. The cursor is opaque to callers (it encodes that position); the
newest two seconds of changes are held back so that a change committing late is never skipped.

What it leaves out: the resident's name, phone and email, and how to answer them. Departments
answer through the pipeline (``POST /api/requests/{id}/status``, the console), which knows the
channel and thread the resident wrote from; a CRM that needs the contact details is a decision
for the city to make with a setting, not a default.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from intake311.logging import get_logger
from intake311.settings import Settings
from schemas.ids import parse_ticket
from schemas.request import Priority, Status
from schemas.status import State
from sinks.api import bearer_token, department_for_token, error_response
from sinks.postgres.store import FEED_SETTLE_S, Case, CaseEvent, CaseStore

log = get_logger(__name__)

MAX_PAGE = 500
DEFAULT_PAGE = 100


class HistoryEntry(BaseModel):
    """One event of a request's history, oldest first."""

    kind: str = Field(
        description="received, updated (a later report or correction), status, message, "
        "external (the city's own system gave it an id; source: the system, notes: '<system> #<id>')"
    )
    event_id: str
    status: Status
    state: State | None = Field(description="the workflow state at this event (none on updated)")
    notes: str | None = Field(description="status notes, or the text of a message to the resident")
    at: datetime
    source: str = Field(description='who or what: "pipeline:<department>", "console:<operator>", ...')


class DepartmentRequest(BaseModel):
    """A service request as a department system holds it (no personal data of the resident)."""

    service_request_id: str = Field(description="the resident's ticket")
    service_code: str
    service_name: str
    description: str
    status: Status
    state: State
    status_notes: str | None
    priority: Priority
    priority_reason: str | None
    emergency: str | None = Field(description="the danger the text describes, if any")
    agency_responsible: str | None
    assigned_department: str | None = Field(description="set when an operator re-routed it")
    departments: list[str] = Field(description="every department it was delivered to")
    channel: str
    language: str
    requested_datetime: datetime
    updated_datetime: datetime = Field(description="the newest event's own time")
    changed_at: datetime = Field(description="when the city's record last changed: the feed's order")
    expected_datetime: datetime | None
    closed_datetime: datetime | None
    address: str | None
    lat: float | None
    long: float | None
    location_precision: str | None
    districts: dict[str, str] = Field(description="boundary layer -> district name")
    media_url: str | None
    incident_id: str | None = Field(description="the incident it is part of (its first report's ticket)")
    incident_reports: int
    related_incident_id: str | None
    triage: bool = Field(description="flagged for a person")
    triage_reason: str | None
    confidence: float
    decided_by: str | None = Field(description="who re-classified or re-routed it; none: the classifier")
    source_contact_ids: list[str] = Field(description="the contacts it was made from")
    attributes: dict[str, str | list[str]] = Field(
        description="answers to the service's questions (code -> value; a list for several choices)"
    )
    external_ids: dict[str, str] = Field(
        default_factory=dict,
        description="its ids in the city's own systems: system -> id, "
        '{"open311:public-works/city": "1001"} once the open311 sink created it there',
    )


class DepartmentRequestDetail(DepartmentRequest):
    """A request with its whole history."""

    history: list[HistoryEntry]


class RequestPage(BaseModel):
    """One page of the feed."""

    requests: list[DepartmentRequest]
    next_cursor: str | None = Field(
        description="pass as cursor= to continue after this page (also tomorrow); "
        "the same cursor as given when the page is empty"
    )
    more: bool = Field(description="the page is full: more may be waiting now")


class ErrorItem(BaseModel):
    code: int
    description: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": list[ErrorItem], "description": "a filter or the cursor is invalid"},
    503: {"model": list[ErrorItem], "description": "the case store did not answer: retry"},
    403: {"model": list[ErrorItem], "description": "no valid department token, or another department"},
}


def encode_cursor(changed_at: datetime, request_id: str) -> str:
    """The opaque position after (``changed_at``, ``request_id``)."""
    raw = json.dumps([changed_at.astimezone(UTC).isoformat(), request_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ``ValueError`` with the reason for one we did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, request_id = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("cursor is not one this API gave out") from None
    if (
        not isinstance(request_id, str)
        or "\x00" in request_id
        or len(request_id) > 200
        or when.tzinfo is None
    ):
        raise ValueError("cursor is not one this API gave out")
    return when, request_id


def _checked(name: str, item: str) -> str:
    """A filter value PostgreSQL can compare: no NUL (a text literal cannot hold one), not huge."""
    if "\x00" in item or len(item) > 200:
        raise ValueError(f"{name}: a value of at most 200 characters without NUL bytes")
    return item


def _values(raw: list[str] | None, name: str = "service_code") -> list[str]:
    """Repeated and comma-separated values alike: ``status=open&status=closed`` or ``open,closed``."""
    return [v.strip() for item in raw or () for v in _checked(name, item).split(",") if v.strip()]


def _enum_values(name: str, raw: list[str] | None, allowed: tuple[str, ...]) -> list[str]:
    values = _values(raw, name)
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise ValueError(f"{name}: {wrong[0][:40]!r} is not one of {', '.join(allowed)}")
    return values


def _districts(raw: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in raw or ():
        layer, sep, name = _checked("district", item).partition(":")
        if not sep or not layer.strip() or not name.strip():
            raise ValueError(f"district: {item[:60]!r} is not layer:name (e.g. ward:Ward 7)")
        out.append((layer.strip(), name.strip()))
    return out


def _since(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"updated_since: {raw[:40]!r} is not an ISO 8601 date and time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _request(case: Case) -> dict[str, Any]:
    return {
        "service_request_id": case.request_id,
        "service_code": case.service_code,
        "service_name": case.service_name,
        "description": case.description,
        "status": case.status,
        "state": case.state,
        "status_notes": case.status_notes,
        "priority": case.priority,
        "priority_reason": case.priority_reason,
        "emergency": case.emergency,
        "agency_responsible": case.agency_responsible,
        "assigned_department": case.assigned_department,
        "departments": list(case.departments),
        "channel": case.channel,
        "language": case.language,
        "requested_datetime": case.requested_datetime,
        "updated_datetime": case.updated_datetime,
        "changed_at": case.changed_at or case.updated_datetime,
        "expected_datetime": case.expected_datetime,
        "closed_datetime": case.closed_datetime,
        "address": case.address,
        "lat": case.lat,
        "long": case.long,
        "location_precision": case.location_precision,
        "districts": case.districts,
        "media_url": case.media_url,
        "incident_id": case.incident_id,
        "incident_reports": case.incident_reports,
        "related_incident_id": case.related_incident_id,
        "triage": case.triage,
        "triage_reason": case.triage_reason,
        "confidence": case.confidence,
        "decided_by": case.decided_by,
        "source_contact_ids": list(case.source_contact_ids),
        "attributes": case.attributes,
        "external_ids": case.external_ids,
    }


def department_request(case: Case) -> DepartmentRequest:
    return DepartmentRequest.model_validate(_request(case))


def department_request_detail(case: Case, events: list[CaseEvent]) -> DepartmentRequestDetail:
    history = [
        HistoryEntry(
            kind=e.kind,
            event_id=e.event_id,
            status=Status(e.status),
            state=State(e.state) if e.state else None,
            notes=e.notes,
            at=e.at,
            source=e.source,
        )
        for e in events
    ]
    return DepartmentRequestDetail.model_validate({**_request(case), "history": history})


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json().encode(), media_type="application/json")


def request_api_routes(settings: Settings, store: CaseStore, *, settle_s: float = FEED_SETTLE_S) -> APIRouter:
    """The two GET routes, for the web stage (mounted when a case store is configured).

    ``settle_s``: how long a change is held back from the feed (``CaseStore.changed``).
    """
    router = APIRouter(tags=["departments"])

    def department_of(request: Request) -> str | JSONResponse:
        department = department_for_token(settings, bearer_token(request))
        if department is None:
            log.warning("request API refused: bad token", path=request.url.path)
            return error_response(403, "a valid department token is required (Authorization: Bearer)")
        return department

    @router.get(
        "/api/requests",
        response_model=RequestPage,
        responses=ERRORS,
        summary="The department's requests, in the order they last changed",
    )
    async def list_requests(
        request: Request,
        department: Annotated[str | None, Query(description="default: the token's own")] = None,
        service_code: Annotated[list[str] | None, Query(description="repeat or comma-separate")] = None,
        status: Annotated[list[str] | None, Query(description="open, closed")] = None,
        state: Annotated[list[str] | None, Query(description=", ".join(State))] = None,
        priority: Annotated[list[str] | None, Query(description="emergency, high, normal, low")] = None,
        district: Annotated[list[str] | None, Query(description="layer:name, e.g. ward:Ward 7")] = None,
        updated_since: Annotated[str | None, Query(description="ISO 8601: changed at or after")] = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
        limit: Annotated[str | None, Query(description=f"1-{MAX_PAGE}, default {DEFAULT_PAGE}")] = None,
    ) -> Response:
        own = department_of(request)
        if isinstance(own, JSONResponse):
            return own
        if department is not None and department != own:
            return error_response(
                403, f"this token is {own}'s; it cannot list {department[:60]!r}'s requests"
            )
        try:
            size = DEFAULT_PAGE if limit is None else int(limit)
            if not 1 <= size <= MAX_PAGE:
                raise ValueError
        except ValueError:
            return error_response(400, f"limit: a whole number from 1 to {MAX_PAGE}")
        try:
            after = decode_cursor(cursor) if cursor else None
            cases = await store.changed(
                department=own,
                service_codes=_values(service_code),
                statuses=_enum_values("status", status, tuple(s.value for s in Status)),
                states=_enum_values("state", state, tuple(s.value for s in State)),
                priorities=_enum_values("priority", priority, tuple(p.value for p in Priority)),
                districts=_districts(district),
                since=_since(updated_since),
                after=after,
                settle_s=settle_s,
                limit=size,
            )
        except ValueError as exc:
            return error_response(400, str(exc))
        except Exception:  # the case store did not answer: the caller retries, nothing is lost
            log.warning("request list failed", department=own, exc_info=True)
            return error_response(503, "requests cannot be read right now; please retry later")
        items = [department_request(case) for case in cases]
        next_cursor = cursor
        if items:
            last = items[-1]
            next_cursor = encode_cursor(last.changed_at, last.service_request_id)
        return _json(RequestPage(requests=items, next_cursor=next_cursor, more=len(items) == size))

    @router.get(
        "/api/requests/{request_id}",
        response_model=DepartmentRequestDetail,
        responses={**ERRORS, 404: {"model": list[ErrorItem], "description": "no such request"}},
        summary="One request with its whole history",
    )
    async def get_request(request_id: str, request: Request) -> Response:
        own = department_of(request)
        if isinstance(own, JSONResponse):
            return own
        ticket = parse_ticket(request_id)
        try:
            case = await store.get_case(ticket) if ticket else None
            events = await store.events(case.request_id) if case is not None else []
        except Exception:
            log.warning("request read failed", request_id=ticket, exc_info=True)
            return error_response(503, "the request cannot be read right now; please retry later")
        if case is None:
            return error_response(404, f"no service request {request_id[:80]!r}")
        if own not in case.departments and own != case.agency_responsible:
            return error_response(403, f"request {case.request_id} is not routed to {own}")
        return _json(department_request_detail(case, events))

    return router
