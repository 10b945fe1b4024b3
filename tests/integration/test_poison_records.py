"""Poison records on the embedded broker: one bad record in a batch must cost only itself.

Every consumer goes through ``intake311.stage.batch_subscriber``; a record FastStream could not
even parse (a header that is not UTF-8) used to fail the whole batch before the handler ran,
and the next batch's commit skipped it: valid records lost, nothing dead-lettered. These tests
produce with aiokafka directly (the pipeline's own publishers cannot make such records) and
check that every valid record comes out of the stage and every poison one is a dead letter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import DeadLetter, make_contact_id, ticket_for
from schemas.ids import event_id_for
from schemas.request import ServiceRequest
from tests.conftest import make_contact
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration

BAD_UTF8 = b"\xff\xfe\xb4"
HUGE = ("a long and rambling complaint about the potholes " * 18_400).encode()  # ~900 KB


@dataclass(frozen=True)
class Produce:
    """One record to produce as raw bytes: nothing here goes through our serialisers."""

    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = (("content-type", b"application/json"),)


@dataclass
class Watch:
    """Everything that appears on some topics from the start, keyed by topic."""

    consumer: AIOKafkaConsumer
    seen: dict[str, list[tuple[bytes | None, bytes | None]]] = field(default_factory=dict)

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200, max_records=2000)
        for tp, records in batches.items():
            self.seen.setdefault(tp.topic, []).extend((r.key, r.value) for r in records)

    def keys(self, topic: str) -> set[bytes]:
        return {k for k, _ in self.seen.get(topic, []) if k is not None}

    def letters(self, topic: str) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(v) for _, v in self.seen.get(topic, []) if v]


@pytest.fixture
async def watch(pipeline: Pipeline) -> AsyncIterator[Watch]:
    topics = pipeline.settings.topics
    consumer = AIOKafkaConsumer(
        topics.requests,
        topics.deadletter,
        *(topics.department(d) for d in ("public-works", "parks", "sanitation")),
        bootstrap_servers=pipeline.settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        yield Watch(consumer)
    finally:
        await consumer.stop()


async def produce(pipeline: Pipeline, topic: str, records: Sequence[Produce]) -> list[tuple[int, int]]:
    """Send all records without waiting in between (so they share batches); their (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=pipeline.settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=list(r.headers), partition=0)
            for r in records
        ]
        metadata = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


def contact_bytes(tag: str) -> tuple[bytes, bytes]:
    """A valid raw contact and its request id (as bytes, the requests topic's key)."""
    contact = make_contact(f"Pothole {tag} outside 12 Elm Street", provider_id=tag)
    return contact.model_dump_json().encode(), contact.request_id.encode()


def request_bytes(tag: str) -> tuple[bytes, bytes]:
    """A valid canonical request (a pothole: public works) and its id."""
    contact_id = make_contact_id("sms", tag)
    ticket = ticket_for(contact_id)
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    request = ServiceRequest(
        request_id=ticket,
        event_id=event_id_for(ticket, [contact_id]),
        service_code="pothole",
        service_name="Pothole",
        description=f"pothole {tag} on Main St",
        requested_datetime=now,
        updated_datetime=now,
        channel="sms",
        confidence=0.9,
        source_contact_ids=(contact_id,),
    )
    return request.model_dump_json().encode(), ticket.encode()


def poison(kind: str, valid: bytes) -> tuple[Produce, bool]:
    """A poison record of ``kind`` and whether it must be dead-lettered (else: processed).

    A record whose only fault is a header or key that is not UTF-8 still carries a valid
    body: it is processed (headers and keys are metadata), and must not take its batch down.
    """
    json_type = (("content-type", b"application/json"),)
    return {
        "header-not-utf8": (Produce(valid, headers=(*json_type, ("x-trace", BAD_UTF8))), False),
        "header-not-utf8-bad-body": (Produce(b"{nope", headers=(("x-trace", BAD_UTF8),)), True),
        "key-not-utf8": (Produce(valid, key=BAD_UTF8), False),
        "key-not-utf8-bad-body": (Produce(b"[1, 2]", key=BAD_UTF8), True),
        "tombstone": (Produce(None, key=b"gone"), True),
        "invalid-json": (Produce(b'{"contact_id": "web:x", '), True),
        "wrong-schema": (Produce(json.dumps({"hello": "world", "n": 3}).encode()), True),
        "huge-value": (Produce(HUGE), True),
    }[kind]


KINDS = [
    "header-not-utf8",
    "header-not-utf8-bad-body",
    "key-not-utf8",
    "key-not-utf8-bad-body",
    "tombstone",
    "invalid-json",
    "wrong-schema",
    "huge-value",
]


async def check_stage(
    pipeline: Pipeline,
    watch: Watch,
    *,
    kind: str,
    source: str,
    out_topic: str,
    stage: str,
    make: Callable[[str], tuple[bytes, bytes]],
) -> None:
    """Valid records around a poison one into ``source``: all valid ones reach ``out_topic``,
    the poison one is processed or dead-lettered by ``stage`` with a reason; nothing else."""
    run = uuid.uuid4().hex[:8]
    valid = [make(f"{run}-{i}") for i in range(40)]
    bad, must_letter = poison(kind, make(f"{run}-poison")[0])
    records = [Produce(v, key=k) for v, k in valid[:20]] + [bad] + [Produce(v, key=k) for v, k in valid[20:]]
    where = await produce(pipeline, source, records)
    poison_at = where[20]
    expected = {k for _, k in valid}
    if not must_letter:
        expected.add(make(f"{run}-poison")[1])

    def letter() -> DeadLetter | None:
        return next(
            (
                x
                for x in watch.letters(pipeline.settings.topics.deadletter)
                if x.source_topic == source and (x.partition, x.offset) == poison_at
            ),
            None,
        )

    async def done() -> bool:
        await watch.poll()
        return expected <= watch.keys(out_topic) and (letter() is not None or not must_letter)

    await wait_for(done, timeout=40, what=f"{len(expected)} records out of {stage} and the poison's fate")
    if must_letter:
        found = letter()
        assert found is not None
        assert found.stage == stage
        assert found.reason
        assert found.original == (bad.value or b"")
    else:
        assert letter() is None


@pytest.mark.parametrize("kind", KINDS)
async def test_normalizer_loses_nothing_around_a_poison_contact(
    pipeline: Pipeline, watch: Watch, kind: str
) -> None:
    topics = pipeline.settings.topics
    await check_stage(
        pipeline,
        watch,
        kind=kind,
        source=topics.contacts("web"),
        out_topic=topics.requests,
        stage="normalizer",
        make=contact_bytes,
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_router_loses_nothing_around_a_poison_request(
    pipeline: Pipeline, watch: Watch, kind: str
) -> None:
    topics = pipeline.settings.topics
    await check_stage(
        pipeline,
        watch,
        kind=kind,
        source=topics.requests,
        out_topic=topics.department("public-works"),
        stage="router",
        make=request_bytes,
    )
