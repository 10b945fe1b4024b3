"""The email channel's local state: IMAP checkpoints, acknowledgement counts, webhook tokens.

SQLite under the channel's data directory, so a restart neither re-reads a mailbox nor forgets
how many acknowledgements a sender already got. One kept connection (WAL): the web process
(webhooks) and the channels process (listener, poller) may share the file.
Addresses are stored as hashes: the state only needs to recognise a sender again.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from intake311.sqlite import KeptConnection

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
    """Every method is synchronous and short; async callers use ``run`` to keep the loop free.

    The statements run on one kept connection and its thread (``intake311.sqlite.KeptConnection``,
    as every local table): a connection per operation cost its open, the WAL switch and a close
    that checkpointed the WAL, about a millisecond each. Each method returns once its writes are
    committed, so the web process (webhooks) and the channels process (listener, poller) sharing
    the file see them; each runs in its own transaction (a read-then-write one included).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._db = KeptConnection(path, setup=_setup, name="email-state")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        """Close the kept connection once pending statements ran (it reopens on next use)."""
        self._db.close()

    # IMAP ---------------------------------------------------------------------------------------

    def checkpoint(self, mailbox: str) -> Checkpoint | None:
        def read(db: sqlite3.Connection) -> Checkpoint | None:
            row = db.execute(
                "SELECT uidvalidity, last_uid FROM imap_checkpoints WHERE mailbox = ?", (hashed(mailbox),)
            ).fetchone()
            return Checkpoint(*row) if row else None

        return self._db.call(read)

    def save_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        now = self.clock()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO imap_checkpoints (mailbox, uidvalidity, last_uid, updated_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,"
                " last_uid = excluded.last_uid, updated_at = excluded.updated_at",
                (hashed(mailbox), uidvalidity, last_uid, now),
            )

        self._db.call(write)

    # acknowledgement rate limit -------------------------------------------------------------------

    def allow_ack(self, sender: str, message: str, limit: int, window_s: float = 3600.0) -> bool:
        """True if ``sender`` may get an acknowledgement for ``message``.

        At most ``limit`` per sender in ``window_s``; the decision for one message is stored, so
        a retried message gets the same answer and does not use up the allowance. Read, decide
        and write are one transaction, which holds the write lock from its start
        (``KeptConnection``'s ``BEGIN IMMEDIATE``): another process's decision waits for it.
        """
        key, msg = hashed(sender.lower()), hashed(message)
        now = self.clock()

        def decide(db: sqlite3.Connection) -> bool:
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
            return allowed

        return self._db.call(decide)

    # webhook replay protection -------------------------------------------------------------------

    def claim_token(self, provider: str, token: str, ttl_s: float) -> bool:
        """Record a webhook token; False if it was used before (a replay)."""
        now = self.clock()

        def claim(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM webhook_tokens WHERE at < ?", (now - ttl_s,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_tokens (token, at) VALUES (?, ?)",
                (hashed(provider, token), now),
            )
            return cursor.rowcount == 1

        return self._db.call(claim)

    def release_token(self, provider: str, token: str) -> None:
        """Forget a token whose request failed, so the provider's retry is accepted."""

        def release(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM webhook_tokens WHERE token = ?", (hashed(provider, token),))

        self._db.call(release)


def _setup(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
