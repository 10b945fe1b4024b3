"""The fetch wait a consumer asks the broker for follows traffic (intake311/fetchwait.py).

Every fetch request aiokafka builds is recorded, so the test sees the wait the broker is
actually asked for: the idle one at start, the short one once a batch was handled, the idle one
again after the quiet spell. It runs against the installed aiokafka, so a release that stops
reading the wait from where ``FetchPace`` sets it fails here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiokafka.consumer.fetcher as fetcher_module
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from intake311.fetchwait import FetchPace, fetcher_of

pytestmark = pytest.mark.asyncio


class Recorder:
    """Wraps aiokafka's FetchRequest: remembers the max wait of every request built."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.waits: list[int] = []

    def __call__(self, max_wait_ms: int, *args: Any, **kwargs: Any) -> Any:
        self.waits.append(max_wait_ms)
        return self.original(max_wait_ms, *args, **kwargs)


async def wait_for_request(recorder: Recorder, wanted: int, timeout_s: float = 10.0) -> None:
    """Until a fetch request asks for ``wanted`` ms (after the requests already seen)."""
    start = len(recorder.waits)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if wanted in recorder.waits[start:]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no fetch asked for {wanted} ms; asked: {sorted(set(recorder.waits[start:]))}")


class Subscriber:
    """What FetchPace needs of a FastStream subscriber: its running consumer."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer


async def test_the_wait_asked_for_is_short_while_records_flow_and_long_when_idle(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(fetcher_module.FetchRequest)
    monkeypatch.setattr(fetcher_module, "FetchRequest", recorder)
    topic = f"pace-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{topic}.g",
        fetch_max_wait_ms=300,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    pace = FetchPace(Subscriber(consumer), busy_ms=20, idle_ms=300, idle_after_s=0.5)
    try:
        assert fetcher_of(consumer) is not None
        await producer.send_and_wait(topic, b"one")
        got: dict[Any, list[Any]] = {}
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=200)
        assert got, "the record never arrived"
        assert 300 in recorder.waits and 20 not in recorder.waits  # started idle
        pace.busy()  # what batch_subscriber does for every batch
        await wait_for_request(recorder, 20)
        while consumer.assignment() and pace.current_ms == 20:  # the quiet spell passes
            await consumer.getmany(timeout_ms=100)
        await wait_for_request(recorder, 300)
        pace.busy()  # traffic again
        await wait_for_request(recorder, 20)
    finally:
        pace.close()
        await consumer.stop()
        await producer.stop()


async def test_equal_waits_change_nothing() -> None:
    class Fetcher:
        _fetch_max_wait_ms = 500

    class Consumer:
        _fetcher = Fetcher()

    pace = FetchPace(Subscriber(Consumer()), busy_ms=500, idle_ms=500, idle_after_s=0.1)  # type: ignore[arg-type]
    pace.busy()
    assert not pace.enabled and pace._timer is None and Fetcher._fetch_max_wait_ms == 500


async def test_a_consumer_without_the_attribute_keeps_its_wait() -> None:
    class Consumer:
        _fetcher = object()

    pace = FetchPace(Subscriber(Consumer()), busy_ms=20, idle_ms=500, idle_after_s=0.1)  # type: ignore[arg-type]
    pace.busy()  # warns once, raises nothing
    assert pace.current_ms == 500
    pace.close()
