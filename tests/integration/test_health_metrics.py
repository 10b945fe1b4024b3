"""/metrics and /health on a running pipeline: counters move with a report, readiness tells the truth.

The counters are read before and after one report, so each assertion needs that report to have
moved them; readiness is read over real HTTP from the probe server a stage without a web app
runs, while the test freezes (SIGSTOP) and then stops the broker under it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from intake311.health import serve_probes
from tests.integration.conftest import API_KEY, Pipeline, wait_for
from tests.integration.test_broker_restart import own_city
from tests.support import free_port

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in page.items() if n == name and wanted <= ls)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_a_report_moves_the_contact_request_and_delivery_counters(pipeline: Pipeline) -> None:
    before = await scrape(pipeline.web)
    response = await pipeline.web.post(
        "/open311/v2/requests.json",
        data={
            "api_key": API_KEY,
            "service_code": "pothole",
            "address_string": "40 Temple Street",
            "description": "metrics test: pothole at the crosswalk",
        },
    )
    assert response.status_code == 201, response.text
    ticket = response.json()[0]["service_request_id"]
    await wait_for(lambda: pipeline.hook.for_request(ticket), what=f"{ticket} at the webhook")

    async def delivered_counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        page = await scrape(pipeline.web)
        counted = {"sink": "hook", "outcome": "delivered"}
        moved = total(page, "intake311_deliveries_total", **counted)
        return page if moved > total(before, "intake311_deliveries_total", **counted) else None

    after = await wait_for(delivered_counted, what="the webhook delivery counted")
    for name, labels in (
        ("intake311_contacts_total", {"channel": "open311"}),
        ("intake311_requests_total", {"service_code": "pothole"}),
        ("intake311_delivery_latency_seconds_count", {"sink": "hook"}),
    ):
        assert total(after, name, **labels) > total(before, name, **labels), (name, labels)
    # FastStream's Kafka middleware counts into the same registry.
    received = "faststream_received_messages_total"
    assert total(after, received) > total(before, received)
    assert total(after, "intake311_broker_reachable") == 1
    assert total(after, "intake311_consumer_assigned_partitions") > 0


async def test_the_web_app_serves_liveness_and_readiness(pipeline: Pipeline) -> None:
    assert (await pipeline.web.get("/health/live")).status_code == 200
    ready = await wait_for(
        lambda: _status(pipeline.web, "/health/ready", 200), what="the pipeline to be ready"
    )
    assert ready == {"status": "ok", "reasons": []}
    assert (await pipeline.web.get("/healthz")).json() == ready  # the old probe path, now honest


async def _status(client: httpx.AsyncClient, path: str, status: int) -> dict[str, object] | None:
    response = await client.get(path)
    return response.json() if response.status_code == status else None


async def test_readiness_names_the_broker_while_it_is_frozen_or_gone(tmp_path: Path) -> None:
    async with own_city(tmp_path) as city:
        probes = city.runtime.probes
        assert probes is not None and city.broker.pid is not None
        async with (
            serve_probes(probes.app(), "127.0.0.1", 0) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
        ):
            await wait_for(lambda: _status(client, "/health/ready", 200), 60, "ready at start")
            os.kill(city.broker.pid, signal.SIGSTOP)
            try:
                frozen = await wait_for(lambda: _status(client, "/health/ready", 503), 30, "503 while frozen")
                assert any(str(r).startswith("broker:") for r in frozen["reasons"]), frozen  # type: ignore[attr-defined]
                assert (await client.get("/health/live")).status_code == 200  # the process itself is fine
                assert (await city.web.get("/healthz")).status_code == 503  # the web app says so too
                page = await scrape(client)
                assert total(page, "intake311_broker_reachable") == 0
            finally:
                os.kill(city.broker.pid, signal.SIGCONT)
            await wait_for(lambda: _status(client, "/health/ready", 200), 60, "ready after SIGCONT")

            await asyncio.to_thread(city.broker.stop)
            try:
                gone = await wait_for(lambda: _status(client, "/health/ready", 503), 30, "503 while stopped")
                assert any(str(r).startswith("broker:") for r in gone["reasons"]), gone  # type: ignore[attr-defined]
            finally:
                await asyncio.to_thread(city.broker.start)  # same port, empty: the watch recovers
            await wait_for(lambda: _status(client, "/health/ready", 200), 90, "ready after the restart")


async def test_a_stage_without_web_serves_probes_on_its_metrics_port_and_stops_cleanly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INTAKE311_")},
        "INTAKE311_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "INTAKE311_KAFKA__TOPIC_PREFIX": f"probe{uuid.uuid4().hex[:8]}",
        "INTAKE311_KAFKA__SESSION_TIMEOUT_MS": "2000",
        "INTAKE311_DATA_DIR": str(tmp_path),
        "INTAKE311_METRICS_PORT": str(port),
    }
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "intake311.cli", "run", "router", env=env, stdout=out, stderr=out
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            async def ready() -> dict[str, object] | None:
                assert process.returncode is None, log.read_text()[-2000:]
                try:
                    return await _status(client, "/health/ready", 200)
                except httpx.TransportError:
                    return None  # not listening yet

            await wait_for(ready, 60, "the router's /health/ready")
            page = await scrape(client)
            assert total(page, "intake311_consumer_assigned_partitions") > 0
            assert total(page, "intake311_broker_reachable") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0, log.read_text()[-2000:]
