"""A social channel's local memory: where polling stopped, and which posts belong to which ticket.

SQLite under the channel's data directory, so a restart resumes after the last published
mention instead of re-reading (and re-answering) the whole timeline, and a resident's reply to
our acknowledgement finds its ticket. Author ids are stored as hashes: the store only needs to
recognise an author again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from intake311.sqlite import connect


def _author_key(author_id: str | None) -> str | None:
    if not author_id:
        return None
    return hashlib.sha256(f"intake311\x1fsocial\x1f{author_id}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Post:
    """A post we know: a resident's mention we ticketed, or our own reply."""

    ticket: str
    ours: bool
    continues: bool
    author_key: str | None

    def by(self, author_id: str | None) -> bool:
        """Whether ``author_id`` wrote this post."""
        key = _author_key(author_id)
        return key is not None and key == self.author_key


class SocialState:
    """Checkpoints and post -> ticket links of one social channel."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        # FULL: SQLite's default, which this store has always used (connect's default is NORMAL).
        self._db = connect(path, synchronous="FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checkpoint"
            " (name TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS post (id TEXT PRIMARY KEY, ticket TEXT NOT NULL,"
            " ours INTEGER NOT NULL, continues INTEGER NOT NULL, author TEXT, at REAL NOT NULL) WITHOUT ROWID"
        )

    def checkpoint(self, name: str = "since_id") -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM checkpoint WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_checkpoint(self, value: str, name: str = "since_id") -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO checkpoint (name, value, at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at",
                (name, value, time.time()),
            )

    def first_started(self) -> float:
        """When this channel first ran (set once): mentions before it are history, not reports."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoint (name, value, at) VALUES ('first_start', ?, ?)",
                (repr(time.time()), time.time()),
            )
            row = self._db.execute("SELECT value FROM checkpoint WHERE name = 'first_start'").fetchone()
        return float(row[0])

    def remember(
        self, post_id: str, ticket: str, *, ours: bool, continues: bool = False, author_id: str | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO post (id, ticket, ours, continues, author, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (post_id, ticket, int(ours), int(continues), _author_key(author_id), time.time()),
            )

    def post(self, post_id: str | None) -> Post | None:
        if not post_id:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT ticket, ours, continues, author FROM post WHERE id = ?", (post_id,)
            ).fetchone()
        return Post(row[0], bool(row[1]), bool(row[2]), row[3]) if row else None

    def prune(self, max_age_s: float) -> int:
        """Forget posts older than ``max_age_s``: a reply to a months-old post opens a new ticket."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM post WHERE at < ?", (time.time() - max_age_s,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
