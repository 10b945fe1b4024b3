"""The latest version of each request, so a follow-up contact can be merged into it.

Contacts of one request share a key (the ticket), so they arrive on one partition in order and
one normalizer instance sees them all. SQLite under the data directory survives restarts on a
host; when normalizers run on several hosts, point ``path`` at storage that moves with the
partition, or give them a shared store implementing the same two methods.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from schemas.request import ServiceRequest


class RequestState:
    """request_id -> latest ServiceRequest the normalizer emitted."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The topic is the durable record; after a crash a lost last batch is rebuilt on replay.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, body TEXT NOT NULL)"
        )

    def get_many(self, request_ids: set[str]) -> dict[str, ServiceRequest]:
        if not request_ids:
            return {}
        ids = list(request_ids)
        out: dict[str, ServiceRequest] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._db.execute(
                    f"SELECT body FROM requests WHERE request_id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for (body,) in rows:
                    request = ServiceRequest.model_validate_json(body)
                    out[request.request_id] = request
        return out

    def put_many(self, requests: list[ServiceRequest]) -> None:
        """One transaction per batch: one fsync, not one per request."""
        rows = [(r.request_id, r.model_dump_json()) for r in requests]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO requests (request_id, body) VALUES (?, ?)"
                    " ON CONFLICT (request_id) DO UPDATE SET body = excluded.body",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
