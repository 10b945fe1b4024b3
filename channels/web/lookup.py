"""Answering Open311 ``GET requests``: the lookup protocol and the web channel's own record.

Until a case store exists, the web channel remembers what it accepted (and nothing else) so a
client that just posted a request can read it back. The record is written only after the
broker acknowledged the contact, so it never lists a request the pipeline does not have.

With ``retention_s`` the record is bounded: rows accepted longer ago than that are dropped, a
batch at a time and at most once per ``prune_every_s`` (from ``record``). A replayed contact of a
dropped row is recorded again (``ON CONFLICT DO NOTHING`` has nothing to keep), so the retention
must cover the topic retention plus the longest replay delay (``settings.retention``).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.sqlite import KeptConnection
from schemas.contact import RawContact
from schemas.open311 import REQUEST_FIELDS as REQUEST_FIELDS  # re-exported: older imports use it here

log = get_logger("channels.web")


class RequestLookup(Protocol):
    """Reads service requests as Open311 dicts (keys from ``REQUEST_FIELDS``).

    Datetime values may be ``datetime`` (aware) or ISO 8601 strings. Empty filter sequences
    mean "any"; dates bound ``requested_datetime`` inclusively. A dict may also carry
    ``extended_attributes`` (``districts`` layer -> name, ``incident_id``, ``incident_reports``,
    ``location_precision``, ``priority``, ``priority_reason``, ``emergency``), shown to clients
    that ask with ``extensions=true`` (``priority`` also top-level in JSON); a key left out is
    unknown, not zero.
    """

    async def get(self, request_id: str) -> dict[str, Any] | None:
        """One request by ticket (already normalised by ``parse_ticket``), or None."""
        ...

    async def search(
        self,
        *,
        service_request_ids: Sequence[str],
        service_code: Sequence[str],
        status: Sequence[str],
        start_date: datetime | None,
        end_date: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Matching requests, newest first, at most ``limit``."""
        ...


@runtime_checkable
class AcceptedRecorder(Protocol):
    """A lookup that also wants to hear about contacts this channel just got acknowledged."""

    async def record(self, contact: RawContact, service_name: str | None) -> None: ...


def _stamp(value: datetime) -> str:
    # Always UTC with microseconds: fixed width, so SQL string comparison orders correctly.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    request_id TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    service_code TEXT,
    service_name TEXT,
    description TEXT NOT NULL DEFAULT '',
    address TEXT,
    address_id TEXT,
    lat REAL,
    long REAL,
    media_url TEXT,
    requested_datetime TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    accepted_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS accepted_requested ON accepted (requested_datetime);
"""


def _migrate(conn: sqlite3.Connection, now: float) -> None:
    """``accepted_at`` came later: a file made before it gets the column, stamped ``now`` (so its
    rows age out from the upgrade), then the index pruning uses."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(accepted)").fetchall()}
    if "accepted_at" not in cols:
        conn.execute("ALTER TABLE accepted ADD COLUMN accepted_at REAL NOT NULL DEFAULT 0")
        conn.execute("UPDATE accepted SET accepted_at = ?", (now,))
    conn.execute("CREATE INDEX IF NOT EXISTS accepted_at ON accepted (accepted_at)")


