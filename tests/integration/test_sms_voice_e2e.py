"""SMS and voice end to end on the embedded broker: Twilio webhooks in, department files and
texts (to a fake Twilio REST API on a local port) out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.voice import sign_transcript
from tests.integration.conftest import wait_for
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    CITY_NUMBER,
    PUBLIC,
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

SECRET = "call-centre-secret-for-e2e"


@pytest.fixture(scope="module")
async def twilio() -> AsyncIterator[FakeTwilio]:
    async for fake in serve_fake_twilio(FakeTwilio()):
        yield fake


@pytest.fixture(scope="module")
async def pipeline(
    kafka_bootstrap: str, twilio: FakeTwilio, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TwilioPipeline]:
    data_dir: Path = tmp_path_factory.mktemp("twilio-var")
    voice = {
        **twilio_account(),
        "transcripts_secret": SECRET,
        "sms_acknowledgement": True,
        "sms_ack_prefixes": ["+1"],
    }
    async with twilio_pipeline(kafka_bootstrap, twilio, data_dir, "sv", channels={"voice": voice}) as pipe:
        yield pipe


async def test_sms_without_location_is_asked_where_and_arrives_as_one_ticket(
    pipeline: TwilioPipeline,
) -> None:
    resident = "+12035550111"
    first = message_of(
        await post_signed(
            pipeline.web,
            "/channels/sms/inbound",
            sms_params("There's a huge pothole, my tire blew", sender=resident),
        )
    )
    assert "What is the address or nearest intersection?" in first
    ticket = ticket_of(first)
    second = message_of(
        await post_signed(
            pipeline.web, "/channels/sms/inbound", sms_params("Corner of Oak St and 5th Ave", sender=resident)
        )
    )
    assert ticket_of(second) == ticket

    def located() -> list[dict[str, Any]] | None:
        lines = pipeline.for_ticket("public-works", ticket)
        return lines if lines and "Oak St" in (lines[-1].get("address_string") or "") else None

    lines = await wait_for(located, what=f"{ticket} with its location in public-works.jsonl")
    assert {line["request_id"] for line in lines} == {ticket}
    last = lines[-1]
    assert last["service_code"] == "pothole" and last["channel"] == "sms"
    assert "tire blew" in last["description"] and "Oak St" in last["description"]
    assert len(last["source_contact_ids"]) == 2
    # No other department got a second ticket for this resident's two texts.
    for department in ("triage", "transportation", "sanitation"):
        assert not pipeline.for_ticket(department, ticket)


async def test_call_centre_transcript_arrives_and_the_caller_gets_the_ticket_by_sms(
    pipeline: TwilioPipeline,
) -> None:
    caller = "+12035550122"
    body = json.dumps(
        {
            "call_id": f"cc-{uuid.uuid4().hex[:12]}",
            "caller": caller,
            "agent": "agent-7",
            "started_at": "2026-11-02T09:30:00Z",
            "ended_at": "2026-11-02T09:32:00Z",
            "segments": [
                {"speaker": "agent", "text": "311, how can I help?"},
                {"speaker": "caller", "text": "Someone dumped a mattress and a couch at 88 Dixwell Avenue."},
            ],
        }
    ).encode()
    stamp = str(int(time.time()))
    response = await pipeline.web.post(
        "/channels/voice/transcripts",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Intake311-Timestamp": stamp,
            "X-Intake311-Signature": sign_transcript(SECRET, stamp, body),
        },
    )
    assert response.status_code == 202, response.text
    ticket = response.json()["request_id"]
    [line] = await wait_for(lambda: pipeline.for_ticket("sanitation", ticket), what=f"{ticket} in sanitation")
    assert line["service_code"] == "illegal-dumping" and line["channel"] == "voice"
    assert "Dixwell" in (line["address_string"] or "")
    assert "how can I help" not in line["description"]
    [text] = await wait_for(lambda: pipeline.twilio.to(caller), what="the ticket SMS at the fake Twilio API")
    assert text["From"] == CITY_NUMBER
    assert ticket in text["Body"]
    assert text["StatusCallback"] == f"{PUBLIC}/channels/sms/status"


async def test_recorded_call_is_transcribed_into_a_request_and_texted_back(pipeline: TwilioPipeline) -> None:
    caller = "+12035550133"
    call = {"AccountSid": ACCOUNT_SID, "CallSid": "CA" + uuid.uuid4().hex, "From": caller, "To": CITY_NUMBER}
    answered = await post_signed(pipeline.web, "/channels/voice/incoming", call)
    assert answered.status_code == 200 and "<Record" in answered.text
    transcription = {
        **call,
        "TranscriptionStatus": "completed",
        "TranscriptionText": "The streetlight is out in front of 300 George Street, the whole block is dark.",
        "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE{'7' * 32}",
    }
    response = await post_signed(pipeline.web, "/channels/voice/transcription?lang=en", transcription)
    assert response.status_code == 204
    [text] = await wait_for(lambda: pipeline.twilio.to(caller), what="the ticket SMS for the recorded call")
    ticket = ticket_of(text["Body"])
    [line] = await wait_for(lambda: pipeline.for_ticket("transportation", ticket), what=f"{ticket} routed")
    assert line["service_code"] == "street-light"
    assert line["media_url"] == transcription["RecordingUrl"]


async def test_no_text_reaches_a_number_that_said_stop(pipeline: TwilioPipeline) -> None:
    caller = "+12035550144"
    stop = await post_signed(pipeline.web, "/channels/sms/inbound", sms_params("STOP", sender=caller))
    assert message_of(stop) == ""
    skipped_before = pipeline.sms.counters["skipped_opted_out"]
    call = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": "CA" + uuid.uuid4().hex,
        "From": caller,
        "To": CITY_NUMBER,
        "SpeechResult": "There is a pothole at 10 Elm Street",
    }
    spoken = await post_signed(pipeline.web, "/channels/voice/speech?lang=en", call)
    assert spoken.status_code == 200 and "<Hangup" in spoken.text
    await wait_for(
        lambda: pipeline.sms.counters["skipped_opted_out"] > skipped_before,
        what="the acknowledgement to the opted-out caller to be skipped",
    )
    assert pipeline.twilio.to(caller) == []


async def test_channels_command_reports_the_running_process_not_a_fresh_copy(
    pipeline: TwilioPipeline, tmp_path: Path
) -> None:
    """``intake311 channels`` asks the running process: its counters, not a new plugin's zeros."""
    from intake311.pipeline import channel_report, running_health

    forged = await post_signed(
        pipeline.web, "/channels/sms/inbound", sms_params("pothole"), token="wrong" * 6
    )
    assert forged.status_code == 403
    fresh = {r["channel"]: r for r in await channel_report(pipeline.settings)}
    assert "(running at" not in fresh["sms"]["detail"]
    # The module's running pipeline, asked through its own app (the CLI asks it on its port).
    url = "http://testserver"
    found = await running_health([url], pipeline.web)
    assert found is not None and found[0] == url
    rows = {r["channel"]: r for r in await channel_report(pipeline.settings, [url], client=pipeline.web)}
    live, new = rows["sms"]["detail"], fresh["sms"]["detail"]
    assert rows["sms"]["status"] == "healthy" and f"(running at {url})" in live
    counted = [p for p in live.split() if p.startswith("rejected_signature=")]
    assert counted and counted[0] != "rejected_signature=0", live
    assert "rejected_signature=" not in new or "rejected_signature=0" in new, new
    # Nobody at the address: said so, and the fresh check is what is shown.
    rows = {r["channel"]: r for r in await channel_report(pipeline.settings, ["http://127.0.0.1:9"])}
    assert "fresh check: no running intake311 answered" in rows["sms"]["detail"]
    assert "voice" in rows and rows["voice"]["status"] in ("healthy", "unhealthy")
