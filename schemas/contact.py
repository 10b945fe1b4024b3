"""``RawContact``: what a channel received, enveloped the same way for every channel."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.attributes import Answers
from schemas.ids import digest, is_slug, make_contact_id, parse_ticket, require_ticket

CONTACT_SCHEMA_VERSION: Final = 1

MetadataValue = str | int | float | bool | None
# ``RawContact.metadata["action"]`` of an operator command that is not a report (it travels the
# contacts path so it is ordered with the request's own contacts and replayed like them).
ACTION = "action"
ACTION_SPLIT = "split"  # take this request out of the incident it was merged into
ACTION_RECLASSIFY = "reclassify"  # metadata["service_code"]: the service it really is
ACTION_REROUTE = "reroute"  # metadata["department"]: the department responsible for it
ACTION_MERGE = "merge"  # metadata["into"]: a ticket whose incident this request is part of
OPERATOR_ACTIONS: Final = frozenset({ACTION_SPLIT, ACTION_RECLASSIFY, ACTION_REROUTE, ACTION_MERGE})
# ``RawContact.metadata["answers"]`` of a follow-up that replies to what we asked the resident:
# "where is it?" (the text is the place) or a service's question (the text answers it).
ANSWERS = "answers"
ANSWERS_LOCATION = "location"
ANSWERS_QUESTION = "question"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SenderKind(StrEnum):
    """How the resident can be reached: decides which masking and which reply channel apply."""

    PHONE = "phone"
    EMAIL = "email"
    SOCIAL = "social"
    WEB = "web"
    ANONYMOUS = "anonymous"


class Sender(_Model):
    """The resident behind a contact. ``address`` is personal data: log ``masked()`` instead."""

    kind: SenderKind = SenderKind.ANONYMOUS
    address: str | None = Field(default=None, max_length=320)
    name: str | None = Field(default=None, max_length=200)

    def masked(self) -> str:
        """A form safe for info-level logs: enough to tell two residents apart, no more."""
        return mask(self.address, self.kind)


def mask(address: str | None, kind: SenderKind | str = SenderKind.ANONYMOUS) -> str:
    """Mask a phone number (keep the last 2 digits) or an email (first letter and domain)."""
    if not address:
        return "-"
    if "@" in address and kind != SenderKind.SOCIAL:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    digits = [c for c in address if c.isdigit()]
    if kind == SenderKind.PHONE or len(digits) >= 7:
        return "***" + "".join(digits[-2:])
    return address[:2] + "***"


class Media(_Model):
    """A photo or recording the resident attached; the bytes stay with the provider or store."""

    url: str = Field(max_length=2048)
    content_type: str | None = None


class Location(_Model):
    """Where the problem is, as far as the resident told us (coordinates, words, or both)."""

    lat: float | None = Field(default=None, ge=-90, le=90)
    long: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=500)

    @property
    def is_empty(self) -> bool:
        return self.lat is None and self.long is None and not self.address


class ReplyVia(_Model):
    """How to answer on the same channel: the channel plugin that sends, and where to."""

    channel: str
    address: str = Field(max_length=320)
    thread: str | None = Field(default=None, description="provider thread/message id to reply under")
    language: str = "en"


class RawContact(_Model):
    """One contact from one resident on one channel, before any interpretation.

    ``request_id`` is the ticket the channel already told the resident: the channel derives it
    (``schemas.ids.ticket_for``) from the contact that opened the request, and sets it to an
    existing ticket when the contact continues a request (an SMS answer, an email reply).
    """

    schema_version: Literal[1] = CONTACT_SCHEMA_VERSION
    contact_id: str = Field(min_length=3, max_length=200)
    request_id: str
    channel: str
    received_at: AwareDatetime
    sender: Sender = Sender()
    text: str = Field(default="", max_length=20_000)
    service_code: str | None = Field(default=None, description="set when the resident picked a service")
    media: tuple[Media, ...] = ()
    location: Location | None = None
    reply: ReplyVia | None = None
    language: str | None = None
    attributes: Answers = Field(
        default_factory=dict,
        max_length=50,
        description="answers to the service's questions the resident gave (Open311 attribute[code])",
    )
    continues: bool = Field(default=False, description="adds to an existing request instead of opening one")
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, description="provider fields")

    @field_validator("channel")
    @classmethod
    def _channel_slug(cls, value: str) -> str:
        if not is_slug(value):
            raise ValueError("channel must be a lowercase slug")
        return value

    _ticket = field_validator("request_id")(require_ticket)


def split_command(ticket: str, *, incident_id: str | None, now: datetime, by: str) -> RawContact:
    """An operator's "this report is not that incident": split ``ticket`` back out of it.

    Travels as an ``operator`` contact keyed by the ticket. Its id derives from the ticket and
    the incident it leaves, so a retried click or command is the same contact, applied once.
    """
    contact_id = make_contact_id("operator", f"split-{ticket}-{incident_id or 'any'}")
    return RawContact(
        contact_id=contact_id,
        request_id=ticket,
        channel="operator",
        received_at=now,
        continues=True,
        metadata={ACTION: ACTION_SPLIT, "by": by},
    )


def _command(
    ticket: str, action: str, *, target_key: str, target: str, now: datetime, by: str, nonce: str
) -> RawContact:
    """An operator command on ``ticket``'s own key, its id derived from what it asks for.

    ``nonce`` is generated once per form the console rendered: a retried click sends the same
    nonce (the same contact, applied once), while asking for the same thing again later (A -> B
    -> A) sends a new one, so it is a new contact and a new version.
    """
    parsed = require_ticket(ticket)
    if not by.strip():
        raise ValueError("by must say who gave the command (e.g. 'console:alice')")
    if not nonce.strip() or len(nonce) > 200:
        raise ValueError("nonce must be a non-empty string of at most 200 characters")
    key = digest("operator", parsed, action, target, nonce).hex()[:20]
    return RawContact(
        contact_id=make_contact_id("operator", f"{action}-{parsed}-{key}"),
        request_id=parsed,
        channel="operator",
        received_at=now,
        continues=True,
        metadata={ACTION: action, target_key: target, "by": by, "nonce": nonce},
    )


def reclassify_command(ticket: str, *, service_code: str, now: datetime, by: str, nonce: str) -> RawContact:
    """An operator's "this is really ``service_code``": re-classify ``ticket``.

    The normalizer refuses (dead-letters) a code the taxonomy does not know; checked there, not
    here, because only the normalizer holds the taxonomy the request is classified against.
    """
    code = service_code.strip()
    if not code or len(code) > 100 or any(c.isspace() for c in code):
        raise ValueError(f"not a service code: {service_code!r}")
    return _command(
        ticket, ACTION_RECLASSIFY, target_key="service_code", target=code, now=now, by=by, nonce=nonce
    )


def reroute_command(ticket: str, *, department: str, now: datetime, by: str, nonce: str) -> RawContact:
    """An operator's "``department`` is responsible for this": the router sends it there first."""
    if not is_slug(department):
        raise ValueError(f"department must be a lowercase slug: {department!r}")
    return _command(
        ticket, ACTION_REROUTE, target_key="department", target=department, now=now, by=by, nonce=nonce
    )


def merge_command(ticket: str, *, into: str, now: datetime, by: str, nonce: str) -> RawContact:
    """An operator's "this is the same problem as ``into``": ``ticket`` joins ``into``'s incident."""
    target = require_ticket(into)
    if target == parse_ticket(ticket):
        raise ValueError(f"cannot merge {target} into itself")
    return _command(ticket, ACTION_MERGE, target_key="into", target=target, now=now, by=by, nonce=nonce)
