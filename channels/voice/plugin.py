"""The ``voice`` channel plugin: residents call 311 (Twilio Voice) or talk to the call centre."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from channels.plugin import ChannelHealth
from channels.sms.twilio import TwilioChannel, forbidden, unavailable, xml_response
from channels.voice import twiml
from channels.voice.config import VoiceConfig
from channels.voice.parse import (
    CHANNEL,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SMS_CHANNEL,
    CallTranscript,
    VoiceInvalid,
    ack_message,
    language_of,
    parse_speech,
    parse_transcript,
    parse_transcription,
    verify_transcript,
)
from intake311.http import http_errors, read_body
from intake311.logging import get_logger
from schemas.contact import RawContact
from schemas.emergency import warning

log = get_logger("channels.voice")

MAX_TRANSCRIPT_BYTES = 1024 * 1024  # an hour-long call transcript is a few hundred kilobytes


class VoiceChannel(TwilioChannel):
    """Calls answered with TwiML, reports from transcripts, the ticket texted back."""

    name: ClassVar[str] = CHANNEL
    config_model: ClassVar[type[VoiceConfig]] = VoiceConfig
    description: ClassVar[str] = "Twilio Voice (record or speech) and signed call-centre transcripts"

    config: VoiceConfig

    async def start(self) -> None:
        if self.config.sms_acknowledgement and SMS_CHANNEL not in self.context.settings.channels:
            log.warning("voice sms_acknowledgement is on but the sms channel is not configured")

    def http_routes(self) -> APIRouter:
        router = APIRouter()
        for path, handler, summary in (
            ("/incoming", self.incoming, "Twilio Voice webhook (A call comes in)"),
            ("/language", self.language, "language menu answer"),
            ("/recorded", self.recorded, "<Record> action"),
            ("/speech", self.speech, "<Gather input=speech> action"),
            ("/transcription", self.transcription, "<Record> transcribeCallback"),
            ("/transcripts", self.transcripts, "call-centre transcript (signed JSON)"),
        ):
            # Bodies are capped (413) and unreadable ones refused (400) in every handler.
            router.add_api_route(path, http_errors(handler), methods=["POST"], summary=summary)
        return router

    @property
    def will_text(self) -> bool:
        return self.config.sms_acknowledgement

    def _urls(self, request: Request) -> twiml.Urls:
        base = self.signature.callback_url(f"/channels/{CHANNEL}", request)
        assert base is not None
        return twiml.urls_under(base)

    # ---- Twilio call flow -----------------------------------------------------------------

    async def incoming(self, request: Request) -> Response:
        if await self._verified(request, "incoming") is None:
            return forbidden()
        self.counters["calls"] += 1
        return xml_response(twiml.incoming(self.config, self._urls(request)))

    async def language(self, request: Request) -> Response:
        params = await self._verified(request, "language")
        if params is None:
            return forbidden()
        language = "es" if (params.get("Digits") or "").strip() == "2" else "en"
        return xml_response(twiml.capture(self.config, self._urls(request), language))

    async def recorded(self, request: Request) -> Response:
        if await self._verified(request, "recorded") is None:
            return forbidden()
        return xml_response(
            twiml.recorded(language_of(request.query_params.get("lang")), will_text=self.will_text)
        )

    async def speech(self, request: Request) -> Response:
        """A live speech result: publish, then tell the caller the ticket while they are on the line."""
        params = await self._verified(request, "speech")
        if params is None:
            return forbidden()
        language = language_of(request.query_params.get("lang"))
        if not (params.get("SpeechResult") or "").strip():
            attempt_raw = request.query_params.get("attempt", "1")
            attempt = int(attempt_raw) if attempt_raw.isdigit() else 2
            if attempt < 2:
                urls = self._urls(request)
                return xml_response(twiml.capture(self.config, urls, language, attempt + 1, mode="gather"))
            return xml_response(twiml.apology(language, "voice.not_heard"))
        try:
            contact = parse_speech(
                params,
                received_at=datetime.now(UTC),
                language=language,
                sms_reply=self.will_text,
                prefixes=self.config.sms_ack_prefixes,
            )
        except VoiceInvalid as exc:
            return PlainTextResponse(str(exc), status_code=400)
        if not await self._accept(contact):
            # The caller is on the line: an apology, not Twilio's "application error".
            return xml_response(twiml.apology(language))
        will_text = await self._acknowledge(contact)
        said = warning(contact.text, language, self.emergencies, key="voice.call_911")
        return xml_response(twiml.ticket(language, contact.request_id, will_text=will_text, warning=said))

    async def transcription(self, request: Request) -> Response:
        """Twilio's transcript of a recording (completed or failed): the call's one contact."""
        params = await self._verified(request, "transcription")
        if params is None:
            return forbidden()
        try:
            contact = parse_transcription(
                params,
                received_at=datetime.now(UTC),
                language=language_of(request.query_params.get("lang")),
                sms_reply=self.will_text,
                prefixes=self.config.sms_ack_prefixes,
            )
        except VoiceInvalid as exc:
            return PlainTextResponse(str(exc), status_code=400)
        if not await self._accept(contact):
            return unavailable()
        await self._acknowledge(contact)
        return Response(status_code=204)

    # ---- call-centre transcripts ----------------------------------------------------------

    async def transcripts(self, request: Request) -> Response:
        """A call centre's transcript of a finished call, signed with the shared secret."""
        secret = self.config.transcripts_key()
        if secret is None:
            return PlainTextResponse("transcript intake is not configured", status_code=404)
        body = await read_body(request, MAX_TRANSCRIPT_BYTES)  # BodyTooLarge: 413 (http_errors)
        ok = verify_transcript(
            secret,
            request.headers.get(HEADER_TIMESTAMP),
            body,
            request.headers.get(HEADER_SIGNATURE),
            max_age_s=self.config.transcripts_max_age_seconds,
        )
        if not ok:
            self.counters["rejected_signature"] += 1
            log.warning(
                "call-centre transcript refused: bad, missing or stale signature",
                channel=CHANNEL,
                signed=bool(request.headers.get(HEADER_SIGNATURE)),
            )
            return forbidden()
        try:
            transcript = CallTranscript.model_validate_json(body)
            contact = parse_transcript(
                transcript,
                received_at=datetime.now(UTC),
                sms_reply=self.will_text,
                prefixes=self.config.sms_ack_prefixes,
                languages=self.context.settings.languages,
            )
        except ValidationError as exc:
            errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
            return JSONResponse({"errors": errors}, status_code=422)
        except VoiceInvalid as exc:
            return JSONResponse({"errors": [{"loc": ["segments"], "msg": str(exc)}]}, status_code=422)
        if not await self._accept(contact):
            return JSONResponse(
                {"error": "temporarily unavailable"}, status_code=503, headers={"Retry-After": "5"}
            )
        await self._acknowledge(contact)
        answer = {"request_id": contact.request_id, "contact_id": contact.contact_id}
        # For the agent's screen; the caller's ticket SMS leads with the same line.
        if (notice := warning(contact.text, contact.language, self.emergencies)) is not None:
            answer["service_notice"] = notice
        return JSONResponse(answer, status_code=202)

    # ---- shared -------------------------------------------------------------------------------

    async def _accept(self, contact: RawContact) -> bool:
        bound = log.bind(contact_id=contact.contact_id, request_id=contact.request_id, channel=CHANNEL)
        try:
            await self.context.publisher.publish(contact)
        except Exception as exc:  # PublishError or anything else: nothing was accepted
            self.counters["publish_failed"] += 1
            bound.warning(
                "publish failed; call report refused", error=type(exc).__name__, detail=str(exc)[:300]
            )
            return False
        self.counters["published"] += 1
        bound.info(
            "call report accepted",
            sender=contact.sender.masked(),
            source=contact.metadata.get("source"),
            empty=not contact.text,
        )
        return True

    async def _acknowledge(self, contact: RawContact) -> bool:
        """Queue the ticket SMS; a queueing failure is logged, the report is already accepted."""
        if not self.will_text:
            return False
        message = ack_message(contact, brand=self.config.brand, emergencies=self.emergencies)
        if message is None:
            return False
        try:
            await self.context.outbox.send(message)
        except Exception as exc:
            self.counters["ack_failed"] += 1
            log.warning("ticket sms not queued", request_id=contact.request_id, error=type(exc).__name__)
            return False
        self.counters["ack_queued"] += 1
        return True

    async def health(self) -> ChannelHealth:
        return ChannelHealth(True, f"mode={self.config.mode} {self.counter_summary()}".strip())
