"""Pure parsing for the voice channel: Twilio call callbacks and call-centre transcripts.

A call is one contact, whatever the path: its id comes from Twilio's CallSid (or the call
centre's call_id), so a retried callback or a re-sent transcript is the same contact and the
same ticket.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from channels.sms.phone import can_text, is_withheld
from schemas.contact import Location, Media, MetadataValue, RawContact, ReplyVia, Sender, SenderKind
from schemas.emergency import EmergencyRules, with_warning
from schemas.ids import make_contact_id, ticket_for
from schemas.language import DEFAULT_LANGUAGES, detector
from schemas.messages import render
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id

CHANNEL = "voice"
SMS_CHANNEL = "sms"
LOCALES = {"en": "en-US", "es": "es-US"}
MAX_TEXT = 20_000
CALLER_SPEAKERS = frozenset({"caller", "resident", "customer", "citizen", "constituent"})
SIGNATURE_VERSION = "v1"
HEADER_TIMESTAMP = "x-intake311-timestamp"
HEADER_SIGNATURE = "x-intake311-signature"
_TRANSCRIPTION_FIELDS = (
    ("RecordingSid", "recording_sid"),
    ("To", "to"),
    ("TranscriptionSid", "transcription_sid"),
)


class VoiceInvalid(ValueError):
    """A callback or transcript missing what identifies the call or what the caller said."""


def language_of(value: str | None) -> str:
    """The language an endpoint was told (``?lang=es``), limited to the ones we speak."""
    return value if value in LOCALES else "en"


def call_contact_id(call_sid: str) -> str:
    return make_contact_id(CHANNEL, call_sid)


def sender_for(number: str | None) -> Sender:
    """The caller, or an anonymous sender when the caller id is withheld."""
    if is_withheld(number):
        return Sender(kind=SenderKind.ANONYMOUS)
    return Sender(kind=SenderKind.PHONE, address=(number or "")[:320])


def reply_for(number: str | None, language: str, *, enabled: bool, prefixes: list[str]) -> ReplyVia | None:
    """Where later messages about the request can go: by SMS, if the caller can get texts."""
    if not enabled or not can_text(number, prefixes):
        return None
    assert number is not None
    return ReplyVia(channel=SMS_CHANNEL, address=number, language=language)


def _call_sid(form: Mapping[str, str]) -> str:
    sid = (form.get("CallSid") or "").strip()
    if not sid:
        raise VoiceInvalid("CallSid is missing")
    return sid


def parse_transcription(
    form: Mapping[str, str],
    *,
    received_at: datetime,
    language: str = "en",
    sms_reply: bool = False,
    prefixes: list[str] | None = None,
) -> RawContact:
    """A ``<Record transcribe>`` callback as a contact.

    A failed transcription still becomes a contact: empty text and the recording, so the
    normalizer sends it to triage and a person listens to it. Nothing the caller said is lost.
    """
    sid = _call_sid(form)
    status = (form.get("TranscriptionStatus") or "missing").strip().lower()
    text = (form.get("TranscriptionText") or "").strip() if status == "completed" else ""
    recording = (form.get("RecordingUrl") or "").strip()
    media = (Media(url=recording, content_type="audio/wav"),) if recording.startswith("https://") else ()
    metadata: dict[str, MetadataValue] = {
        "source": "twilio-record",
        "call_sid": sid,
        "transcription_status": status,
    }
    for field, key in _TRANSCRIPTION_FIELDS:
        if form.get(field):
            metadata[key] = form[field]
    return _call_contact(form, sid, text, metadata, media, received_at, language, sms_reply, prefixes)


def parse_speech(
    form: Mapping[str, str],
    *,
    received_at: datetime,
    language: str = "en",
    sms_reply: bool = False,
    prefixes: list[str] | None = None,
) -> RawContact:
    """A ``<Gather input="speech">`` result as a contact (Twilio's confidence kept for triage)."""
    sid = _call_sid(form)
    text = (form.get("SpeechResult") or "").strip()
    metadata: dict[str, MetadataValue] = {"source": "twilio-gather", "call_sid": sid}
    with contextlib.suppress(ValueError):
        metadata["speech_confidence"] = round(float(form.get("Confidence") or ""), 4)
    if form.get("To"):
        metadata["to"] = form["To"]
    return _call_contact(form, sid, text, metadata, (), received_at, language, sms_reply, prefixes)


def _call_contact(
    form: Mapping[str, str],
    sid: str,
    text: str,
    metadata: dict[str, MetadataValue],
    media: tuple[Media, ...],
    received_at: datetime,
    language: str,
    sms_reply: bool,
    prefixes: list[str] | None,
) -> RawContact:
    """The one contact of a Twilio call (CallSid ``sid``), whichever callback carried it."""
    contact_id = call_contact_id(sid)
    number = form.get("From")
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=CHANNEL,
        received_at=received_at,
        sender=sender_for(number),
        text=text[:MAX_TEXT],
        media=media,
        reply=reply_for(number, language, enabled=sms_reply, prefixes=prefixes or []),
        language=language,
        metadata=metadata,
    )


