"""One trace from the Open311 POST to the sinks, carried between the stages in Kafka headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.conftest import API_KEY, Pipeline, WebhookReceiver, start_pipeline, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
async def traced(
    kafka_bootstrap: str,
    receiver: WebhookReceiver,
    spans: InMemorySpanExporter,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Pipeline]:
    """The conftest ``pipeline``, with its process's spans exported into ``spans``."""
    data_dir = tmp_path_factory.mktemp("var")
    async with start_pipeline(kafka_bootstrap, receiver, data_dir, span_exporter=spans) as pipe:
        yield pipe


def processed(spans: list[ReadableSpan], topic: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.CONSUMER and s.name == f"{topic} process"]


async def test_one_trace_from_the_http_request_to_the_sinks(
    traced: Pipeline, spans: InMemorySpanExporter
) -> None:
    topics = traced.settings.topics
    spans.clear()
    response = await traced.web.post(
        "/open311/v2/requests.json",
        data={
            "api_key": API_KEY,
            "service_code": "pothole",
            "address_string": "12 Elm Street",
            "description": "Deep pothole in the right lane, cars swerving",
        },
    )
    assert response.status_code == 201, response.text
    ticket = response.json()[0]["service_request_id"]
    await wait_for(lambda: traced.hook.for_request(ticket), what=f"{ticket} at the webhook")
    department = topics.department("public-works")
    # Both sinks (file, hook) consume the department topic, each in a group of its own.
    await wait_for(
        lambda: len(processed(list(spans.get_finished_spans()), department)) >= 2,
        what="both sinks' consume spans",
    )
    finished = list(spans.get_finished_spans())

    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in servers]
    server = servers[0]
    assert (
        server.attributes is not None and server.attributes.get("http.route") == "/open311/v2/requests.{fmt}"
    )
    trace_id = server.context.trace_id

    by_id = {s.context.span_id: s for s in finished}
    for topic in (topics.contacts("open311"), topics.requests, department):
        consumers = processed(finished, topic)
        assert consumers, f"no consume span on {topic}: {[s.name for s in finished]}"
        for consumer in consumers:
            assert consumer.context.trace_id == trace_id, topic
            # Its parent is the producer span whose context came in the record's traceparent.
            assert consumer.parent is not None and consumer.parent.is_remote, topic
            producer = by_id[consumer.parent.span_id]
            assert producer.kind is SpanKind.PRODUCER
            assert producer.context.trace_id == trace_id
    assert len(processed(finished, department)) == 2
