"""``intake311.sqlite.connect``: the one way local state is opened."""

from __future__ import annotations

import threading
from pathlib import Path

from intake311.sqlite import connect


def test_a_burst_of_first_opens_of_a_new_file_all_succeed(tmp_path: Path) -> None:
    # The web stage's first burst of submissions opens recent.sqlite3 from several threads at
    # once; the WAL switch does not wait on SQLite's busy handler, and losers answered 500.
    errors: list[BaseException] = []
    for trial in range(200):
        path = tmp_path / f"t{trial}" / "state.sqlite3"

        def claim(i: int, path: Path = path) -> None:
            try:
                db = connect(path, timeout_s=10)
                try:
                    db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
                    db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (str(i),))
                finally:
                    db.close()
            except BaseException as exc:  # collected: the assertion below names them
                errors.append(exc)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        db = connect(path)
        assert db.execute("SELECT count(*) FROM seen").fetchone()[0] == 8 or errors
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
    assert errors == []
