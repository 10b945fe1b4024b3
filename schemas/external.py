"""``ExternalRef``: one of our requests is known in another system, under that system's id.

The ``open311`` sink creates each request in the city's own work-order system, which gives it an
id of its own (``service_request_id``); an operator looking at ticket ``AB12-CD34`` in the
console, or a department system reading ``GET /api/requests/AB12-CD34``, needs that id to find
the work order. The sink publishes one ``ExternalRef`` on ``intake311.external-refs`` (keyed by
request id) when the city answers with an id, or when a pending token resolves to one; the case
store's status consumer (``sinks/status.py``) records it. Nothing is said to the resident.

The event id is derived from the request, the system and the remote id only, so the same
mapping announced again (a redelivery, a replay, two sinks hosts) is the same event, which the
case store takes once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.ids import digest, parse_ticket, require_ticket


def external_ref_id(request_id: str, system: str, external_id: str) -> str:
    """A stable id for "``request_id`` is ``external_id`` in ``system``": same mapping, same id."""
    return digest("external", request_id, system, external_id).hex()[:32]


class ExternalRef(BaseModel):
    """Our request ``request_id`` is ``external_id`` in ``system``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    event_id: str
    request_id: str
    system: str = Field(
        min_length=1,
        max_length=200,
        description='which system: "open311:<department>/<sink>" for the open311 sink',
    )
    external_id: str = Field(min_length=1, max_length=200, description="the id that system gave it")
    token: str | None = Field(
        default=None, max_length=200, description="the Open311 token it was known by before the id came"
    )
    at: AwareDatetime = Field(description="when the id became known")

    _ticket = field_validator("request_id")(require_ticket)

    @classmethod
    def new(
        cls,
        request_id: str,
        *,
        system: str,
        external_id: str,
        token: str | None = None,
        at: datetime | None = None,
    ) -> ExternalRef:
        ticket = parse_ticket(request_id) or request_id  # the validator refuses a non-ticket
        return cls(
            event_id=external_ref_id(ticket, system, external_id),
            request_id=ticket,
            system=system,
            external_id=external_id,
            token=token,
            at=at or datetime.now(UTC),
        )


__all__ = ["ExternalRef", "external_ref_id"]
