"""The sinks stage on Kafka: each (department, sink) pair consumes as its own consumer group.

Separate groups mean separate offsets: a webhook that is down delays only its own deliveries,
never the department's file or another department's webhook. While a sink is down its
requests wait on the topic (its batch is rewound, not committed, and probed again after a
capped exponential pause; see ``sinks.retry``); only what a receiver refuses is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from faststream.kafka import KafkaBroker

from intake311 import metrics as process_metrics
from intake311.bus import Outgoing
from intake311.dedupe import SeenStore
from intake311.logging import get_logger
from intake311.metrics import Metrics
from intake311.settings import Settings
from intake311.stage import (
    RawBatch,
    Record,
    batch_subscriber,
    dead_letter,
    explain,
    handled_records,
    publish_output,
)
from schemas.ids import delivery_id_for
from schemas.request import ServiceRequest
from schemas.status import StatusChange
from schemas.taxonomy import load_taxonomy
from schemas.topics import Topics
from sinks.base import Delivery, Sink, SinkConfig, SinkContext
from sinks.retry import Outage, SinkUnavailable, call_with_retry, deliver_all
from sinks.status import register as record_status_changes
from sinks.subscriptions import Subscriptions, load_subscriptions

RequestRecords = RawBatch[ServiceRequest]  # what the AsyncAPI document shows
StatusRecords = RawBatch[StatusChange]
STAGE = "sinks"
log = get_logger(__name__)


def group_id(topics: Topics, department: str, sink_name: str) -> str:
    """One consumer group per (department, sink), so a slow sink never holds back another."""
    return topics.group(f"sink.{department}.{sink_name}")


def departments(settings: Settings, subscriptions: Subscriptions) -> list[str]:
    """Departments to consume for: the taxonomy's, plus any a subscription names explicitly."""
    found = {s.department for s in load_taxonomy(settings.taxonomy_file).services}
    found.update(d for d in subscriptions.departments if d != "*")
    return sorted(found)


def _position(record: Record) -> str | None:
    """Where a record sits on its topic: what a dead letter is remembered by.

    Not the delivery id: a replayed dead letter is the same delivery at a new offset, and must
    be delivered then, while the same offset redelivered after a rewind must not be
    dead-lettered twice.
    """
    if record.partition is None or record.offset is None:
        return None
    return f"{record.topic}:{record.partition}:{record.offset}"


@dataclass
class BatchResult:
    """What a batch came to: dead letters to publish (and then remember), or a sink that is down.

    ``dead`` holds the positions of the dead-lettered records, marked once the letters are
    published; ``held`` says why the rest of the batch stays on the topic (None: nothing waits).
    """

    letters: list[Outgoing] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    held: str | None = None

    def dead_letter(self, record: Record, letter: Outgoing) -> None:
        self.letters.append(letter)
        if (position := _position(record)) is not None:
            self.dead.append(position)


def _dead_namespace(namespace: str) -> str:
    return f"{namespace}#dead-lettered"


async def _fresh_records(records: Sequence[Record], seen: SeenStore, namespace: str) -> list[Record]:
    """The records not dead-lettered already by this consumer (a rewound batch comes again)."""
    positions = {p for r in records if (p := _position(r)) is not None}
    if not positions:
        return list(records)
    dead = _dead_namespace(namespace)
    done = positions - (await _unseen(seen, {dead: positions}))[dead]
    return [r for r in records if _position(r) not in done]


async def _unseen(seen: SeenStore, wanted: dict[str, set[str]]) -> dict[str, set[str]]:
    """``seen.unseen_many``: on the loop when the store is free (a read never fsyncs), else in
    a thread, so another consumer's ``mark`` committing cannot stall the loop."""
    found = seen.try_unseen_many(wanted)
    if found is None:
        found = await asyncio.to_thread(seen.unseen_many, wanted)
    return found


async def _mark(seen: SeenStore, namespace: str, keys: Sequence[str]) -> None:
    """``seen.mark`` in a thread (a commit may checkpoint the WAL: an fsync), and no thread hop
    for nothing (most batches dead-letter nothing) unless it is the prune's turn."""
    if keys or seen.prune_due():
        await asyncio.to_thread(seen.mark, namespace, keys)


