"""Offset commits at most once an interval (intake311.commits), against a recording consumer.

What must hold: only a handled batch's own offsets are ever committed, pending ones are committed
before a revoke and at close, a batch from before a revoke or from a discarded consumer commits
nothing, and a failing commit never fails the batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from aiokafka import TopicPartition

from intake311.commits import OffsetCommits, batch_offsets, close_all, commits_of, discard_all

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


@dataclass
class Raw:
    topic: str
    partition: int
    offset: int


class Consumer:
    """What OffsetCommits uses of an aiokafka consumer: assignment, commit(offsets), seek."""

    def __init__(self, assigned: set[TopicPartition] | None = None, fail: Exception | None = None) -> None:
        self.assigned = assigned if assigned is not None else {A0, A1}
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.fail = fail

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail is not None:
            raise self.fail
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


def raws(partition: int, *offsets: int) -> list[Raw]:
    return [Raw("a", partition, o) for o in offsets]


async def ack(commits: OffsetCommits, consumer: Any, batch: list[Raw]) -> None:
    await commits.batch(consumer, batch).commit()


def test_batch_offsets_are_the_highest_record_plus_one_per_partition() -> None:
    assert batch_offsets([*raws(0, 5, 3, 4), *raws(1, 9)]) == {A0: 6, A1: 10}
    assert batch_offsets([]) == {}


async def test_first_batch_commits_at_once_and_later_ones_once_the_interval_is_up() -> None:
    consumer = Consumer()
    commits = OffsetCommits(0.2)
    await ack(commits, consumer, raws(0, 0))
    assert consumer.commits == [{A0: 1}]
    await ack(commits, consumer, raws(0, 1, 2))
    await ack(commits, consumer, raws(1, 7))
    assert consumer.commits == [{A0: 1}]  # waiting: within the interval
    assert commits.pending == {A0: 3, A1: 8}
    await asyncio.sleep(0.35)  # the timer commits without another batch
    assert consumer.commits == [{A0: 1}, {A0: 3, A1: 8}]
    assert commits.pending == {}


async def test_interval_zero_commits_every_batch_with_its_own_offsets() -> None:
    consumer = Consumer()
    commits = OffsetCommits(0)
    await ack(commits, consumer, raws(0, 0, 1))
    await ack(commits, consumer, raws(1, 4))
    assert consumer.commits == [{A0: 2}, {A1: 5}]


async def test_a_rewound_batch_records_nothing_and_seeks_through_aiokafka() -> None:
    consumer = Consumer()
    commits = OffsetCommits(60)
    handle = commits.batch(consumer, raws(0, 3, 4))
    handle.seek(A0, 3)  # FastStream's nack of a failed batch
    assert consumer.seeks == [(A0, 3)]
    assert consumer.commits == [] and commits.pending == {}


async def test_revoke_commits_pending_and_a_batch_from_before_it_commits_at_once() -> None:
    consumer = Consumer()
    commits = OffsetCommits(60)
    await ack(commits, consumer, raws(0, 0))
    in_flight = commits.batch(consumer, raws(1, 5))  # parsed before the rebalance, acked after
    await ack(commits, consumer, raws(0, 1))
    await commits.on_partitions_revoked({A0, A1})
    assert consumer.commits == [{A0: 1}, {A0: 2}]
    await in_flight.commit()  # still held (the group is rebalancing): committed, not left pending
    assert consumer.commits == [{A0: 1}, {A0: 2}, {A1: 6}]
    after = commits.batch(consumer, raws(1, 6))  # fetched in the new generation: waits as usual
    await after.commit()
    assert consumer.commits[-1] == {A1: 6} and commits.pending == {A1: 7}


async def test_a_batch_from_before_a_revoke_skips_the_partitions_given_away() -> None:
    consumer = Consumer()
    commits = OffsetCommits(60)
    await ack(commits, consumer, raws(0, 0))
    in_flight = commits.batch(consumer, raws(1, 5))
    await commits.on_partitions_revoked({A0, A1})
    consumer.assigned = {A0}  # the new assignment gave a-1 to another member
    await in_flight.commit()
    assert consumer.commits == [{A0: 1}]  # a-1's new owner starts from its last commit


async def test_partitions_no_longer_assigned_are_not_committed() -> None:
    consumer = Consumer()
    commits = OffsetCommits(60)
    await ack(commits, consumer, raws(0, 0))
    await ack(commits, consumer, [*raws(0, 1), *raws(1, 2)])
    consumer.assigned = {A1}
    await commits.flush()
    assert consumer.commits == [{A0: 1}, {A1: 3}]


async def test_close_commits_pending_and_every_later_batch_at_once() -> None:
    consumer = Consumer()
    commits = OffsetCommits(60)
    await ack(commits, consumer, raws(0, 0))
    await ack(commits, consumer, raws(0, 1))
    await commits.close()
    assert consumer.commits == [{A0: 1}, {A0: 2}]
    await ack(commits, consumer, raws(0, 2))  # a batch finishing while the stage stops
    assert consumer.commits[-1] == {A0: 3}


async def test_discarded_offsets_are_never_committed() -> None:
    old = Consumer()
    commits = OffsetCommits(60)
    await ack(commits, old, raws(0, 0))
    await ack(commits, old, raws(0, 1, 2))
    commits.discard()
    await commits.close()
    await ack(commits, old, raws(0, 3))  # the old consumer's last batch, after the broker came back empty
    assert old.commits == [{A0: 1}]
    new = Consumer()
    await ack(commits, new, raws(0, 0))
    assert new.commits == [{A0: 1}]


async def test_a_new_consumer_drops_what_the_old_one_left_pending() -> None:
    old, new = Consumer(), Consumer()
    commits = OffsetCommits(60)
    await ack(commits, old, raws(0, 0))
    await ack(commits, old, raws(0, 1, 2, 3))
    await ack(commits, new, raws(1, 0))
    await commits.close()
    assert old.commits == [{A0: 1}]
    assert new.commits == [{A1: 1}]


async def test_a_failed_commit_is_logged_not_raised() -> None:
    consumer = Consumer(fail=RuntimeError("group rebalanced"))
    commits = OffsetCommits(0, group="intake311.router")
    with structlog.testing.capture_logs() as logs:
        await ack(commits, consumer, raws(0, 0))
    assert commits.pending == {}
    [line] = [e for e in logs if e["event"].startswith("offset commit failed")]
    assert line["log_level"] == "warning" and line["group"] == "intake311.router"
    assert "group rebalanced" in line["error"]


async def test_without_an_aiokafka_consumer_the_batch_commits_as_faststream_does() -> None:
    class TestBrokerConsumer:  # FastStream's test broker: commit() takes no offsets
        calls = 0

        async def commit(self) -> None:
            self.calls += 1

    fake = TestBrokerConsumer()
    await ack(OffsetCommits(60), fake, raws(0, 0))
    assert fake.calls == 1


async def test_close_all_and_discard_all_find_each_subscribers_commits() -> None:
    from faststream.kafka import KafkaBroker

    from intake311.settings import Settings
    from intake311.stage import batch_subscriber

    broker = KafkaBroker()
    settings = Settings(kafka={"commit_interval_ms": 60_000})

    @batch_subscriber(broker, "t1", group_id="g1", settings=settings)
    async def one(records: list[bytes]) -> None: ...

    @batch_subscriber(broker, "t2", group_id="g2", settings=settings)
    async def two(records: list[bytes]) -> None: ...

    subs = list(broker.subscribers)
    found = [commits_of(s) for s in subs]
    assert all(c is not None for c in found) and found[0] is not found[1]
    consumers = [Consumer(), Consumer()]
    for c, consumer in zip(found, consumers, strict=True):
        assert c is not None and c.interval_s == 60
        await ack(c, consumer, raws(0, 0))
        await ack(c, consumer, raws(0, 1))
    await close_all(subs)
    assert [x.commits for x in consumers] == [[{A0: 1}, {A0: 2}]] * 2
    discard_all(subs)
    for c, consumer in zip(found, consumers, strict=True):
        assert c is not None
        await ack(c, consumer, raws(0, 2))
    assert [x.commits for x in consumers] == [[{A0: 1}, {A0: 2}]] * 2


async def test_a_commit_that_never_returns_does_not_hold_a_stop_or_a_rebalance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka retries a commit while the broker is unreachable: close and revoke give up."""
    import intake311.commits

    class Stuck(Consumer):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            await asyncio.Event().wait()

    monkeypatch.setattr(intake311.commits, "FINAL_COMMIT_S", 0.2)
    for finish in ("close", "revoke"):
        consumer = Stuck()
        commits = OffsetCommits(60)
        await ack(commits, Consumer(), raws(0, 0))  # a first commit through a healthy consumer...
        commits._consumer = consumer  # ...then the same one's broker stops answering
        commits._clock = lambda c=commits: c._last + 1.0  # within the interval: the next batch waits
        await ack(commits, consumer, raws(0, 0))
        assert commits.pending == {A0: 1}
        with structlog.testing.capture_logs() as logs:
            if finish == "close":
                await asyncio.wait_for(commits.close(timeout_s=0.2), 2)
            else:
                await asyncio.wait_for(commits.on_partitions_revoked({A0}), 2)
        assert [e["before"] for e in logs if e["event"].startswith("offset commit gave up")] == [
            "stop" if finish == "close" else "rebalance"
        ]
