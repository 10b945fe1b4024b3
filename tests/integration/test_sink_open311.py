"""The Open311 sink on the real bus against the fake city endpoint over real HTTP.

Each "sinks host" here is what ``sinks.app.register`` builds for one (department, sink) pair:
the sink bound to the broker (``sink.bind``, the wiring line the stage needs), started, and
subscribed with the stage's own consumer (``sinks.app._subscribe``: deliver, dead-letter,
rewind on an outage). Two hosts with separate seen stores stand for two machines: only the
remote-id topic is shared between them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from intake311.bus import Outgoing, ensure_topics, make_broker, publish_all
from intake311.dedupe import SeenStore
from intake311.settings import Settings
from schemas.deadletter import DeadLetter
from schemas.external import ExternalRef
from schemas.ids import event_id_for
from schemas.request import ServiceRequest
from schemas.status import State, StatusChange
from sinks.app import _subscribe, group_id
from sinks.base import SinkContext
from sinks.open311 import KafkaPollLease, KafkaRemoteIds, Open311Sink, Open311SinkConfig, RemoteRef
from sinks.postgres import CaseStore
from sinks.requests_api import request_api_routes
from sinks.status import register as record_status_changes
from tests.fakes.georeport import GeoReportFake
from tests.integration.conftest import wait_for
from tests.integration.test_sink_outage_e2e import committed_to_end, topic_records
from tests.support import pipeline_settings, serving

pytestmark = pytest.mark.integration

DEPARTMENT = "public-works"
AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def request(ticket: str, *, service: str = "pothole", revision: str = "") -> ServiceRequest:
    return ServiceRequest(
        request_id=ticket,
        event_id=event_id_for(ticket, [f"web:{ticket}"], revision),
        service_code=service,
        service_name=service.title(),
        description=f"report {ticket}",
        address_string="12 Elm Street",
        requested_datetime=AT,
        updated_datetime=AT,
        channel="web",
        confidence=0.9,
        source_contact_ids=(f"web:{ticket}",),
    )


@dataclass
class City:
    fake: GeoReportFake
    url: str


@pytest.fixture
async def city() -> AsyncIterator[City]:
    fake = GeoReportFake()
    async with serving(fake.app()) as url:
        yield City(fake, f"{url}/open311/v2")


def settings_for(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    return pipeline_settings(tmp_path, kafka_bootstrap, "o311", retry_attempts=2)


def sink_config(city: City, **values: Any) -> Open311SinkConfig:
    base: dict[str, Any] = {
        "name": "city",
        "endpoint": city.url,
        "api_key": city.fake.api_key,
        "jurisdiction_id": city.fake.jurisdiction_id,
        "service_codes": {"pothole": "PTH"},
        "poll_interval_s": 0,  # the tests poll by hand: no timing in tests
    }
    base.update(values)
    return Open311SinkConfig.model_validate(base)


@contextlib.asynccontextmanager
async def sinks_host(
    settings: Settings, config: Open311SinkConfig, name: str, *, case_store: bool = False
) -> AsyncIterator[Open311Sink]:
    """One sinks process with this sink, as ``sinks.app.register`` builds it (plus ``bind``);
    with ``case_store``, also the stage's status consumers (``sinks.status.register``)."""
    servers = settings.kafka.bootstrap_servers
    topics = settings.topics
    await ensure_topics(
        settings.kafka,
        servers,
        # external_refs: what intake311.pipeline.topic_names creates with the others
        [topics.department(DEPARTMENT), topics.status, topics.deadletter, topics.external_refs],
    )
    broker = make_broker(settings.kafka, servers)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        sink = config.build(SinkContext.from_settings(settings, http_client=http))
        sink.bind(broker, settings, DEPARTMENT)  # the line sinks.app.register needs
        await sink.start()
        stack.push_async_callback(sink.close)
        seen = SeenStore(settings.data_dir / f"{name}.sqlite3")
        stack.callback(seen.close)
        _subscribe(broker, settings, DEPARTMENT, config, sink, seen)
        if case_store:
            await record_status_changes(broker, settings, stack)
        await broker.start()
        stack.push_async_callback(broker.stop)
        yield sink


