"""The voice channel: TwiML a caller hears, call callbacks, call-centre transcripts, ticket SMS."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.voice import VoiceChannel, VoiceConfig, sign_transcript, verify_transcript
from intake311.bus import PublishError
from schemas import SenderKind, parse_ticket
from schemas.outbound import MessageKind
from tests.support import asgi_client, published, started
from tests.support import queued as outbox
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC,
    RESIDENT,
    app_for,
    make_context,
    post_signed,
)

SECRET = "call-centre-secret-0123456789"
CALL_SID = "CA" + "5" * 32
RECORDING = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE{'6' * 32}"


def voice_config(**overrides: Any) -> VoiceConfig:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "public_base_url": PUBLIC,
        "transcripts_secret": SECRET,
        "sms_acknowledgement": True,
        "sms_ack_prefixes": ["+1"],
    }
    values.update(overrides)
    return VoiceConfig.model_validate(values)


def voice_channel(tmp_path: Path, **overrides: Any) -> VoiceChannel:
    return VoiceChannel(voice_config(**overrides), make_context(tmp_path, channels={"sms": {}}))


async def make_voice(tmp_path: Path, **overrides: Any) -> VoiceChannel:
    plugin = voice_channel(tmp_path, **overrides)
    await plugin.start()
    return plugin


@pytest.fixture
async def voice(tmp_path: Path) -> AsyncIterator[VoiceChannel]:
    async with started(voice_channel(tmp_path)) as plugin:
        yield plugin


@pytest.fixture
async def client(voice: VoiceChannel) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app_for(voice)) as c:
        yield c


def call_params(**extra: str) -> dict[str, str]:
    params = {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID, "From": RESIDENT, "To": "+12035550100"}
    params.update(extra)
    return params


def xml(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.text)


# ---- the call flow ------------------------------------------------------------------------------


async def test_incoming_call_offers_spanish_then_records_with_transcription(
    client: httpx.AsyncClient,
) -> None:
    root = xml(await post_signed(client, "/channels/voice/incoming", call_params()))
    menu = root.find("Gather")
    assert menu is not None and menu.get("input") == "dtmf" and menu.get("numDigits") == "1"
    assert menu.get("action") == f"{PUBLIC}/channels/voice/language"
    says = {s.get("language"): s.text for s in menu.findall("Say")}
    assert "911" in (says["en-US"] or "").replace(" ", "") and "español" in (says["es-US"] or "")
    record = root.find("Record")
    assert record is not None
    assert record.get("transcribe") == "true"
    assert record.get("transcribeCallback") == f"{PUBLIC}/channels/voice/transcription?lang=en"
    assert record.get("action") == f"{PUBLIC}/channels/voice/recorded?lang=en"
    assert record.get("maxLength") == "120"


async def test_pressing_two_switches_to_spanish(client: httpx.AsyncClient) -> None:
    root = xml(await post_signed(client, "/channels/voice/language", call_params(Digits="2")))
    say = root.find("Say")
    assert say is not None and say.get("language") == "es-US" and "Después del tono" in (say.text or "")
    record = root.find("Record")
    assert record is not None and record.get("transcribeCallback", "").endswith("transcription?lang=es")


async def test_gather_mode_listens_for_speech(tmp_path: Path) -> None:
    plugin = await make_voice(tmp_path, mode="gather")
    async with asgi_client(app_for(plugin)) as client:
        root = xml(await post_signed(client, "/channels/voice/incoming", call_params()))
    speech = [g for g in root.findall("Gather") if g.get("input") == "speech"]
    assert speech and speech[0].get("language") == "en-US"
    assert speech[0].get("action") == f"{PUBLIC}/channels/voice/speech?lang=en&attempt=1"
    assert speech[0].get("actionOnEmptyResult") == "true"
    await plugin.context.http.aclose()


async def test_unsigned_or_forged_call_webhooks_are_refused(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    for path in ("incoming", "transcription", "speech", "recorded", "language"):
        response = await client.post(f"/channels/voice/{path}", data=call_params(TranscriptionText="hi"))
        assert response.status_code == 403, path
    forged = await post_signed(
        client, "/channels/voice/transcription", call_params(TranscriptionText="x"), token="wrong-token"
    )
    assert forged.status_code == 403
    assert not published(voice).contacts and not outbox(voice).messages
    assert "rejected_signature=6" in (await voice.health()).detail


async def test_completed_transcription_is_published_and_the_ticket_texted(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    params = call_params(
        TranscriptionText="There is a big pothole in front of 45 Chapel Street.",
        TranscriptionStatus="completed",
        RecordingUrl=RECORDING,
        RecordingSid="RE" + "6" * 32,
    )
    response = await post_signed(client, "/channels/voice/transcription?lang=en", params)
    assert response.status_code == 204
    [contact] = published(voice).contacts
    assert contact.contact_id == f"voice:{CALL_SID}"
    assert contact.text.startswith("There is a big pothole")
    assert [(m.url, m.content_type) for m in contact.media] == [(RECORDING, "audio/wav")]
    assert contact.metadata["transcription_status"] == "completed"
    assert contact.sender.kind == SenderKind.PHONE
    [ack] = outbox(voice).messages
    assert (ack.channel, ack.to, ack.kind) == ("sms", RESIDENT, MessageKind.ACKNOWLEDGEMENT)
    assert contact.request_id in ack.text and ack.request_id == contact.request_id
    # Twilio retrying the callback: the same contact and the same (deduped) message.
    await post_signed(client, "/channels/voice/transcription?lang=en", params)
    assert published(voice).contacts[1].contact_id == contact.contact_id
    assert outbox(voice).messages[1].message_id == ack.message_id


async def test_failed_transcription_keeps_the_recording_for_triage(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    params = call_params(TranscriptionStatus="failed", TranscriptionText="", RecordingUrl=RECORDING)
    assert (await post_signed(client, "/channels/voice/transcription?lang=es", params)).status_code == 204
    [contact] = published(voice).contacts
    assert contact.text == ""
    assert contact.metadata["transcription_status"] == "failed"
    assert contact.media[0].url == RECORDING
    assert contact.language == "es"
    [ack] = outbox(voice).messages
    assert "Su número de caso es" in ack.text and ack.language == "es"


async def test_broker_down_means_503_and_no_ticket(voice: VoiceChannel, client: httpx.AsyncClient) -> None:
    published(voice).fail = PublishError("down")
    params = call_params(TranscriptionText="Pothole", TranscriptionStatus="completed", RecordingUrl=RECORDING)
    response = await post_signed(client, "/channels/voice/transcription", params)
    assert response.status_code == 503
    assert not outbox(voice).messages


async def test_speech_result_is_published_and_the_caller_hears_the_ticket(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    params = call_params(SpeechResult="Streetlight out at 12 Elm Street", Confidence="0.91")
    root = xml(await post_signed(client, "/channels/voice/speech?lang=en&attempt=1", params))
    [contact] = published(voice).contacts
    spoken = " ".join(s.text or "" for s in root.findall("Say"))
    ticket = contact.request_id
    assert ", ".join(" ".join(p) for p in ticket.split("-")) in spoken
    assert "text" in spoken  # "We will text your ticket number"
    assert root.find("Hangup") is not None
    assert contact.metadata["speech_confidence"] == 0.91
    assert outbox(voice).messages[0].text.count(ticket) == 1


async def test_silence_reprompts_once_then_says_goodbye(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    again = xml(
        await post_signed(client, "/channels/voice/speech?lang=es&attempt=1", call_params(SpeechResult=""))
    )
    gather = again.find("Gather")
    assert gather is not None and gather.get("action", "").endswith("lang=es&attempt=2")
    done = xml(await post_signed(client, "/channels/voice/speech?lang=es&attempt=2", call_params()))
    assert done.find("Hangup") is not None
    assert not published(voice).contacts


async def test_speech_when_the_broker_is_down_apologises_without_a_ticket(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    published(voice).fail = PublishError("down")
    root = xml(await post_signed(client, "/channels/voice/speech", call_params(SpeechResult="Pothole")))
    spoken = " ".join(s.text or "" for s in root.findall("Say"))
    assert "call again later" in spoken
    assert not any(parse_ticket(w.strip(".,")) for w in spoken.split())
    assert not outbox(voice).messages


@pytest.mark.parametrize(
    ("caller", "texted"),
    [
        (RESIDENT, True),
        ("+266696687", False),  # withheld caller id
        ("+442071234567", False),  # outside the allowed prefixes
        ("2035551234", False),  # not E.164
    ],
)
async def test_the_ticket_is_texted_only_to_numbers_that_can_take_it(
    voice: VoiceChannel, client: httpx.AsyncClient, caller: str, texted: bool
) -> None:
    params = call_params(From=caller, TranscriptionText="Pothole", TranscriptionStatus="completed")
    assert (await post_signed(client, "/channels/voice/transcription", params)).status_code == 204
    assert bool(outbox(voice).messages) is texted
    [contact] = published(voice).contacts
    assert (contact.reply is not None) is texted
    if caller == "+266696687":
        assert contact.sender.kind == SenderKind.ANONYMOUS and contact.sender.address is None


async def test_no_sms_when_acknowledgement_is_off(tmp_path: Path) -> None:
    plugin = await make_voice(tmp_path, sms_acknowledgement=False)
    async with asgi_client(app_for(plugin)) as client:
        params = call_params(SpeechResult="Pothole at 3 Elm Street")
        root = xml(await post_signed(client, "/channels/voice/speech", params))
    assert not outbox(plugin).messages
    assert "text" not in " ".join(s.text or "" for s in root.findall("Say")).replace("ticket", "")
    await plugin.context.http.aclose()


# ---- call-centre transcripts --------------------------------------------------------------------


def transcript(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "call_id": "cc-2026-000123",
        "caller": RESIDENT,
        "agent": "agent-17",
        "started_at": "2026-11-02T09:30:00Z",
        "ended_at": "2026-11-02T09:33:10Z",
        "segments": [
            {"speaker": "agent", "text": "311, what is the problem?"},
            {"speaker": "caller", "text": "Somebody dumped a couch and a mattress on the sidewalk."},
            {"speaker": "agent", "text": "Where is that?"},
            {"speaker": "Caller", "text": "Outside 88 Dixwell Avenue."},
        ],
        "vendor_field": {"ignored": True},
    }
    body.update(overrides)
    return body


async def post_transcript(
    client: httpx.AsyncClient,
    payload: dict[str, Any] | bytes,
    *,
    secret: str = SECRET,
    at: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    stamp = str(int(time.time()) if at is None else at)
    headers = {
        "Content-Type": "application/json",
        "X-Intake311-Timestamp": stamp,
        "X-Intake311-Signature": signature or sign_transcript(secret, stamp, body),
    }
    return await client.post("/channels/voice/transcripts", content=body, headers=headers)


async def test_signed_transcript_is_published_with_the_callers_words(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    response = await post_transcript(client, transcript(address="88 Dixwell Avenue"))
    assert response.status_code == 202, response.text
    [contact] = published(voice).contacts
    assert response.json() == {"request_id": contact.request_id, "contact_id": contact.contact_id}
    assert (
        contact.text == "Somebody dumped a couch and a mattress on the sidewalk.\nOutside 88 Dixwell Avenue."
    )
    assert "what is the problem" not in contact.text  # the agent's words are not the report
    assert contact.location is not None and contact.location.address == "88 Dixwell Avenue"
    assert contact.metadata["agent"] == "agent-17" and contact.metadata["duration_s"] == 190
    assert contact.received_at.isoformat() == "2026-11-02T09:33:10+00:00"
    [ack] = outbox(voice).messages
    assert ack.to == RESIDENT and contact.request_id in ack.text


async def test_transcripts_are_idempotent_on_call_id(voice: VoiceChannel, client: httpx.AsyncClient) -> None:
    first = await post_transcript(client, transcript())
    second = await post_transcript(client, transcript())
    assert first.json() == second.json()
    a, b = published(voice).contacts
    assert a == b


@pytest.mark.parametrize(
    "how",
    ["stale", "future", "forged", "wrong-secret", "unsigned", "tampered"],
)
async def test_bad_transcript_signatures_are_refused(
    voice: VoiceChannel, client: httpx.AsyncClient, how: str
) -> None:
    now = int(time.time())
    if how == "stale":
        response = await post_transcript(client, transcript(), at=now - 301)
    elif how == "future":
        response = await post_transcript(client, transcript(), at=now + 301)
    elif how == "forged":
        response = await post_transcript(client, transcript(), signature="v1=" + "0" * 64)
    elif how == "wrong-secret":
        response = await post_transcript(client, transcript(), secret="guess")
    elif how == "tampered":
        body = json.dumps(transcript()).encode()
        signature = sign_transcript(SECRET, str(now), body)
        response = await post_transcript(
            client, body.replace(b"couch", b"sofa!"), at=now, signature=signature
        )
    else:
        response = await client.post("/channels/voice/transcripts", json=transcript())
    assert response.status_code == 403
    assert not published(voice).contacts
    assert "rejected_signature=1" in (await voice.health()).detail


async def test_invalid_transcripts_get_422(voice: VoiceChannel, client: httpx.AsyncClient) -> None:
    agent_only = transcript(segments=[{"speaker": "agent", "text": "Hello?"}])
    for payload in (agent_only, {"call_id": "x"}, b"not json"):
        response = await post_transcript(client, payload)
        assert response.status_code == 422, response.text
        assert response.json()["errors"]
    assert not published(voice).contacts


async def test_transcript_intake_is_off_without_a_secret(tmp_path: Path) -> None:
    plugin = await make_voice(tmp_path, transcripts_secret=None)
    async with asgi_client(app_for(plugin)) as client:
        assert (await post_transcript(client, transcript())).status_code == 404
    await plugin.context.http.aclose()


def test_signature_scheme_allows_rotation_and_rejects_garbage() -> None:
    body = b'{"call_id": "1"}'
    now = 1_800_000_000
    good = sign_transcript(SECRET, now, body)
    assert verify_transcript(SECRET, str(now), body, good, max_age_s=300, now=now + 299)
    assert not verify_transcript(SECRET, str(now), body, good, max_age_s=300, now=now + 301)
    assert verify_transcript(SECRET, str(now), body, f"v1=deadbeef, {good}", max_age_s=300, now=now)
    assert not verify_transcript(SECRET, "12a", body, good, max_age_s=300, now=now)
    assert not verify_transcript(SECRET, None, body, good, max_age_s=300, now=now)
    assert not verify_transcript(SECRET, str(now), body, None, max_age_s=300, now=now)


# ---- emergencies: "hang up and call 911" before the ticket -------------------------------------


@pytest.mark.parametrize(
    ("lang", "said", "locale", "first"),
    [
        ("en", "I smell gas in my kitchen at 12 Elm Street", "en-US", "If anyone is in danger, hang up"),
        ("es", "huele a gas en la cocina, calle Elm 12", "es-US", "Si alguien está en peligro, cuelgue"),
    ],
)
async def test_a_spoken_emergency_hears_call_911_first_and_is_still_published(
    voice: VoiceChannel, client: httpx.AsyncClient, lang: str, said: str, locale: str, first: str
) -> None:
    params = call_params(SpeechResult=said, Confidence="0.9")
    root = xml(await post_signed(client, f"/channels/voice/speech?lang={lang}&attempt=1", params))
    [contact] = published(voice).contacts
    says = root.findall("Say")
    assert (says[0].text or "").startswith(first) and says[0].get("language") == locale
    assert "9 1 1" in (says[0].text or "")
    assert ", ".join(" ".join(p) for p in contact.request_id.split("-")) in (says[1].text or "")
    # The ticket SMS leads with it too.
    [ack] = outbox(voice).messages
    assert ack.text.startswith(first.split(",")[0]) and "911" in ack.text.split(".")[0]


async def test_an_ordinary_spoken_report_hears_no_911_line(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    params = call_params(SpeechResult="Huge pothole outside 12 Elm Street", Confidence="0.9")
    root = xml(await post_signed(client, "/channels/voice/speech?lang=en&attempt=1", params))
    assert published(voice).contacts
    assert not any("9 1 1" in (s.text or "") for s in root.findall("Say"))
    assert "911" not in outbox(voice).messages[0].text


async def test_a_recorded_emergency_gets_call_911_first_in_the_ticket_sms(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    params = call_params(
        TranscriptionStatus="completed", TranscriptionText="huele a gas en la cocina", RecordingUrl=RECORDING
    )
    assert (await post_signed(client, "/channels/voice/transcription?lang=es", params)).status_code == 204
    assert published(voice).contacts
    [ack] = outbox(voice).messages
    assert ack.text.startswith("Si alguien está en peligro, llame al 911")
    assert "Su número de caso es" in ack.text


async def test_a_call_centre_emergency_transcript_says_call_911_first(
    voice: VoiceChannel, client: httpx.AsyncClient
) -> None:
    segments = [{"speaker": "caller", "text": "I smell gas in my kitchen, 88 Dixwell Avenue"}]
    response = await post_transcript(client, transcript(segments=segments))
    assert response.status_code == 202, response.text
    [contact] = published(voice).contacts
    assert response.json()["service_notice"].startswith("If anyone is in danger, call 911")
    [ack] = outbox(voice).messages
    assert ack.text.startswith("If anyone is in danger, call 911") and contact.request_id in ack.text
    plain = await post_transcript(client, transcript(call_id="cc-2"))
    assert "service_notice" not in plain.json()
    assert "911" not in outbox(voice).messages[1].text
