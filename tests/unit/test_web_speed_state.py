"""The web's accept path without a connection per POST: ``KeptConnection`` and its two users."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from channels.web.accept import RecentSubmissions, random_key
from channels.web.lookup import AcceptedRequests
from intake311.sqlite import KeptConnection, connect
from schemas import make_contact_id
from tests.conftest import make_contact


def _table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")


def test_concurrent_calls_share_transactions_and_are_committed_when_answered(tmp_path: Path) -> None:
    kept = KeptConnection(tmp_path / "s.sqlite3", setup=_table)
    seen_by_other: list[int] = []

    def insert(i: int) -> int:
        def fn(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO t VALUES (?, ?)", (str(i), i))
            return threading.get_ident()

        return fn  # type: ignore[return-value]

    async def main() -> list[int]:
        idents = await asyncio.gather(*(kept.run(insert(i)) for i in range(200)))  # type: ignore[arg-type]
        other = connect(tmp_path / "s.sqlite3")  # another connection sees all of it at once
        seen_by_other.append(other.execute("SELECT count(*) FROM t").fetchone()[0])
        other.close()
        return idents

    idents = asyncio.run(main())
    assert seen_by_other == [200]
    assert len(set(idents)) == 1 and idents[0] != threading.get_ident()  # one thread, not the loop's
    kept.close()


def test_a_failing_call_rolls_back_only_its_own_writes(tmp_path: Path) -> None:
    kept = KeptConnection(tmp_path / "s.sqlite3", setup=_table)

    def good(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES ('a', 1)")

    def bad(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES ('b', 2)")
        raise ValueError("no")

    async def main() -> list[object]:
        return await asyncio.gather(kept.run(good), kept.run(bad), kept.run(good), return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and isinstance(results[1], ValueError)
    assert isinstance(results[2], sqlite3.IntegrityError)  # 'a' again: its own error, 'a' kept
    assert kept.call(lambda db: db.execute("SELECT k FROM t ORDER BY k").fetchall()) == [("a",)]
    kept.close()


def test_idle_connection_closes_and_reopens(tmp_path: Path) -> None:
    kept = KeptConnection(tmp_path / "s.sqlite3", setup=_table, idle_s=0.05)
    kept.call(lambda db: db.execute("INSERT INTO t VALUES ('a', 1)"))
    deadline = time.monotonic() + 5
    while kept._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kept._thread is None  # idle: thread and connection gone
    assert kept.call(lambda db: db.execute("SELECT count(*) FROM t").fetchone()[0]) == 1


def test_a_connection_that_cannot_open_fails_its_callers_and_is_retried(tmp_path: Path) -> None:
    attempts: list[int] = []

    def setup(db: sqlite3.Connection) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("disk I/O error (test)")
        _table(db)

    kept = KeptConnection(tmp_path / "s.sqlite3", setup=setup)
    with pytest.raises(sqlite3.OperationalError):
        kept.call(lambda db: db.execute("SELECT 1"))
    assert kept.call(lambda db: db.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    kept.close()


def test_concurrent_identical_submissions_get_one_id(tmp_path: Path) -> None:
    recent = RecentSubmissions(tmp_path / "recent.sqlite3")

    async def main() -> list[str]:
        return await asyncio.gather(*(recent.contact_id("same", f"open311:c{i}") for i in range(50)))

    ids = asyncio.run(main())
    assert len(set(ids)) == 1
    # Kept across a restart of the process (a new instance on the same file), within the window.
    again = RecentSubmissions(tmp_path / "recent.sqlite3")
    assert asyncio.run(again.contact_id("same", "open311:later")) == ids[0]
    assert asyncio.run(again.contact_id("other", "open311:new")) == "open311:new"
    recent.close()
    again.close()


def test_the_window_still_expires(tmp_path: Path) -> None:
    recent = RecentSubmissions(tmp_path / "recent.sqlite3", window=timedelta(seconds=0.05))
    assert asyncio.run(recent.contact_id("f", "open311:a")) == "open311:a"
    time.sleep(0.1)
    assert asyncio.run(recent.contact_id("f", "open311:b")) == "open311:b"
    recent.close()


def test_a_row_past_the_window_counts_as_absent_before_it_is_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "recent.sqlite3"
    recent = RecentSubmissions(path, window=timedelta(seconds=0.05))
    assert asyncio.run(recent.contact_id("f", "open311:a")) == "open311:a"  # the first claim prunes
    time.sleep(0.1)
    # Past the window, still in the table (the next prune is a minute away): a new submission.
    assert asyncio.run(recent.contact_id("f", "open311:b")) == "open311:b"
    assert asyncio.run(recent.contact_id("f", "open311:c")) == "open311:b"  # and the window slides
    with contextlib.closing(connect(path)) as db:
        assert db.execute("SELECT count(*) FROM recent").fetchone()[0] == 1
        db.execute("INSERT INTO recent VALUES ('old', 'open311:old', 0)")  # long past the window
    monkeypatch.setattr("channels.web.accept.PRUNE_EVERY_S", 0.0)
    assert asyncio.run(recent.contact_id("g", "open311:g")) == "open311:g"
    with contextlib.closing(connect(path)) as db:  # pruned: only the rows within the window are left
        assert {r[0] for r in db.execute("SELECT fingerprint FROM recent")} == {"f", "g"}
    recent.close()


def test_a_recorded_request_is_readable_at_once_from_another_process(tmp_path: Path) -> None:
    lookup = AcceptedRequests(tmp_path / "accepted.sqlite3")
    contact = make_contact(provider_id="fresh")
    asyncio.run(lookup.record(contact, "Pothole"))
    reader = AcceptedRequests(tmp_path / "accepted.sqlite3")  # its own connection, as another worker
    found = asyncio.run(reader.get(contact.request_id))
    assert found is not None and found["service_name"] == "Pothole"
    lookup.close()
    reader.close()


def test_random_keys_are_fresh_128_bit_hex() -> None:
    keys = {random_key() for _ in range(5000)}
    assert len(keys) == 5000
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    assert make_contact_id("open311", random_key()).startswith("open311:")
