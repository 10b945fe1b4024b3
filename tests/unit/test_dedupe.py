"""The seen set: what a replayed (rewound) batch is answered, in one query per batch."""

from __future__ import annotations

from pathlib import Path

from intake311.dedupe import SeenStore


def test_a_rewound_batch_is_answered_with_only_what_was_not_marked(tmp_path: Path) -> None:
    seen = SeenStore(tmp_path / "seen.sqlite3")
    batch = [f"d{i}" for i in range(1_200)]  # more keys than one IN (...) query holds
    assert seen.unseen("roads/file", batch) == set(batch)
    seen.mark("roads/file", batch[:700])  # delivered before a crash; the rest never were
    assert seen.unseen("roads/file", batch) == set(batch[700:])
    assert seen.unseen("parks/file", batch) == set(batch)  # namespaces stay apart
    seen.mark("roads/file", batch)  # the redelivery marks all of it again: no error, no copies
    assert seen.unseen("roads/file", batch + batch) == set()
    assert seen.count() == 1_200
    seen.close()


def test_marking_nothing_changes_nothing_and_still_prunes(tmp_path: Path) -> None:
    now = [0.0]
    seen = SeenStore(tmp_path / "seen.sqlite3", retention_s=10, prune_every_s=5, clock=lambda: now[0])
    seen.mark("sink", ["old"])
    seen.mark("sink", [])
    assert seen.count() == 1
    now[0] = 20.0
    seen.mark("sink", [])  # a batch with nothing to mark is still the prune's occasion
    assert seen.count() == 0
    seen.close()
