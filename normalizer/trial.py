"""What the normalizer would make of a resident's text, without a broker: ``intake311 classify``.

Why it exists: a city edits its taxonomy, trains a model on its history and writes emergency
rules before going live, and needs to see, text by text, which service, confidence, priority and
language the pipeline would give. The answer comes from the same ``Normalizer`` the stage runs
(same classifier, same emergency rules, same triage threshold), fed a contact built from the text,
so what the command prints is what a resident's report would get.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from normalizer.normalize import Normalizer
from schemas.contact import RawContact
from schemas.ids import make_contact_id, ticket_for


def trial(normalizer: Normalizer, text: str, language: str | None = None) -> dict[str, Any]:
    """The fields a department would see for ``text`` (language detected unless given)."""
    lang = language or normalizer.languages.choose(text)
    contact_id = make_contact_id("cli", text or "-")
    contact = RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel="cli",
        received_at=datetime.now(UTC),
        text=text,
        language=lang,
    )
    request = normalizer.normalize(contact)
    row: dict[str, Any] = {
        "service_code": request.service_code,
        "service_name": request.service_name,
        "confidence": request.confidence,
        "triage": request.triage,
        "priority": request.priority.value,
        "language": request.language,
        "emergency": request.emergency,
    }
    reason = getattr(request, "priority_reason", None)
    if reason:
        row["priority_reason"] = reason
    return row
