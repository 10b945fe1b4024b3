"""``publish_all``: groups that keep a topic's order, the lean path's counts, the cheap broker check."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from aiokafka.protocol.metadata import MetadataRequest_v3, MetadataRequest_v4
from faststream import BaseMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry

from intake311.bus import (
    BusWatch,
    Outgoing,
    _AutoCreateRisk,
    _groups,
    _NoAutoCreate,
    _publish_counts,
    _send_grouped,
    make_broker,
)
from intake311.metrics import Metrics
from intake311.pipeline import process_metrics
from intake311.settings import Settings


def test_groups_keep_each_topic_in_order_and_split_it_where_headers_change() -> None:
    a1 = Outgoing("a", b"1", key="k", headers={"x-department": "a"})
    b1 = Outgoing("b", b"2", key="k", headers={"x-department": "b"})
    a2 = Outgoing("a", b"3", key="k", headers={"x-department": "a"})
    a3 = Outgoing("a", b"4", key="k", headers={"x-stage": "router"})  # other headers, same topic
    a4 = Outgoing("a", b"5", key="k", headers={"x-department": "a"})
    b2 = Outgoing("b", b"6", key="j", headers={"x-department": "b"})
    groups = _groups([a1, b1, a2, a3, a4, b2])
    assert groups == [[a1, a2], [a3], [a4], [b1, b2]]
    # Sent group after group: topic a's records go out exactly in the order they were given.
    sent = [r for g in groups for r in g]
    assert [r for r in sent if r.topic == "a"] == [a1, a2, a3, a4]
    assert sorted(sent, key=id) == sorted([a1, b1, a2, a3, a4, b2], key=id)  # each once


# --- the lean publish path: FastStream's Prometheus counts without its middleware chain -------


class Producer:
    """Takes every record at once (a done future each), or raises ``fail`` from ``send``."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, value, key, list(headers)))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Passthrough(BaseMiddleware):
    """A middleware that changes nothing: its presence makes ``_send_grouped`` build the chain."""


def published(metrics: Metrics) -> dict[tuple[str, str], float]:
    """``faststream_published_messages_total`` by (destination, status), and the duration counts
    and exceptions under ("duration", destination) / ("exception", type)."""
    out: dict[tuple[str, str], float] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
        if name.startswith("faststream_published_messages_total{"):
            out[(labels["destination"], labels["status"])] = float(value)
        elif name.startswith("faststream_published_messages_duration_seconds_count{"):
            out[("duration", labels["destination"])] = float(value)
        elif name.startswith("faststream_published_messages_exceptions_total{"):
            out[("exception", labels["exception_type"])] = float(value)
        if name.startswith("faststream_published") and "app_name" in labels:
            assert labels["app_name"] == "intake311" and labels["broker"] == "kafka"
    return out


RECORDS = [
    Outgoing("roads", b"1", key="k", headers={"x-department": "roads"}),
    Outgoing("roads", b"2", key="j", headers={"x-department": "roads"}),
    Outgoing("parks", b"3", key=None, headers={"x-stage": "router"}),
]


async def _send(chain: bool, producer: Producer) -> tuple[Metrics, Producer]:
    broker = make_broker(Settings().kafka, ["unused:9092"])
    metrics = process_metrics(Settings(), broker)
    if chain:
        broker.add_middleware(Passthrough)
    assert (_publish_counts(broker) is None) is chain
    try:
        futures = await _send_grouped(broker, producer, RECORDS)  # type: ignore[arg-type]
        await asyncio.gather(*futures)
    except RuntimeError:
        pass
    return metrics, producer


