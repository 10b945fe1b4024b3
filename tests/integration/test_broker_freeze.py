"""The broker hangs (SIGSTOP) while residents post, then resumes: no phantom, no duplicate.

A publish that timed out cannot be called back: aiokafka has already buffered the record or
written it to the broker's socket, and the broker processes it when it resumes. So a 503 may say
"not created" only when nothing was sent; otherwise it names the ticket the request may still
get, and every retry (same Idempotency-Key, or the same report sent again without one) must land
on that ticket, so each report is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from channels.base import KafkaContactPublisher
from channels.web import create_app
from intake311.pipeline import Runtime
from schemas.taxonomy import load_taxonomy
from tests.integration.conftest import API_KEY, wait_for
from tests.integration.test_broker_restart import TICKET, City, own_city

pytestmark = pytest.mark.integration

PUBLISH_TIMEOUT_S = 2.0  # the HTTP wait for the acknowledgement (10 s in production)


def quick_app(runtime: Runtime) -> Any:
    """``web_app`` with a short publish wait, so the test freezes the broker for seconds only."""
    settings = runtime.settings
    publisher = KafkaContactPublisher(
        runtime.broker, settings.topics, timeout_s=PUBLISH_TIMEOUT_S, watch=runtime.watch
    )
    return create_app(settings, publisher, load_taxonomy(settings.taxonomy_file))


def submission(i: int, kind: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(path, form, headers) of report ``i`` sent the way ``kind`` of client sends it."""
    text = f"frozen broker report {i} ({kind}): deep pothole"
    if kind == "open311-key":
        form = {"api_key": API_KEY, "service_code": "pothole", "address_string": "1 Elm", "description": text}
        return "/open311/v2/requests.json", form, {"Idempotency-Key": f"freeze-{i}"}
    if kind == "open311":
        form = {"api_key": API_KEY, "service_code": "pothole", "address_string": "1 Elm", "description": text}
        return "/open311/v2/requests.json", form, {}
    form = {"description": text, "address": "1 Elm", "service_code": "pothole", "contact": ""}
    if kind == "form-page":
        form["form_id"] = f"{i:032x}"
    return "/", form, {}


async def send(
    city: City, path: str, form: dict[str, str], headers: dict[str, str]
) -> tuple[str, str | None]:
    """("created" | "maybe" | "refused", ticket shown) for one POST."""
    response = await city.web.post(path, data=form, headers=headers)
    text = response.text
    ticket = TICKET.search(
        response.json()[0]["description"] if path != "/" and response.status_code == 503 else text
    )
    if response.status_code in (200, 201):
        shown = response.json()[0]["service_request_id"] if path != "/" else (ticket and ticket.group(1))
        return "created", shown
    assert response.status_code == 503, text
    if ticket is None:
        return "refused", None
    return "maybe", ticket.group(1)


async def raw_records(city: City, ticket: str) -> int:
    """How many raw contacts keyed by ``ticket`` the channels' topics hold (read to the end)."""
    topics = city.settings.topics
    consumer = AIOKafkaConsumer(bootstrap_servers=city.broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [
            TopicPartition(t, p)
            for t in (topics.contacts("web"), topics.contacts("open311"))
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        assert parts, "the channels' topics are missing"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        count = 0
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                count += sum(1 for r in records if r.key == ticket.encode())
        return count
    finally:
        await consumer.stop()


async def test_frozen_broker_gives_no_phantom_and_no_duplicate(tmp_path: Path) -> None:
    async with own_city(tmp_path, quick_app) as city:
        warm = submission(1000, "open311-key")
        assert (await send(city, *warm))[0] == "created"
        await wait_for(lambda: city.delivered(warm[1]["description"]), 60, "warm-up delivered")
        watch = city.runtime.watch
        assert watch is not None and city.broker.pid is not None

        kinds = ("open311-key", "open311", "form-page", "form")
        reports = {i: submission(i, kinds[i % 4]) for i in range(12)}
        first: dict[int, tuple[str, str | None]] = {}
        os.kill(city.broker.pid, signal.SIGSTOP)
        try:
            # Wave 1 while the process still believes the broker is fine: sent, never acknowledged.
            results = await asyncio.gather(*(send(city, *reports[i]) for i in range(8)))
            first.update(zip(range(8), results, strict=True))
            await wait_for(lambda: not watch.ready.is_set(), 30, "the watch to notice the hang")
            # Wave 2 once it noticed: refused before anything is sent.
            results = await asyncio.gather(*(send(city, *reports[i]) for i in range(8, 12)))
            first.update(zip(range(8, 12), results, strict=True))
            await asyncio.sleep(PUBLISH_TIMEOUT_S)  # frozen well past the HTTP wait
        finally:
            os.kill(city.broker.pid, signal.SIGCONT)
        assert all(kind != "created" for kind, _ in first.values()), first
        await wait_for(watch.ready.is_set, 60, "the broker answering again")

        # Every client retries the way it would: same key, same page, or the same report again.
        final: dict[int, str] = {}
        for i, (kind, ticket) in first.items():
            retry = await send(city, *reports[i])
            assert retry[0] == "created" and retry[1] is not None, (i, kind, retry)
            if kind == "maybe":
                assert retry[1] == ticket, f"report {i}: 503 announced {ticket}, the retry got {retry[1]}"
            final[i] = retry[1]
        for i in reports:
            await wait_for(lambda i=i: city.delivered(reports[i][1]["description"]), 60, f"report {i}")
        marker = submission(2000, "open311-key")
        assert (await send(city, *marker))[0] == "created"
        await wait_for(lambda: city.delivered(marker[1]["description"]), 60, "the marker delivered")

        for i, (path, form, _) in reports.items():
            lines = city.delivered(form["description"])
            assert [line["request_id"] for line in lines] == [final[i]], f"report {i} ({path}) duplicated"
            if first[i][0] == "refused":  # "not created" must have been true: only the retry exists
                assert await raw_records(city, final[i]) == 1, f"report {i}: phantom behind 'not created'"
