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


def test_several_namespaces_are_answered_at_once(tmp_path: Path) -> None:
    seen = SeenStore(tmp_path / "seen.sqlite3")
    seen.mark("roads/file", ["d1", "d2"])
    seen.mark("roads/file#dead-lettered", ["t:0:5"])
    wanted = {
        "roads/file": {"d1", "d3"},
        "roads/file#dead-lettered": {"t:0:5", "t:0:6"},
        "parks/file": {"d1"},
    }
    assert seen.unseen_many(wanted) == {
        "roads/file": {"d3"},
        "roads/file#dead-lettered": {"t:0:6"},
        "parks/file": {"d1"},  # no marks at all in that namespace: everything is unseen
    }
    assert seen.try_unseen_many(wanted) == seen.unseen_many(wanted)
    assert seen.unseen_many({"roads/file": set()}) == {"roads/file": set()}
    seen.close()


def test_the_event_loop_lookup_steps_aside_while_another_thread_holds_the_store(tmp_path: Path) -> None:
    """The sinks look up on the loop only when no thread is committing (a commit can fsync)."""
    seen = SeenStore(tmp_path / "seen.sqlite3")
    seen.mark("sink", ["a"])
    with seen._lock:  # what a mark in a worker thread holds while it commits
        assert seen.try_unseen_many({"sink": ["a", "b"]}) is None
    assert seen.try_unseen_many({"sink": ["a", "b"]}) == {"sink": {"b"}}
    seen.close()


def test_the_prune_says_when_it_is_due(tmp_path: Path) -> None:
    now = [0.0]
    seen = SeenStore(tmp_path / "seen.sqlite3", retention_s=10, prune_every_s=5, clock=lambda: now[0])
    assert not seen.prune_due()
    now[0] = 5.0
    assert seen.prune_due()
    seen.mark("sink", [])
    assert not seen.prune_due()
    assert not SeenStore(tmp_path / "kept.sqlite3", clock=lambda: now[0] + 1e9).prune_due()  # no retention
    seen.close()
