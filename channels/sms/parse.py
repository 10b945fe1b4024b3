"""Pure parsing of Twilio Messaging webhooks: form fields in, a ``RawContact`` (or a keyword) out.

No I/O, so the rules (ids, media, keywords, what counts as the location answer) are testable
without an app, a store or a broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from channels.conversation import LOCATION
from channels.sms.location import find_location
from schemas.contact import ANSWERS, Location, Media, MetadataValue, RawContact, ReplyVia, Sender, SenderKind
from schemas.ids import make_contact_id, ticket_for
from schemas.language import DEFAULT_LANGUAGES, detector

CHANNEL = "sms"
MAX_MEDIA = 10  # Twilio's own limit per message
MAX_TEXT = 20_000
# Provider fields worth keeping; the phone's registration place is not where the problem is.
_METADATA_FIELDS = {
    "To": "to",
    "MessagingServiceSid": "messaging_service_sid",
    "NumSegments": "num_segments",
    "FromCity": "from_city",
    "FromState": "from_state",
    "FromZip": "from_zip",
    "FromCountry": "from_country",
}


class SmsInvalid(ValueError):
    """A webhook without the fields every inbound message has (From, MessageSid)."""


class Keyword(StrEnum):
    """Carrier keywords (CTIA) plus our own NEW, recognised only as the whole message."""

    STOP = "stop"
    START = "start"
    HELP = "help"
    NEW = "new"


_KEYWORDS: dict[str, tuple[Keyword, str | None]] = {
    **{
        w: (Keyword.STOP, None)
        for w in (
            "STOP",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "REVOKE",
            "OPTOUT",
            "PARAR",
            "ALTO",
        )
    },
    **{w: (Keyword.START, None) for w in ("START", "UNSTOP")},
    "HELP": (Keyword.HELP, "en"),
    "INFO": (Keyword.HELP, "en"),
    "AYUDA": (Keyword.HELP, "es"),
    "NEW": (Keyword.NEW, "en"),
    "NUEVO": (Keyword.NEW, "es"),
}


def keyword(body: str) -> tuple[Keyword, str | None] | None:
    """The keyword a message is (and the language it implies), or None for an ordinary message."""
    word = "".join(ch for ch in (body or "").strip().upper() if ch.isalnum())
    return _KEYWORDS.get(word)


def message_sid(form: Mapping[str, str]) -> str:
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    if not sid:
        raise SmsInvalid("MessageSid is missing")
    return sid


def sender_number(form: Mapping[str, str]) -> str:
    number = (form.get("From") or "").strip()
    if not number:
        raise SmsInvalid("From is missing")
    return number


def sms_contact_id(form: Mapping[str, str]) -> str:
    """One contact per Twilio message: a retried webhook (same MessageSid) is the same contact."""
    return make_contact_id(CHANNEL, message_sid(form))


def media_of(form: Mapping[str, str]) -> tuple[Media, ...]:
    """``MediaUrlN``/``MediaContentTypeN`` pairs (N < NumMedia), photos of the problem usually."""
    try:
        count = min(int(form.get("NumMedia") or 0), MAX_MEDIA)
    except ValueError:
        count = 0
    out = []
    for n in range(count):
        url = (form.get(f"MediaUrl{n}") or "").strip()
        if url.startswith(("https://", "http://")) and len(url) <= 2048:
            out.append(Media(url=url, content_type=form.get(f"MediaContentType{n}") or None))
    return tuple(out)


def parse_sms(
    form: Mapping[str, str],
    *,
    received_at: datetime,
    request_id: str | None = None,
    language: str | None = None,
    answers: str | None = None,
    default_language: str = "en",
    languages: Sequence[str] = DEFAULT_LANGUAGES,
) -> RawContact:
    """The ``RawContact`` for one inbound text.

    ``request_id`` is the ticket of an open conversation this text continues (None: it opens
    its own ticket). ``answers`` is what the text replies to (``Conversation.awaiting``):
    ``"location"``, our "where is it?", makes the text the location; ``"question"``, a service's
    question we texted, is kept as ``metadata["answers"]`` (the normalizer reads any follow-up
    as the answer to the question its request still has open, names of values included).
    ``language`` is the conversation's (None: detect it from the text among ``languages``,
    ``default_language`` when the text does not say).
    """
    number = sender_number(form)
    contact_id = sms_contact_id(form)
    own_ticket = ticket_for(contact_id)
    ticket = request_id or own_ticket
    text = (form.get("Body") or "").strip()[:MAX_TEXT]
    lang = language or detector(languages).choose(text, fallback=default_language)
    location = None
    if answers == LOCATION and text:
        # We asked where: the whole answer is the place, unless it is long and holds an address.
        where = text if len(text) <= 200 else (find_location(text) or text)
        location = Location(address=where[:500])
    metadata: dict[str, MetadataValue] = {"message_sid": message_sid(form)}
    for field, key in _METADATA_FIELDS.items():
        if form.get(field):
            metadata[key] = form[field]
    if answers:
        metadata[ANSWERS] = answers
    return RawContact(
        contact_id=contact_id,
        request_id=ticket,
        channel=CHANNEL,
        received_at=received_at,
        sender=Sender(kind=SenderKind.PHONE, address=number[:320]),
        text=text,
        media=media_of(form),
        location=location,
        reply=ReplyVia(channel=CHANNEL, address=number[:320], thread=message_sid(form), language=lang),
        language=lang,
        continues=ticket != own_ticket,
        metadata=metadata,
    )