async def deliver_batch(
    records: Sequence[Record],
    sink: Sink,
    *,
    department: str,
    sink_name: str,
    seen: SeenStore,
    settings: Settings,
    outage: Outage | None = None,
    retry_timeout_s: float | None = None,
    metrics: Metrics | None = None,
) -> BatchResult:
    """Deliver what this sink has not delivered yet; dead-letter only what it refused.

    Seen ids are marked only after delivery, so a crash in between repeats a delivery with the
    same delivery id: the jsonl sink finds it in its file, postgres upserts, webhook and email
    receivers get the id (``X-Intake311-Delivery``, ``Message-ID``) to dedupe on. When the sink
    is down, what it could not take is ``held``: the caller leaves it on the topic instead of
    dead-lettering it, until ``retry_timeout_s`` of outage (None: forever).
    """
    namespace = f"{department}/{sink_name}"
    dead_namespace = _dead_namespace(namespace)
    deadletter_topic = settings.topics.deadletter
    outage = outage if outage is not None else Outage(namespace)
    result = BatchResult()
    # Each record read first, so one look-up answers both questions for the batch: which
    # records this consumer dead-lettered already (a rewound batch comes again: skipped whole,
    # valid or not) and which deliveries it made already.
    read: list[tuple[Record, str | None, Delivery | ValueError]] = []
    for record in records:
        try:
            request = ServiceRequest.model_validate_json(record.value)
        except ValueError as exc:
            read.append((record, _position(record), exc))
            continue
        delivery_id = delivery_id_for(request.event_id, department, sink_name)
        read.append((record, _position(record), Delivery(request, department, delivery_id)))
    positions = {p for _, p, _ in read if p is not None}
    ids = {d.delivery_id for _, _, d in read if isinstance(d, Delivery)}
    unseen = await _unseen(seen, {dead_namespace: positions, namespace: ids})
    fresh, not_dead = unseen[namespace], unseen[dead_namespace]
    pending: dict[str, tuple[Record, Delivery]] = {}
    for record, position, read_as in read:
        if position is not None and position not in not_dead:
            continue  # dead-lettered by this consumer before the batch was rewound
        if isinstance(read_as, ValueError):
            reason, error = explain(read_as), type(read_as).__name__
            letter = dead_letter(record, STAGE, deadletter_topic, reason, error)
            result.dead_letter(record, letter)
            continue
        pending.setdefault(read_as.delivery_id, (record, read_as))
    todo = [pending[d] for d in pending if d in fresh]
    outcomes = await deliver_all(
        sink,
        [delivery for _, delivery in todo],
        attempts=settings.retry_attempts,
        backoff_s=settings.retry_backoff_s,
        outage=outage,
    )
    timed_out = outage.timed_out(retry_timeout_s)
    delivered = []
    requested = []
    counts: Counter[str] = Counter()
    for (record, delivery), outcome in zip(todo, outcomes, strict=True):
        if outcome.delivered:
            delivered.append(delivery.delivery_id)
            requested.append(delivery.request.requested_datetime)
            counts["delivered"] += 1
            continue
        if outcome.held and not timed_out:
            result.held = result.held or outcome.reason
            counts["held"] += 1
            continue
        counts["expired" if outcome.held else "refused"] += 1
        if outcome.held:
            reason = f"sink {namespace} down for {outage.down_for():.0f} s: {outcome.reason}"
        else:
            reason = f"sink {namespace} gave up after {outcome.attempts} attempt(s): {outcome.reason}"
        log.warning(
            "delivery dead-lettered",
            request_id=delivery.request.request_id,
            sink=namespace,
            attempts=outcome.attempts,
            reason=reason[:300],
        )
        letter = dead_letter(
            record, STAGE, deadletter_topic, reason, outcome.error or "DeliveryError", outcome.attempts
        )
        result.dead_letter(record, letter)
    if metrics is not None:
        metrics.delivery_batch(department, sink_name, counts, requested)
    await _mark(seen, namespace, delivered)
    return result


async def finish_batch(
    broker: KafkaBroker,
    result: BatchResult,
    *,
    seen: SeenStore,
    namespace: str,
    settings: Settings,
    metrics: Metrics | None = None,
) -> None:
    """Publish the dead letters, remember them, and rewind the batch if its sink is down.

    Raising ``SinkUnavailable`` leaves the held requests on the topic: the batch is not
    committed, and ``pause_on_failure`` waits (doubling, capped) before the redelivery probes.
    """
    await publish_output(broker, result.letters, settings, metrics)
    await _mark(seen, _dead_namespace(namespace), result.dead)
    if result.held is not None:
        raise SinkUnavailable(f"sink {namespace} is down; its requests wait on the topic: {result.held}")


