"""A stage consumer's offset commits: what its handled batches reached, at most once an interval.

Why not FastStream's commit: it commits the consumer's position after every batch it handled.
At a city's rates a batch is one record, so every report cost each of its hops an OffsetCommit
round trip before the next fetch, and on the durable embedded broker an object written to
SeaweedFS. Committing at most every ``kafka.commit_interval_ms`` (1 s) measured, back to back
at 100 reports/s on the in-memory broker, 12.8 -> 10.1 ms of CPU a report across the processes
and a POST-to-sink p99 of 163 -> 37 ms, and on the durable ``intake311 up`` at 20 reports/s
64 -> 45 ms of CPU a report (docs/performance.md, "Issue 12, seventh session").

What does not change: an offset is recorded only after its batch's handler returned (every
record processed or dead-lettered, its output acknowledged by the broker), and it is the batch's
own highest offset + 1 per partition, not the consumer's position. A failed batch records
nothing and is rewound as before (``BatchOffsets.seek``). So a commit never covers a record that
was not handled.

What the interval costs, and what keeps it from costing more:

* a crash (SIGKILL, power) loses up to an interval of *commits*, not records: the next owner
  handles those records again, and every consumer dedupes on derived ids;
* a rebalance commits what is pending before the partitions are given up
  (``on_partitions_revoked``, awaited by aiokafka before it rejoins), so adding or stopping a
  stage process replays nothing; a batch that was in flight across the revoke commits as soon
  as it is handled (``generation``), for the partitions the consumer still holds, as
  FastStream's commit did (if the group has moved on by then, its next owner handles it again);
* a stage that stops commits what is pending first (``close``, called by
  ``intake311.pipeline.running`` before the broker stops its consumers); that commit, and the
  one before a revoke, wait at most ``FINAL_COMMIT_S``: aiokafka retries a commit for as long
  as the broker is unreachable, and a stage stopped during an outage must still stop (its
  pending records are then handled again);
* after the broker came back empty (``intake311.pipeline.rejoin``), pending offsets are
  discarded: they count records of logs that no longer exist, and committing them to the new
  logs would skip the records written there since.

``commit_interval_ms=0`` commits every batch as it is handled (FastStream's behaviour, with
explicit offsets).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from intake311.logging import get_logger

log = get_logger(__name__)

FINAL_COMMIT_S = 5.0


def batch_offsets(raws: Iterable[Any]) -> dict[TopicPartition, int]:
    """The offset to commit for each partition of a batch: its highest record's offset + 1."""
    offsets: dict[TopicPartition, int] = {}
    for raw in raws:
        tp = TopicPartition(raw.topic, raw.partition)
        if offsets.get(tp, -1) <= raw.offset:
            offsets[tp] = raw.offset + 1
    return offsets


class BatchOffsets:
    """What FastStream's message calls as its ``consumer``: ``commit()`` records the batch's own
    offsets with its ``OffsetCommits``; ``seek`` (the rewind of a failed batch) goes to aiokafka."""

    __slots__ = ("_commits", "_consumer", "_generation", "_offsets")

    def __init__(
        self, commits: OffsetCommits, consumer: Any, offsets: Mapping[TopicPartition, int], generation: int
    ) -> None:
        self._commits = commits
        self._consumer = consumer
        self._offsets = offsets
        self._generation = generation

    async def commit(self) -> None:
        await self._commits.handled(self._consumer, self._offsets, self._generation)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(partition, offset)


