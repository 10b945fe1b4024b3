"""The whole pipeline on a real Kafka-protocol broker, shared by the integration tests.

One pipeline per test module (consumer groups take about a second each to join); each module
gets its own topic prefix and data directory, so tests never see each other's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from intake311.pipeline import running, web_app
from intake311.settings import Settings
from sinks.webhook import verify_signature
from tests.support import serving

WEBHOOK_SECRET = "test-webhook-secret-0123456789"
API_KEY = "integration-key"

pytestmark = pytest.mark.integration


@dataclass
class WebhookReceiver:
    """A real HTTP server standing in for a department's system: verifies, then records."""

    secret: str
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    url: str = ""
    down: bool = False  # answer 503, like a department system in an outage
    refuse_status: int | None = None  # answer this (e.g. 422): the receiver refuses the request

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        if self.down:
            return Response(status_code=503)
        if self.refuse_status is not None:
            return Response(status_code=self.refuse_status)
        ok = verify_signature(
            self.secret,
            request.headers.get("x-intake311-timestamp", ""),
            body,
            request.headers.get("x-intake311-signature", ""),
        )
        if not ok:
            self.rejected += 1
            return Response(status_code=401)
        self.received.append(
            {"delivery_id": request.headers.get("x-intake311-delivery"), "body": json.loads(body)}
        )
        return Response(status_code=204)

    def for_request(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["body"]["request_id"] == request_id]


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver(WEBHOOK_SECRET)
    async with serving(Starlette(routes=[Route("/hook", hook.handle, methods=["POST"])])) as url:
        hook.url = f"{url}/hook"
        yield hook


@dataclass
class Pipeline:
    settings: Settings
    broker: Any
    web: httpx.AsyncClient
    hook: WebhookReceiver

    def department_file(self, department: str) -> Path:
        return self.settings.data_dir / "departments" / f"{department}.jsonl"

    def lines(self, department: str) -> list[dict[str, Any]]:
        file = self.department_file(department)
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


async def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def start_pipeline(
    kafka_bootstrap: str, receiver: WebhookReceiver, data_dir: Path, **running_options: Any
) -> AsyncIterator[Pipeline]:
    """normalizer, router and sinks on the broker, the web app in process; every department gets
    a JSONL file and the signed webhook. ``running_options`` go to ``running`` (e.g. an exporter)."""
    subscriptions = data_dir / "subscriptions.yaml"
    subscriptions.write_text(
        "departments:\n"
        '  "*":\n'
        "    sinks:\n"
        "      - {name: file, type: jsonl}\n"
        f"      - {{name: hook, type: webhook, url: '{receiver.url}', secret: '{WEBHOOK_SECRET}'}}\n"
    )
    settings = Settings(
        data_dir=data_dir,
        subscriptions_file=subscriptions,
        kafka={
            "bootstrap_servers": [kafka_bootstrap],
            "topic_prefix": f"it{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2000,
        },
        web={"api_keys": [API_KEY], "base_url": "http://testserver"},
        retry_backoff_s=0.05,
    )
    async with running(settings, ["normalizer", "router", "sinks"], **running_options) as runtime:
        app = web_app(runtime)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as web:
            yield Pipeline(settings, runtime.broker, web, receiver)


@pytest.fixture(scope="module")
async def pipeline(
    kafka_bootstrap: str, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    async with start_pipeline(kafka_bootstrap, receiver, tmp_path_factory.mktemp("var")) as pipe:
        yield pipe


# -- the case store (PostgreSQL): one throwaway database per module --------------------------------


@pytest.fixture(scope="module")
def dsn(postgres: None) -> Iterator[str]:
    """A new empty database for the module (dropped afterwards); skipped without a server."""
    from tests.support import throwaway_database

    with throwaway_database() as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def module_store(dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The module's case store, with the module's ``TAXONOMY`` (the packaged one without)."""
    from sinks.postgres import CaseStore

    async with CaseStore(dsn, taxonomy=getattr(request.module, "TAXONOMY", None)) as store:
        yield store


@pytest.fixture
async def store(module_store: Any) -> Any:
    """The module's case store, emptied for this test."""
    async with module_store.pool.connection() as conn:
        await conn.execute("TRUNCATE requests CASCADE")
    return module_store


async def on_topic(settings: Settings, topic: str) -> list[bytes]:
    """Everything on ``topic`` so far (read until it has been idle a second)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        while batches := await consumer.getmany(timeout_ms=1000):
            values += [r.value for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()
    return values


async def committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    """Whether ``group`` has committed every record on ``topic``: nothing more will be delivered."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        committed = [(await consumer.committed(tp)) or 0 for tp in partitions]
        return all(done >= ends[tp] for done, tp in zip(committed, partitions, strict=True))
    finally:
        await consumer.stop()