class AcceptedRequests:
    """``RequestLookup`` over an SQLite file of what this web channel accepted.

    It answers what it can: status is always "open" because closing happens elsewhere; a later
    case store implements the same protocol with the real state.
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float | None = None,
        prune_every_s: float = 600.0,
        prune_batch: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.retention_s = retention_s  # None: keep every row
        self.prune_every_s = prune_every_s
        self.prune_batch = prune_batch
        self.clock = clock
        self._last_prune = clock()
        # One kept connection and one thread for every statement (not a connection per POST,
        # which cost ~1 ms each in the WAL checkpoint of its close): ``record`` returns once its
        # row is committed, so a GET right after, from this or another process, finds it.
        self._db = KeptConnection(path, setup=self._setup, name="accepted")

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        conn.executescript(_SCHEMA)
        _migrate(conn, self.clock())

    def prune(self) -> int:
        """Drop up to ``prune_batch`` rows accepted before ``retention_s`` ago; how many went."""
        if self.retention_s is None:
            return 0
        return self._db.call(self._prune)

    def _prune(self, conn: sqlite3.Connection) -> int:
        assert self.retention_s is not None
        now = self.clock()
        self._last_prune = now
        cur = conn.execute(
            "DELETE FROM accepted WHERE request_id IN (SELECT request_id FROM accepted"
            " WHERE accepted_at < ? ORDER BY accepted_at LIMIT ?)",
            (now - self.retention_s, self.prune_batch),
        )
        return max(cur.rowcount, 0)

    def _record(self, conn: sqlite3.Connection, params: Sequence[Any]) -> None:
        conn.execute(_INSERT, params)
        if self.retention_s is not None and self.clock() - self._last_prune >= self.prune_every_s:
            conn.execute("SAVEPOINT prune")
            try:
                self._prune(conn)
            except Exception:  # the record is written: a failed prune is retried next interval
                conn.execute("ROLLBACK TO prune")
                log.warning("accepted-requests prune failed", exc_info=True)
            conn.execute("RELEASE prune")

    def close(self) -> None:
        """Close the kept connection once pending statements ran (it reopens on next use)."""
        self._db.close()

    async def record(self, contact: RawContact, service_name: str | None) -> None:
        """Remember an acknowledged contact; a replay (same ticket) keeps the first record."""
        loc = contact.location
        media_url = contact.media[0].url if contact.media else None
        address_id = contact.metadata.get("address_id")
        params = (
            contact.request_id,
            contact.contact_id,
            contact.channel,
            contact.service_code,
            service_name,
            contact.text,
            loc.address if loc else None,
            str(address_id) if address_id is not None else None,
            loc.lat if loc else None,
            loc.long if loc else None,
            media_url,
            _stamp(contact.received_at),
            self.clock(),
        )
        await self._db.run(functools.partial(self._record, params=params))

    async def get(self, request_id: str) -> dict[str, Any] | None:
        return await self._db.run(functools.partial(_get, request_id=request_id))

    async def search(
        self,
        *,
        service_request_ids: Sequence[str],
        service_code: Sequence[str],
        status: Sequence[str],
        start_date: datetime | None,
        end_date: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (
            ("request_id", service_request_ids),
            ("service_code", service_code),
            ("status", status),
        ):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(values)
        if start_date is not None:
            where.append("requested_datetime >= ?")
            params.append(_stamp(start_date))
        if end_date is not None:
            where.append("requested_datetime <= ?")
            params.append(_stamp(end_date))
        sql = "SELECT * FROM accepted"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY requested_datetime DESC LIMIT ?"
        params.append(max(0, limit))
        return await self._db.run(functools.partial(_select, sql=sql, params=params))


def accepted_requests(settings: Settings) -> AcceptedRequests:
    """The web channel's ``AcceptedRequests`` under ``data_dir/web``, pruned per ``settings.retention``."""
    r = settings.retention
    return AcceptedRequests(
        settings.data_dir / "web" / "accepted.sqlite3",
        retention_s=r.state_s,
        prune_every_s=r.prune_every_s,
        prune_batch=r.prune_batch,
    )


_INSERT = (
    "INSERT INTO accepted (request_id, contact_id, channel, service_code, service_name,"
    " description, address, address_id, lat, long, media_url, requested_datetime, accepted_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING"
)


def _get(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM accepted WHERE request_id = ?", (request_id,)).fetchone()
    return _as_open311(row) if row is not None else None


def _select(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    return [_as_open311(row) for row in conn.execute(sql, params).fetchall()]


def _as_open311(row: sqlite3.Row) -> dict[str, Any]:
    requested = datetime.fromisoformat(row["requested_datetime"])
    return {
        "service_request_id": row["request_id"],
        "status": row["status"],
        "status_notes": None,
        "service_name": row["service_name"],
        "service_code": row["service_code"],
        "description": row["description"],
        "agency_responsible": None,
        "service_notice": None,
        "requested_datetime": requested,
        "updated_datetime": requested,
        "expected_datetime": None,
        "address": row["address"],
        "address_id": row["address_id"],
        "zipcode": None,
        "lat": row["lat"],
        "long": row["long"],
        "media_url": row["media_url"],
        # This process saw the contact, not what the pipeline made of it: no districts, incident
        # or precision yet, so nothing rather than a guess (the case store has the real ones).
        "extended_attributes": {},
    }
