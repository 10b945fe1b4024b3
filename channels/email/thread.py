"""Which request a reply belongs to: our Message-IDs carry the ticket, and so do our subjects.

A resident who answers our acknowledgement (to add a photo, an address) must add to the same
request, not open a second ticket for the same pothole. Mail clients put our Message-ID in
In-Reply-To/References; people who write a new message can keep ``[311 #K7M4-QPXA]`` in the
subject. Either way the ticket comes back to us without any lookup table.
"""

from __future__ import annotations

import re

from schemas.ids import parse_ticket

_ACK_ID = re.compile(r"^<311\.([0-9A-Z]{4}-[0-9A-Z]{4})\.([0-9a-z]{4,64})@([^<>@\s]+)>$", re.IGNORECASE)
_SUBJECT_TOKEN = re.compile(
    r"\[\s*311\s*#\s*([0-9A-Za-z]{4}[- ]?[0-9A-Za-z]{4})\s*\]"
    r"|(?:#|\b(?:ticket|case|caso|n[uú]mero)\s*(?:no\.?|#|:)?\s*)([0-9A-Za-z]{4}-[0-9A-Za-z]{4})\b",
    re.IGNORECASE,
)
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|rv|res|tr|sv)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def ack_message_id(ticket: str, unique: str, domain: str) -> str:
    """``<311.K7M4-QPXA.<unique>@domain>``: a Message-ID a reply can be traced back through."""
    token = re.sub(r"[^0-9a-z]", "", unique.lower())[:16] or "0"
    return f"<311.{ticket}.{token}@{domain}>"


def ticket_from_ids(ids: tuple[str, ...] | list[str], domain: str) -> str | None:
    """The ticket in one of our Message-IDs among ``ids`` (newest first), if any."""
    for value in reversed(ids):
        match = _ACK_ID.match(value.strip())
        if match and match.group(3).lower() == domain.lower():
            ticket = parse_ticket(match.group(1))
            if ticket:
                return ticket
    return None


def ticket_from_subject(subject: str) -> str | None:
    """``[311 #K7M4-QPXA]``, ``#K7M4-QPXA`` or ``ticket K7M4-QPXA`` in a subject line."""
    for match in _SUBJECT_TOKEN.finditer(subject):
        ticket = parse_ticket(match.group(1) or match.group(2))
        if ticket:
            return ticket
    return None


def subject_token(ticket: str) -> str:
    """What we put in our subjects, so even a fresh message from the resident can continue."""
    return f"[311 #{ticket}]"


def clean_subject(subject: str) -> str:
    """The subject without reply prefixes or our ticket token (for the request's text)."""
    without = _SUBJECT_TOKEN.sub("", _REPLY_PREFIX.sub("", subject))
    return " ".join(without.split()).strip(" -:")
