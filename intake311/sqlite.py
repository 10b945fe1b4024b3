"""Local state in SQLite: checkpoints, seen ids, conversation state, message maps.

One way to open it everywhere: WAL so several processes on a host can share a file (web
workers, a stage and its CLI), a busy timeout instead of "database is locked" errors, and
autocommit so each caller decides where its transactions are.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: Path, *, synchronous: str = "NORMAL", timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to ``path`` (parent directories created), in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


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
