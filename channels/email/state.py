"""The email channel's local state: IMAP checkpoints, acknowledgement counts, webhook tokens.

SQLite under the channel's data directory, so a restart neither re-reads a mailbox nor forgets
how many acknowledgements a sender already got. One short connection per operation (WAL): the
web process (webhooks) and the channels process (listener, poller) may share the file.
Addresses are stored as hashes: the state only needs to recognise a sender again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from intake311.sqlite import connect

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS imap_checkpoints (
    mailbox TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL,
    updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    sender TEXT NOT NULL, message TEXT NOT NULL, allowed INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (sender, message)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS acks_by_time ON acks (sender, at);
CREATE TABLE IF NOT EXISTS webhook_tokens (
    token TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
"""


def hashed(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(("intake311-email", *parts)).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int


class EmailState:
    """Every method is synchronous and short; async callers use ``run`` to keep the loop free."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(connect(self.path))

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(fn, *args)

    # IMAP ---------------------------------------------------------------------------------------

    def checkpoint(self, mailbox: str) -> Checkpoint | None:
        with self._db() as db:
            row = db.execute(
                "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE mailbox = ?", (hashed(mailbox),)
            ).fetchone()
        return Checkpoint(*row) if row else None

    def save_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO imap_checkpoints (mailbox, uidvalidity, last_uid, updated_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,"
                " last_uid = excluded.last_uid, updated_at = excluded.updated_at",
                (hashed(mailbox), uidvalidity, last_uid, self.clock()),
            )

    # acknowledgement rate limit -------------------------------------------------------------------

    def allow_ack(self, sender: str, message: str, limit: int, window_s: float = 3600.0) -> bool:
        """True if ``sender`` may get an acknowledgement for ``message``.

        At most ``limit`` per sender in ``window_s``; the decision for one message is stored, so
        a retried message gets the same answer and does not use up the allowance.
        """
        key, msg = hashed(sender.lower()), hashed(message)
        now = self.clock()
        with self._db() as db:
            # IMMEDIATE: read-then-write; another process's write in between must be waited for.
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT allowed FROM acks WHERE sender = ? AND message = ?", (key, msg)
                ).fetchone()
                if row is not None:
                    allowed = bool(row[0])
                else:
                    (sent,) = db.execute(
                        "SELECT COUNT(*) FROM acks WHERE sender = ? AND allowed = 1 AND at > ?",
                        (key, now - window_s),
                    ).fetchone()
                    allowed = sent < limit
                    db.execute(
                        "INSERT INTO acks (sender, message, allowed, at) VALUES (?, ?, ?, ?)",
                        (key, msg, int(allowed), now),
                    )
                db.execute("DELETE FROM acks WHERE at < ?", (now - max(window_s, 86400.0),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return allowed

    # webhook replay protection -------------------------------------------------------------------

    def claim_token(self, provider: str, token: str, ttl_s: float) -> bool:
        """Record a webhook token; False if it was used before (a replay)."""
        now = self.clock()
        with self._db() as db:
            db.execute("DELETE FROM webhook_tokens WHERE at < ?", (now - ttl_s,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_tokens (token, at) VALUES (?, ?)",
                (hashed(provider, token), now),
            )
            return cursor.rowcount == 1

    def release_token(self, provider: str, token: str) -> None:
        """Forget a token whose request failed, so the provider's retry is accepted."""
        with self._db() as db:
            db.execute("DELETE FROM webhook_tokens WHERE token = ?", (hashed(provider, token),))
