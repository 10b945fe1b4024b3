"""JSON Schema export, so non-Python consumers (a city's data team, a contact centre) can
validate events without reading this code."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.contact import RawContact
from schemas.deadletter import DeadLetter
from schemas.external import ExternalRef
from schemas.outbound import OutboundMessage
from schemas.request import ServiceRequest
from schemas.status import StatusChange

EVENTS: dict[str, type[BaseModel]] = {
    "raw-contact": RawContact,
    "service-request": ServiceRequest,
    "dead-letter": DeadLetter,
    "status-change": StatusChange,
    "outbound-message": OutboundMessage,
    "external-ref": ExternalRef,
}


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every event model; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EVENTS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://intake311.org/schemas/{name}.schema.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