def _subscribe(
    broker: KafkaBroker, settings: Settings, department: str, config: SinkConfig, sink: Sink, seen: SeenStore
) -> None:
    namespace = f"{department}/{config.name}"
    outage = Outage(namespace)  # this consumer's view of its sink, kept across batches
    metrics = process_metrics.current()

    @batch_subscriber(
        broker,
        settings.topics.department(department),
        group_id=group_id(settings.topics, department, config.name),
        settings=settings,
        title=f"sink {department}/{config.name}",
        description=f"Delivers {department}'s requests to its '{config.name}' sink ({config.type}).",
    )
    async def deliver(records: RequestRecords) -> None:
        result = await deliver_batch(
            handled_records(broker),
            sink,
            department=department,
            sink_name=config.name,
            seen=seen,
            settings=settings,
            outage=outage,
            retry_timeout_s=config.retry_timeout_s,
            metrics=metrics,
        )
        await finish_batch(broker, result, seen=seen, namespace=namespace, settings=settings, metrics=metrics)


async def status_batch(
    records: Sequence[Record],
    sink: Any,
    settings: Settings,
    *,
    seen: SeenStore | None = None,
    namespace: str | None = None,
    outage: Outage | None = None,
    retry_timeout_s: float | None = None,
) -> BatchResult:
    """Let a status-aware sink show each change (e.g. update its Slack message), in order.

    The same policy as deliveries: refused changes are dead-lettered, and while the sink is
    down the rest wait on the topic (``on_status`` skips a change it already shows, so the
    rewound part of a batch is harmless).
    """
    namespace = namespace or f"{sink.name}.status"
    outage = outage if outage is not None else Outage(namespace)
    result = BatchResult()
    fresh = await _fresh_records(records, seen, namespace) if seen is not None else list(records)
    for record in fresh:
        try:
            change = StatusChange.model_validate_json(record.value)
        except ValueError as exc:
            letter = dead_letter(record, STAGE, settings.topics.deadletter, explain(exc), type(exc).__name__)
            result.dead_letter(record, letter)
            continue
        if result.held is not None:
            continue  # after the sink failed: keep the order, try these after it answers
        outcome = await call_with_retry(
            functools.partial(sink.on_status, change),
            attempts=1 if outage.down else settings.retry_attempts,
            backoff_s=settings.retry_backoff_s,
            sink=sink.name,
            request_id=change.request_id,
        )
        if outcome.delivered:
            outage.answered()
            continue
        if outcome.held:
            outage.failed(outcome.reason)
            if not outage.timed_out(retry_timeout_s):
                result.held = outcome.reason
                continue
            why = f"down for {outage.down_for():.0f} s"
        else:
            why = f"gave up after {outcome.attempts} attempt(s)"
        reason = f"sink {sink.name} could not show status ({why}): {outcome.reason}"
        letter = dead_letter(
            record,
            STAGE,
            settings.topics.deadletter,
            reason,
            outcome.error or "DeliveryError",
            outcome.attempts,
        )
        result.dead_letter(record, letter)
    return result


def _subscribe_status(
    broker: KafkaBroker, settings: Settings, department: str, config: SinkConfig, sink: Any, seen: SeenStore
) -> None:
    namespace = f"{department}/{config.name}.status"
    outage = Outage(namespace)
    metrics = process_metrics.current()

    @batch_subscriber(
        broker,
        settings.topics.status,
        group_id=group_id(settings.topics, department, config.name) + ".status",
        settings=settings,
        title=f"sink {department}/{config.name} status",
        description=f"Shows status changes on {department}'s '{config.name}' sink ({config.type}).",
    )
    async def show_status(records: StatusRecords) -> None:
        result = await status_batch(
            handled_records(broker),
            sink,
            settings,
            seen=seen,
            namespace=namespace,
            outage=outage,
            retry_timeout_s=config.retry_timeout_s,
        )
        await finish_batch(broker, result, seen=seen, namespace=namespace, settings=settings, metrics=metrics)


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Build, start and subscribe every (department, sink) pair; closing ``stack`` closes them."""
    subscriptions = load_subscriptions(settings.subscriptions_file)
    http = await stack.enter_async_context(httpx.AsyncClient())
    context = SinkContext.from_settings(settings, http_client=http)
    seen = SeenStore(
        settings.data_dir / "sinks" / "delivered.sqlite3",
        retention_s=settings.retention.state_s,
        prune_every_s=settings.retention.prune_every_s,
        prune_batch=settings.retention.prune_batch,
    )
    stack.callback(seen.close)
    for department, config in subscriptions.pairs(departments(settings, subscriptions)):
        sink = config.build(context)
        if callable(bind := getattr(sink, "bind", None)):  # open311: its remote-id map and status poll
            bind(broker, settings, department)
        await sink.start()
        stack.push_async_callback(sink.close)
        _subscribe(broker, settings, department, config, sink, seen)
        if hasattr(sink, "on_status"):
            _subscribe_status(broker, settings, department, config, sink, seen)
    await record_status_changes(broker, settings, stack)
