"""Poison records in every topic, and a frozen broker: still 0 lost, 0 duplicated, 0 phantom.

Poison of every kind (bad JSON, the wrong schema, a tombstone, non-UTF-8 headers and keys, a
huge value) goes into the middle of real traffic on the contacts, requests and department
topics. Each must reach the dead-letter topic with its reason, and every valid contact around it
must still be delivered exactly once. The frozen broker (SIGSTOP, then SIGCONT) is what a long
GC pause, a full disk or a network partition looks like to clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from intake311.embedded import EmbeddedKafka
from tests.faults.harness import DEPARTMENT, STAGES, Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# (value, key, headers): what a buggy producer, a wrong client or an attacker can put on a topic.
POISON: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
    (b"{not json", b"k1", []),
    (json.dumps({"hello": "world"}).encode(), b"k2", []),
    (None, b"k3", []),  # a tombstone
    (b'{"a": 1}', b"k4", [("x-bad", b"\xff\xfe\xb4")]),
    (b'{"a": 1}', b"\xff\xfe\xb4", []),
    (b"x" * 900_000, b"k6", []),
]


@pytest.fixture(scope="module")
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
async def pipeline(kafka: EmbeddedKafka, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(kafka.bootstrap, tmp_path)
    for stage in STAGES:
        pipe.start(stage)
    try:
        await pipe.wait_started(*STAGES)
        yield pipe
    finally:
        pipe.stop()


async def _poison(pipeline: Pipeline, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        for value, key, headers in POISON:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _dead_letters(pipeline: Pipeline, want: int, timeout: float = 60.0) -> list[dict]:
    consumer = AIOKafkaConsumer(
        pipeline.topics.deadletter,
        bootstrap_servers=pipeline.bootstrap,
        auto_offset_reset="earliest",
        fetch_max_bytes=10_000_000,
        max_partition_fetch_bytes=10_000_000,
    )
    await consumer.start()
    letters: list[dict] = []
    try:
        deadline = time.monotonic() + timeout
        while len(letters) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            letters += [json.loads(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return letters


async def test_poison_in_every_topic_is_dead_lettered_and_the_traffic_around_it_delivered(
    pipeline: Pipeline,
) -> None:
    topics = pipeline.topics
    targets = [topics.contacts("web"), topics.requests, topics.department(DEPARTMENT)]
    submitted = await pipeline.submit(pipeline.contacts(300, tag="before"))
    for topic in targets:
        await _poison(pipeline, topic)
    submitted |= await pipeline.submit(pipeline.contacts(300, tag="after"))
    await pipeline.until_delivered(len(submitted))
    count = pipeline.count(submitted)
    assert count.clean, str(count)
    letters = await _dead_letters(pipeline, want=len(POISON) * len(targets))
    by_topic: dict[str, int] = {}
    for letter in letters:
        by_topic[letter.get("source_topic") or "?"] = by_topic.get(letter.get("source_topic") or "?", 0) + 1
        assert letter.get("reason"), letter
    assert by_topic == {t: len(POISON) for t in targets}, by_topic
    for stage in STAGES:
        assert pipeline.procs[stage].poll() is None, pipeline.tail(stage)


async def test_a_frozen_broker_mid_backlog_delays_but_loses_and_duplicates_nothing(
    pipeline: Pipeline, kafka: EmbeddedKafka
) -> None:
    pid = kafka.pid
    assert pid is not None
    submitted = await pipeline.submit(pipeline.contacts(2000, tag="freeze"))
    await pipeline.until_delivered(500)
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(8)  # longer than the stages' 2 s session timeout
    finally:
        os.kill(pid, signal.SIGCONT)
    await pipeline.until_delivered(len(submitted), timeout=120)
    count = pipeline.count(submitted)
    assert count.clean, str(count)
