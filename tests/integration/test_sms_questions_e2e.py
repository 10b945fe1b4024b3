"""A service's question asked and answered by text, end to end on the embedded broker.

A missed pickup asks which collection was missed (``stream``, required; schemas/taxonomy.yaml).
A text that says it is not asked; one that does not gets the question from the normalizer's desk,
sent by the ``sms`` channel through a fake Twilio REST API, and the resident's next text answers
it on the same ticket, so the department's version of the request carries the answer. Webhooks
are signed as Twilio signs them; every stage is the real one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from channels.conversation import QUESTION
from channels.voice import sign_transcript
from schemas import RawContact, make_contact_id, ticket_for
from schemas.messages import render
from schemas.outbound import MessageKind, OutboundMessage
from tests.integration.conftest import committed_to_end, on_topic, wait_for
from tests.unit.test_sms_support import (
    FakeTwilio,
    TwilioPipeline,
    message_of,
    post_signed,
    serve_fake_twilio,
    sms_params,
    ticket_of,
    twilio_account,
    twilio_pipeline,
)

pytestmark = pytest.mark.integration

TRANSCRIPTS_SECRET = "call-centre-secret-for-questions"
ASKED = {"en": "Which collection was missed?", "es": "¿Qué recolección no pasó?"}
CHOICES = {
    "en": "Trash, Recycling, Yard waste, A public trash can",
    "es": "Basura, Reciclaje, Hojas y jardín, Un zafacón público",
}


@pytest.fixture(scope="module")
async def twilio() -> AsyncIterator[FakeTwilio]:
    async for fake in serve_fake_twilio(FakeTwilio()):
        yield fake


@pytest.fixture(scope="module")
async def pipeline(
    kafka_bootstrap: str, twilio: FakeTwilio, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TwilioPipeline]:
    data_dir: Path = tmp_path_factory.mktemp("sms-questions-var")
    voice = {
        **twilio_account(),
        "transcripts_secret": TRANSCRIPTS_SECRET,
        "sms_acknowledgement": True,
        "sms_ack_prefixes": ["+1"],
    }
    async with twilio_pipeline(kafka_bootstrap, twilio, data_dir, "sq", channels={"voice": voice}) as pipe:
        yield pipe


def answer_added(language: str, ticket: str) -> str:
    """The reply to an answer: ``sms.answer_added`` ("we added your answer")."""
    return render("sms.answer_added", language, brand="311", ticket=ticket)


async def text(pipeline: TwilioPipeline, body: str, sender: str, sid: str | None = None) -> str:
    """What the TwiML answer to a signed text says."""
    params = sms_params(body, sender=sender, sid=sid)
    return message_of(await post_signed(pipeline.web, "/channels/sms/inbound", params))


def sanitation(pipeline: TwilioPipeline, ticket: str, check: Callable[[dict[str, Any]], bool]) -> Any:
    """The ticket's lines in sanitation.jsonl once the last one passes ``check`` (else None)."""
    lines = pipeline.for_ticket("sanitation", ticket)
    return lines if lines and check(lines[-1]) else None


def every_line(pipeline: TwilioPipeline) -> list[dict[str, Any]]:
    """What every department's JSONL file holds."""
    files = sorted((pipeline.settings.data_dir / "departments").glob("*.jsonl"))
    return [line for file in files for line in pipeline.lines(file.stem)]


def assert_no_ticket_of_its_own(pipeline: TwilioPipeline, sid: str, ticket: str) -> None:
    """The text ``sid`` reached the departments only as part of ``ticket``."""
    contact = make_contact_id("sms", sid)
    lines = every_line(pipeline)
    assert {line["request_id"] for line in lines if contact in line["source_contact_ids"]} == {ticket}
    assert not [line for line in lines if line["request_id"] == ticket_for(contact)]


async def published_answer(pipeline: TwilioPipeline, sid: str) -> tuple[str, object]:
    """The ticket the text ``sid`` continues, and what the channel said it answers."""
    values = await on_topic(pipeline.settings, pipeline.settings.topics.contacts("sms"))
    contact_id = make_contact_id("sms", sid)
    found = [c for c in map(RawContact.model_validate_json, values) if c.contact_id == contact_id]
    assert found, f"{contact_id} is not on the contacts topic"
    contact = found[0]  # the first time it came (a retry of an answer answers nothing)
    assert contact.continues
    return contact.request_id, contact.metadata.get("answers")


