"""``publish_all`` on the embedded broker: aiokafka's producer directly, middlewares per group.

What must not change with the fast path: every record arrives once, with its key (so on its
key's partition), its value, ``content-type``, a correlation id and its own headers, each
topic in the order given; Prometheus still counts every published record under its topic.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from intake311.bus import BusWatch, Outgoing, ensure_topics, kafka_producer, make_broker, publish_all
from intake311.pipeline import process_metrics
from intake311.settings import Settings

pytestmark = pytest.mark.integration


async def test_publish_all_sends_every_record_once_with_its_key_and_headers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": [kafka_bootstrap]})
    run = uuid.uuid4().hex[:8]
    roads, parks = f"pub-{run}.roads", f"pub-{run}.parks"
    await ensure_topics(settings.kafka, [kafka_bootstrap], [roads, parks])
    broker = make_broker(settings.kafka, [kafka_bootstrap])
    metrics = process_metrics(settings, broker)
    await broker.start()
    try:
        assert kafka_producer(broker) is not None  # the fast path, not per-record publish
        records = [
            Outgoing(
                roads if i % 3 else parks,
                f'{{"n":{i},"pad":"{"x" * (i % 5) * 3000}"}}'.encode(),  # some partitions overflow a batch
                key=f"req-{i % 7}",
                headers={"x-department": "roads" if i % 3 else "parks"},
            )
            for i in range(300)
        ]
        records.insert(150, Outgoing(roads, b'{"n":"big","pad":"' + b"y" * 300_000 + b'"}', key="req-3"))
        records.append(Outgoing(roads, b'{"n":"letter"}', key=None, headers={"x-stage": "router"}))
        await publish_all(broker, records)
        partitions = {t: sorted(await broker_partitions(broker, t)) for t in (roads, parks)}
    finally:
        await broker.stop()

    consumer = AIOKafkaConsumer(
        roads, parks, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    got = []
    try:
        while len(got) < len(records):
            batches = await consumer.getmany(timeout_ms=2000)
            assert batches, f"only {len(got)} of {len(records)} records arrived"
            got += [r for batch in batches.values() for r in batch]
    finally:
        await consumer.stop()

    assert sorted(r.value for r in got) == sorted(r.value for r in records)  # each exactly once
    sent = {r.value: r for r in records}
    partition_of: dict[tuple[str, bytes], int] = {}
    for record in got:
        out = sent[record.value]
        headers = dict(record.headers)
        assert record.topic == out.topic
        assert record.key == (out.key.encode() if out.key is not None else None)
        assert headers["content-type"] == b"application/json"
        assert headers["correlation_id"]
        assert {k: headers[k].decode() for k in out.headers} == out.headers
        if record.key is not None:  # the partition aiokafka's send would have chosen for the key
            parts = partitions[record.topic]
            assert record.partition == DefaultPartitioner()(record.key, parts, parts)
            assert partition_of.setdefault((record.topic, record.key), record.partition) == record.partition
    for topic in (roads, parks):  # a key's records in the order they were given
        for key in {r.key for r in records if r.topic == topic and r.key is not None}:
            given = [r.value for r in records if r.topic == topic and r.key == key]
            arrived = sorted(
                (r for r in got if r.topic == topic and r.key == key.encode()), key=lambda r: r.offset
            )
            assert [r.value for r in arrived] == given

    rendered = metrics.render().decode()
    published = {
        line.split("destination=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in rendered.splitlines()
        if line.startswith("faststream_published_messages_total{") and 'status="success"' in line
    }
    assert published == {roads: 202.0, parks: 100.0}


async def broker_partitions(broker: object, topic: str) -> set[int]:
    producer = kafka_producer(broker)
    assert producer is not None
    return set(await producer.partitions_for(topic))


async def test_the_check_after_an_ack_finds_the_epoch_and_never_creates_a_missing_one(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``BusWatch.confirm`` asks for the epoch marker by name: on the real broker it is found
    while it exists, and a missing one is reported missing and stays missing (an auto-created
    marker would hide a broker that came back empty)."""
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": [kafka_bootstrap]})
    run = uuid.uuid4().hex[:8]
    watch = BusWatch(settings.kafka, [kafka_bootstrap], [f"chk-{run}.contacts"], prefix=f"chk-{run}")
    await watch.establish()
    try:
        assert watch.epoch is not None and await watch.confirm()
        watch.epoch = f"chk-{run}.epoch.gone"  # what a broker that lost its topics no longer has
        assert not await watch.confirm()
        assert not await watch.confirm()
        assert watch.epoch not in await watch._markers()
    finally:
        await watch.stop()


async def test_a_prompt_publish_hands_over_closed_batches_and_a_plain_one_lingers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``prompt`` (a stage's batch): every record, even a lone one, goes in a closed record batch,
    which aiokafka's sender takes at once; a closed batch is ready whatever ``linger_ms`` says.
    Without it a lone record (the web stage's contact) goes through ``send`` into the partition's
    open batch, where concurrent requests join it for the linger."""
    settings = Settings(data_dir=tmp_path, kafka={"bootstrap_servers": [kafka_bootstrap], "linger_ms": 50})
    topic = f"pub-{uuid.uuid4().hex[:8]}.prompt"
    await ensure_topics(settings.kafka, [kafka_bootstrap], [topic])
    broker = make_broker(settings.kafka, [kafka_bootstrap])
    await broker.start()
    try:
        producer = kafka_producer(broker)
        assert producer is not None
        handed: list[tuple[str, bool]] = []
        send, send_batch = producer.send, producer.send_batch

        async def spy_send(*args: Any, **kwargs: Any) -> Any:
            handed.append(("send", False))
            return await send(*args, **kwargs)

        async def spy_send_batch(batch: Any, *args: Any, **kwargs: Any) -> Any:
            handed.append(("batch", batch.closed()))
            return await send_batch(batch, *args, **kwargs)

        producer.send, producer.send_batch = spy_send, spy_send_batch  # type: ignore[method-assign]
        await publish_all(broker, [Outgoing(topic, b'{"n":1}', key="a")], prompt=True)
        assert handed == [("batch", True)]
        handed.clear()
        await publish_all(broker, [Outgoing(topic, b'{"n":2}', key="a")])
        assert handed == [("send", False)]
        handed.clear()
        await publish_all(broker, [Outgoing(topic, b'{"n":%d}' % i, key=str(i)) for i in range(40)])
        assert handed and all(kind == "batch" and closed for kind, closed in handed)  # 32 or more
    finally:
        await broker.stop()
