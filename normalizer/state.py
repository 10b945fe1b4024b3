"""The latest version of each request, so a follow-up contact can be merged into it.

Contacts of one request share a key (the ticket), so they arrive on one partition in order and
one normalizer instance sees them all. SQLite under the data directory survives restarts on a
host; when normalizers run on several hosts, point ``path`` at storage that moves with the
partition, or give them a shared store implementing the same two methods.
"""

from __future__ import annotations

import threading
from pathlib import Path

from intake311.sqlite import connect, transaction
from schemas.request import ServiceRequest


class RequestState:
    """request_id -> latest ServiceRequest the normalizer emitted."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        # synchronous=NORMAL: the topic is the durable record; a lost last batch is replayed.
        self._db = connect(path)
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
        with self._lock, transaction(self._db):
            self._db.executemany(
                "INSERT INTO requests (request_id, body) VALUES (?, ?)"
                " ON CONFLICT (request_id) DO UPDATE SET body = excluded.body",
                rows,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
