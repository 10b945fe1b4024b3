"""``StatusChange``: a department moved a request along (acknowledged, in progress, closed).

Status changes travel on ``intake311.status`` keyed by request_id, whoever made them (a Slack
button, the department API, an Open311 update), so the case store records each once and the
resident hears about each once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.ids import digest, require_ticket
from schemas.request import Status


class State(StrEnum):
    """The finer workflow state behind Open311's open/closed."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"

    @property
    def status(self) -> Status:
        return Status.CLOSED if self is State.CLOSED else Status.OPEN


def parse_state(value: State | Status | str) -> State:
    """A state from a state name or an Open311 status; ``open`` means reopen (state ``new``)."""
    text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    if text == Status.OPEN:
        return State.NEW
    try:
        return State(text)
    except ValueError:
        allowed = ", ".join([*(s.value for s in State), "open"])
        raise ValueError(f"unknown status {value!r}; use one of {allowed}") from None


def status_event_id(request_id: str, state: State, at: datetime, source: str) -> str:
    """A stable id for a status change whose producer has none: same change -> same id."""
    return digest("status", request_id, state.value, at.astimezone(UTC).isoformat(), source).hex()[:32]


class StatusChange(BaseModel):
    """One status change of one request, by one person or system."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    event_id: str
    request_id: str
    state: State
    notes: str | None = Field(default=None, max_length=2000)
    at: AwareDatetime
    source: str = Field(description='who: "slack:U123", "api:public-works", "open311:public-works"')
    department: str | None = None

    _ticket = field_validator("request_id")(require_ticket)

    @classmethod
    def new(
        cls,
        request_id: str,
        state: State | str,
        *,
        source: str,
        at: datetime | None = None,
        notes: str | None = None,
        department: str | None = None,
    ) -> StatusChange:
        when = at or datetime.now(UTC)
        parsed = parse_state(state)
        return cls(
            event_id=status_event_id(request_id, parsed, when, source),
            request_id=request_id,
            state=parsed,
            notes=notes,
            at=when,
            source=source,
            department=department,
        )
