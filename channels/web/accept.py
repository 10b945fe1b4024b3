"""The one ordering rule of the web channel: on the bus first, then tell the resident.

A ticket shown before the broker acknowledged the contact could be a ticket for nothing, so
``accept`` returns True only after ``publish`` returned; the local record comes after that.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from starlette.requests import Request

from channels.base import ContactPublisher
from channels.web.lookup import AcceptedRecorder, RequestLookup
from intake311.logging import get_logger
from schemas.contact import RawContact
from schemas.ids import make_contact_id

log = get_logger("channels.web")

MAX_BODY_BYTES = 64 * 1024  # a 4,000-character description and a URL fit many times over


def contact_id_for(
    channel: str, request: Request, fallback_key: str | None = None, *, client: str = ""
) -> str:
    """``Idempotency-Key`` (or the page's own key) makes a retry the same contact; else a new one.

    The key is scoped by ``client`` (a hash of the API key), so two apps that happen to pick the
    same key do not collapse two residents' reports into one ticket.
    """
    key = request.headers.get("idempotency-key", "").strip()
    if key:
        scope = hashlib.sha256(client.encode()).hexdigest()[:12] if client else "anon"
        return make_contact_id(channel, f"{scope}.{key}")
    return make_contact_id(channel, fallback_key or uuid.uuid4().hex)


def now() -> datetime:
    return datetime.now(UTC)


async def read_form(request: Request) -> dict[str, str] | str:
    """The submitted text fields, or a reason to refuse the body (too large, malformed, files)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        return f"the request body is larger than {MAX_BODY_BYTES} bytes"
    try:
        form = await request.form(max_files=0, max_fields=100, max_part_size=MAX_BODY_BYTES)
    except Exception as exc:  # starlette turns multipart problems into HTTPException(400)
        return f"the form could not be read: {getattr(exc, 'detail', None) or exc}"
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


async def accept(
    contact: RawContact, publisher: ContactPublisher, lookup: RequestLookup, service_name: str | None
) -> bool:
    """Publish and, once acknowledged, record; False means nothing was accepted."""
    bound = log.bind(contact_id=contact.contact_id, request_id=contact.request_id, channel=contact.channel)
    try:
        await publisher.publish(contact)
    except Exception as exc:  # PublishError or anything else: the broker did not take it
        bound.warning("publish failed; contact refused", error=type(exc).__name__, detail=str(exc)[:500])
        return False
    bound.info(
        "contact accepted",
        sender=contact.sender.masked(),
        sender_kind=str(contact.sender.kind),
        service_code=contact.service_code,
    )
    if isinstance(lookup, AcceptedRecorder):
        try:
            await lookup.record(contact, service_name)
        except Exception:
            # The contact is on the bus, so the resident still gets the ticket; only GET suffers.
            bound.warning("accepted contact not recorded for lookups", exc_info=True)
    return True
