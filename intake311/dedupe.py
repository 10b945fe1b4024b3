"""A persistent "seen" set: how consumers make at-least-once delivery idempotent.

SQLite under the data directory: survives restarts, is shared by processes on one host, and
needs no server. Keys are namespaced (one namespace per consumer, e.g. a department's sink) so
the same event is delivered once to each sink, not once overall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

from intake311.sqlite import connect, transaction


class SeenStore:
    """Remembers which keys a consumer has fully processed."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (ns TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )

    def unseen(self, namespace: str, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` not yet marked in ``namespace``."""
        wanted = set(keys)
        if not wanted:
            return set()
        with self._lock:
            found: set[str] = set()
            items = list(wanted)
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key FROM seen WHERE ns = ? AND key IN ({marks})", (namespace, *chunk)
                )
                found.update(row[0] for row in rows)
        return wanted - found

    def mark(self, namespace: str, keys: Iterable[str]) -> None:
        now = time.time()
        rows = [(namespace, key, now) for key in keys]
        with self._lock, transaction(self._db):
            self._db.executemany("INSERT OR IGNORE INTO seen (ns, key, at) VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