def questions_to(pipeline: TwilioPipeline, number: str) -> list[dict[str, str]]:
    """The texts the fake Twilio API was asked to send ``number`` that ask which collection."""
    return [m for m in pipeline.twilio.to(number) if any(q in m["Body"] for q in ASKED.values())]


async def on_outbound(pipeline: TwilioPipeline) -> list[OutboundMessage]:
    """Everything queued on ``outbound.sms`` so far."""
    values = await on_topic(pipeline.settings, pipeline.settings.topics.outbound("sms"))
    return [OutboundMessage.model_validate_json(v) for v in values]


async def settled(pipeline: TwilioPipeline) -> None:
    """Wait until each stage has handled everything on its input so far, in pipeline order: what
    the texts so far lead to is in the files then, and every text they lead to is sent (or was
    dropped as a duplicate). A stage publishes its output before it commits its input."""
    settings = pipeline.settings
    topics, servers = settings.topics, settings.kafka.bootstrap_servers
    for group, topic in (
        ("normalizer", topics.contacts("sms")),
        ("normalizer", topics.contacts("voice")),
        ("router", topics.requests),
        ("sink.sanitation.file", topics.department("sanitation")),
        ("outbound.sms", topics.outbound("sms")),
    ):
        await wait_for(
            lambda group=group, topic=topic: committed_to_end(servers, topics.group(group), topic),
            what=f"{group} to have handled {topic}",
        )


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        ("my recycling wasn't picked up at 200 Orange St", "recycling"),
        ("trash pickup missed at 200 Orange St", "trash"),
    ],
)
async def test_a_text_that_says_which_collection_is_not_asked(
    pipeline: TwilioPipeline, body: str, stream: str
) -> None:
    resident = "+12035550211" if stream == "recycling" else "+12035550212"
    reply = await text(pipeline, body, resident)
    ticket = ticket_of(reply)
    assert reply == render("sms.received", "en", brand="311", ticket=ticket)
    await settled(pipeline)
    [line] = pipeline.for_ticket("sanitation", ticket)
    assert line["service_code"] == "missed-pickup"
    assert line["attributes"] == {"stream": stream}
    # Nothing was queued for it (the desk queues a question with the request), nor sent.
    assert not [m for m in await on_outbound(pipeline) if m.request_id == ticket]
    assert pipeline.twilio.to(resident) == []


@pytest.mark.parametrize(
    ("language", "body", "answer", "resident"),
    [
        ("en", "missed pickup at 200 Orange St", "trash", "+12035550221"),
        ("es", "No pasaron a recoger en 200 Orange St", "basura", "+12035550222"),
    ],
)
async def test_the_question_is_texted_and_the_answer_joins_the_same_ticket(
    pipeline: TwilioPipeline, language: str, body: str, answer: str, resident: str
) -> None:
    first = await text(pipeline, body, resident)
    ticket = ticket_of(first)
    assert first == render("sms.received", language, brand="311", ticket=ticket)

    [asked] = await wait_for(lambda: questions_to(pipeline, resident), what="the question at the fake Twilio")
    assert ticket in asked["Body"]
    assert ASKED[language] in asked["Body"] and CHOICES[language] in asked["Body"]

    answer_sid = "SM" + "a1" * 16 if language == "en" else "SM" + "b2" * 16
    second = await text(pipeline, answer, resident, sid=answer_sid)
    assert ticket_of(second) == ticket
    assert second == answer_added(language, ticket)
    assert second != render("sms.received", language, brand="311", ticket=ticket)

    lines = await wait_for(
        lambda: sanitation(pipeline, ticket, lambda line: line["attributes"].get("stream") == "trash"),
        what=f"{ticket} with its answer in sanitation.jsonl",
    )
    last = lines[-1]
    assert last["attributes"] == {"stream": "trash"}
    assert last["service_code"] == "missed-pickup" and last["language"] == language
    assert len(last["source_contact_ids"]) == 2 and answer in last["description"]
    assert_no_ticket_of_its_own(pipeline, answer_sid, ticket)
    assert await published_answer(pipeline, answer_sid) == (ticket, QUESTION)
    # Answered: nothing more is asked.
    await settled(pipeline)
    assert len(questions_to(pipeline, resident)) == 1