class TranscriptSegment(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    speaker: str = Field(min_length=1, max_length=50, description="caller/resident/customer, or agent")
    text: str = Field(default="", max_length=5000)


class CallTranscript(BaseModel):
    """What a call centre posts after a call. Unknown fields are ignored (vendors add many)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: str = Field(min_length=1, max_length=200)
    caller: str | None = Field(default=None, max_length=40, description="caller's number, E.164")
    agent: str | None = Field(default=None, max_length=200)
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    segments: list[TranscriptSegment] = Field(min_length=1, max_length=5000)
    address: str | None = Field(default=None, max_length=500, description="as the agent noted it")
    language: str | None = Field(default=None, max_length=16)
    service_code: str | None = Field(default=None, max_length=100)


def transcript_contact_id(call_id: str) -> str:
    return make_contact_id(CHANNEL, f"cc-{call_id.strip()}")


def parse_transcript(
    transcript: CallTranscript,
    *,
    received_at: datetime,
    sms_reply: bool = False,
    prefixes: list[str] | None = None,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
) -> RawContact:
    """The caller's own words are the report; the agent's lines are context, not the resident's.

    The contact's language is detected among ``languages`` (settings.languages) from those words.
    """
    said = [s.text.strip() for s in transcript.segments if s.speaker.strip().lower() in CALLER_SPEAKERS]
    text = "\n".join(s for s in said if s)[:MAX_TEXT]
    if not text:
        raise VoiceInvalid("no segment from the caller (speaker: caller, resident or customer)")
    contact_id = transcript_contact_id(transcript.call_id)
    # The call centre's language tag only breaks a tie: the caller's words say more (docs/language.md).
    language = detector(languages).choose(text, hint=transcript.language)
    metadata: dict[str, MetadataValue] = {
        "source": "call-centre",
        "call_id": transcript.call_id,
        "segments": len(transcript.segments),
    }
    if transcript.agent:
        metadata["agent"] = transcript.agent
    if transcript.started_at:
        metadata["started_at"] = transcript.started_at.isoformat()
    if transcript.ended_at:
        metadata["ended_at"] = transcript.ended_at.isoformat()
    if transcript.started_at and transcript.ended_at:
        metadata["duration_s"] = max(0, int((transcript.ended_at - transcript.started_at).total_seconds()))
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=CHANNEL,
        # The call's own time, so a re-sent transcript is byte-for-byte the same contact.
        received_at=transcript.ended_at or transcript.started_at or received_at,
        sender=sender_for(transcript.caller),
        text=text,
        service_code=transcript.service_code,
        location=Location(address=transcript.address.strip()) if transcript.address else None,
        reply=reply_for(transcript.caller, language, enabled=sms_reply, prefixes=prefixes or []),
        language=language,
        metadata=metadata,
    )


def sign_transcript(secret: str, timestamp: str | int, body: bytes) -> str:
    """``X-Intake311-Signature`` for a body sent at ``timestamp``: v1=hex HMAC-SHA256(ts "." body).

    The same scheme as intake311's outgoing department webhooks, so a call centre that already
    verifies those can sign with the same few lines.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def verify_transcript(
    secret: str,
    timestamp: str | None,
    body: bytes,
    header: str | None,
    *,
    max_age_s: float,
    now: float | None = None,
) -> bool:
    """True for a fresh, correctly signed body; several ``v1=`` values allow secret rotation."""
    if not timestamp or not header:
        return False
    stamp = timestamp.strip()
    if not (stamp.isascii() and stamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > max_age_s:
        return False
    expected = sign_transcript(secret, stamp, body).encode()
    valid = False
    for part in header.split(","):
        valid |= hmac.compare_digest(part.strip().encode(), expected)
    return valid


def ack_message(
    contact: RawContact, *, brand: str, emergencies: EmergencyRules | None = None
) -> OutboundMessage | None:
    """The SMS telling a caller their ticket, when the contact says it can be texted.

    When the call described an emergency, "call 911" comes first (``emergencies``: the configured
    rules; None: the packaged ones).
    """
    reply = contact.reply
    if reply is None or reply.channel != SMS_CHANNEL:
        return None
    return OutboundMessage(
        message_id=outbound_message_id(
            SMS_CHANNEL, reply.address, str(MessageKind.ACKNOWLEDGEMENT), contact.request_id
        ),
        request_id=contact.request_id,
        channel=SMS_CHANNEL,
        to=reply.address,
        language=reply.language,
        kind=MessageKind.ACKNOWLEDGEMENT,
        text=with_warning(
            contact.text,
            render("voice.ack", reply.language, brand=brand, ticket=contact.request_id),
            reply.language,
            emergencies,
        ),
    )
