"""OpenTelemetry traces of one process: from the HTTP request that took a report to its sink.

One ``TracerProvider`` per process (per ``pipeline.running``), never the global one: two
pipelines in one test session never share spans, and a test passes its own exporter. Tracing is
off unless ``tracing.otlp_endpoint`` is set (or a test passes an exporter): then no middleware and
no instrumentation are installed at all, so nothing is recorded and no header is added.

The trace context travels in Kafka headers (W3C ``traceparent``): FastStream's telemetry
middleware injects it on every publish (``publish_all`` runs the middleware chain once per group
of a topic's records, so a group's records carry one ``traceparent``: the batch's), and
extracts it on consume. Every intake311 subscriber takes batches, and FastStream starts a batch's
span as a *new* trace that only links to its records; ``BatchTraceMiddleware`` instead continues
the trace when every record of the batch carries the same trace id (one report moving through
the pipeline), and keeps FastStream's links-only root when records of several traces share one
poll (their outputs then belong to that batch's trace, linked to each record's producer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.opentelemetry import middleware as fs_otel
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.semconv.trace import SpanAttributes
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from intake311.logging import get_logger

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.kafka import KafkaBroker
    from faststream.message import StreamMessage
    from opentelemetry.sdk.trace.export import SpanExporter

    from intake311.settings import Settings

__all__ = ["BatchTraceMiddleware", "configure_tracing", "enabled", "instrument_app", "instrument_broker"]

log = get_logger(__name__)
# Probes and scrapes would be most of the traces and say nothing: not traced.
EXCLUDED_URLS = "/health,/healthz,/metrics"


def configure_tracing(settings: Settings, exporter: SpanExporter | None = None) -> TracerProvider:
    """The process's tracer provider: the SDK's exporting to ``exporter`` or OTLP, else a no-op one.

    ``exporter`` (a test's ``InMemorySpanExporter``) is exported to synchronously; the OTLP
    exporter through a batch processor, flushed by ``shutdown()`` when the process stops.
    """
    endpoint = settings.tracing.otlp_endpoint
    if exporter is None and not endpoint:
        return NoOpTracerProvider()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from intake311 import __version__

    provider = SdkTracerProvider(
        resource=Resource.create(
            {"service.name": settings.tracing.service_name, "service.version": __version__}
        )
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("tracing to OTLP", endpoint=endpoint, service=settings.tracing.service_name)
    return provider


def enabled(provider: TracerProvider) -> bool:
    return not isinstance(provider, NoOpTracerProvider)


def shutdown(provider: TracerProvider) -> None:
    """Flush and stop the provider's exporters (nothing to do for the no-op one)."""
    stop = getattr(provider, "shutdown", None)
    if enabled(provider) and callable(stop):
        stop()


def instrument_broker(broker: KafkaBroker, provider: TracerProvider) -> None:
    """Consume and publish spans on ``broker``, linked through Kafka headers (when tracing is on)."""
    if enabled(provider):
        broker.add_middleware(BatchTraceMiddleware(tracer_provider=provider))


def instrument_app(app: Any, provider: TracerProvider) -> None:
    """A SERVER span for every HTTP request of the FastAPI ``app`` (when tracing is on): the
    Open311 POST or form POST starts the trace its contact carries onto Kafka."""
    if not enabled(provider):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, meter_provider=NoOpMeterProvider(), excluded_urls=EXCLUDED_URLS
    )


def _shared_parent(batch_headers: list[dict[str, str]]) -> Context | None:
    """The context the batch's records were produced in, if they all share one trace."""
    first: Context | None = None
    trace_ids = set()
    for headers in batch_headers:
        extracted = fs_otel._TRACE_PROPAGATOR.extract(headers)
        span_context = trace.get_current_span(extracted).get_span_context()
        if not span_context.is_valid:
            return None
        trace_ids.add(span_context.trace_id)
        first = first or extracted
    return first if len(trace_ids) == 1 else None


class _BatchTraceScope(fs_otel.BaseTelemetryMiddleware[Any]):
    """FastStream's per-message telemetry, with a batch of one trace continuing that trace."""

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        provider = self._BaseTelemetryMiddleware__settings_provider  # type: ignore[attr-defined]
        parent = _shared_parent(msg.batch_headers) if msg.batch_headers else None
        if provider is None or parent is None:
            return await super().consume_scope(call_next, msg)
        # FastStream 0.7.8's consume_scope (faststream/opentelemetry/middleware.py), except that
        # the span's parent is the records' shared context instead of an empty one.
        links = fs_otel._get_msg_links(msg)
        destination = provider.get_consume_destination_name(msg)
        attributes = provider.get_consume_attrs_from_message(msg)
        metrics_attributes = {
            SpanAttributes.MESSAGING_SYSTEM: provider.messaging_system,
            fs_otel.MESSAGING_DESTINATION_PUBLISH_NAME: destination,
        }
        self._origin_context = parent
        start = fs_otel.time.perf_counter()
        try:
            with self._tracer.start_as_current_span(
                name=fs_otel._create_span_name(destination, fs_otel.MessageAction.PROCESS),
                kind=trace.SpanKind.CONSUMER,
                context=parent,
                attributes=attributes,
                links=links,
                end_on_exit=False,
            ) as span:
                span.set_attribute(SpanAttributes.MESSAGING_OPERATION, fs_otel.MessageAction.PROCESS)
                self._current_span = span
                self._scope_tokens_stack.enter_context(self.context.scope("span", span))
                self._scope_tokens_stack.enter_context(
                    self.context.scope("baggage", fs_otel.Baggage.from_msg(msg))
                )
                token = otel_context.attach(trace.set_span_in_context(span, parent))
                try:
                    return await call_next(msg)
                finally:
                    otel_context.detach(token)
        except Exception as exc:
            metrics_attributes[fs_otel.ERROR_TYPE] = type(exc).__name__
            raise
        finally:
            count = attributes.get(SpanAttributes.MESSAGING_BATCH_MESSAGE_COUNT, 1)
            self._metrics.observe_consume(metrics_attributes, fs_otel.time.perf_counter() - start, count)


class BatchTraceMiddleware(KafkaTelemetryMiddleware):
    """``KafkaTelemetryMiddleware`` whose batch consume spans continue a single shared trace."""

    def __init__(self, *, tracer_provider: TracerProvider) -> None:
        # OTel metrics stay off: the process's numbers are Prometheus ones (intake311/metrics.py).
        super().__init__(tracer_provider=tracer_provider, meter_provider=NoOpMeterProvider())

    def __call__(self, msg: Any | None, /, *, context: ContextRepo) -> _BatchTraceScope:
        return _BatchTraceScope(
            msg,
            tracer=self._tracer,
            metrics_container=self._metrics,
            settings_provider_factory=self._settings_provider_factory,
            context=context,
        )
