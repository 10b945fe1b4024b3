"""A department's webhook down for a while (defect 8): its requests wait on the topic, not in the
dead-letter topic, and arrive exactly once and in order when it is back; the department's file
and another department's webhook are not held up meanwhile.

The sinks stage alone on the embedded broker, fed directly on the department topics: the outage
is a few seconds with small backoff settings (the old circuit breaker dead-lettered within
a fraction of a second with these settings, so a longer outage would prove nothing more).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from intake311.bus import Outgoing, publish_all
from intake311.pipeline import Runtime, running
from intake311.settings import Settings
from schemas.ids import event_id_for
from schemas.request import ServiceRequest
from sinks.app import group_id
from tests.integration.conftest import WEBHOOK_SECRET, WebhookReceiver, committed_to_end, wait_for
from tests.support import serving

pytestmark = pytest.mark.integration

KEYS = 6  # requests (Kafka keys), spread over the topic's partitions
VERSIONS = 4  # versions of each, which must arrive in the order they were published


@dataclass
class CountingReceiver(WebhookReceiver):
    """The conftest receiver, counting the requests it turned away while down."""

    turned_away: int = 0
    delivery_ids: list[str] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        if self.down:
            self.turned_away += 1
        return await super().handle(request)


@dataclass
class Stage:
    runtime: Runtime
    settings: Settings
    down: CountingReceiver  # public-works' webhook
    up: CountingReceiver  # parks' webhook, never down


def version(number: int, key: int, department: str) -> ServiceRequest:
    """Version ``number`` of request ``key``: same request id, its own event id (delivery id)."""
    ticket = f"{'PW' if department == 'public-works' else 'PK'}{key:02d}-OUTG"
    at = datetime(2026, 3, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=number)
    return ServiceRequest(
        request_id=ticket,
        event_id=event_id_for(ticket, [f"web:{ticket}:{number}"]),
        service_code="pothole",
        service_name="Pothole",
        description=f"version {number}",
        requested_datetime=at,
        updated_datetime=at,
        channel="web",
        confidence=0.9,
        source_contact_ids=(f"web:{ticket}",),
    )


@pytest.fixture(scope="module")
async def stage(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    down, up = CountingReceiver(WEBHOOK_SECRET), CountingReceiver(WEBHOOK_SECRET)
    routes = [Route("/down", down.handle, methods=["POST"]), Route("/up", up.handle, methods=["POST"])]
    async with serving(Starlette(routes=routes)) as url:
        data_dir = tmp_path_factory.mktemp("var")
        subscriptions = data_dir / "subscriptions.yaml"
        subscriptions.write_text(
            "departments:\n"
            '  "*":\n'
            "    sinks:\n"
            "      - {name: file, type: jsonl}\n"
            "  public-works:\n"
            "    sinks:\n"
            f"      - {{name: hook, type: webhook, url: '{url}/down', secret: '{WEBHOOK_SECRET}'}}\n"
            "  parks:\n"
            "    sinks:\n"
            f"      - {{name: hook, type: webhook, url: '{url}/up', secret: '{WEBHOOK_SECRET}'}}\n"
        )
        settings = Settings(
            data_dir=data_dir,
            subscriptions_file=subscriptions,
            kafka={
                "bootstrap_servers": [kafka_bootstrap],
                "topic_prefix": f"it{uuid.uuid4().hex[:8]}",
                "session_timeout_ms": 2000,
            },
            retry_attempts=3,
            retry_backoff_s=0.05,
            max_batch=5,  # several batches wait behind the outage, not one
        )
        async with running(settings, ["sinks"]) as runtime:
            yield Stage(runtime, settings, down, up)


def file_lines(settings: Settings, department: str) -> list[str]:
    path: Path = settings.data_dir / "departments" / f"{department}.jsonl"
    return path.read_text().splitlines() if path.exists() else []


async def topic_records(bootstrap: str, topic: str) -> list[Any]:
    """Everything on ``topic`` now: read up to the end offsets taken first (no idle timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.topics()  # refresh metadata once: the topic may be new to this client
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def test_an_outage_keeps_requests_on_the_topic_and_delivers_them_in_order_when_back(
    stage: Stage, kafka_bootstrap: str
) -> None:
    settings, topics = stage.settings, stage.settings.topics
    stage.down.down = True
    published: dict[str, list[str]] = {}
    records = []
    for number in range(VERSIONS):
        for key in range(KEYS):
            for department in ("public-works", "parks"):
                request = version(number, key, department)
                records.append(
                    Outgoing(
                        topics.department(department),
                        request.model_dump_json().encode(),
                        key=request.request_id,
                    )
                )
                if department == "public-works":
                    published.setdefault(request.request_id, []).append(request.description)
    await publish_all(stage.runtime.broker, records)
    total = KEYS * VERSIONS

    # During the outage the department's file and the other department's webhook keep up ...
    await wait_for(lambda: len(file_lines(settings, "public-works")) == total, what="public-works file")
    await wait_for(lambda: len(stage.up.received) == total, what="parks webhook")
    # ... while public-works' webhook is probed again and again (each probe would have
    # dead-lettered a batch before) and nothing of it is committed.
    await wait_for(lambda: stage.down.turned_away >= 8, what="several probes of the down webhook")
    assert stage.down.received == []
    hook_group = group_id(topics, "public-works", "hook")
    assert not await committed_to_end(kafka_bootstrap, hook_group, topics.department("public-works"))

    stage.down.down = False
    await wait_for(lambda: len(stage.down.received) >= total, what="the backlog after the outage")
    await wait_for(
        lambda: committed_to_end(kafka_bootstrap, hook_group, topics.department("public-works")),
        what="the webhook's group to commit the backlog",
    )

    delivered = [r["delivery_id"] for r in stage.down.received]
    assert len(delivered) == total and len(set(delivered)) == total  # each exactly once
    for request_id, versions in published.items():
        assert [r["body"]["description"] for r in stage.down.for_request(request_id)] == versions
    letters = await topic_records(kafka_bootstrap, topics.deadletter)
    assert letters == []  # nothing to replay