async def test_a_redelivered_text_or_answer_asks_nothing_twice(pipeline: TwilioPipeline) -> None:
    resident = "+12035550231"
    first_sid, answer_sid = "SM" + "c3" * 16, "SM" + "d4" * 16
    ticket = ticket_of(await text(pipeline, "missed pickup at 200 Orange St", resident, sid=first_sid))
    await wait_for(lambda: questions_to(pipeline, resident), what="the question at the fake Twilio")

    # Twilio retries the first webhook (same MessageSid): the same ticket, and the desk queues the
    # same question again (same id) -- the channels stage does not send it twice.
    again = await text(pipeline, "missed pickup at 200 Orange St", resident, sid=first_sid)
    assert again == render("sms.received", "en", brand="311", ticket=ticket)

    async def asked_twice() -> bool:
        queued = [(m.kind, m.message_id) for m in await on_outbound(pipeline) if m.request_id == ticket]
        return len(queued) == 2 and queued[0] == queued[1] and queued[0][0] is MessageKind.QUESTION

    await wait_for(asked_twice, what="the replayed question queued again")
    await settled(pipeline)
    assert len(questions_to(pipeline, resident)) == 1

    # The retry did not take the question back: the next text is still its answer.
    answered = await text(pipeline, "recycling", resident, sid=answer_sid)
    assert answered == answer_added("en", ticket)
    lines = await wait_for(
        lambda: sanitation(pipeline, ticket, lambda line: line["attributes"].get("stream") == "recycling"),
        what=f"{ticket} answered in sanitation.jsonl",
    )
    assert await published_answer(pipeline, answer_sid) == (ticket, QUESTION)
    # Both redelivered again after the answer: the same ticket, nothing new downstream or asked.
    assert ticket_of(await text(pipeline, "recycling", resident, sid=answer_sid)) == ticket
    retried = await text(pipeline, "missed pickup at 200 Orange St", resident, sid=first_sid)
    assert ticket_of(retried) == ticket
    await settled(pipeline)
    assert len(questions_to(pipeline, resident)) == 1
    assert len({line["event_id"] for line in lines}) == len(lines) == 2
    assert pipeline.for_ticket("sanitation", ticket) == lines


async def test_a_caller_answers_by_text_on_the_ticket_of_the_call(pipeline: TwilioPipeline) -> None:
    """A number with no conversation: the caller got the ticket and the question by SMS, and
    their text answers it on the call's ticket instead of opening a new one."""
    caller = "+12035550251"
    body = json.dumps(
        {
            "call_id": f"cc-{uuid.uuid4().hex[:12]}",
            "caller": caller,
            "started_at": "2026-11-02T09:30:00Z",
            "ended_at": "2026-11-02T09:32:00Z",
            "segments": [{"speaker": "caller", "text": "Missed pickup at 200 Orange St this morning."}],
        }
    ).encode()
    stamp = str(int(time.time()))
    called = await pipeline.web.post(
        "/channels/voice/transcripts",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Intake311-Timestamp": stamp,
            "X-Intake311-Signature": sign_transcript(TRANSCRIPTS_SECRET, stamp, body),
        },
    )
    assert called.status_code == 202, called.text
    ticket = called.json()["request_id"]
    [asked] = await wait_for(lambda: questions_to(pipeline, caller), what="the question to the caller")
    assert ticket in asked["Body"]

    answer_sid = "SM" + "e5" * 16
    replied = await text(pipeline, "Garbage", caller, sid=answer_sid)
    assert replied == answer_added("en", ticket)
    lines = await wait_for(
        lambda: sanitation(pipeline, ticket, lambda line: line["attributes"].get("stream") == "trash"),
        what=f"{ticket} with the caller's answer in sanitation.jsonl",
    )
    assert lines[-1]["channel"] == "voice" and len(lines[-1]["source_contact_ids"]) == 2
    assert_no_ticket_of_its_own(pipeline, answer_sid, ticket)
    assert await published_answer(pipeline, answer_sid) == (ticket, QUESTION)
    # What made it the answer is in the channel's shared store (SQLite here), not in a process:
    # the conversation sending the question opened, answered now.
    store = await pipeline.sms.store()
    answered = await store.get("sms", caller)
    assert answered is not None and answered.request_id == ticket
    assert answered.awaiting is None and answered.opened_by.startswith("outbound:")
