"""Retry policy and the sink-type registry (built-ins, explicit registration, entry points)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

import sinks.app as app
import sinks.base as base
from intake311.dedupe import SeenStore
from intake311.settings import Settings
from intake311.stage import Record
from schemas.deadletter import DeadLetter
from schemas.request import ServiceRequest
from schemas.status import StatusChange
from sinks.app import deliver_batch, finish_batch, status_batch
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
from sinks.retry import (
    MAX_BACKOFF_S,
    Outage,
    SinkUnavailable,
    backoff_delay,
    deliver_all,
    deliver_with_retry,
)
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
    assert "known types: email, jsonl, memory, open311, postgres, slack, webhook" in message


def test_base_config_cannot_build() -> None:
    with pytest.raises(NotImplementedError):
        SinkConfig(name="x", type="x").build(SinkContext(data_dir=None))  # type: ignore[arg-type]


async def test_an_outage_does_not_stretch_a_batch(tmp_path: Path) -> None:
    """Once a delivery has used up its tries the sink is down: the rest wait, untried, in order."""

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
    outage = Outage("down")
    outcomes = await deliver_all(Down(), deliveries, attempts=4, backoff_s=0.01, sleep=sleep, outage=outage)
    assert [o.attempts for o in outcomes[:3]] == [4, 0, 0]
    assert Down.calls == 4  # 4 tries, then nothing for the other 49
    assert all(o.held for o in outcomes)  # none refused: all of them wait for the sink
    assert outcomes[-1].reason == "not attempted: sink unavailable (connection refused)"
    assert outage.down and outage.reason == "connection refused"


# -- outages wait on the topic (defect 8) ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_known_outage_is_probed_with_one_try_and_the_backlog_follows() -> None:
    sink, sleeps = ScriptedSink(DeliveryError("refused"), DeliveryError("still refused")), Sleeps()
    outage = Outage("scripted")
    outage.failed("connection refused")  # an earlier batch found the sink down
    deliveries = [Delivery(make_request(), "roads", f"d{i}") for i in range(3)]
    first = await deliver_all(sink, deliveries, attempts=5, backoff_s=1.0, sleep=sleeps, outage=outage)
    assert [(o.attempts, o.held) for o in first] == [(1, True), (0, True), (0, True)]
    assert sleeps.delays == [] and outage.down  # a probe is one try: no in-process backoff

    second = await deliver_all(sink, deliveries, attempts=5, backoff_s=1.0, sleep=sleeps, outage=outage)
    assert [o.delivered for o in second] == [False, False, False]
    third = await deliver_all(sink, deliveries, attempts=5, backoff_s=1.0, sleep=sleeps, outage=outage)
    assert [o.delivered for o in third] == [True, True, True]
    assert not outage.down
    assert [call[2] for call in sink.calls] == ["d0", "d0", "d0", "d1", "d2"]  # in order


async def test_a_refusal_is_dead_lettered_and_the_sink_is_not_down() -> None:
    sink = ScriptedSink(DeliveryError("HTTP 422", retryable=False))
    deliveries = [Delivery(make_request(), "roads", f"d{i}") for i in range(3)]
    outage = Outage("scripted")
    outcomes = await deliver_all(sink, deliveries, attempts=5, backoff_s=0, sleep=Sleeps(), outage=outage)
    assert [(o.delivered, o.held) for o in outcomes] == [(False, False), (True, False), (True, False)]
    assert not outage.down


async def test_a_sink_bug_is_dead_lettered_after_its_tries_not_held_forever() -> None:
    sink = ScriptedSink(*[KeyError("oops")] * 3)
    deliveries = [Delivery(make_request(), "roads", f"d{i}") for i in range(2)]
    outcomes = await deliver_all(sink, deliveries, attempts=3, backoff_s=0, sleep=Sleeps())
    assert [(o.delivered, o.held, o.attempts) for o in outcomes] == [(False, False, 3), (True, False, 1)]


def records_for(count: int) -> list[Record]:
    return [
        Record(
            make_request(f"K7M4-QPX{chr(65 + i)}")
            .model_copy(update={"event_id": f"{i:032x}"})
            .model_dump_json()
            .encode(),
            topic="t.department.roads",
            partition=0,
            offset=i,
        )
        for i in range(count)
    ]


async def test_deliver_batch_holds_everything_while_the_sink_is_down(tmp_path: Path) -> None:
    """671 requests during an outage used to become 649 "not attempted" dead letters."""
    settings = Settings(data_dir=tmp_path, retry_attempts=3, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    sink = ScriptedSink(*[DeliveryError("HTTP 503", retryable=True)] * 4)
    outage = Outage("roads/hook")
    records = records_for(5)
    result = await deliver_batch(
        records, sink, department="roads", sink_name="hook", seen=seen, settings=settings, outage=outage
    )
    assert result.letters == [] and result.dead == []
    assert result.held == "HTTP 503"
    # The redelivered batch (after the pause): one probe, still down, still nothing dead.
    again = await deliver_batch(
        records, sink, department="roads", sink_name="hook", seen=seen, settings=settings, outage=outage
    )
    assert again.letters == [] and again.held is not None
    # Back: the whole backlog, in order, each once.
    back = await deliver_batch(
        records, sink, department="roads", sink_name="hook", seen=seen, settings=settings, outage=outage
    )
    assert back.letters == [] and back.held is None
    delivered = [call[0] for call in sink.calls[4:]]
    assert delivered == [f"K7M4-QPX{chr(65 + i)}" for i in range(5)]
    seen.close()


async def test_deliver_batch_dead_letters_refusals_and_holds_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, retry_attempts=2, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    sink = ScriptedSink(
        DeliveryError("HTTP 400 bad", retryable=False), DeliveryError("down"), DeliveryError("down")
    )
    records = records_for(3)
    result = await deliver_batch(
        records, sink, department="roads", sink_name="hook", seen=seen, settings=settings
    )
    assert len(result.letters) == 1 and result.dead == ["t.department.roads:0:0"]
    assert result.held == "down"

    published: list[object] = []

    async def publish(broker: object, letters: list[object], *_: object) -> None:
        published.extend(letters)

    monkeypatch.setattr(app, "publish_output", publish)
    with pytest.raises(SinkUnavailable):
        await finish_batch(None, result, seen=seen, namespace="roads/hook", settings=settings)  # type: ignore[arg-type]
    assert len(published) == 1
    # Redelivered after the rewind: the refused record is not dead-lettered a second time.
    again = await deliver_batch(
        records, sink, department="roads", sink_name="hook", seen=seen, settings=settings
    )
    assert again.letters == [] and again.held is None
    assert [call[0] for call in sink.calls] == [
        "K7M4-QPXA",
        "K7M4-QPXB",
        "K7M4-QPXB",
        "K7M4-QPXB",
        "K7M4-QPXC",
    ]
    seen.close()


async def test_after_retry_timeout_an_outage_dead_letters_with_its_length(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, retry_attempts=1, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    sink = ScriptedSink(*[DeliveryError("connection refused")] * 10)
    clock = Clock()
    outage = Outage("roads/hook", clock=clock)
    records = records_for(2)
    kwargs = {"department": "roads", "sink_name": "hook", "seen": seen, "settings": settings}
    first = await deliver_batch(records, sink, outage=outage, retry_timeout_s=60, **kwargs)  # type: ignore[arg-type]
    assert first.letters == [] and first.held is not None
    clock.now += 61
    late = await deliver_batch(records, sink, outage=outage, retry_timeout_s=60, **kwargs)  # type: ignore[arg-type]
    assert late.held is None and len(late.letters) == 2
    letter = DeadLetter.model_validate_json(late.letters[0].value)
    assert letter.reason.startswith("sink roads/hook down for 61 s: connection refused")
    seen.close()


def test_retry_timeout_is_a_sink_option() -> None:
    config = parse_sink_config({"name": "hook", "type": "jsonl", "retry_timeout_s": 600})
    assert config.retry_timeout_s == 600
    assert parse_sink_config({"name": "file", "type": "jsonl"}).retry_timeout_s is None
    with pytest.raises(ValueError, match="retry_timeout_s"):
        parse_sink_config({"name": "file", "type": "jsonl", "retry_timeout_s": 0})


async def test_status_changes_wait_for_a_down_sink_and_refusals_are_dead_lettered(tmp_path: Path) -> None:
    """Showing status follows the same policy: a Slack outage no longer dead-letters changes."""
    settings = Settings(data_dir=tmp_path, retry_attempts=2, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")

    class StatusSink:
        name = "slack"

        def __init__(self, *failures: BaseException) -> None:
            self.failures, self.shown = list(failures), []

        async def on_status(self, change: StatusChange) -> None:
            if self.failures:
                raise self.failures.pop(0)
            self.shown.append(change.event_id)

    def change(i: int) -> Record:
        value = StatusChange(
            event_id=f"ev{i}",
            request_id="K7M4-QPXA",
            state="closed",
            at=datetime(2026, 11, 2, 10, i, tzinfo=UTC),
            source="api:public-works",
        )
        return Record(value.model_dump_json().encode(), topic="t.status", partition=0, offset=i)

    records = [change(i) for i in range(3)]
    refused = DeliveryError("channel_not_found", retryable=False)
    sink = StatusSink(refused, DeliveryError("HTTP 503"), DeliveryError("HTTP 503"))
    down = await status_batch(records, sink, settings, seen=seen, namespace="pw/slack.status")
    assert len(down.letters) == 1 and down.dead == ["t.status:0:0"] and down.held == "HTTP 503"
    seen.mark("pw/slack.status#dead-lettered", down.dead)  # what finish_batch does after publishing
    back = await status_batch(records, sink, settings, seen=seen, namespace="pw/slack.status")
    assert back.letters == [] and back.held is None
    assert sink.shown == ["ev1", "ev2"]
    seen.close()


async def test_a_rewound_batch_skips_its_dead_letters_and_its_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One look-up answers both for the batch: what this consumer dead-lettered (an unreadable
    record is read again, and skipped) and what it delivered before the rewind."""
    settings = Settings(data_dir=tmp_path, retry_attempts=1, retry_backoff_s=0)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    sink = ScriptedBatchSink()
    records = records_for(3)
    records.insert(1, Record(b"{not json", topic="t.department.roads", partition=0, offset=7))
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(func: object, *args: object) -> object:
        hops.append(getattr(func, "__name__", "?"))
        return await to_thread(func, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(app.asyncio, "to_thread", counted)
    monkeypatch.setattr(app, "publish_output", lambda *_, **__: asyncio.sleep(0))
    first = await deliver_batch(
        records, sink, department="roads", sink_name="file", seen=seen, settings=settings
    )
    assert first.dead == ["t.department.roads:0:7"] and len(first.letters) == 1 and first.held is None
    await finish_batch(None, first, seen=seen, namespace="roads/file", settings=settings)  # type: ignore[arg-type]
    assert len(sink.batches) == 1 and len(sink.batches[0]) == 3
    # The look-ups ran on the loop (the store was free); only the two marks went to a thread.
    assert hops == ["mark", "mark"]

    hops.clear()
    again = await deliver_batch(
        records, sink, department="roads", sink_name="file", seen=seen, settings=settings
    )
    assert again.letters == [] and again.dead == [] and again.held is None
    assert len(sink.batches) == 1 and sink.calls == []  # nothing delivered twice
    await finish_batch(None, again, seen=seen, namespace="roads/file", settings=settings)  # type: ignore[arg-type]
    assert hops == []  # nothing to mark: no thread hop at all
    seen.close()
