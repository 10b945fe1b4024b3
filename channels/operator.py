"""The operator channel: a call-taker (or ``intake311 submit``) typing a report in by hand."""

from __future__ import annotations

from datetime import datetime

from schemas.contact import Location, RawContact
from schemas.ids import make_contact_id, ticket_for

CHANNEL = "operator"


def operator_contact(
    text: str,
    *,
    provider_id: str,
    now: datetime,
    address: str | None = None,
    service_code: str | None = None,
) -> RawContact:
    """``parse`` for the operator channel: the text is the report; the address is optional."""
    contact_id = make_contact_id(CHANNEL, provider_id)
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=CHANNEL,
        received_at=now,
        text=text,
        service_code=service_code,
        location=Location(address=address) if address else None,
    )
