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

import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from intake311.logging import get_logger
from intake311.sqlite import connect, transaction

log = get_logger(__name__)

_ANY_MARK = "SELECT 1 FROM seen WHERE ns = ? LIMIT 1"
_MARK_ROWS = 100
"""Rows per ``INSERT`` of ``mark``. Why not ``executemany``: it runs a statement per row, and the
sqlite3 module lets go of the GIL around each; a ``mark`` in a worker thread then waited for
the GIL 500 times per batch while the event loop was busy (every other consumer's work) and the
loop thread was made to give it up as often. A hundred rows (300 parameters, under the 999 of
old SQLite builds) per statement: five hand-overs for a default batch."""


@functools.lru_cache(maxsize=_MARK_ROWS)
def _mark_sql(rows: int) -> str:
    return "INSERT OR IGNORE INTO seen (ns, key, at) VALUES " + ",".join(["(?, ?, ?)"] * rows)


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
        return self.unseen_many({namespace: keys})[namespace]

    def unseen_many(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
        """``unseen`` for several namespaces at once (one lock, one thread hop for the caller)."""
        with self._lock:
            return self._unseen_many(wanted)

    def try_unseen_many(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, set[str]] | None:
        """``unseen_many`` on the caller's thread if nobody holds the store, else None.

        For the event loop: a lookup only reads, and a read never checkpoints the WAL (only a
        commit does, and that fsyncs), so it cannot stall the loop on the disk; what could stall
        it is waiting for the lock while another thread's ``mark`` commits, hence None then
        (the caller hops to a thread). Saves a thread hop, and the GIL hand-overs around it,
        per batch.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._unseen_many(wanted)
        finally:
            self._lock.release()

    def _unseen_many(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for namespace, keys in wanted.items():
            want = set(keys)
            out[namespace] = want
            # A namespace with no marks at all (the dead letters of a sink that never refused
            # anything): one index probe instead of looking up every key.
            if not want or self._db.execute(_ANY_MARK, (namespace,)).fetchone() is None:
                continue
            found: set[str] = set()
            items = list(want)
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key FROM seen WHERE ns = ? AND key IN ({marks})", (namespace, *chunk)
                )
                found.update(row[0] for row in rows)
            want -= found
        return out

    def mark(self, namespace: str, keys: Iterable[str]) -> None:
        """Remember ``keys`` in ``namespace``: one transaction for all of them (none if empty,
        which is most batches' dead letters)."""
        now = self.clock()
        items = list(keys)
        if items:
            with self._lock, transaction(self._db):
                for start in range(0, len(items), _MARK_ROWS):
                    chunk = items[start : start + _MARK_ROWS]
                    self._db.execute(
                        _mark_sql(len(chunk)), [v for key in chunk for v in (namespace, key, now)]
                    )
        if self.retention_s is not None and now - self._last_prune >= self.prune_every_s:
            try:
                self.prune()
            except Exception:  # the marks are committed: a failed prune is retried next interval
                log.warning("seen-id prune failed", exc_info=True)

    def prune_due(self) -> bool:
        """Whether the next ``mark`` prunes (so a caller with nothing to mark still calls it)."""
        return self.retention_s is not None and self.clock() - self._last_prune >= self.prune_every_s

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