async def test_the_lean_path_counts_and_sends_what_the_middleware_chain_does() -> None:
    lean, lean_producer = await _send(False, Producer())
    chain, chain_producer = await _send(True, Producer())
    assert (
        published(lean)
        == published(chain)
        == {
            ("roads", "success"): 2.0,
            ("parks", "success"): 1.0,
            ("duration", "roads"): 1.0,  # one observation per group, as the middleware makes
            ("duration", "parks"): 1.0,
        }
    )

    def without_ids(sent: list[Any]) -> list[Any]:
        return [(t, v, k, [(h, b"" if h == "correlation_id" else x) for h, x in hs]) for t, v, k, hs in sent]

    assert without_ids(lean_producer.sent) == without_ids(chain_producer.sent)
    headers = lean_producer.sent[0][3]
    assert [h for h, _ in headers] == ["content-type", "correlation_id", "x-department"]
    assert uuid.UUID(dict(headers)["correlation_id"].decode()).version == 4
    # One correlation id per group, a new one for the next group.
    ids = [dict(hs)["correlation_id"] for _, _, _, hs in lean_producer.sent]
    assert ids[0] == ids[1] != ids[2]


async def test_a_failed_send_is_counted_as_the_middleware_counts_it() -> None:
    lean, _ = await _send(False, Producer(fail=RuntimeError("broker gone")))
    chain, _ = await _send(True, Producer(fail=RuntimeError("broker gone")))
    assert (
        published(lean)
        == published(chain)
        == {
            ("roads", "error"): 2.0,
            ("duration", "roads"): 1.0,
            ("exception", "RuntimeError"): 1.0,
        }
    )


def test_dynamic_labels_or_other_middlewares_keep_the_chain() -> None:
    broker = make_broker(Settings().kafka, ["unused:9092"])
    assert _publish_counts(broker) == []  # none at all: nothing to count
    broker.add_middleware(
        KafkaPrometheusMiddleware(registry=CollectorRegistry(), custom_labels={"x": lambda m: "y"})
    )
    assert _publish_counts(broker) is None


# --- the broker check after each acknowledgement: the epoch marker by name, never created ----


def test_the_epoch_request_never_asks_a_broker_that_would_create_the_topic() -> None:
    request = _NoAutoCreate(["intake311.epoch.abc"])
    built = request.build(MetadataRequest_v4)
    assert built.topics == ["intake311.epoch.abc"] and built.allow_auto_topic_creation is False
    with pytest.raises(_AutoCreateRisk):
        request.build(MetadataRequest_v3)  # v3 and before: naming a topic may auto-create it


class Client:
    """The admin client's ``_client``: answers a metadata request as ``answer`` says."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    def get_random_node(self) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Metadata:
    def __init__(self, topics: list[dict[str, Any]]) -> None:
        self.topics = topics

    def to_object(self) -> dict[str, Any]:
        return {"topics": self.topics}


def watch_with(client: Client, listed: list[str]) -> BusWatch:
    watch = BusWatch(Settings().kafka, ["unused:9092"], [], prefix="intake311")
    watch.epoch = "intake311.epoch.abc"

    class Admin:
        _client = client

        async def list_topics(self) -> list[str]:
            return listed

    async def admin() -> Any:
        return Admin()

    watch._client = admin  # type: ignore[method-assign]
    return watch


@pytest.mark.parametrize(
    ("code", "exists"),
    [(0, True), (5, True), (3, False), (29, False)],  # 3: unknown topic; 29: not authorised
)
async def test_confirm_asks_for_the_epoch_alone(code: int, exists: bool) -> None:
    client = Client(Metadata([{"topic": "intake311.epoch.abc", "error_code": code, "partitions": []}]))
    watch = watch_with(client, listed=["intake311.epoch.abc"] if not exists else [])
    assert await watch.confirm() is exists  # from the named request, not from the listing
    assert [r._topics for r in client.requests] == [["intake311.epoch.abc"]]


async def test_confirm_lists_every_topic_on_a_broker_without_metadata_v4() -> None:
    for listed, expected in ((["intake311.epoch.abc", "x"], True), (["intake311.epoch.new"], False)):
        watch = watch_with(Client(_AutoCreateRisk("v3")), listed)
        assert await watch.confirm() is expected


async def test_confirm_is_false_when_the_broker_does_not_answer() -> None:
    watch = watch_with(Client(TimeoutError()), ["intake311.epoch.abc"])
    assert await watch.confirm() is False
    watch.epoch = None
    assert await watch_with(Client(Metadata([])), []).confirm() is False
