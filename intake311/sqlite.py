"""Local state in SQLite: checkpoints, seen ids, conversation state, message maps.

One way to open it everywhere: WAL so several processes on a host can share a file (web
workers, a stage and its CLI), a busy timeout instead of "database is locked" errors, and
autocommit so each caller decides where its transactions are.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: Path, *, synchronous: str = "NORMAL", timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to ``path`` (parent directories created), in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    try:
        _wal(db, time.monotonic() + timeout_s)
        db.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        db.close()
        raise
    return db


def _wal(db: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL, waiting out a concurrent first open of the same new file.

    Why a loop: SQLite does not call the busy handler for the journal-mode change, so when
    several threads or processes open a file that does not exist yet (the web's first burst of
    submissions), all but one got "database is locked" at once, which surfaced as a 500.
    """
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


@contextmanager
def transaction(db: sqlite3.Connection, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """One transaction (one fsync) for a batch of writes; rolled back if the block raises.

    ``immediate`` takes the write lock at the start, so a read-decide-write block is not
    interleaved with another process's (two normalizers on one host deciding one incident).
    """
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
