"""``ServiceRequest``: the canonical event, aligned with Open311 GeoReport v2 field names."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.attributes import Answers
from schemas.contact import Media, ReplyVia, Sender

REQUEST_SCHEMA_VERSION: Final = 1
MAX_INCIDENT_UPDATES = 20  # later reports shown on an incident; the count keeps growing


class Status(StrEnum):
    """Open311 knows only open and closed; the finer steps live in status events."""

    OPEN = "open"
    CLOSED = "closed"


class Precision(StrEnum):
    """How exactly ``lat``/``long`` place the problem, best first.

    ``given``: coordinates the channel supplied (a phone's GPS, an Open311 app); ``address``: an
    address point of the city's file; ``interpolated``: between two numbers on the same street
    and side; ``intersection``: where two streets cross; ``street``: only the street's centroid
    (too coarse to match incidents or place a crew).
    """

    GIVEN = "given"
    ADDRESS = "address"
    INTERPOLATED = "interpolated"
    INTERSECTION = "intersection"
    STREET = "street"

    @property
    def pinpoints(self) -> bool:
        """Precise enough to tell two problems on one street apart (incident matching needs it)."""
        return self is not Precision.STREET


class Priority(StrEnum):
    """How soon a request needs a person. ``emergency``: the resident described a danger to life
    (gas, fire, a live wire, someone hurt); they were told to call 911 and the emergency
    department gets a copy."""

    EMERGENCY = "emergency"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class IncidentReport(BaseModel):
    """A later report of the same incident, as the department sees it on the incident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    channel: str
    reported_at: AwareDatetime
    description: str = Field(default="", max_length=500)
    media: tuple[Media, ...] = ()


class ServiceRequest(BaseModel):
    """One service request as every department and the case store see it.

    ``request_id`` is the ticket number the resident was given (Open311's service_request_id).
    ``event_id`` identifies this version of the request: sinks dedupe on it, so a replayed
    event changes nothing while a real update (a follow-up contact) still gets through.

    ``incident_id`` is the ticket of the first request about the same problem (the request's
    own ticket when it is the first): one pothole reported by SMS, email and the web form is
    three requests, one incident. Departments work incidents: the first request carries the
    reporter count and the later reports (``incident_updates``); a later report is delivered
    too (its resident has a ticket to follow) but marks itself with ``incident_id``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = REQUEST_SCHEMA_VERSION
    request_id: str
    event_id: str
    service_code: str
    service_name: str
    description: str = ""
    lat: float | None = None
    long: float | None = None
    address_string: str | None = None
    location_precision: Precision | None = Field(default=None, description="how lat/long were found")
    districts: dict[str, str] = Field(
        default_factory=dict, description='boundary layer -> district name, e.g. {"ward": "Ward 7"}'
    )
    media_url: str | None = None
    media: tuple[Media, ...] = ()
    attributes: Answers = Field(
        default_factory=dict,
        description="answers to the service's questions (Open311 attribute[code]; schemas/attributes.py)",
    )
    status: Status = Status.OPEN
    status_notes: str | None = None
    requested_datetime: AwareDatetime
    updated_datetime: AwareDatetime
    expected_datetime: AwareDatetime | None = None
    agency_responsible: str | None = Field(default=None, description="department id, set by the router")
    # An operator's decision outranks the classifier and the routing table: a person looked at
    # it. Both default to None, so events written before they existed still validate.
    assigned_department: str | None = Field(
        default=None,
        description="the department an operator made responsible (the router's owner before its table)",
    )
    decided_by: str | None = Field(
        default=None,
        description='who re-classified or re-routed it ("console:alice"); None: the classifier. '
        "A later follow-up keeps that decision instead of classifying again",
    )
    channel: str
    reporter: Sender = Sender()
    reply: ReplyVia | None = None
    language: str = "en"
    confidence: float = Field(ge=0, le=1, description="classifier confidence in service_code")
    triage: bool = Field(default=False, description="confidence too low: a person must classify")
    triage_reason: str | None = Field(default=None, description="why a person must look at it")
    priority: Priority = Priority.NORMAL
    priority_reason: str | None = Field(
        default=None,
        max_length=300,
        description='why this priority, for an operator ("cue: blocking the road", "service default")',
    )
    emergency: str | None = Field(default=None, description='what emergency the text describes ("gas")')
    incident_id: str | None = Field(default=None, description="ticket of the incident's first request")
    incident_reports: int = Field(default=1, ge=1, description="reports of the incident so far")
    incident_updates: tuple[IncidentReport, ...] = Field(
        default=(), max_length=MAX_INCIDENT_UPDATES, description="later reports (first request only)"
    )
    related_incident_id: str | None = Field(
        default=None, description="a closed incident this one follows (reported again after the cool-off)"
    )
    source_contact_ids: tuple[str, ...] = Field(min_length=1)

    @property
    def incident(self) -> str:
        """The incident this request belongs to (its own ticket when it opened it)."""
        return self.incident_id or self.request_id

    @property
    def is_later_report(self) -> bool:
        """A report of an incident someone else reported first: an update, not new work."""
        return self.incident != self.request_id