class OffsetCommits(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """One subscriber's pending offsets, committed at most every ``interval_s``.

    A handled batch commits at once when the last commit is an interval old, else it waits in
    ``pending`` and a timer commits it when the interval is up: steady traffic commits from the
    consume loop once an interval, a lone report a moment later from the timer.
    """

    def __init__(
        self, interval_s: float, *, group: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.group = group
        self._clock = clock
        self._consumer: Any = None
        self.pending: dict[TopicPartition, int] = {}
        self.generation = 0  # bumped at every revoke: a batch fetched before it commits at once
        self.closing = False
        self._last = float("-inf")
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._discarded: weakref.WeakSet[Any] = weakref.WeakSet()

    def batch(self, consumer: Any, raws: Iterable[Any]) -> BatchOffsets:
        """The stand-in consumer for one parsed batch (``stage.batch_subscriber``'s parser)."""
        return BatchOffsets(self, consumer, batch_offsets(raws), self.generation)

    async def handled(self, consumer: Any, offsets: Mapping[TopicPartition, int], generation: int) -> None:
        """A batch's handler returned: its offsets may be committed."""
        if not hasattr(consumer, "assignment"):
            await consumer.commit()  # FastStream's test broker (no aiokafka consumer): nothing to defer
            return
        if consumer in self._discarded:
            return  # the broker came back empty: these offsets count records of logs that are gone
        if consumer is not self._consumer:
            # A new consumer (the subscriber restarted): what an old one left pending is not its own.
            self._consumer = consumer
            self.pending.clear()
            self.closing = False
            self._last = float("-inf")  # its first batch commits at once, as a first start's does
        for tp, offset in offsets.items():
            if self.pending.get(tp, -1) < offset:
                self.pending[tp] = offset
        # A batch fetched before a revoke and finished after it commits at once: while the
        # group is still rebalancing the broker takes it, and its partitions' next owner then
        # starts after it instead of handling it again.
        if generation != self.generation or self.closing or self._clock() - self._last >= self.interval_s:
            await self.flush()
        elif self._timer is None:
            delay = max(0.0, self._last + self.interval_s - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        """Commit what is pending for the partitions this consumer still has. Never raises: a
        commit that fails leaves those records to be handled again (at-least-once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            consumer, pending = self._consumer, self.pending
            if consumer is None or not pending:
                return
            self.pending = {}
            self._last = self._clock()
            assigned = consumer.assignment()
            offsets = {tp: offset for tp, offset in pending.items() if tp in assigned}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # a rebalance won the race, the broker is gone, the consumer stopped
                log.warning(
                    "offset commit failed: those records will be handled again",
                    group=self.group,
                    partitions=len(offsets),
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )

    async def close(self, timeout_s: float = FINAL_COMMIT_S) -> None:
        """The stage is stopping: commit what is pending, and every later batch at once."""
        self.closing = True
        await self._flush_within(timeout_s, "stop")

    async def _flush_within(self, timeout_s: float, why: str) -> None:
        """``flush``, given up after ``timeout_s`` (the broker is down): a stop or a rebalance
        must not wait on it for ever; what was pending is handled again."""
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.warning(
                "offset commit gave up: those records will be handled again",
                group=self.group,
                before=why,
                timeout_s=timeout_s,
            )

    def discard(self, consumer: Any = None) -> None:
        """Forget what is pending, and never commit for this consumer (or ``consumer``) again: the
        broker came back empty, and those offsets count records of logs that are gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pending = {}
        for old in (self._consumer, consumer):
            if old is not None:
                self._discarded.add(old)
        self._consumer = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._flush_within(FINAL_COMMIT_S, "rebalance")  # still this generation's member
        self.generation += 1

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


_BY_SUBSCRIBER: weakref.WeakKeyDictionary[Any, OffsetCommits] = weakref.WeakKeyDictionary()


def attach(subscriber: Any, commits: OffsetCommits) -> None:
    _BY_SUBSCRIBER[subscriber] = commits


def commits_of(subscriber: Any) -> OffsetCommits | None:
    """The ``OffsetCommits`` of a subscriber made by ``stage.batch_subscriber`` (else None)."""
    return _BY_SUBSCRIBER.get(subscriber)


async def close_all(subscribers: Iterable[Any]) -> None:
    """Commit every subscriber's pending offsets: before the broker stops its consumers."""
    await asyncio.gather(*(c.close() for s in subscribers if (c := commits_of(s)) is not None))


def discard_all(subscribers: Iterable[Any]) -> None:
    for s in subscribers:
        if (c := commits_of(s)) is not None:
            c.discard(getattr(s, "consumer", None))
