"""Pure parsing: submitted form fields in, a validated ``RawContact`` (or the reasons why not) out.

No I/O here, so every rule about what the web channel accepts is testable without an app.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from schemas.attributes import AnswersInvalid, form_answers, validate_answers
from schemas.contact import Location, Media, MetadataValue, RawContact, ReplyVia, Sender, SenderKind
from schemas.ids import ticket_for
from schemas.language import DEFAULT_LANGUAGES, detector
from schemas.messages import render
from schemas.taxonomy import Taxonomy

WEB_CHANNEL = "web"
OPEN311_CHANNEL = "open311"

# Open311 caps description at 4,000 characters; the rest keep Kafka records and pages sane.
OPEN311_LIMITS = {
    "api_key": 200,
    "jurisdiction_id": 200,
    "service_code": 100,
    "lat": 40,
    "long": 40,
    "address_string": 500,
    "address_id": 200,
    "email": 320,
    "device_id": 200,
    "account_id": 200,
    "first_name": 100,
    "last_name": 100,
    "phone": 40,
    "description": 4000,
    "media_url": 2048,
}
FORM_LIMITS = {"description": 4000, "address": 500, "photo_url": 2048, "contact": 320, "service_code": 100}

_EMAIL_RE = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")
_PHONE_CHARS_RE = re.compile(r"^\+?[0-9().\-\s]+$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FORM_ID_RE = re.compile(r"^[A-Za-z0-9-]{8,64}$")


class Form(dict[str, str]):
    """A submitted form's text fields (a repeated name keeps its last value, as before) and every
    (name, value) pair as sent: a multivaluelist answer repeats ``attribute[code][]``."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs = tuple(pairs)
        super().__init__(self.pairs)


class Open311Invalid(ValueError):
    """A POST the spec says to refuse: ``status`` (400/404) and one description per problem."""

    def __init__(self, status: int, *descriptions: str) -> None:
        super().__init__("; ".join(descriptions))
        self.status = status
        self.descriptions = descriptions


