"""The one ordering rule of the web channel: on the bus first, then tell the resident.

A ticket shown before the broker acknowledged the contact could be a ticket for nothing, so
``accept`` answers ``ACCEPTED`` only after ``publish`` returned; the local record comes after
that. A publish that timed out may still land (aiokafka cannot call a buffered record back), so
that answer is ``UNCERTAIN``, never "not created", and every retry of the same submission (same
``Idempotency-Key``, or without one the same content within ``RecentSubmissions.window``) gets
the same contact id, hence the same ticket and no second request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from starlette.requests import Request

from channels.base import ContactPublisher
from channels.web.lookup import AcceptedRecorder, RequestLookup
from intake311.bus import OutcomeUnknown
from intake311.logging import get_logger
from intake311.sqlite import connect
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


class RecentSubmissions:
    """Same content from the same client within ``window`` of the last try: the same contact id.

    Why: a client without an ``Idempotency-Key`` that got a 503 (or lost a 201 on the network)
    sends the same report again, and a fresh random contact id would make that a second request
    whenever the first one landed after all. The window slides (each retry extends it), so a
    client retrying through a long outage keeps its id. Two residents who send byte-identical
    reports within the window get one ticket: the same problem, reported alike, which the
    incident grouping would have joined anyway. The file is per web process: retries that a load
    balancer sends to another replica are not matched (clients should send Idempotency-Key).
    """

    def __init__(self, path: Path, window: timedelta = timedelta(minutes=30)) -> None:
        self.path = path
        self.window = window
        self._ready = False

    def _claim(self, fingerprint: str, candidate: str) -> str:
        with contextlib.closing(connect(self.path, timeout_s=10.0)) as db:
            if not self._ready:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS recent (fingerprint TEXT PRIMARY KEY,"
                    " contact_id TEXT NOT NULL, seen REAL NOT NULL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS recent_seen ON recent (seen)")
                self._ready = True
            stamp = time.time()
            cutoff = stamp - self.window.total_seconds()
            db.execute("DELETE FROM recent WHERE seen < ?", (cutoff,))
            # One statement, so two concurrent identical submissions agree on one id.
            row = db.execute(
                "INSERT INTO recent (fingerprint, contact_id, seen) VALUES (?, ?, ?)"
                " ON CONFLICT (fingerprint) DO UPDATE SET seen = excluded.seen RETURNING contact_id",
                (fingerprint, candidate, stamp),
            ).fetchone()
            return str(row[0])

    async def contact_id(self, fingerprint: str, candidate: str) -> str:
        """The id a recent identical submission got, else ``candidate`` (now remembered)."""
        return await asyncio.to_thread(self._claim, fingerprint, candidate)


_RECENT: dict[Path, RecentSubmissions] = {}


def recent_submissions(data_dir: Path) -> RecentSubmissions:
    """The web process's one ``RecentSubmissions`` under ``data_dir/web``."""
    path = data_dir / "web" / "recent.sqlite3"
    return _RECENT.setdefault(path, RecentSubmissions(path))


async def submission_id(
    channel: str,
    request: Request,
    content: Mapping[str, str],
    recent: RecentSubmissions,
    fallback_key: str | None = None,
    *,
    client: str = "",
    ignore: tuple[str, ...] = (),
) -> str:
    """``contact_id_for``, plus: without an ``Idempotency-Key``, a same-content retry keeps its id.

    ``content`` is the submitted form; ``ignore`` lists fields that differ between two sends of
    one report (the API key is the scope, the form page's random ``form_id`` changes on reload).
    An explicit key wins outright: the client said which submissions are one.
    """
    if request.headers.get("idempotency-key", "").strip():
        return contact_id_for(channel, request, client=client)
    scope = hashlib.sha256(client.encode()).hexdigest()[:12] if client else "anon"
    parts = [channel, scope] + [
        f"{k}={v.strip()}" for k, v in sorted(content.items()) if k not in ignore and v.strip()
    ]
    fingerprint = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    candidate = contact_id_for(channel, request, fallback_key, client=client)
    return await recent.contact_id(fingerprint, candidate)


def now() -> datetime:
    return datetime.now(UTC)


async def read_form(request: Request) -> dict[str, str] | str:
    """The submitted text fields, or a reason to refuse the body (malformed, files); the caller
    has capped its size already (``intake311.http.read_body``)."""
    try:
        form = await request.form(max_files=0, max_fields=100, max_part_size=MAX_BODY_BYTES)
    except Exception as exc:  # starlette turns multipart problems into HTTPException(400)
        return f"the form could not be read: {getattr(exc, 'detail', None) or exc}"
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


class Outcome(enum.Enum):
    """What ``accept`` can truthfully tell the client."""

    ACCEPTED = "accepted"  # acknowledged: show the ticket
    REFUSED = "refused"  # certainly not on the bus: "not created, try again"
    UNCERTAIN = "uncertain"  # may still be created under its ticket: "retry, same ticket"

    def __bool__(self) -> bool:
        # Only ACCEPTED is true, so a caller still written ``if not await accept(...)`` never
        # shows a ticket for an uncertain contact.
        return self is Outcome.ACCEPTED


async def accept(
    contact: RawContact, publisher: ContactPublisher, lookup: RequestLookup, service_name: str | None
) -> Outcome:
    """Publish and, once acknowledged, record; anything but ``ACCEPTED`` means no 2xx."""
    bound = log.bind(contact_id=contact.contact_id, request_id=contact.request_id, channel=contact.channel)
    try:
        await publisher.publish(contact)
    except OutcomeUnknown as exc:
        bound.warning("publish not acknowledged; contact may still arrive", detail=str(exc)[:500])
        return Outcome.UNCERTAIN
    except Exception as exc:  # PublishError or anything else: the broker did not take it
        bound.warning("publish failed; contact refused", error=type(exc).__name__, detail=str(exc)[:500])
        return Outcome.REFUSED
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
    return Outcome.ACCEPTED
