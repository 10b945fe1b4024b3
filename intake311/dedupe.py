"""A persistent "seen" set: how consumers make at-least-once delivery idempotent.

SQLite under the data directory: survives restarts, is shared by processes on one host, and
needs no server. Keys are namespaced (one namespace per consumer, e.g. a department's sink) so
the same event is delivered once to each sink, not once overall.

With ``retention_s`` the set is bounded: marks older than that are dropped, a batch at a time, at
most once per ``prune_every_s`` (from ``mark``). Correct as long as ``retention_s`` covers the
topic retention plus the longest replay delay: a record that can still be redelivered is still
marked (``settings.retention.state_days``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from intake311.logging import get_logger
from intake311.sqlite import connect, transaction

log = get_logger(__name__)


class SeenStore:
    """Remembers which keys a consumer has fully processed."""

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float | None = None,
        prune_every_s: float = 600.0,
        prune_batch: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (ns TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (ns, key)) WITHOUT ROWID"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_at ON seen (at)")
        self.retention_s = retention_s  # None: keep every mark
        self.prune_every_s = prune_every_s
        self.prune_batch = prune_batch
        self.clock = clock
        self._last_prune = clock()

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
        """Remember ``keys`` in ``namespace``: one transaction for all of them (none if empty,
        which is most batches' dead letters)."""
        now = self.clock()
        rows = [(namespace, key, now) for key in keys]
        if rows:
            with self._lock, transaction(self._db):
                self._db.executemany("INSERT OR IGNORE INTO seen (ns, key, at) VALUES (?, ?, ?)", rows)
        if self.retention_s is not None and now - self._last_prune >= self.prune_every_s:
            try:
                self.prune()
            except Exception:  # the marks are committed: a failed prune is retried next interval
                log.warning("seen-id prune failed", exc_info=True)

    def prune(self) -> int:
        """Drop up to ``prune_batch`` marks older than ``retention_s``; how many went."""
        if self.retention_s is None:
            return 0
        now = self.clock()
        with self._lock, transaction(self._db):
            self._last_prune = now
            cur = self._db.execute(
                "DELETE FROM seen WHERE (ns, key) IN"
                " (SELECT ns, key FROM seen WHERE at < ? ORDER BY at LIMIT ?)",
                (now - self.retention_s, self.prune_batch),
            )
            return max(cur.rowcount, 0)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
