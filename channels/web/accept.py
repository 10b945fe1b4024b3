"""The one ordering rule of the web channel: on the bus first, then tell the resident.

A ticket shown before the broker acknowledged the contact could be a ticket for nothing, so
``accept`` answers ``ACCEPTED`` only after ``publish`` returned; the local record comes after
that. A publish that timed out may still land (aiokafka cannot call a buffered record back), so
that answer is ``UNCERTAIN``, never "not created", and every retry of the same submission (same
``Idempotency-Key``, or without one the same content within ``RecentSubmissions.window``) gets
the same contact id, hence the same ticket and no second request.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from channels.base import ContactPublisher
from channels.web.lookup import RequestLookup
from channels.web.parse import Form
from intake311.bus import OutcomeUnknown
from intake311.logging import Tally, get_logger
from intake311.sqlite import KeptConnection
from schemas.contact import RawContact
from schemas.ids import make_contact_id

log = get_logger("channels.web")
_STDLIB_LOG = logging.getLogger("channels.web")  # what ``log`` writes to: its level decides

MAX_BODY_BYTES = 64 * 1024  # a 4,000-character description and a URL fit many times over
PRUNE_EVERY_S = 60.0  # how often RecentSubmissions deletes the rows past its window


def contact_id_for(
    channel: str, request: Request, fallback_key: str | None = None, *, client: str = ""
) -> str:
    """``Idempotency-Key`` (or the page's own key) makes a retry the same contact; else a new one.

    The key is scoped by ``client`` (a hash of the API key), so two apps that happen to pick the
    same key do not collapse two residents' reports into one ticket.
    """
    key = request.headers.get("idempotency-key", "").strip()
    if key:
        return make_contact_id(channel, f"{client_scope(client)}.{key}")
    return make_contact_id(channel, fallback_key or random_key())


@functools.lru_cache(maxsize=64)
def client_scope(client: str) -> str:
    """The scope of a client's keys and fingerprints: its API key's hash, or ``anon``.

    Cached: only API keys that passed the check get here, so these are the city's few keys.
    """
    return hashlib.sha256(client.encode()).hexdigest()[:12] if client else "anon"


def random_key() -> str:
    """128 random bits as hex: a fresh submission's contact id.

    Drawn per call, never from a pool: a pool inherited across a fork (web workers) would give
    two processes the same ids, and two residents' reports one ticket.
    """
    return os.urandom(16).hex()


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
        # One kept connection and one thread (``KeptConnection``): a connection per submission
        # cost ~1 ms in its close's WAL checkpoint. Claims run one at a time, in order, and are
        # answered after their commit, so the window survives a restart of the process and two
        # concurrent identical submissions (or another web process on the same file) agree.
        self._db = KeptConnection(path, setup=_recent_table, name="recent")
        self._pruned_at = 0.0  # only ever read and written on the connection's thread

    def _claim(self, db: sqlite3.Connection, fingerprint: str, candidate: str) -> str:
        stamp = time.time()
        cutoff = stamp - self.window.total_seconds()
        # Rows past the window are deleted at most once per ``PRUNE_EVERY_S`` (a DELETE per
        # claim was one of its four statements, ~6 µs on the writer's thread); until then the
        # upsert itself treats such a row as absent: the candidate replaces its id. One
        # statement, so two concurrent identical submissions agree on one id.
        if stamp - self._pruned_at >= PRUNE_EVERY_S:
            db.execute("DELETE FROM recent WHERE seen < ?", (cutoff,))
            self._pruned_at = stamp
        row = db.execute(
            "INSERT INTO recent (fingerprint, contact_id, seen) VALUES (?, ?, ?)"
            " ON CONFLICT (fingerprint) DO UPDATE SET seen = excluded.seen,"
            " contact_id = CASE WHEN recent.seen < ? THEN excluded.contact_id ELSE recent.contact_id END"
            " RETURNING contact_id",
            (fingerprint, candidate, stamp, cutoff),
        ).fetchone()
        return str(row[0])

    async def contact_id(self, fingerprint: str, candidate: str) -> str:
        """The id a recent identical submission got, else ``candidate`` (now remembered)."""
        claim = functools.partial(self._claim, fingerprint=fingerprint, candidate=candidate)
        return await self._db.run(claim)

    def close(self) -> None:
        """Close the kept connection once pending claims ran (it reopens on next use)."""
        self._db.close()


def _recent_table(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS recent (fingerprint TEXT PRIMARY KEY,"
        " contact_id TEXT NOT NULL, seen REAL NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS recent_seen ON recent (seen)")


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
    parts = [channel, client_scope(client)] + [
        f"{k}={v.strip()}" for k, v in sorted(content.items()) if k not in ignore and v.strip()
    ]
    fingerprint = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    candidate = contact_id_for(channel, request, fallback_key, client=client)
    return await recent.contact_id(fingerprint, candidate)


def now() -> datetime:
    return datetime.now(UTC)


MAX_FIELDS = 100  # the web form has six, GeoReport v2 about twenty
URLENCODED = "application/x-www-form-urlencoded"


async def read_form(request: Request, max_fields: int = MAX_FIELDS) -> Form | str:
    """The submitted text fields, or a reason to refuse the body (malformed, files); the caller
    has capped its size already (``intake311.http.read_body``). ``max_fields``: the resident
    form passes more (``form_field_limit``), as it carries every service's questions.

    A url-encoded body (what every Open311 client and the resident form send) is parsed here
    from the bytes already read (``parse_urlencoded``); only multipart goes through Starlette's
    form machinery, which cost ~60 µs a POST for a four-field form.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == URLENCODED:
        return parse_urlencoded(await request.body(), max_fields)
    try:
        form = await request.form(max_files=0, max_fields=max_fields, max_part_size=MAX_BODY_BYTES)
    except Exception as exc:  # starlette turns multipart problems into HTTPException(400)
        return f"the form could not be read: {getattr(exc, 'detail', None) or exc}"
    return Form((key, value) for key, value in form.multi_items() if isinstance(value, str))


def parse_urlencoded(body: bytes, max_fields: int = MAX_FIELDS) -> Form | str:
    """An ``application/x-www-form-urlencoded`` body as fields, or the reason it cannot be read.

    What Starlette's parser gives for the same body, except where it would alter the report
    silently: bytes (raw or %-escaped) that are not UTF-8 are refused with this reason instead
    of becoming U+FFFD, and raw (unescaped) UTF-8 is read as UTF-8, not as Latin-1 mojibake;
    more than ``max_fields`` fields is refused, as it is for multipart. A key given twice keeps
    its last value (as before); blank values are kept (``a=&b=1``), as Starlette keeps them.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the form could not be read: it is not UTF-8 (byte {exc.start})"
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=max_fields
        )
    except UnicodeDecodeError:
        return "the form could not be read: a %-escaped value is not UTF-8"
    except ValueError:
        return f"the form could not be read: more than {max_fields} fields"
    return Form(pairs)


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
    try:
        await publisher.publish(contact)
    except OutcomeUnknown as exc:
        _bound(contact).warning("publish not acknowledged; contact may still arrive", detail=str(exc)[:500])
        return Outcome.UNCERTAIN
    except Exception as exc:  # PublishError or anything else: the broker did not take it
        _bound(contact).warning(
            "publish failed; contact refused", error=type(exc).__name__, detail=str(exc)[:500]
        )
        return Outcome.REFUSED
    # Debug, not info: one rendered line cost ~250 µs (redaction runs every PII pattern over
    # every field), a fifth of a POST at full load. The record of what was accepted is the
    # contacts topic itself (acks=all, the contact with its ids and time) and the accepted
    # table; an operator keeps an info line a minute with the count (``ACCEPTED_LOG``), and every
    # refusal or unknown outcome above stays a warning with its contact and ticket.
    if _STDLIB_LOG.isEnabledFor(logging.DEBUG):
        # Asked first: structlog's ``debug`` below the level still built its event and ran
        # ``filter_by_level`` (~12 µs); the stdlib check is cached by ``logging`` (~0.1 µs).
        log.debug(
            "contact accepted",
            contact_id=contact.contact_id,
            request_id=contact.request_id,
            channel=contact.channel,
            sender_kind=contact.sender.kind,
            service_code=contact.service_code,
        )
    ACCEPTED_LOG.add(contact.channel, accepted=1)
    # ``isinstance`` against the runtime-checkable protocol cost ~10 µs a call; it only asks
    # whether there is a ``record``, and so does this.
    record = getattr(lookup, "record", None)
    if record is not None:
        try:
            await record(contact, service_name)
        except Exception:
            # The contact is on the bus, so the resident still gets the ticket; only GET suffers.
            _bound(contact).warning("accepted contact not recorded for lookups", exc_info=True)
    return Outcome.ACCEPTED


def _bound(contact: RawContact) -> Any:
    return log.bind(contact_id=contact.contact_id, request_id=contact.request_id, channel=contact.channel)


ACCEPTED_LOG = Tally(log, "contacts accepted", by="by_channel")
