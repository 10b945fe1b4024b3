"""End to end on the embedded broker: a resident's report in, a department's file and webhook out."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from aiokafka import AIOKafkaConsumer

from channels.base import KafkaContactPublisher
from schemas import DeadLetter, RawContact
from tests.conftest import make_contact
from tests.integration.conftest import API_KEY, Pipeline, wait_for

pytestmark = pytest.mark.integration


async def arrived(pipeline: Pipeline, department: str, request_id: str) -> dict:
    """Wait until the request is in the department's JSONL file and at its webhook."""
    line = await wait_for(
        lambda: next((r for r in pipeline.lines(department) if r["request_id"] == request_id), None),
        what=f"{request_id} in {department}.jsonl",
    )
    hooks = await wait_for(lambda: pipeline.hook.for_request(request_id), what=f"{request_id} at the webhook")
    assert hooks[0]["body"]["department"] == department
    assert hooks[0]["body"]["service_code"] == line["service_code"]
    return line


async def test_open311_json_post_reaches_department(pipeline: Pipeline) -> None:
    response = await pipeline.web.post(
        "/open311/v2/requests.json",
        data={
            "api_key": API_KEY,
            "service_code": "pothole",
            "address_string": "12 Elm Street",
            "description": "Deep pothole in the right lane, cars swerving",
            "email": "resident@example.org",
        },
    )
    assert response.status_code == 201, response.text
    ticket = response.json()[0]["service_request_id"]
    line = await arrived(pipeline, "public-works", ticket)
    assert line["service_code"] == "pothole"
    assert line["agency_responsible"] == "public-works"
    assert line["address_string"] == "12 Elm Street"
    assert line["channel"] == "open311"
    assert line["department"] == "public-works"


async def test_open311_xml_post_reaches_department(pipeline: Pipeline) -> None:
    response = await pipeline.web.post(
        "/open311/v2/requests.xml",
        data={
            "api_key": API_KEY,
            "service_code": "graffiti",
            "lat": "41.3083",
            "long": "-72.9279",
            "description": "Spray paint tags all over the bus shelter",
        },
    )
    assert response.status_code == 201, response.text
    root = ET.fromstring(response.content)
    ticket = root.findtext("request/service_request_id")
    assert ticket
    line = await arrived(pipeline, "public-works", ticket)
    assert line["service_code"] == "graffiti"
    assert (line["lat"], line["long"]) == (41.3083, -72.9279)


async def test_html_form_is_classified_and_routed(pipeline: Pipeline) -> None:
    response = await pipeline.web.post(
        "/",
        data={
            "description": "The streetlight is out, whole block is dark at night",
            "address": "corner of Oak St and 5th Ave",
            "contact": "",
        },
    )
    assert response.status_code == 200, response.text
    match = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", response.text)
    assert match, "confirmation page shows no ticket"
    ticket = match.group(1)
    line = await arrived(pipeline, "transportation", ticket)
    assert line["service_code"] == "street-light"
    assert line["channel"] == "web"
    assert "Oak St" in (line["address_string"] or "")


async def test_spanish_web_report_gets_spanish_confirmation_and_right_service(pipeline: Pipeline) -> None:
    """No service picked, no Accept-Language: the text alone says Spanish and which service."""
    response = await pipeline.web.post(
        "/",
        data={
            "description": "Hay un bache muy hondo frente a mi casa, ya se me poncharon dos gomas",
            "address": "45 Elm St",
            "contact": "",
        },
    )
    assert response.status_code == 200, response.text
    page = response.text
    assert '<html lang="es">' in page
    assert "Reporte recibido" in page and "Su número de caso es" in page
    assert "Report received" not in page
    ticket = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", page)
    assert ticket, "confirmation page shows no ticket"
    line = await arrived(pipeline, "public-works", ticket.group(1))
    assert line["service_code"] == "pothole"
    assert line["language"] == "es"
    assert not line["triage"]


async def test_replayed_contact_is_delivered_once(pipeline: Pipeline) -> None:
    publisher = KafkaContactPublisher(pipeline.broker, pipeline.settings.topics)
    contact = make_contact("Missed trash pickup again at 77 Orange Street", provider_id="replay-1")
    for _ in range(3):
        await publisher.publish(contact)
    await arrived(pipeline, "sanitation", contact.request_id)
    # Give the replays time to flow through every stage, then count.
    marker = make_contact("Missed recycling pickup at 78 Orange Street", provider_id="replay-2")
    await publisher.publish(marker)
    await arrived(pipeline, "sanitation", marker.request_id)
    assert [r["request_id"] for r in pipeline.lines("sanitation")].count(contact.request_id) == 1
    assert len(pipeline.hook.for_request(contact.request_id)) == 1
    assert pipeline.hook.rejected == 0


