"""The sinks stage on Kafka: each (department, sink) pair consumes as its own consumer group.

Separate groups mean separate offsets: a webhook that is down delays only its own deliveries,
never the department's file or another department's webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import httpx
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from intake311.bus import Outgoing
from intake311.dedupe import SeenStore
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import (
    RawBatch,
    Record,
    batch_subscriber,
    dead_letter,
    explain,
    publish_with_retry,
    records_from,
)
from schemas.ids import delivery_id_for
from schemas.request import ServiceRequest
from schemas.status import StatusChange
from schemas.taxonomy import load_taxonomy
from schemas.topics import Topics
from sinks.base import Delivery, Sink, SinkConfig, SinkContext
from sinks.retry import deliver_all
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


async def deliver_batch(
    records: Sequence[Record],
    sink: Sink,
    *,
    department: str,
    sink_name: str,
    seen: SeenStore,
    settings: Settings,
) -> list[Outgoing]:
    """Deliver what this sink has not delivered yet; return dead letters for what failed.

    Seen ids are marked only after delivery, so a crash in between repeats a delivery (with the
    same delivery id, which receivers dedupe) rather than losing one.
    """
    namespace = f"{department}/{sink_name}"
    deadletter_topic = settings.topics.deadletter
    letters: list[Outgoing] = []
    pending: dict[str, tuple[Record, Delivery]] = {}
    for record in records:
        try:
            request = ServiceRequest.model_validate_json(record.value)
        except ValueError as exc:
            letters.append(dead_letter(record, STAGE, deadletter_topic, explain(exc), type(exc).__name__))
            continue
        delivery_id = delivery_id_for(request.event_id, department, sink_name)
        pending.setdefault(delivery_id, (record, Delivery(request, department, delivery_id)))
    fresh = seen.unseen(namespace, pending)
    todo = [pending[d] for d in pending if d in fresh]
    outcomes = await deliver_all(
        sink,
        [delivery for _, delivery in todo],
        attempts=settings.retry_attempts,
        backoff_s=settings.retry_backoff_s,
    )
    delivered = []
    for (record, delivery), outcome in zip(todo, outcomes, strict=True):
        if outcome.delivered:
            delivered.append(delivery.delivery_id)
            continue
        reason = f"sink {namespace} gave up after {outcome.attempts} attempt(s): {outcome.reason}"
        log.warning(
            "delivery dead-lettered",
            request_id=delivery.request.request_id,
            sink=namespace,
            attempts=outcome.attempts,
            reason=(outcome.reason or "")[:200],
        )
        letters.append(
            dead_letter(
                record, STAGE, deadletter_topic, reason, outcome.error or "DeliveryError", outcome.attempts
            )
        )
    seen.mark(namespace, delivered)
    return letters


def _subscribe(
    broker: KafkaBroker, settings: Settings, department: str, config: SinkConfig, sink: Sink, seen: SeenStore
) -> None:
    @batch_subscriber(
        broker,
        settings.topics.department(department),
        group_id=group_id(settings.topics, department, config.name),
        settings=settings,
        title=f"sink {department}/{config.name}",
        description=f"Delivers {department}'s requests to its '{config.name}' sink ({config.type}).",
    )
    async def deliver(records: RequestRecords, msg: KafkaMessage) -> None:
        letters = await deliver_batch(
            records_from(msg.raw_message),
            sink,
            department=department,
            sink_name=config.name,
            seen=seen,
            settings=settings,
        )
        await publish_with_retry(
            broker, letters, attempts=settings.retry_attempts, backoff_s=settings.retry_backoff_s
        )


async def status_batch(records: Sequence[Record], sink: Any, settings: Settings) -> list[Outgoing]:
    """Let a status-aware sink show each change (e.g. update its Slack message)."""
    letters: list[Outgoing] = []
    for record in records:
        try:
            change = StatusChange.model_validate_json(record.value)
        except ValueError as exc:
            letters.append(
                dead_letter(record, STAGE, settings.topics.deadletter, explain(exc), type(exc).__name__)
            )
            continue
        for attempt in range(1, settings.retry_attempts + 1):
            try:
                await sink.on_status(change)
                break
            except Exception as exc:  # retried like deliveries, then dead-lettered
                retryable = getattr(exc, "retryable", True)
                if attempt == settings.retry_attempts or not retryable:
                    reason = f"sink {sink.name} could not show status after {attempt} attempt(s): {exc}"
                    letters.append(
                        dead_letter(
                            record, STAGE, settings.topics.deadletter, reason, type(exc).__name__, attempt
                        )
                    )
                    break
                await asyncio.sleep(settings.retry_backoff_s * 2 ** (attempt - 1))
    return letters


def _subscribe_status(
    broker: KafkaBroker, settings: Settings, department: str, config: SinkConfig, sink: Any
) -> None:
    @batch_subscriber(
        broker,
        settings.topics.status,
        group_id=group_id(settings.topics, department, config.name) + ".status",
        settings=settings,
        title=f"sink {department}/{config.name} status",
        description=f"Shows status changes on {department}'s '{config.name}' sink ({config.type}).",
    )
    async def show_status(records: StatusRecords, msg: KafkaMessage) -> None:
        letters = await status_batch(records_from(msg.raw_message), sink, settings)
        await publish_with_retry(
            broker, letters, attempts=settings.retry_attempts, backoff_s=settings.retry_backoff_s
        )


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Build, start and subscribe every (department, sink) pair; closing ``stack`` closes them."""
    subscriptions = load_subscriptions(settings.subscriptions_file)
    http = await stack.enter_async_context(httpx.AsyncClient())
    context = SinkContext.from_settings(settings, http_client=http)
    seen = SeenStore(settings.data_dir / "sinks" / "delivered.sqlite3")
    stack.callback(seen.close)
    for department, config in subscriptions.pairs(departments(settings, subscriptions)):
        sink = config.build(context)
        await sink.start()
        stack.push_async_callback(sink.close)
        _subscribe(broker, settings, department, config, sink, seen)
        if hasattr(sink, "on_status"):
            _subscribe_status(broker, settings, department, config, sink)
    await record_status_changes(broker, settings, stack)
