"""The metric helpers and the health checks, on their own registries and fake consumers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from intake311 import metrics as process_metrics
from intake311.bus import Outgoing
from intake311.dedupe import SeenStore
from intake311.health import Probes, Readiness, broker_check, consumers_check
from intake311.metrics import OTHER, BoundedLabel, Metrics, error_class
from intake311.settings import Settings
from intake311.stage import Record, dead_letter
from schemas.request import ServiceRequest
from sinks.app import deliver_batch
from sinks.base import DeliveryError

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def request(**fields: Any) -> ServiceRequest:
    values: dict[str, Any] = {
        "request_id": "K7M4-QPXA",
        "event_id": "e" * 32,
        "service_code": "pothole",
        "service_name": "Pothole",
        "requested_datetime": NOW,
        "updated_datetime": NOW,
        "channel": "web",
        "confidence": 1.0,
        "source_contact_ids": ("web:1",),
    }
    values.update(fields)
    return ServiceRequest(**values)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_bounded_label_stops_taking_new_values_at_its_limit() -> None:
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_bounded_label_with_allowed_values_maps_the_rest_to_other() -> None:
    label = BoundedLabel(allowed=["pothole"])
    assert (label("pothole"), label("made-up"), label(None)) == ("pothole", OTHER, "")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("ValidationError", "ValidationError"),
        ("httpx.HTTPStatusError", "httpx.HTTPStatusError"),
        ("HTTP 400: the receiver said no", OTHER),
        ("", OTHER),
        (None, OTHER),
        ("X" * 200, OTHER),
    ],
)
def test_error_class_keeps_type_names_only(error: str | None, expected: str) -> None:
    assert error_class(error) == expected


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.contact("sms")
    assert value(first, "intake311_contacts_total", channel="sms") == 1
    assert value(second, "intake311_contacts_total", channel="sms") == 0


def test_request_counts_service_district_triage_and_emergency() -> None:
    metrics = Metrics(district_layer="ward")
    metrics.request_opened(request(districts={"ward": "Ward 7", "council": "3"}))
    metrics.request_opened(request(triage=True, emergency="gas", districts={"council": "3"}))
    assert value(metrics, "intake311_requests_total", service_code="pothole", district="Ward 7") == 1
    assert value(metrics, "intake311_requests_total", service_code="pothole", district="") == 1
    assert value(metrics, "intake311_requests_triaged_total") == 1
    assert value(metrics, "intake311_emergencies_total", kind="gas") == 1


def test_request_district_is_empty_without_a_configured_layer() -> None:
    metrics = Metrics()
    metrics.request_opened(request(districts={"ward": "Ward 7"}))
    assert value(metrics, "intake311_requests_total", service_code="pothole", district="") == 1


def test_dead_letters_are_counted_by_stage_and_error_type_not_reason_text() -> None:
    metrics = Metrics()
    record = Record(b"not json", topic="t.requests", partition=0, offset=3)
    letters = [
        dead_letter(record, "router", "t.deadletter", "invalid: request_id: missing", "ValidationError"),
        dead_letter(record, "sinks", "t.deadletter", "HTTP 422 from https://x", "HTTP 422 from https://x"),
        Outgoing("t.department.roads", b"{}"),
    ]
    metrics.dead_lettered(letters, "t.deadletter")
    assert value(metrics, "intake311_dead_letters_total", stage="router", error="ValidationError") == 1
    assert value(metrics, "intake311_dead_letters_total", stage="sinks", error=OTHER) == 1
    samples = [s for m in metrics.registry.collect() for s in m.samples]
    totals = [s.value for s in samples if s.name == "intake311_dead_letters_total"]
    assert sum(totals) == 2  # the department record is not a dead letter


def test_delivery_counts_outcomes_and_observes_latency_of_delivered_only() -> None:
    metrics = Metrics()
    metrics.delivery("roads", "hook", "delivered", NOW, now=NOW + timedelta(seconds=42))
    metrics.delivery("roads", "hook", "held", NOW, now=NOW + timedelta(hours=2))
    labels = {"department": "roads", "sink": "hook"}
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="delivered") == 1
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="held") == 1
    assert value(metrics, "intake311_delivery_latency_seconds_count", **labels) == 1
    assert value(metrics, "intake311_delivery_latency_seconds_sum", **labels) == 42
    assert value(metrics, "intake311_delivery_latency_seconds_bucket", **labels, le="30.0") == 0
    assert value(metrics, "intake311_delivery_latency_seconds_bucket", **labels, le="60.0") == 1


def test_a_batch_of_deliveries_counts_like_one_by_one() -> None:
    metrics = Metrics()
    later = NOW + timedelta(seconds=10)
    metrics.delivery_batch(
        "roads",
        "hook",
        {"delivered": 2, "held": 3, "refused": 0},
        [NOW, NOW - timedelta(seconds=50)],
        now=later,
    )
    labels = {"department": "roads", "sink": "hook"}
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="delivered") == 2
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="held") == 3
    no_series = metrics.registry.get_sample_value(
        "intake311_deliveries_total", {**labels, "outcome": "refused"}
    )
    assert no_series is None  # nothing refused: no series made for it
    assert value(metrics, "intake311_delivery_latency_seconds_count", **labels) == 2
    assert value(metrics, "intake311_delivery_latency_seconds_sum", **labels) == 70
    with pytest.raises(ValueError, match="unknown delivery outcome 'lost'"):
        metrics.delivery_batch("roads", "hook", {"lost": 1})


def test_an_unknown_delivery_outcome_is_a_bug_not_a_new_series() -> None:
    with pytest.raises(ValueError, match="unknown delivery outcome"):
        Metrics().delivery("roads", "hook", "lost")


async def test_deliver_batch_counts_delivered_held_and_refused(tmp_path: Path) -> None:
    class Sink:
        name = "scripted"

        def __init__(self, *failures: BaseException) -> None:
            self.failures = list(failures)

        async def start(self) -> None: ...

        async def close(self) -> None: ...

        async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
            if self.failures:
                raise self.failures.pop(0)

    settings = Settings(data_dir=tmp_path, retry_attempts=1, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    metrics = Metrics()
    records = [
        Record(request(request_id=f"K7M4-QPX{c}", event_id=c * 32).model_dump_json().encode(), "t", 0, i)
        for i, c in enumerate("ABC")
    ]
    sink = Sink(DeliveryError("HTTP 400 bad", retryable=False), DeliveryError("HTTP 503", retryable=True))
    kwargs: dict[str, Any] = {"department": "roads", "sink_name": "hook", "seen": seen, "settings": settings}
    first = await deliver_batch(records, sink, metrics=metrics, **kwargs)
    assert first.held == "HTTP 503"
    await deliver_batch(records[1:], sink, metrics=metrics, **kwargs)  # the rewound rest, sink back
    seen.close()
    labels = {"department": "roads", "sink": "hook"}
    # A refused; B failed and C was not tried while the sink was down (both held); then both delivered.
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="refused") == 1
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="held") == 2
    assert value(metrics, "intake311_deliveries_total", **labels, outcome="delivered") == 2
    assert value(metrics, "intake311_delivery_latency_seconds_count", **labels) == 2


@dataclass
class FakeConsumer:
    """What ``sample_consumers`` and ``consumers_check`` read of an aiokafka consumer."""

    highwaters: dict[TopicPartition, int | None] = field(default_factory=dict)
    positions: dict[TopicPartition, int] = field(default_factory=dict)

    def assignment(self) -> set[TopicPartition]:
        return set(self.highwaters)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        if tp not in self.positions:
            await asyncio.Event().wait()  # no position yet: would wait for the broker
        return self.positions[tp]


@dataclass
class FakeSubscriber:
    group_id: str
    consumer: FakeConsumer | None


async def test_consumer_lag_is_highwater_minus_position_summed_per_group() -> None:
    metrics = Metrics()
    p0, p1, p2 = (TopicPartition("t", i) for i in range(3))
    busy = FakeSubscriber("g.router", FakeConsumer({p0: 10, p1: 7, p2: None}, {p0: 4, p1: 7}))
    await metrics.sample_consumers([busy, FakeSubscriber("g.sinks", FakeConsumer({p0: 5}))], timeout_s=0.01)
    assert value(metrics, "intake311_consumer_lag", group="g.router") == 6
    assert value(metrics, "intake311_consumer_assigned_partitions", group="g.router") == 3
    assert value(metrics, "intake311_consumer_lag", group="g.sinks") == 0  # no position yet: not counted


async def test_a_consumer_that_went_away_reports_no_partitions() -> None:
    metrics = Metrics()
    tp = TopicPartition("t", 0)
    await metrics.sample_consumers([FakeSubscriber("g", FakeConsumer({tp: 1}, {tp: 1}))])
    await metrics.sample_consumers([])
    assert value(metrics, "intake311_consumer_assigned_partitions", group="g") == 0


@dataclass
class FakeWatch:
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    recoveries: int = 0


def test_broker_gauge_follows_the_watch() -> None:
    metrics, watch = Metrics(), FakeWatch()
    metrics.sample_broker(watch)  # type: ignore[arg-type]
    assert value(metrics, "intake311_broker_reachable") == 0
    watch.ready.set()
    watch.recoveries = 2
    metrics.sample_broker(watch)  # type: ignore[arg-type]
    assert value(metrics, "intake311_broker_reachable") == 1
    assert value(metrics, "intake311_broker_recoveries") == 2


def test_current_is_the_installed_metrics_only_inside_the_block() -> None:
    mine = Metrics()
    with process_metrics.installed(mine):
        assert process_metrics.current() is mine
    assert process_metrics.current() is not mine


async def test_readiness_names_every_failing_check() -> None:
    readiness = Readiness(timeout_s=0.01)

    async def fine() -> None:
        return None

    async def down() -> str:
        return "down (OperationalError)"

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def raises() -> None:
        raise RuntimeError("boom")

    for name, check in (("a", fine), ("b", down), ("c", hangs), ("d", raises)):
        readiness.add(name, check)
    assert await readiness.reasons() == [
        "b: down (OperationalError)",
        "c: did not answer within 0.01 s",
        "d: RuntimeError: boom",
    ]


async def test_consumers_check_waits_for_the_group_to_settle() -> None:
    now = [100.0]
    consumer = FakeConsumer()
    subscribers = [FakeSubscriber("g.router", consumer), FakeSubscriber("g.sinks", None)]
    check = consumers_check(lambda: subscribers, settle_s=10, clock=lambda: now[0])
    assert await check() is None  # just seen empty: a rebalance, perhaps
    now[0] += 10
    assert await check() == "no partition assignment for 10 s or more: g.router, g.sinks"
    consumer.highwaters[TopicPartition("t", 0)] = 0
    subscribers.pop()
    assert await check() is None
    consumer.highwaters.clear()  # emptied again: the settle time starts over
    assert await check() is None


async def test_probe_routes_answer_503_with_reasons_then_200() -> None:
    watch = FakeWatch()
    readiness = Readiness()
    readiness.add("broker", broker_check(watch))  # type: ignore[arg-type]
    metrics = Metrics()
    sampled: list[bool] = []

    async def sample() -> None:
        sampled.append(True)
        metrics.sample_broker(watch)  # type: ignore[arg-type]

    app = Probes(metrics, readiness, sample=sample).app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://probe") as client:
        assert (await client.get("/health/live")).status_code == 200
        for path in ("/health/ready", "/healthz"):
            response = await client.get(path)
            assert response.status_code == 503
            assert response.json()["reasons"][0].startswith("broker: unreachable")
        watch.ready.set()
        assert (await client.get("/health/ready")).json() == {"status": "ok", "reasons": []}
        scraped = await client.get("/metrics")
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    assert "intake311_broker_reachable 1.0" in scraped.text
    assert sampled == [True]
