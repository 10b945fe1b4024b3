"""One inbound text -> what to publish and what to answer, using the shared conversation state.

The rules, in order: carrier keywords are handled and never become reports; a text from a
number with a live conversation continues that conversation's ticket (and is the answer to what
we asked last: where it is, or a service's question texted by ``SmsChannel.send``); any other
text opens a ticket, and we ask where if it does not say. The contact is always on the bus
before the answer, and a refused publish leaves the conversation as it was, so Twilio's retry of
the same MessageSid gets the same ticket.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from channels.base import ContactPublisher
from channels.conversation import LOCATION, QUESTION, Conversation, ConversationStore
from channels.sms.config import SmsConfig
from channels.sms.location import has_location
from channels.sms.parse import CHANNEL, Keyword, keyword, media_of, parse_sms, sender_number, sms_contact_id
from intake311.logging import get_logger
from schemas.contact import RawContact, mask
from schemas.emergency import EmergencyRules, with_warning
from schemas.ids import ticket_for
from schemas.language import DEFAULT_LANGUAGES, detector
from schemas.messages import render

log = get_logger("channels.sms")


class BusDown(Exception):
    """The broker did not take the contact: answer so Twilio retries, promise nothing."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # opened | continued | stop | start | help | new | empty
    reply: str | None  # None: an empty TwiML response (nothing is texted back)
    contact: RawContact | None = None


class SmsDialogue:
    """The SMS conversation rules over a ``ConversationStore`` and a ``ContactPublisher``."""

    def __init__(
        self,
        config: SmsConfig,
        store: ConversationStore,
        publisher: ContactPublisher,
        emergencies: EmergencyRules | None = None,
        *,
        languages: Sequence[str] = DEFAULT_LANGUAGES,
    ) -> None:
        self.config = config
        self.store = store
        self.publisher = publisher
        self.emergencies = emergencies  # None: the packaged rules
        self.detector = detector(languages)  # settings.languages

    def _text(self, key: str, language: str, **values: str) -> str:
        return render(f"sms.{key}", language, brand=self.config.brand, phone=self.config.help_phone, **values)

    def _warn_if_emergency(self, text: str, reply: str, language: str) -> str:
        """Emergency language gets "call 911" first, before anything else in the reply: the request
        is still created (and copied to the emergency department), but a text is no way to get help."""
        return with_warning(text, reply, language, self.emergencies)

    async def handle(self, form: Mapping[str, str], received_at: datetime) -> Outcome:
        number = sender_number(form)
        body = form.get("Body") or ""
        found = keyword(body)
        if found is not None:
            return await self._keyword(number, *found)
        if not body.strip() and not media_of(form):
            return Outcome("empty", self._text("empty", self.config.default_language))
        opted_out = await self.store.is_opted_out(CHANNEL, number)
        outcome = await self._report(form, number, body, received_at)
        if opted_out:
            # Accepted, but a resident who said STOP gets no text from us until START.
            log.info(
                "reply withheld: number opted out",
                sender=mask(number),
                request_id=outcome.contact and outcome.contact.request_id,
            )
            return Outcome(outcome.kind, None, outcome.contact)
        return outcome

    async def _keyword(self, number: str, word: Keyword, language: str | None) -> Outcome:
        lang = language or self.config.default_language
        if word is Keyword.STOP:
            await self.store.set_opted_out(CHANNEL, number, True)
            await self.store.end(CHANNEL, number)
            log.info("number opted out", sender=mask(number))
            return Outcome("stop", None)  # Twilio (or the carrier) confirms STOP itself
        if word is Keyword.START:
            await self.store.set_opted_out(CHANNEL, number, False)
            log.info("number opted in", sender=mask(number))
            return Outcome("start", self._text("opt_in", lang))
        if await self.store.is_opted_out(CHANNEL, number):
            return Outcome(str(word), None)
        if word is Keyword.NEW:
            await self.store.end(CHANNEL, number)
            return Outcome("new", self._text("new", lang))
        return Outcome("help", self._text("help", lang))

    async def _report(
        self, form: Mapping[str, str], number: str, body: str, received_at: datetime
    ) -> Outcome:
        contact_id = sms_contact_id(form)
        now = time.time()
        asking = self.config.ask_for_location and not has_location(body)
        candidate = Conversation(
            request_id=ticket_for(contact_id),
            opened_by=contact_id,
            language=self.detector.choose(body, fallback=self.config.default_language),
            awaiting=LOCATION if asking else None,
            opened_at=now,
            updated_at=now,
        )
        conversation = await self.store.claim(CHANNEL, number, candidate, self.config.window_s)
        if conversation.opened_by == contact_id:
            return await self._open(form, number, conversation, received_at)
        return await self._continue(form, number, body, conversation, received_at)

    async def _open(
        self, form: Mapping[str, str], number: str, conversation: Conversation, received_at: datetime
    ) -> Outcome:
        contact = parse_sms(form, received_at=received_at, language=conversation.language)
        await self._publish(contact, release=(number, conversation.opened_by))
        key = "received_ask" if conversation.awaiting == LOCATION else "received"
        reply = self._text(key, conversation.language, ticket=contact.request_id)
        return Outcome("opened", self._warn_if_emergency(contact.text, reply, conversation.language), contact)

    async def _continue(
        self,
        form: Mapping[str, str],
        number: str,
        body: str,
        conversation: Conversation,
        received_at: datetime,
    ) -> Outcome:
        # The conversation's language sticks: an answer like "Oak St & 5th" says nothing about it.
        language = conversation.language
        detected = self.detector.detect(body)
        if detected is not None and detected != language and len(body.split()) >= 6:
            language = detected
        answers = conversation.awaiting
        contact = parse_sms(
            form,
            received_at=received_at,
            request_id=conversation.request_id,
            language=language,
            answers=answers,
        )
        await self._publish(contact, release=None)
        await self.store.put(
            CHANNEL,
            number,
            conversation.touched(awaiting=None, language=language, messages=conversation.messages + 1),
            self.config.window_s,
        )
        reply = self._added(answers, language, contact.request_id)
        return Outcome("continued", self._warn_if_emergency(body, reply, language), contact)

    def _added(self, answers: str | None, language: str, ticket: str) -> str:
        """The reply to a follow-up: what it added to the ticket (the location, an answer to a
        service's question, or a message)."""
        key = {LOCATION: "location_added", QUESTION: "answer_added"}.get(answers or "", "added")
        return self._text(key, language, ticket=ticket)

    async def _publish(self, contact: RawContact, *, release: tuple[str, str] | None) -> None:
        bound = log.bind(contact_id=contact.contact_id, request_id=contact.request_id, channel=CHANNEL)
        try:
            await self.publisher.publish(contact)
        except Exception as exc:  # PublishError or anything else: the broker did not take it
            bound.warning("publish failed; text refused", error=type(exc).__name__, detail=str(exc)[:300])
            if release is not None:
                # Nobody was told this ticket: the next text (or the retry) may open it afresh.
                try:
                    await self.store.release(CHANNEL, *release)
                except Exception:
                    bound.warning("conversation not released after refused publish", exc_info=True)
            raise BusDown(str(exc)) from exc
        bound.info(
            "text accepted",
            sender=contact.sender.masked(),
            continues=contact.continues,
            language=contact.language,
            media=len(contact.media),
        )
