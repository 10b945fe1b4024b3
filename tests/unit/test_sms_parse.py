"""Pure SMS rules: parsing, keywords, language choice, "does it say where?"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channels.sms import Keyword, find_location, has_location, keyword, parse_sms
from channels.sms.parse import SmsInvalid
from channels.sms.phone import can_text
from channels.voice.twiml import spoken_ticket
from schemas import SenderKind, make_contact_id, ticket_for
from schemas.language import detector
from schemas.messages import render

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
SID = "SM" + "1" * 32


def form(body: str, **extra: str) -> dict[str, str]:
    return {"MessageSid": SID, "From": "+12035551234", "To": "+12035550100", "Body": body, **extra}


def test_parse_sms_derives_ids_from_the_message_sid() -> None:
    contact = parse_sms(form("  Pothole at 12 Elm Street  "), received_at=NOW)
    assert contact.contact_id == make_contact_id("sms", SID)
    assert contact.request_id == ticket_for(contact.contact_id)
    assert contact.text == "Pothole at 12 Elm Street"
    assert contact.sender.kind == SenderKind.PHONE
    assert contact.location is None  # the normalizer finds the address in the text
    assert not contact.continues


def test_a_follow_up_carries_the_open_ticket_and_the_answer_is_the_location() -> None:
    contact = parse_sms(
        form("corner of Oak and Elm"), received_at=NOW, request_id="K7M4-QPXA", answers="location"
    )
    assert contact.request_id == "K7M4-QPXA" and contact.continues
    assert contact.location is not None and contact.location.address == "corner of Oak and Elm"
    long_answer = "It is hard to describe, " * 10 + "but it is at 400 Temple Street near the green."
    parsed = parse_sms(form(long_answer), received_at=NOW, request_id="K7M4-QPXA", answers="location")
    assert parsed.location is not None and parsed.location.address == "400 Temple Street"


def test_missing_identity_fields_are_refused() -> None:
    with pytest.raises(SmsInvalid):
        parse_sms({"From": "+12035551234", "Body": "x"}, received_at=NOW)
    with pytest.raises(SmsInvalid):
        parse_sms({"MessageSid": SID, "Body": "x"}, received_at=NOW)


def test_media_is_bounded_and_only_http() -> None:
    fields = {"NumMedia": "12"}
    for n in range(12):
        fields[f"MediaUrl{n}"] = f"https://api.twilio.com/media/{n}"
    fields["MediaUrl1"] = "javascript:alert(1)"
    contact = parse_sms(form("photo", **fields), received_at=NOW)
    assert len(contact.media) == 9  # ten at most, minus the bad one
    assert parse_sms(form("x", NumMedia="lots"), received_at=NOW).media == ()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("STOP", Keyword.STOP),
        ("stop.", Keyword.STOP),
        ("Unsubscribe", Keyword.STOP),
        ("cancel", Keyword.STOP),
        ("END", Keyword.STOP),
        ("Quit", Keyword.STOP),
        ("START", Keyword.START),
        ("unstop", Keyword.START),
        ("HELP", Keyword.HELP),
        ("Ayuda", Keyword.HELP),
        ("new", Keyword.NEW),
        ("Please stop the noise at 5 Elm St", None),
        ("help, there is a fallen tree", None),
        ("", None),
    ],
)
def test_keywords_are_whole_messages(body: str, expected: Keyword | None) -> None:
    found = keyword(body)
    assert (found[0] if found else None) == expected


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("There's a huge pothole, my tire blew", "en"),
        ("The trash was not picked up again this week", "en"),
        ("Hay un bache enorme en la calle y se me ponchó la llanta", "es"),
        ("No recogieron la basura esta semana", "es"),
        ("¿Cuándo van a arreglar el semáforo?", "es"),
        ("Corner of Oak St and 5th Ave", "en"),
        ("12 Elm", None),
        ("OK", None),
    ],
)
def test_language_detection(text: str, language: str | None) -> None:
    # SMS uses the shared detector (schemas.language); a text that does not say is None.
    assert detector().detect(text) == language
    assert parse_sms(form(text), received_at=NOW, default_language="es").language == (language or "es")


def test_replies_come_from_the_catalogues() -> None:
    assert "K7M4-QPXA" in render("sms.received", "es", brand="311", ticket="K7M4-QPXA")
    assert render("sms.received", "fr", brand="311", ticket="X").startswith("311: Thanks")
    assert spoken_ticket("K7M4-QPXA") == "K 7 M 4, Q P X A"


@pytest.mark.parametrize(
    ("text", "located"),
    [
        ("There's a huge pothole, my tire blew", False),
        ("Streetlight out, whole block dark", False),
        ("I have 2 dogs and 3 cats barking", False),
        ("my tire blew at 5pm", False),
        ("Pothole outside 12 Elm Street", True),
        ("Corner of Oak St and 5th Ave", True),
        ("Main St & 3rd", True),
        ("the light at Oak St and Elm is out", True),
        ("Bache en la calle Juárez", True),
        ("41.3083, -72.9279", True),
        ("", False),
    ],
)
def test_has_location(text: str, located: bool) -> None:
    assert has_location(text) is located
    assert (find_location(text) is not None) is located


def test_can_text_is_a_shape_check() -> None:
    assert can_text("+12035551234")
    assert can_text("+12035551234", ["+1"])
    assert not can_text("+442071234567", ["+1"])
    assert not can_text("+266696687")
    assert not can_text("203-555-1234")
    assert not can_text(None)
