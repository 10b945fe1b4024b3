"""The contracts between stages: event models, ids and topic names.

Stages import these and the shared runtime (``intake311``), never each other.
"""

from schemas.contact import Location, Media, RawContact, ReplyVia, Sender, SenderKind, mask
from schemas.deadletter import DeadLetter
from schemas.ids import (
    delivery_id_for,
    event_id_for,
    find_ticket,
    make_contact_id,
    parse_ticket,
    ticket_for,
)
from schemas.request import ServiceRequest, Status
from schemas.topics import TOPICS, Topics

__all__ = [
    "TOPICS",
    "DeadLetter",
    "Location",
    "Media",
    "RawContact",
    "ReplyVia",
    "Sender",
    "SenderKind",
    "ServiceRequest",
    "Status",
    "Topics",
    "delivery_id_for",
    "event_id_for",
    "find_ticket",
    "make_contact_id",
    "mask",
    "parse_ticket",
    "ticket_for",
]