async def test_malformed_contact_is_dead_lettered_and_consumer_keeps_running(pipeline: Pipeline) -> None:
    topics = pipeline.settings.topics
    poison = b'{"contact_id": "web:broken", "text": 42}'
    await pipeline.broker.publish(poison, topics.contacts("web"), key=b"broken")
    good = make_contact("Graffiti on the library wall at 133 Elm Street", provider_id="after-poison")
    await KafkaContactPublisher(pipeline.broker, topics).publish(good)
    await arrived(pipeline, "public-works", good.request_id)

    consumer = AIOKafkaConsumer(
        topics.deadletter,
        bootstrap_servers=pipeline.settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        letters: list[DeadLetter] = []

        async def poll() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                letters.extend(DeadLetter.model_validate_json(r.value) for r in records)
            return any(letter.original == poison for letter in letters)

        for _ in range(40):
            if await poll():
                break
        letter = next(letter for letter in letters if letter.original == poison)
    finally:
        await consumer.stop()
    assert letter.stage == "normalizer"
    assert letter.source_topic == topics.contacts("web")
    assert "request_id" in letter.reason and "text" in letter.reason
    with pytest.raises(ValueError):
        RawContact.model_validate_json(letter.original)


async def test_asyncapi_document_lists_the_pipeline_topics(pipeline: Pipeline) -> None:
    response = await pipeline.web.get("/asyncapi.json")
    assert response.status_code == 200
    addresses = {channel["address"] for channel in response.json()["channels"].values()}
    topics = pipeline.settings.topics
    assert {topics.requests, topics.department("public-works"), topics.department("triage")} <= addresses
    assert topics.contacts_pattern in addresses or any("contacts" in a for a in addresses)


async def test_webhook_refusal_dead_letters_then_replay_delivers(pipeline: Pipeline) -> None:
    from intake311.ops import replay_dead_letters

    hook = pipeline.hook
    publisher = KafkaContactPublisher(pipeline.broker, pipeline.settings.topics)
    contact = make_contact("Broken water main flooding 300 Orange Street", provider_id="refused-1")
    # A refusal (4xx), not an outage: an outage keeps requests on the topic (test_sink_outage_e2e).
    hook.refuse_status = 422
    try:
        await publisher.publish(contact)
        # The file sink is its own consumer group: the webhook's refusal does not concern it.
        await wait_for(
            lambda: any(r["request_id"] == contact.request_id for r in pipeline.lines("water")),
            what="the request in water.jsonl",
        )
        letters = await wait_for(
            lambda: _letters_for(pipeline, contact.request_id), what="the webhook delivery dead-lettered"
        )
    finally:
        hook.refuse_status = None
    assert letters[0].stage == "sinks" and "422" in letters[0].reason
    assert not hook.for_request(contact.request_id)

    replayed = await replay_dead_letters(
        pipeline.settings, pipeline.settings.kafka.bootstrap_servers, stage="sinks", idle_s=1.0
    )
    assert contact.request_id.encode() in b"".join(letter.original for letter in replayed)
    [delivery] = await wait_for(lambda: hook.for_request(contact.request_id), what="the replayed delivery")
    assert delivery["body"]["department"] == "water"
    # Replay is once: the file sink had it already and skipped it (one line, not two).
    assert [r["request_id"] for r in pipeline.lines("water")].count(contact.request_id) == 1
    again = await replay_dead_letters(
        pipeline.settings, pipeline.settings.kafka.bootstrap_servers, stage="sinks", idle_s=1.0
    )
    assert contact.request_id.encode() not in b"".join(letter.original for letter in again)


async def _letters_for(pipeline: Pipeline, request_id: str) -> list[DeadLetter]:
    consumer = AIOKafkaConsumer(
        pipeline.settings.topics.deadletter,
        auto_offset_reset="earliest",
        bootstrap_servers=pipeline.settings.kafka.bootstrap_servers,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=1000)
    finally:
        await consumer.stop()
    letters = [DeadLetter.model_validate_json(r.value) for rs in batches.values() for r in rs]
    return [letter for letter in letters if request_id.encode() in letter.original]
