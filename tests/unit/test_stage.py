"""The shared stage machinery: per-record dead letters and pauses between failed batches."""

from __future__ import annotations

import asyncio

import pytest

from intake311.bus import Outgoing
from intake311.stage import Record, pause_on_failure, process_batch
from schemas import DeadLetter


def test_a_bug_on_one_record_dead_letters_it_and_the_batch_goes_on() -> None:
    def handle(record: Record) -> list[Outgoing]:
        if record.value == b"boom":
            raise KeyError("classifier table")  # a bug, not an input error: still not a loop
        return [Outgoing("out", record.value)]

    records = [Record(b"a", offset=1), Record(b"boom", topic="in", offset=2), Record(b"c", offset=3)]
    out, rejected = process_batch(records, handle, stage="test", deadletter_topic="dlq")
    assert rejected == 1
    assert [(o.topic, o.value) for o in out if o.topic == "out"] == [("out", b"a"), ("out", b"c")]
    [letter] = [DeadLetter.model_validate_json(o.value) for o in out if o.topic == "dlq"]
    assert letter.error == "KeyError" and letter.original == b"boom" and letter.offset == 2


async def test_failed_batches_pause_longer_each_time_and_reset_after_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    outcomes = [RuntimeError("db down"), RuntimeError("db down"), None, RuntimeError("again")]

    async def handler() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    wrapped = pause_on_failure(handler, backoff_s=0.5, max_pause_s=30)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await wrapped()
    await wrapped()
    with pytest.raises(RuntimeError):
        await wrapped()
    assert pauses == [0.5, 1.0, 0.5]
    assert wrapped.__name__ == "handler"
