"""Offsets committed once an interval still cover every handled record at stop and at a rebalance.

The router is stateless: a record it handles twice is on its department's topic twice, so the
department topic shows any replay. With ``commit_interval_ms`` far longer than the test, only
the first batch's commit, the one at stop and the one before a revoke can move the group.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from channels.operator import operator_contact
from intake311.pipeline import running
from intake311.settings import Settings
from normalizer.normalize import Normalizer
from schemas.request import ServiceRequest
from schemas.taxonomy import load_taxonomy
from tests.integration.conftest import committed_to_end, on_topic, wait_for

pytestmark = pytest.mark.integration


def settings_for(bootstrap: str, prefix: str, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        kafka={
            "bootstrap_servers": [bootstrap],
            "topic_prefix": prefix,
            "session_timeout_ms": 2000,
            "commit_interval_ms": 60_000,
        },
    )


def pothole_requests(settings: Settings, n: int) -> list[ServiceRequest]:
    normalizer = Normalizer.from_taxonomy(load_taxonomy(settings.taxonomy_file))
    now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    return [
        normalizer.normalize(
            operator_contact(
                f"Deep pothole in front of {10 + i} Elm Street",
                provider_id=f"commits-{uuid.uuid4().hex[:8]}-{i}",
                now=now + timedelta(seconds=i),
            )
        )
        for i in range(n)
    ]


async def publish(bootstrap: str, topic: str, requests: list[ServiceRequest]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for r in requests:
            await producer.send(topic, r.model_dump_json().encode(), key=r.request_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def routed(settings: Settings, department: str) -> list[str]:
    values = await on_topic(settings, settings.topics.department(department))
    return [ServiceRequest.model_validate_json(v).request_id for v in values]


async def test_stop_and_rebalance_commit_what_was_handled(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"commits{uuid.uuid4().hex[:8]}"
    settings = settings_for(kafka_bootstrap, prefix, tmp_path / "a")
    requests = pothole_requests(settings, 40)
    department = "public-works"  # where the default routing table sends potholes
    assert all(r.service_code == "pothole" for r in requests)
    topics, group = settings.topics, settings.topics.group("router")

    async with running(settings, ["router"]):
        await publish(kafka_bootstrap, topics.requests, requests[:1])
        await wait_for(lambda: _count(settings, department, 1), what="the first request routed")
        await publish(kafka_bootstrap, topics.requests, requests[1:20])
        await wait_for(lambda: _count(settings, department, 20), what="20 requests routed")
        # Handled, not yet committed: only the first batch was (the interval is a minute).
        assert not await committed_to_end(kafka_bootstrap, group, topics.requests)
    assert await committed_to_end(kafka_bootstrap, group, topics.requests)  # committed at stop

    async with running(settings, ["router"]) as first:
        await publish(kafka_bootstrap, topics.requests, requests[20:21])  # this consumer's first commit
        await wait_for(lambda: _count(settings, department, 21), what="21 requests routed")
        await publish(kafka_bootstrap, topics.requests, requests[21:30])  # pending at the rebalance
        await wait_for(lambda: _count(settings, department, 30), what="30 requests routed")
        second_settings = settings_for(kafka_bootstrap, prefix, tmp_path / "b")
        async with running(second_settings, ["router"]) as second:
            members = [first.broker.subscribers[0], second.broker.subscribers[0]]
            await wait_for(
                lambda: all(m.consumer is not None and m.consumer.assignment() for m in members),
                timeout=60,
                what="both routers assigned partitions",
            )
            await publish(kafka_bootstrap, topics.requests, requests[30:40])
            await wait_for(lambda: _count(settings, department, 40), what="40 requests routed")
    ids = await routed(settings, department)
    # Each once: a rebalance without the revoke's commit hands 22-30 over uncommitted.
    assert sorted(ids) == sorted(r.request_id for r in requests)
    assert await committed_to_end(kafka_bootstrap, group, topics.requests)


async def _count(settings: Settings, department: str, n: int) -> bool:
    return len(await routed(settings, department)) >= n
