"""Local state in SQLite: checkpoints, seen ids, conversation state, message maps.

One way to open it everywhere: WAL so several processes on a host can share a file (web
workers, a stage and its CLI), a busy timeout instead of "database is locked" errors, and
autocommit so each caller decides where its transactions are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar


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


T = TypeVar("T")
_STOP = object()


class KeptConnection:
    """One kept connection to ``path`` and one thread running what callers hand it, in batches.

    Why: a connection per statement cost about 1 ms on the web's accept path (open, the WAL
    switch, and the close checkpointing the WAL) against tens of microseconds on a kept one,
    and a thread hop per statement was the next cost. Here every call runs on this object's
    one thread, in the order submitted; calls that arrive while a batch runs go into the next
    one, which runs in a single ``BEGIN IMMEDIATE`` transaction (one savepoint per call, so a
    failing call rolls back only its own writes) and is answered after its ``COMMIT``, one
    wake-up of the event loop per batch. So a caller hears back only once its writes are
    committed (a read afterwards, from any process, sees them), and two calls never
    interleave: a read-decide-write ``fn`` needs no lock of its own.

    Durability is ``connect()``'s: WAL with ``synchronous=NORMAL``, so a committed write
    survives a crash of the process; the last commits before a power cut may be lost, because
    nothing forces the WAL to disk at each commit (closing a connection per call checkpointed,
    and synced, every time).

    The connection is opened on first use with ``connect()`` then ``setup(db)`` (create tables,
    migrate) and closed after ``idle_s`` without work (its thread ends with it, and the next
    call starts both again), so an idle process holds no file open. A connection that failed
    to open, or whose transaction could not begin or commit, is reopened for the next batch.
    Safe to call from any thread and any event loop; after a fork the child starts its own.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None] | None = None,
        timeout_s: float = 10.0,
        synchronous: str = "NORMAL",
        idle_s: float = 5.0,
        max_batch: int = 256,
        name: str = "sqlite",
    ) -> None:
        self.path = path
        self._setup = setup
        self._timeout_s = timeout_s
        self._synchronous = synchronous
        self._idle_s = idle_s
        self._max_batch = max_batch
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _submit(self, item: Any) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread does not exist here
            self._reset()
        with self._lock:
            self._queue.put(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"{self._name}-writer", daemon=True)
                self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(db)`` on the kept connection, inside a committed transaction; its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit((fn, loop, future))
        return await future

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``run`` for synchronous callers (a CLI, a test); blocks until committed."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("KeptConnection.call from its own thread would wait for itself")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit((fn, None, future))
        return future.result()

    def close(self) -> None:
        """Close the connection once what was submitted before has run."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(_STOP)

    def _work(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                try:
                    first = self._queue.get(timeout=self._idle_s)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
                    continue
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                batch = [item for item in batch if item is not _STOP]
                if batch:
                    db = self._batch(db, batch)
                if stop:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
        finally:
            if db is not None:
                db.close()

    def _open(self) -> sqlite3.Connection:
        db = connect(self.path, synchronous=self._synchronous, timeout_s=self._timeout_s)
        try:
            if self._setup is not None:
                self._setup(db)
        except BaseException:
            db.close()
            raise
        return db

    def _batch(self, db: sqlite3.Connection | None, batch: list[Any]) -> sqlite3.Connection | None:
        """Run ``batch`` in one transaction and answer its callers; the connection to keep."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            if db is None:
                db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                for fn, _, _ in batch:
                    db.execute("SAVEPOINT call")
                    try:
                        outcomes.append((True, fn(db)))
                    except Exception as exc:
                        db.execute("ROLLBACK TO call")
                        outcomes.append((False, exc))
                    db.execute("RELEASE call")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except Exception as exc:  # nothing of this batch is committed: every caller hears why
            outcomes = [(False, exc)] * len(batch)
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()
                db = None
        by_loop: dict[Any, list[tuple[Any, bool, Any]]] = {}
        for (_, loop, future), (ok, value) in zip(batch, outcomes, strict=True):
            if loop is None:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            else:
                by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_answer, answers)
        return db


def _answer(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
