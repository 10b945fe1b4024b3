"""Stable identifiers: contact ids from provider ids, ticket numbers from contact ids.

Every id here is a pure function of its input, so a provider's retry of the same webhook, or a
replay of the same Kafka record, yields the same contact id, the same ticket and the same event
id, and every stage downstream can dedupe on them without shared state.
"""

from __future__ import annotations

import hashlib
import re

# Crockford base32: no I, L, O, U, so a ticket read aloud or typed into a phone is unambiguous.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
TICKET_LENGTH = 8  # 40 bits: ~0.5 expected collisions in a million requests
_TICKET_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
_TICKET_IN_TEXT = re.compile(r"\b([0-9A-Za-z]{4})[- ]?([0-9A-Za-z]{4})\b")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def digest(*parts: str) -> bytes:
    """SHA-256 over parts joined by a separator no id contains: the root of every derived id."""
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def make_contact_id(channel: str, provider_id: str) -> str:
    """The contact id for a provider's message id (Twilio MessageSid, Message-ID, tweet id…).

    Readable on purpose (``sms:SM123…``): an operator grepping logs or the dead-letter topic can
    find the provider's own record. Long provider ids are hashed to keep keys short.
    """
    if not _SLUG_RE.match(channel):
        raise ValueError(f"channel must be a lowercase slug, got {channel!r}")
    provider_id = provider_id.strip()
    if not provider_id:
        raise ValueError("provider id is empty")
    if len(provider_id) > 96 or any(c.isspace() for c in provider_id):
        provider_id = "h" + digest(provider_id).hex()[:32]
    return f"{channel}:{provider_id}"


def ticket_for(contact_id: str) -> str:
    """The resident-facing ticket number (also the request id) for the contact that opened it.

    Derived, not allocated: the channel knows it before the contact reaches Kafka, so the
    immediate reply carries it, and a replayed contact gets the same ticket.
    """
    value = int.from_bytes(digest("ticket", contact_id)[:5], "big")
    chars = []
    for _ in range(TICKET_LENGTH):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    raw = "".join(reversed(chars))
    return f"{raw[:4]}-{raw[4:]}"


def parse_ticket(text: str) -> str | None:
    """Normalise a ticket as a resident typed it ("k7m4 qpxa", "K7M4QPXA") or return None."""
    cleaned = re.sub(r"[\s-]", "", text).upper().translate(_ALIASES)
    if len(cleaned) != TICKET_LENGTH:
        return None
    ticket = f"{cleaned[:4]}-{cleaned[4:]}"
    return ticket if _TICKET_RE.match(ticket) else None


def require_ticket(text: str) -> str:
    """``parse_ticket`` for a field that must hold one: the ticket, or ``ValueError`` saying what
    came instead (the validator of every model's ``request_id``, and the operator commands)."""
    ticket = parse_ticket(text)
    if ticket is None:
        raise ValueError(f"not a ticket number: {text!r}")
    return ticket


def find_ticket(text: str) -> str | None:
    """The first well-formed ticket inside free text (an email subject, an SMS), if any."""
    for match in _TICKET_IN_TEXT.finditer(text):
        candidate = match.group(1) + match.group(2)
        # A ticket always mixes digits and letters often enough; plain words are not tickets.
        if candidate.isalpha() or candidate.isdigit():
            continue
        ticket = parse_ticket(candidate)
        if ticket:
            return ticket
    return None


def event_id_for(request_id: str, contact_ids: list[str] | tuple[str, ...], revision: str = "") -> str:
    """Stable id of one request event: same request, same contacts, same revision -> same id."""
    return digest("event", request_id, *sorted(contact_ids), revision).hex()[:32]


def delivery_id_for(event_id: str, department: str, sink: str) -> str:
    """Stable id of one delivery attempt series; reused across retries so receivers can dedupe."""
    return digest("delivery", event_id, department, sink).hex()[:32]


def is_slug(value: str) -> bool:
    """Channel, department and sink names are lowercase slugs (they become topic names)."""
    return bool(_SLUG_RE.match(value))
