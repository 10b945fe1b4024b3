"""The ``sms`` channel plugin: Twilio Messaging webhooks in, TwiML replies and REST sends out."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from twilio.twiml.messaging_response import MessagingResponse

from channels.conversation import QUESTION, Conversation, ConversationStore, open_store
from channels.plugin import ChannelContext, ChannelHealth, SendError
from channels.sms.config import SmsConfig
from channels.sms.dialogue import BusDown, SmsDialogue
from channels.sms.parse import CHANNEL, SmsInvalid
from channels.sms.phone import is_e164
from channels.sms.rest import UNSUBSCRIBED, make_client, send_error
from channels.sms.twilio import TwilioChannel, forbidden, unavailable, xml_response
from intake311.http import http_errors
from intake311.logging import get_logger
from schemas.contact import mask
from schemas.outbound import MessageKind, OutboundMessage

if TYPE_CHECKING:
    from twilio.rest import Client

log = get_logger("channels.sms")

MAX_BODY = 1600  # Twilio refuses longer message bodies


def twiml(text: str | None) -> Response:
    """A TwiML answer carrying ``text`` (or nothing: Twilio then sends no reply)."""
    reply = MessagingResponse()
    if text:
        reply.message(text)
    return xml_response(str(reply))


class SmsChannel(TwilioChannel):
    """Residents text a city number (or a Messaging Service pool) and get their ticket back."""

    name: ClassVar[str] = CHANNEL
    config_model: ClassVar[type[SmsConfig]] = SmsConfig
    description: ClassVar[str] = "Twilio SMS/MMS: reports, location follow-ups, STOP/HELP, replies"

    config: SmsConfig

    def __init__(self, config: SmsConfig, context: ChannelContext) -> None:  # type: ignore[override]
        super().__init__(config, context)
        self._store: ConversationStore | None = None
        self._store_lock = asyncio.Lock()
        self._client: Client | None = None

    async def store(self) -> ConversationStore:
        """The conversation store, opened on first use.

        Lazily, because a web-only process serves the webhooks without ever calling ``start``.
        """
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    self._store = open_store(
                        self.config.state_url,
                        self.context.data_dir,
                        prefix=self.context.settings.kafka.topic_prefix,
                    )
        return self._store

    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(
                self.context.http, self.config.account_sid, self.config.token(), self.config.api_base_url
            )
        return self._client

    async def start(self) -> None:
        await self.store()
        if self.config.status_callback and not self.public_base_url:
            log.warning("sms status callbacks off: set public_base_url (or web.base_url)")

    async def stop(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    # ---- webhooks -------------------------------------------------------------------------

    def http_routes(self) -> APIRouter:
        router = APIRouter()
        for path, handler, summary in (
            ("/inbound", self.inbound, "Twilio Messaging webhook (A message comes in)"),
            ("/status", self.status, "Twilio message status callback"),
        ):
            # Bodies are capped (413) and unreadable ones refused (400) in every handler.
            router.add_api_route(path, http_errors(handler), methods=["POST"], summary=summary)
        return router

    def addressed_to_us(self, params: dict[str, str]) -> bool:
        """A pooled number is ours through the Messaging Service; a single one by its number."""
        service = self.config.messaging_service_sid
        if service and params.get("MessagingServiceSid") == service:
            return True
        return params.get("To", "") in self.config.phone_numbers

    async def inbound(self, request: Request) -> Response:
        """A resident's text: publish it, then answer with TwiML carrying the ticket."""
        params = await self._verified(request, "inbound")
        if params is None:
            return forbidden()
        if not self.addressed_to_us(params):
            self.counters["rejected_number"] += 1
            log.warning(
                "sms to a number this channel does not serve",
                to=mask(params.get("To")),
                messaging_service_sid=params.get("MessagingServiceSid"),
            )
            return PlainTextResponse("number not configured for this channel", status_code=403)
        dialogue = SmsDialogue(
            self.config,
            await self.store(),
            self.context.publisher,
            self.emergencies,
            languages=self.context.settings.languages,
        )
        try:
            outcome = await dialogue.handle(params, datetime.now(UTC))
        except SmsInvalid as exc:
            return PlainTextResponse(str(exc), status_code=400)
        except BusDown:
            self.counters["publish_failed"] += 1
            # Twilio retries (or uses the fallback URL); no ticket was promised.
            return unavailable()
        self.counters[outcome.kind] += 1
        return twiml(outcome.reply)

    async def status(self, request: Request) -> Response:
        """Delivery status of a message we sent (queued, sent, delivered, failed, undelivered)."""
        params = await self._verified(request, "status")
        if params is None:
            return forbidden()
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
        if not sid or not status:
            return PlainTextResponse("MessageSid and MessageStatus are required", status_code=400)
        error = params.get("ErrorCode") or None
        store = await self.store()
        record = await store.record_delivery(sid, status, error)
        if error == str(UNSUBSCRIBED) and params.get("To"):
            await store.set_opted_out(CHANNEL, params["To"], True)
        if status in ("failed", "undelivered"):
            self.counters["delivery_failed"] += 1
            log.warning(
                "sms not delivered",
                message_sid=sid,
                status=status,
                error_code=error,
                to=mask(params.get("To")),
                request_id=record.request_id,
            )
        return Response(status_code=204)

    # ---- outbound -------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> None:
        """Text a resident through the Twilio REST API; opted-out numbers are skipped, not failed."""
        store = await self.store()
        to = message.to.strip()
        bound = log.bind(request_id=message.request_id, message_id=message.message_id, to=mask(to))
        if await store.is_opted_out(CHANNEL, to):
            self.counters["skipped_opted_out"] += 1
            bound.info("sms not sent: number opted out", kind=str(message.kind))
            return
        if not is_e164(to):
            raise SendError("recipient is not an E.164 phone number", retryable=False)
        if message.kind is MessageKind.QUESTION and message.request_id:
            await self._await_answer(store, to, message)
        params: dict[str, str] = {"to": to, "body": message.text[:MAX_BODY]}
        if self.config.messaging_service_sid:
            params["messaging_service_sid"] = self.config.messaging_service_sid
        else:
            params["from_"] = self.config.phone_numbers[0]
        callback = self.signature.callback_url(f"/channels/{CHANNEL}/status")
        if self.config.status_callback and callback:
            params["status_callback"] = callback
        try:
            sent = await self.client().messages.create_async(**params)
        except Exception as exc:
            error = send_error(exc)
            if getattr(exc, "code", None) == UNSUBSCRIBED:
                await store.set_opted_out(CHANNEL, to, True)
                bound.info("number unsubscribed at twilio: recorded as opted out")
            self.counters["send_failed"] += 1
            raise error from exc
        self.counters["sent"] += 1
        status = (sent.status or "queued").lower()
        await store.record_delivery(sent.sid or "", status, None, message.request_id)
        bound.info("sms sent", message_sid=sent.sid, kind=str(message.kind))

    async def _await_answer(self, store: ConversationStore, to: str, message: OutboundMessage) -> None:
        """Make the resident's next text the answer to this question, on its ticket.

        Recorded before the send: if the store is down nothing is sent (the outbound loop
        retries), rather than a question whose answer would open a new ticket. The window
        starts now, so an answer joins however long the question took to go out, and a
        number with no conversation (a caller, a web report with a phone number) gets one.
        A question queued again (a replayed contact) is dropped on its id by the outbound loop
        before it gets here, so an answer already given is not awaited a second time.
        """
        assert message.request_id is not None
        now = time.time()
        candidate = Conversation(
            request_id=message.request_id,
            opened_by=f"outbound:{message.message_id}",  # no text of theirs opened it
            language=message.language,
            awaiting=QUESTION,
            opened_at=now,
            updated_at=now,
        )
        await store.ask(CHANNEL, to, candidate, self.config.window_s)

    async def health(self) -> ChannelHealth:
        """Store reachable? Plus the counters (rejected signatures, sends, opt-out skips…)."""
        ok = True
        # A check on an unstarted plugin (``intake311 channels``) must not leave a store open.
        temporary = self._store is None
        store = self._store or open_store(
            self.config.state_url, self.context.data_dir, prefix=self.context.settings.kafka.topic_prefix
        )
        kind = store.kind
        try:
            await store.ping()
        except Exception as exc:
            ok = False
            kind = f"{kind} unreachable ({type(exc).__name__})"
        finally:
            if temporary:
                await store.close()
        return ChannelHealth(ok, f"store={kind} {self.counter_summary()}".strip())
