"""The garbage collector of a consuming process: tuned once, when its first stage registers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import intake311.stage as stage


@pytest.fixture
def fresh_gc(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A process whose collector was not tuned yet; what ``settle_gc`` called, in order."""
    calls: list[str] = []
    threshold = gc.get_threshold()
    monkeypatch.setattr(stage, "_gc_settled", False)
    monkeypatch.setattr(stage.gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(stage.gc, "freeze", lambda: calls.append("freeze"))
    gc.set_threshold(700, *threshold[1:])
    yield calls
    gc.set_threshold(*threshold)


def test_the_collector_is_tuned_once_per_process(fresh_gc: list[str]) -> None:
    stage.settle_gc()
    stage.settle_gc()  # the web stage and every consuming stage of ``up`` share one process
    assert fresh_gc == ["collect", "freeze"]  # start-up's objects: collected once, then frozen
    assert gc.get_threshold()[0] == stage.GC_YOUNG_THRESHOLD


def test_running_tunes_it_after_every_stage_registered_before_consuming() -> None:
    """``settle_gc`` sits between the stages' registration and ``broker.start`` in ``running``:
    what the last stage built is frozen too, and nothing was consumed yet."""
    import inspect

    from intake311 import pipeline

    source = inspect.getsource(pipeline.running)
    registered = source.index("await _load(STAGES[stage])(broker, settings, stack)")
    settled = source.index("settle_gc()")
    started = source.index("await broker.start()")
    assert registered < settled < started


def test_a_higher_threshold_someone_chose_is_kept(fresh_gc: list[str]) -> None:
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    stage.settle_gc()
    assert gc.get_threshold()[0] == 50_000