class FormInvalid(ValueError):
    """The resident's form has problems: field name -> message, in page order."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _clean(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def clean_email(value: str) -> str | None:
    """The email as typed if it looks deliverable, else None."""
    return value if _EMAIL_RE.match(value) else None


def clean_phone(value: str) -> str | None:
    """Digits (with a leading + kept) if it looks like a phone number, else None."""
    if not _PHONE_CHARS_RE.match(value):
        return None
    digits = re.sub(r"\D", "", value)
    if not 7 <= len(digits) <= 15:
        return None
    return ("+" if value.startswith("+") else "") + digits


def clean_url(value: str) -> str | None:
    """Only absolute http(s) links: anything else could be script when a clerk clicks it."""
    if any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return value


def _number(value: str, low: float, high: float) -> float | None:
    if not _NUMBER_RE.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) and low <= number <= high else None


def _contact_parts(
    email: str | None, phone: str | None, name: str | None, language: str = "en"
) -> tuple[Sender, ReplyVia | None]:
    if email:
        return Sender(kind=SenderKind.EMAIL, address=email, name=name), ReplyVia(
            channel="email", address=email, language=language
        )
    if phone:
        return Sender(kind=SenderKind.PHONE, address=phone, name=name), ReplyVia(
            channel="sms", address=phone, language=language
        )
    return Sender(kind=SenderKind.WEB if name else SenderKind.ANONYMOUS, name=name), None


def parse_open311_request(
    form: Mapping[str, str],
    taxonomy: Taxonomy,
    *,
    contact_id: str,
    received_at: datetime,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
) -> RawContact:
    """An Open311 GeoReport v2 ``POST requests`` body as a contact on the "open311" channel.

    The caller has already checked ``api_key`` and ``jurisdiction_id``. Raises ``Open311Invalid``:
    400 for a missing service_code, 404 for an unknown one, then 400 listing every other problem.
    The language is detected among ``languages`` from the description; a ``lang`` or ``locale``
    field (GeoReport v2 clients send one or the other) only breaks a tie.
    """
    code = _clean(form, "service_code")
    if not code:
        raise Open311Invalid(400, "service_code is required")
    service = taxonomy.get(code) if len(code) <= OPEN311_LIMITS["service_code"] else None
    if service is None:
        raise Open311Invalid(404, f"unknown service_code {code[:100]!r}")

    values = {name: _clean(form, name) for name in OPEN311_LIMITS}
    problems = [
        f"{name} is longer than {limit} characters"
        for name, limit in OPEN311_LIMITS.items()
        if len(values[name]) > limit
    ]
    if problems:
        raise Open311Invalid(400, *problems)

    lat = long = None
    if values["lat"] or values["long"]:
        if not (values["lat"] and values["long"]):
            problems.append("lat and long must be given together")
        else:
            lat = _number(values["lat"], -90, 90)
            long = _number(values["long"], -180, 180)
            if lat is None:
                problems.append("lat must be a decimal degree between -90 and 90")
            if long is None:
                problems.append("long must be a decimal degree between -180 and 180")
    elif not (values["address_string"] or values["address_id"]):
        problems.append("a location is required: lat and long, address_string, or address_id")

    # The service's questions (schemas/attributes.py): every wrong answer listed, a required one
    # left open refused, as the spec's 400.
    pairs = form.pairs if isinstance(form, Form) else tuple(form.items())
    try:
        answers = validate_answers(service.attributes, form_answers(pairs))
    except AnswersInvalid as exc:
        problems.extend(exc.descriptions)
        answers = {}

    email = phone = media_url = None
    if values["email"] and (email := clean_email(values["email"])) is None:
        problems.append("email is not a valid email address")
    if values["phone"] and (phone := clean_phone(values["phone"])) is None:
        problems.append("phone is not a valid phone number")
    if values["media_url"] and (media_url := clean_url(values["media_url"])) is None:
        problems.append("media_url must be an absolute http or https URL")
    if problems:
        raise Open311Invalid(400, *problems)

    name = " ".join(p for p in (values["first_name"], values["last_name"]) if p) or None
    hint = (_clean(form, "lang") or _clean(form, "locale"))[:35] or None
    language = detector(languages).choose(values["description"], hint=hint)
    sender, reply = _contact_parts(email, phone, name, language)
    metadata: dict[str, MetadataValue] = {
        key: values[key]
        for key in ("address_id", "device_id", "account_id", "jurisdiction_id")
        if values[key]
    }
    if email and phone:
        metadata["phone"] = phone  # the sender holds one address; keep the other for the clerk
    location = Location(lat=lat, long=long, address=values["address_string"] or None)
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=OPEN311_CHANNEL,
        received_at=received_at,
        sender=sender,
        text=values["description"],
        service_code=service.code,
        media=(Media(url=media_url),) if media_url else (),
        location=None if location.is_empty else location,
        reply=reply,
        language=language,
        metadata=metadata,
        attributes=answers,
    )


@dataclass(frozen=True)
class FormFields:
    """What the resident typed, trimmed: re-rendered as-is when the form has errors."""

    description: str = ""
    address: str = ""
    photo_url: str = ""
    contact: str = ""
    service_code: str = ""
    form_id: str = ""

    @classmethod
    def of(cls, form: Mapping[str, str]) -> FormFields:
        return cls(**{name: _clean(form, name) for name in cls.__dataclass_fields__})


def web_form_key(fields: FormFields) -> str | None:
    """A provider id for a form submission: the same page sent twice gives the same id.

    The page carries a random ``form_id``; hashing it with the content means a double click or a
    refresh dedupes, while a resident who goes back and reports something else gets a new ticket.
    """
    if not _FORM_ID_RE.match(fields.form_id):
        return None
    parts = (
        fields.form_id,
        fields.description,
        fields.address,
        fields.photo_url,
        fields.contact,
        fields.service_code,
    )
    return "f" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def parse_web_form(
    fields: FormFields,
    taxonomy: Taxonomy,
    *,
    contact_id: str,
    received_at: datetime,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    hint: str | None = None,
) -> RawContact:
    """The resident form as a contact on the "web" channel; raises ``FormInvalid`` with messages.

    The language is detected among ``languages`` from the description; ``hint`` (the browser's
    choice, ``preferred_language(Accept-Language, languages)``) decides when the text does not.
    """
    errors: dict[str, str] = {}

    def say(key: str, **values: object) -> str:
        # Problems are told in the page's language (the browser's choice), like the form itself.
        return render(f"web.errors.{key}", hint, **values)

    if not fields.description:
        errors["description"] = say("description_missing")
    elif len(fields.description) > FORM_LIMITS["description"]:
        errors["description"] = say("description_long", limit=FORM_LIMITS["description"])
    if not fields.address:
        errors["address"] = say("address_missing")
    elif len(fields.address) > FORM_LIMITS["address"]:
        errors["address"] = say("address_long", limit=FORM_LIMITS["address"])
    media_url = None
    if fields.photo_url and (
        len(fields.photo_url) > FORM_LIMITS["photo_url"] or (media_url := clean_url(fields.photo_url)) is None
    ):
        errors["photo_url"] = say("photo_url")
    email = phone = None
    if fields.contact:
        if "@" in fields.contact:
            email = clean_email(fields.contact) if len(fields.contact) <= FORM_LIMITS["contact"] else None
        else:
            phone = clean_phone(fields.contact)
        if email is None and phone is None:
            errors["contact"] = say("contact")
    service_code = None
    if fields.service_code:
        service = taxonomy.get(fields.service_code)
        if service is None:
            errors["service_code"] = say("service_code")
        else:
            service_code = service.code
    if errors:
        raise FormInvalid(errors)

    language = detector(languages).choose(fields.description, hint=hint)
    sender, reply = _contact_parts(email, phone, None, language)
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=WEB_CHANNEL,
        received_at=received_at,
        sender=sender,
        text=fields.description,
        service_code=service_code,
        media=(Media(url=media_url),) if media_url else (),
        location=Location(address=fields.address),
        reply=reply,
        language=language,
    )
