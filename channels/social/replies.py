"""What the city says in public: fixed templates and a personal-data guard.

A reply on a social network is public (or, on Mastodon, at least visible to the resident's
server), so it is built only from the ticket number, at most the service name, and a fixed
template. The resident's words never flow into it; ``personal_data_in`` is a last check for
messages that other stages queue on a social channel's outbound topic.
"""

from __future__ import annotations

import re

from schemas.messages import render, service_name

# X's limit; Mastodon allows 500 (the "@handle " it puts in front fits in the difference).
MAX_PUBLIC_REPLY = 280

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<!\w)\+?\d(?:[\s().-]*\d){6,}(?!\w)")
# Dates and times in a status update ("due 2026-11-05", "11/05/2026") are not phone numbers.
_DATES = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b")


def reply_text(
    ticket: str,
    language: str = "en",
    *,
    follow_up: bool = False,
    service: str | None = None,
    service_code: str | None = None,
    warning: str | None = None,
) -> str:
    """The public reply for a ticket: a fixed template, the ticket and at most the service name.

    ``service`` is the taxonomy's name, shown as ``service.<service_code>`` in the resident's
    language when there is one. ``warning`` ("call 911", from ``schemas.emergency.warning``) goes
    first; to stay within ``MAX_PUBLIC_REPLY`` the service name is dropped before anything else.
    """
    key = "social.follow_up" if follow_up else "social.acknowledge"
    name = service_name(service_code, language, service) if service else None
    for shown in (name, None):
        part = render("social.service", language, service=shown) if shown else ""
        text = render(key, language, ticket=ticket, service=part)
        if warning:
            text = f"{warning} {text}"
        if len(text) <= MAX_PUBLIC_REPLY:
            break
    return text


def personal_data_in(text: str) -> list[str]:
    """Kinds of personal data (``email``, ``phone``) that appear in ``text``; empty if none."""
    found = []
    if _EMAIL.search(text):
        found.append("email")
    if _PHONE.search(_DATES.sub(" ", text)):
        found.append("phone")
    return found


def strip_handle(text: str, handle: str) -> str:
    """Remove the city's own ``@handle`` (and ``@handle@instance``) from a mention's text."""
    local = handle.lstrip("@").split("@", 1)[0]
    if not local:
        return text.strip()
    pattern = re.compile(rf"(?<![\w@])@{re.escape(local)}(?:@[\w.-]*\w)?(?!\w)", re.IGNORECASE)
    stripped = pattern.sub(" ", text)
    lines = (" ".join(line.split()) for line in stripped.splitlines())
    return "\n".join(line for line in lines if line).strip()
