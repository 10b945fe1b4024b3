"""Reply templates, the language choice, the personal-data guard and handle stripping."""

from __future__ import annotations

import pytest

from channels.social.replies import personal_data_in, reply_text, strip_handle
from schemas.language import detector


@pytest.mark.parametrize(
    ("text", "hint", "expected"),
    [
        ("streetlight out at Chapel St and College St", None, "en"),
        ("hay un bache en la calle Elm, por favor", None, "es"),
        ("¿Cuándo recogen la basura?", None, "es"),
        ("la farola está apagada", None, "es"),
        ("bache", "es", "es"),  # one ambiguous word: the provider's tag breaks the tie
        ("Chapel St & College St", "es", "es"),  # an address says nothing: the tag decides
        ("hay basura en la esquina", "en-GB", "es"),  # X tags short posts wrongly: the words win
        ("hay basura en la esquina", "fr", "es"),  # a tag we do not answer in: ignored
        ("", "und", "en"),
    ],
)
def test_language_choice(text: str, hint: str | None, expected: str) -> None:
    # Social channels call the shared detector with the post's language tag as the hint.
    assert detector().choose(text, hint=hint) == expected


def test_templates_hold_only_the_ticket_and_service() -> None:
    assert reply_text("K7M4-QPXA") == (
        "Thanks for reporting this to 311. Your ticket number is K7M4-QPXA. "
        "Reply here to add details, but please don't post personal information."
    )
    assert (
        reply_text("K7M4-QPXA", "es", follow_up=True) == "Gracias, agregamos esto al caso K7M4-QPXA del 311."
    )
    assert reply_text("K7M4-QPXA", "en", service="Street light out").count("(Street light out)") == 1
    assert reply_text("K7M4-QPXA", "de") == reply_text("K7M4-QPXA", "en")
    for language in ("en", "es"):
        for follow_up in (False, True):
            assert personal_data_in(reply_text("K7M4-QPXA", language, follow_up=follow_up)) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("call 203-555-0142", ["phone"]),
        ("call +1 (203) 555 0142", ["phone"]),
        ("mail jane.doe@example.org", ["email"]),
        ("ticket K7M4-QPXA opened 2026-11-02, due 11/05/2026 17:00", []),
        ("due 2026-11-05, call 2035550142", ["phone"]),
        ("12 Elm Street", []),
    ],
)
def test_personal_data_guard(text: str, found: list[str]) -> None:
    assert personal_data_in(text) == found


def test_strip_handle() -> None:
    assert strip_handle("@City311 pothole on Elm", "City311") == "pothole on Elm"
    assert strip_handle("hey @city311, pothole", "@City311") == "hey , pothole"
    assert strip_handle("@City311@city.social light out", "City311") == "light out"
    assert strip_handle("@City3110 and @other", "City311") == "@City3110 and @other"
    assert strip_handle("line one @City311\n\nline two", "City311") == "line one\nline two"