async def publish(settings: Settings, *requests: ServiceRequest) -> None:
    broker = make_broker(settings.kafka, settings.kafka.bootstrap_servers)
    await broker.connect()
    try:
        records = [
            Outgoing(settings.topics.department(DEPARTMENT), r.model_dump_json().encode(), key=r.request_id)
            for r in requests
        ]
        await publish_all(broker, records)
    finally:
        await broker.stop()


async def mapped(settings: Settings, kafka_bootstrap: str) -> dict[str, RemoteRef]:
    """What a third host reads from the remote-id topic."""
    topic = settings.topics.open311_ids(DEPARTMENT, "city")
    reader = KafkaRemoteIds(topic, bootstrap=[kafka_bootstrap], client_options={}, publish=_no_publish)
    try:
        await reader.refresh()
        return {r.request_id: r for r in reader.all()}
    finally:
        await reader.close()


async def _no_publish(records: Any) -> None:
    raise AssertionError("a reader does not write")


def ticket_of(form: dict[str, str]) -> str:
    """Our ticket, from the note the sink appends to the description."""
    return form["description"].rsplit(" ", 1)[-1].rstrip(")")


async def letters(settings: Settings, kafka_bootstrap: str) -> list[DeadLetter]:
    return [
        DeadLetter.model_validate_json(r.value)
        for r in await topic_records(kafka_bootstrap, settings.topics.deadletter)
    ]


async def external_refs(settings: Settings, kafka_bootstrap: str) -> list[ExternalRef]:
    return [
        ExternalRef.model_validate_json(r.value)
        for r in await topic_records(kafka_bootstrap, settings.topics.external_refs)
    ]


