"""intake311.tracing: off by default (nothing recorded, no header), and traceparent on publishes when on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind

from intake311.bus import Outgoing, publish_all
from intake311.settings import Settings
from intake311.tracing import (
    BatchTraceMiddleware,
    _shared_parent,
    configure_tracing,
    enabled,
    instrument_app,
    instrument_broker,
    shutdown,
)

TOPIC = "t.requests"


def recording_broker() -> tuple[KafkaBroker, list[dict[str, Any]]]:
    broker = KafkaBroker()
    seen: list[dict[str, Any]] = []

    @broker.subscriber(TOPIC)
    async def handle(body: Any, msg: KafkaMessage) -> None:
        seen.append(dict(msg.headers))

    return broker, seen


def test_off_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.tracing.otlp_endpoint is None
    provider = configure_tracing(settings)
    assert isinstance(provider, NoOpTracerProvider)
    assert not enabled(provider)
    shutdown(provider)  # nothing to flush; must not fail


async def test_off_adds_no_middleware_no_header_and_exports_nothing(tmp_path: Path) -> None:
    provider = configure_tracing(Settings(data_dir=tmp_path))
    broker, seen = recording_broker()
    before = list(broker.middlewares)
    instrument_broker(broker, provider)
    assert list(broker.middlewares) == before
    app = FastAPI()
    instrument_app(app, provider)
    assert app.user_middleware == []

    # Even inside someone else's active span, an untraced process adds no traceparent.
    exporter = InMemorySpanExporter()
    other = SdkTracerProvider()
    other.add_span_processor(SimpleSpanProcessor(exporter))
    async with TestKafkaBroker(broker):
        with other.get_tracer("test").start_as_current_span("request"):
            await publish_all(broker, [Outgoing(TOPIC, b"{}", key="k")])
    assert len(seen) == 1
    assert "traceparent" not in seen[0]
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]  # only the caller's own


async def test_on_publish_all_carries_the_current_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing(Settings(data_dir=tmp_path), exporter)
    assert enabled(provider)
    broker, seen = recording_broker()
    instrument_broker(broker, provider)
    assert any(isinstance(m, BatchTraceMiddleware) for m in broker.middlewares)
    async with TestKafkaBroker(broker):
        with provider.get_tracer("test").start_as_current_span("request") as span:
            await publish_all(broker, [Outgoing(TOPIC, b"{}", key="k", headers={"x-stage": "web"})])
            trace_id = span.get_span_context().trace_id
    shutdown(provider)
    assert len(seen) == 1
    assert seen[0]["x-stage"] == "web"
    _version, header_trace, _parent, _flags = seen[0]["traceparent"].split("-")
    assert int(header_trace, 16) == trace_id
    finished = exporter.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {trace_id}
    assert any(s.kind is SpanKind.PRODUCER for s in finished)
    assert any(s.kind is SpanKind.CONSUMER for s in finished)


def _traceparent(trace_id: int, span_id: int) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def test_a_batch_of_one_trace_continues_it() -> None:
    parent = _shared_parent([_traceparent(7, 1), _traceparent(7, 2)])
    assert parent is not None
    context = trace.get_current_span(parent).get_span_context()
    assert (context.trace_id, context.span_id, context.is_remote) == (7, 1, True)


def test_a_mixed_or_untraced_batch_starts_its_own_trace() -> None:
    assert _shared_parent([_traceparent(7, 1), _traceparent(8, 2)]) is None
    assert _shared_parent([_traceparent(7, 1), {}]) is None
    assert _shared_parent([{"content-type": "application/json"}]) is None
