"""Retry policy and the sink-type registry (built-ins, explicit registration, entry points)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

import sinks.base as base
from schemas.request import ServiceRequest
from sinks.base import (
    BUILTIN_SINKS,
    BatchSink,
    Delivery,
    DeliveryError,
    Sink,
    SinkConfig,
    SinkContext,
    parse_sink_config,
    register_sink,
    sink_types,
)
from sinks.jsonl import JsonlSinkConfig
from sinks.retry import MAX_BACKOFF_S, backoff_delay, deliver_all, deliver_with_retry
from sinks.webhook import WebhookSinkConfig


def make_request(request_id: str = "K7M4-QPXA") -> ServiceRequest:
    now = datetime(2025, 3, 1, tzinfo=UTC)
    return ServiceRequest(
        request_id=request_id,
        event_id="e" * 32,
        service_code="pothole",
        service_name="Pothole",
        requested_datetime=now,
        updated_datetime=now,
        channel="web",
        confidence=1.0,
        source_contact_ids=("web:1",),
    )


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class ScriptedSink:
    """Raises the scripted exceptions in order, then succeeds; records every call."""

    def __init__(self, *failures: BaseException) -> None:
        self.name = "scripted"
        self.failures = list(failures)
        self.calls: list[tuple[str, str, str]] = []

    async def start(self) -> None: ...

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        self.calls.append((request.request_id, department, delivery_id))
        if self.failures:
            raise self.failures.pop(0)

    async def close(self) -> None: ...


class ScriptedBatchSink(ScriptedSink):
    def __init__(self, *failures: BaseException, batch_failure: BaseException | None = None) -> None:
        super().__init__(*failures)
        self.batch_failure = batch_failure
        self.batches: list[list[str]] = []

    async def deliver_many(self, deliveries: list[Delivery]) -> None:
        self.batches.append([d.delivery_id for d in deliveries])
        if self.batch_failure:
            raise self.batch_failure


async def retry(sink: Sink, *, attempts: int = 5, backoff_s: float = 1.0, sleeps: Sleeps | None = None):
    return await deliver_with_retry(
        sink,
        make_request(),
        department="roads",
        delivery_id="d1",
        attempts=attempts,
        backoff_s=backoff_s,
        sleep=sleeps or Sleeps(),
    )


async def test_retries_with_exponential_backoff_and_the_same_delivery_id() -> None:
    sink, sleeps = ScriptedSink(DeliveryError("down"), DeliveryError("still down")), Sleeps()
    outcome = await retry(sink, backoff_s=1.0, sleeps=sleeps)
    assert (outcome.delivered, outcome.attempts, outcome.reason, outcome.error) == (True, 3, None, None)
    assert sink.calls == [("K7M4-QPXA", "roads", "d1")] * 3
    assert len(sleeps.delays) == 2
    assert 1.0 <= sleeps.delays[0] <= 1.1
    assert 2.0 <= sleeps.delays[1] <= 2.2


async def test_gives_up_after_attempts_with_the_last_reason() -> None:
    sink, sleeps = ScriptedSink(*(DeliveryError(f"fail {i}") for i in range(10))), Sleeps()
    outcome = await retry(sink, attempts=3, backoff_s=0.5, sleeps=sleeps)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 3, True)
    assert outcome.reason == "fail 2"
    assert outcome.error == "DeliveryError"
    assert len(sink.calls) == 3
    assert len(sleeps.delays) == 2  # no sleep after the last try


async def test_non_retryable_stops_at_once() -> None:
    sink, sleeps = ScriptedSink(DeliveryError("rejected", retryable=False)), Sleeps()
    outcome = await retry(sink, sleeps=sleeps)
    assert (outcome.delivered, outcome.attempts, outcome.retryable) == (False, 1, False)
    assert outcome.reason == "rejected"
    assert sleeps.delays == []


async def test_unexpected_exceptions_are_retryable_failures() -> None:
    sink = ScriptedSink(*(ValueError("boom") for _ in range(3)))
    outcome = await retry(sink, attempts=3)
    assert (outcome.delivered, outcome.attempts) == (False, 3)
    assert (outcome.reason, outcome.error, outcome.retryable) == ("ValueError: boom", "ValueError", True)


async def test_retry_after_hint_lengthens_the_wait() -> None:
    sink, sleeps = ScriptedSink(DeliveryError("busy", retry_after_s=7.0)), Sleeps()
    outcome = await retry(sink, backoff_s=0.1, sleeps=sleeps)
    assert outcome.delivered
    assert sleeps.delays == [7.0]


async def test_cancellation_propagates() -> None:
    sink = ScriptedSink(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retry(sink)


def test_backoff_is_capped() -> None:
    assert MAX_BACKOFF_S <= backoff_delay(20, 1.0) <= MAX_BACKOFF_S * 1.1
    assert backoff_delay(1, 0.0) == 0.0


async def test_deliver_all_uses_one_batch_call_when_it_works() -> None:
    sink = ScriptedBatchSink()
    deliveries = [Delivery(make_request(), "roads", f"d{i}") for i in range(3)]
    outcomes = await deliver_all(sink, deliveries, attempts=3, backoff_s=0, sleep=Sleeps())
    assert isinstance(sink, BatchSink)
    assert sink.batches == [["d0", "d1", "d2"]]
    assert sink.calls == []
    assert [(o.delivered, o.attempts) for o in outcomes] == [(True, 1)] * 3


async def test_deliver_all_falls_back_to_one_by_one_and_keeps_order() -> None:
    sink = ScriptedBatchSink(
        DeliveryError("bad one", retryable=False), batch_failure=DeliveryError("batch failed")
    )
    deliveries = [Delivery(make_request(), "roads", f"d{i}") for i in range(3)]
    outcomes = await deliver_all(sink, deliveries, attempts=3, backoff_s=0, sleep=Sleeps())
    assert [c[2] for c in sink.calls] == ["d0", "d1", "d2"]
    assert [(o.delivered, o.reason) for o in outcomes] == [(False, "bad one"), (True, None), (True, None)]


async def test_deliver_all_without_batch_support() -> None:
    sink = ScriptedSink(DeliveryError("flaky"))
    assert not isinstance(sink, BatchSink)
    deliveries = [Delivery(make_request(), "roads", "d0"), Delivery(make_request(), "parks", "d1")]
    outcomes = await deliver_all(sink, deliveries, attempts=2, backoff_s=0, sleep=Sleeps())
    assert [(o.delivered, o.attempts) for o in outcomes] == [(True, 2), (True, 1)]
    assert await deliver_all(sink, [], attempts=2, backoff_s=0) == []


# --- registry ----------------------------------------------------------------------------------


class MemorySinkConfig(SinkConfig):
    type: Literal["memory"] = "memory"
    capacity: int = 10

    def build(self, ctx: SinkContext) -> Sink:
        return MemorySink(self.name)


@dataclass
class MemorySink:
    name: str

    async def start(self) -> None: ...

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None: ...

    async def close(self) -> None: ...


@pytest.fixture
def clean_registry() -> Iterator[None]:
    base._registry.reset()
    yield
    base._registry.reset()


@dataclass
class FakeEntryPoint:
    name: str
    value: str


def test_builtin_types_are_known(clean_registry: None) -> None:
    types = sink_types()
    assert types["jsonl"] is JsonlSinkConfig
    assert types["webhook"] is WebhookSinkConfig


def test_register_a_new_type(clean_registry: None, tmp_path: Path) -> None:
    assert register_sink("memory", MemorySinkConfig) is MemorySinkConfig
    config = parse_sink_config({"name": "mem", "type": "memory", "capacity": 3})
    assert isinstance(config, MemorySinkConfig) and config.capacity == 3
    sink = config.build(SinkContext(data_dir=tmp_path))
    assert isinstance(sink, Sink) and sink.name == "mem"
    assert {"jsonl", "webhook", "memory"} <= set(sink_types())
    assert "memory" not in BUILTIN_SINKS


def test_registration_mistakes_are_reported(clean_registry: None) -> None:
    with pytest.raises(ValueError, match="must default to 'other'"):
        register_sink("other", MemorySinkConfig)
    with pytest.raises(ValueError, match=r"already registered by sinks\.jsonl\.JsonlSinkConfig"):
        sink_types()
        register_sink("jsonl", type("Fake", (JsonlSinkConfig,), {}))
    with pytest.raises(TypeError, match="not a SinkConfig subclass"):
        register_sink("dict", dict)  # type: ignore[arg-type]


def test_entry_points_are_discovered(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == "intake311.sinks"
        return [
            FakeEntryPoint("memory", f"{__name__}:MemorySinkConfig"),
            FakeEntryPoint("broken", "no_such_module_for_sinks:Config"),
        ]

    monkeypatch.setattr(base, "entry_points", fake_entry_points)
    assert sink_types()["memory"] is MemorySinkConfig
    with pytest.raises(ValueError) as info:
        parse_sink_config({"name": "x", "type": "broken"})
    message = str(info.value)
    assert "unknown sink type 'broken'" in message
    assert "failed to load" in message and "no_such_module_for_sinks" in message
    assert "known types: email, jsonl, memory, postgres, slack, webhook" in message


def test_base_config_cannot_build() -> None:
    with pytest.raises(NotImplementedError):
        SinkConfig(name="x", type="x").build(SinkContext(data_dir=None))  # type: ignore[arg-type]


async def test_an_outage_does_not_stretch_a_batch(tmp_path: Path) -> None:
    """After one delivery exhausts its retries and a probe fails, the rest fail at once."""

    class Down:
        name = "down"
        calls = 0

        async def start(self) -> None: ...
        async def close(self) -> None: ...

        async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
            Down.calls += 1
            raise DeliveryError("connection refused")

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    request = make_request()
    deliveries = [Delivery(request, "public-works", f"d{i}") for i in range(50)]
    outcomes = await deliver_all(Down(), deliveries, attempts=4, backoff_s=0.01, sleep=sleep)
    assert [o.attempts for o in outcomes[:3]] == [4, 1, 0]
    assert Down.calls == 5  # 4 tries, 1 probe, then nothing for the other 48
    assert not any(o.delivered for o in outcomes)
    assert outcomes[-1].reason is not None and outcomes[-1].reason.startswith(
        "not attempted: sink unavailable"
    )