async def changes(settings: Settings, kafka_bootstrap: str) -> list[StatusChange]:
    return [
        StatusChange.model_validate_json(r.value)
        for r in await topic_records(kafka_bootstrap, settings.topics.status)
    ]


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_requests_are_created_once_across_hosts_and_their_status_comes_back_once(
    kafka_bootstrap: str, tmp_path: Path, city: City, fmt: str
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    config = sink_config(city, format=fmt)
    tickets = ["AA11-AA11", "BB22-BB22"]
    async with sinks_host(settings, config, "host-a") as sink:
        await publish(settings, *(request(t) for t in tickets))
        await wait_for(lambda: city.fake.posts == 2, what="both requests at the city")
        await wait_for(lambda: all(sink.ids.get(t) for t in tickets), what="their remote ids recorded")
    found = await mapped(settings, kafka_bootstrap)
    at_city = {ticket_of(r.form): rid for rid, r in city.fake.requests.items()}
    assert {t: found[t].service_request_id for t in tickets} == at_city

    # Another host (its own seen store) gets the same requests again (a replay) and a follow-up
    # version of one: the shared map says they exist, so the city gets nothing more.
    async with sinks_host(settings, config, "host-b") as sink:
        await publish(settings, request(tickets[0]), request(tickets[1], revision="follow-up"))
        group = group_id(settings.topics, DEPARTMENT, "city")
        topic = settings.topics.department(DEPARTMENT)
        await wait_for(lambda: committed_to_end(kafka_bootstrap, group, topic), what="host b to consume")
        city.fake.close(at_city["AA11-AA11"], "Filled the hole")
        assert sink.poller is not None
        told = await sink.poller.poll_once()
        assert sorted((c.request_id, c.state) for c in told) == [
            ("AA11-AA11", State.CLOSED),
            ("BB22-BB22", State.ACKNOWLEDGED),
        ]
    assert city.fake.posts == 2

    # Restarted: the poller finds what it saw in the map, and tells nobody again.
    async with sinks_host(settings, config, "host-c") as sink:
        assert sink.poller is not None
        assert await sink.poller.poll_once() == []
    published = await changes(settings, kafka_bootstrap)
    assert len(published) == 2 and {c.source for c in published} == {"open311:public-works/city"}
    closed = next(c for c in published if c.state == State.CLOSED)
    assert (closed.notes, closed.department) == ("Filled the hole", DEPARTMENT)
    assert await letters(settings, kafka_bootstrap) == []
    # The city's ids went to the case store's topic once each, whichever host saw them again.
    announced = await external_refs(settings, kafka_bootstrap)
    assert sorted((e.request_id, e.external_id, e.system) for e in announced) == sorted(
        (t, at_city[t], "open311:public-works/city") for t in tickets
    )


async def test_a_token_is_resolved_by_the_poller_of_another_host(
    kafka_bootstrap: str, tmp_path: Path, city: City
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    city.fake.mode = "token"
    config = sink_config(city, format="xml")
    async with sinks_host(settings, config, "host-a") as sink:
        await publish(settings, request("TK11-TK11"))
        await wait_for(lambda: sink.ids.get("TK11-TK11"), what="the pending token recorded")
    assert (await mapped(settings, kafka_bootstrap))["TK11-TK11"].token == "tok-1"
    city.fake.resolve_tokens()
    async with sinks_host(settings, config, "host-b") as sink:
        assert sink.poller is not None
        (ack,) = await sink.poller.poll_once()
        assert (ack.request_id, ack.state) == ("TK11-TK11", State.ACKNOWLEDGED)
    assert (await mapped(settings, kafka_bootstrap))["TK11-TK11"].service_request_id == "1001"
    assert city.fake.posts == 1
    (announced,) = await external_refs(settings, kafka_bootstrap)  # by the host that resolved it
    assert (announced.request_id, announced.external_id, announced.token) == ("TK11-TK11", "1001", "tok-1")


async def test_a_refusal_is_dead_lettered_with_the_citys_description(
    kafka_bootstrap: str, tmp_path: Path, city: City
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    config = sink_config(city, service_codes={"pothole": "PTH", "graffiti": "GONE"})
    async with sinks_host(settings, config, "host-a"):
        await publish(settings, request("RF11-RF11", service="graffiti"), request("OK11-OK11"))
        await wait_for(lambda: city.fake.posts == 1, what="the good request at the city")
        found = await wait_for(lambda: letters(settings, kafka_bootstrap), what="the dead letter")
    (letter,) = found
    assert letter.stage == "sinks"
    assert "HTTP 404" in letter.reason and "service_code GONE was not found" in letter.reason
    assert city.fake.api_key not in letter.reason


@pytest.mark.parametrize("failure", ["down", "slow"])
async def test_an_outage_or_a_slow_city_keeps_requests_on_the_topic_until_it_answers(
    kafka_bootstrap: str, tmp_path: Path, city: City, failure: str
) -> None:
    settings = settings_for(kafka_bootstrap, tmp_path)
    config = sink_config(city, timeout_s=0.2)
    if failure == "down":
        city.fake.down = True
    else:
        city.fake.delay_s = 1.0
    async with sinks_host(settings, config, "host-a") as sink:
        await publish(settings, request("OU11-OU11"), request("OU22-OU22"))
        await wait_for(lambda: len(city.fake.calls) >= 4, what="several tries at the city")
        assert await letters(settings, kafka_bootstrap) == []
        city.fake.down, city.fake.delay_s = False, 0.0
        await wait_for(lambda: all(sink.ids.get(t) for t in ("OU11-OU11", "OU22-OU22")), what="the backlog")
    requests = city.fake.requests
    if failure == "down":
        assert city.fake.posts == 2  # a 503 creates nothing
    else:
        # A timed-out POST may have been created by the city (it was, here) and is posted again:
        # the residual window of an endpoint without idempotency keys (docs/open311-sink.md).
        assert city.fake.posts >= 2
    assert {ticket_of(r.form) for r in requests.values()} == {"OU11-OU11", "OU22-OU22"}
    assert await letters(settings, kafka_bootstrap) == []


# --- one poller per (department, sink) across hosts -------------------------------------------------


async def test_one_host_polls_at_a_time_and_another_takes_over_when_it_stops(
    kafka_bootstrap: str, tmp_path: Path, city: City
) -> None:
    """Two sinks hosts of one (department, sink) pair, each pointed at a city endpoint of its own
    (the same map, the same lease group): which endpoint is asked tells which host polls."""
    settings = settings_for(kafka_bootstrap, tmp_path)
    other = GeoReportFake()
    async with serving(other.app()) as other_url:
        fakes = {"a": city.fake, "b": other}
        configs = {
            "a": sink_config(city, poll_interval_s=1),
            "b": sink_config(City(other, f"{other_url}/open311/v2"), poll_interval_s=1),
        }
        stacks = {name: contextlib.AsyncExitStack() for name in fakes}
        try:
            sinks = {}
            sinks["a"] = await stacks["a"].enter_async_context(sinks_host(settings, configs["a"], "host-a"))
            # One request in the shared map, so that every poll asks its city about it.
            ref = RemoteRef(request_id="LE11-LE11", department=DEPARTMENT, service_request_id="1001")
            await sinks["a"].ids.put([ref])
            sinks["b"] = await stacks["b"].enter_async_context(sinks_host(settings, configs["b"], "host-b"))
            leases: dict[str, KafkaPollLease] = {}
            for name, sink in sinks.items():
                assert sink.poller is not None and isinstance(sink.poller.lease, KafkaPollLease)
                leases[name] = sink.poller.lease

            def settled() -> str | None:
                """The holder, once host b has joined and exactly one host holds the lease."""
                holders = [name for name, lease in leases.items() if lease.held]
                return holders[0] if leases["b"].assignments and len(holders) == 1 else None

            holder = await wait_for(settled, timeout=60, what="one of the two hosts holding the lease")
            waiter = "b" if holder == "a" else "a"
            # A poll the waiter began before the rebalance has ended once the holder polled again.
            start = gets(fakes[holder])
            await wait_for(lambda: gets(fakes[holder]) > start, what="the holder polling")
            quiet, start = gets(fakes[waiter]), gets(fakes[holder])
            await wait_for(lambda: gets(fakes[holder]) >= start + 3, what="three more polls by the holder")
            assert leases[waiter].held is False
            assert gets(fakes[waiter]) == quiet  # the other host asked its city nothing meanwhile

            # The holder stops (and leaves the group): the other host takes the lease and polls.
            await stacks[holder].aclose()
            assert leases[holder].held is False
            before = gets(fakes[waiter])
            await wait_for(lambda: leases[waiter].held, timeout=60, what=f"host {waiter} taking the lease")
            await wait_for(lambda: gets(fakes[waiter]) > before, what=f"host {waiter} polling")
        finally:
            for stack in stacks.values():
                await stack.aclose()


def gets(fake: GeoReportFake) -> int:
    return sum(1 for method, _ in fake.calls if method == "GET")


# --- the city's id reaches the case store -----------------------------------------------------------


async def test_the_citys_id_reaches_the_case_store_and_the_department_api(
    kafka_bootstrap: str, tmp_path: Path, city: City, store: CaseStore, dsn: str
) -> None:
    from fastapi import FastAPI
    from pydantic import SecretStr

    token = "works-token-open311-0123456789"
    settings = pipeline_settings(
        tmp_path,
        kafka_bootstrap,
        "o311",
        retry_attempts=2,
        case_store_dsn=dsn,
        department_tokens={DEPARTMENT: SecretStr(token)},
    )
    before, after = request("XR11-XR11"), request("XR22-XR22")
    await store.upsert_requests([before], DEPARTMENT)  # the postgres sink was quicker for this one
    async with sinks_host(settings, sink_config(city), "host-a", case_store=True):
        await publish(settings, before, after)
        await wait_for(lambda: city.fake.posts == 2, what="both requests at the city")
        at_city = {ticket_of(r.form): rid for rid, r in city.fake.requests.items()}

        async def known(ticket: str) -> Any:
            case = await store.get_case(ticket)
            return case is not None and case.external_ids

        system = "open311:public-works/city"
        assert await wait_for(lambda: known("XR11-XR11"), what="the id in the case store") == {
            system: at_city["XR11-XR11"]
        }
        # The other one's id came before its request: it waited, and the request took it.
        await store.upsert_requests([after], DEPARTMENT)
        assert await wait_for(lambda: known("XR22-XR22"), what="the waiting id taken") == {
            system: at_city["XR22-XR22"]
        }
    app = FastAPI()
    app.include_router(request_api_routes(settings, store, settle_s=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        answer = await api.get("/api/requests/XR11-XR11", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["external_ids"] == {system: at_city["XR11-XR11"]}
    assert [h["kind"] for h in answer.json()["history"]] == ["received", "external"]
    assert await letters(settings, kafka_bootstrap) == []
