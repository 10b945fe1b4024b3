"""FastStream's in-memory broker: the stages' Kafka wiring, without a Kafka server."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from intake311.settings import Settings
from normalizer.app import register as register_normalizer
from router.app import register as register_router
from schemas import DeadLetter, ServiceRequest
from tests.conftest import make_contact


async def test_contact_flows_through_normalizer_and_router(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, retry_attempts=1)
    topics = settings.topics
    broker = KafkaBroker()
    received: list[ServiceRequest] = []
    letters: list[DeadLetter] = []

    @broker.subscriber(topics.department("public-works"))
    async def department(request: ServiceRequest) -> None:
        received.append(request)

    @broker.subscriber(topics.deadletter)
    async def deadletter(letter: DeadLetter) -> None:
        letters.append(letter)

    async with contextlib.AsyncExitStack() as stack:
        await register_normalizer(broker, settings, stack)
        await register_router(broker, settings, stack)
        async with TestKafkaBroker(broker) as test_broker:
            contact = make_contact("Pothole outside 12 Elm Street")
            await test_broker.publish(
                contact.model_dump_json().encode(), topics.contacts("web"), key=contact.request_id.encode()
            )
            await test_broker.publish(b"garbage", topics.contacts("web"))

    assert [r.request_id for r in received] == [contact.request_id]
    assert received[0].agency_responsible == "public-works"
    assert [letter.original for letter in letters] == [b"garbage"]


async def test_stage_handlers_start_without_a_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normalizer's and router's handlers get their batch from the broker's context
    (``handled_records``), not from a ``msg: KafkaMessage`` parameter, which FastDepends resolves
    on an AnyIO worker thread for every batch."""
    import anyio.to_thread

    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await test_contact_flows_through_normalizer_and_router(tmp_path)  # a contact and a poison record
    assert hops == []
