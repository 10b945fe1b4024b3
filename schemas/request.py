"""``ServiceRequest``: the canonical event, aligned with Open311 GeoReport v2 field names."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.contact import Media, ReplyVia, Sender

REQUEST_SCHEMA_VERSION = 1


class Status(StrEnum):
    """Open311 knows only open and closed; the finer steps live in status events."""

    OPEN = "open"
    CLOSED = "closed"


class ServiceRequest(BaseModel):
    """One service request as every department and the case store see it.

    ``request_id`` is the ticket number the resident was given (Open311's service_request_id).
    ``event_id`` identifies this version of the request: sinks dedupe on it, so a replayed
    event changes nothing while a real update (a follow-up contact) still gets through.
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
    media_url: str | None = None
    media: tuple[Media, ...] = ()
    status: Status = Status.OPEN
    status_notes: str | None = None
    requested_datetime: AwareDatetime
    updated_datetime: AwareDatetime
    expected_datetime: AwareDatetime | None = None
    agency_responsible: str | None = Field(default=None, description="department id, set by the router")
    channel: str
    reporter: Sender = Sender()
    reply: ReplyVia | None = None
    language: str = "en"
    confidence: float = Field(ge=0, le=1, description="classifier confidence in service_code")
    triage: bool = Field(default=False, description="confidence too low: a person must classify")
    source_contact_ids: tuple[str, ...] = Field(min_length=1)
