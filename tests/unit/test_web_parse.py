"""Pure parsing rules of the web channel, without an app."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channels.web.formats import to_json, to_xml
from channels.web.parse import (
    FormFields,
    FormInvalid,
    Open311Invalid,
    clean_email,
    clean_phone,
    clean_url,
    parse_open311_request,
    parse_web_form,
    web_form_key,
)
from schemas import ticket_for
from schemas.taxonomy import Service, Taxonomy

TAXONOMY = Taxonomy(services=(Service(code="other", name="Other", department="311"),))
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (555) 123-4567", "+15551234567"),
        ("555.123.4567", "5551234567"),
        ("12345", None),
        ("555-CALL-NOW", None),
        ("1" * 16, None),
    ],
)
def test_clean_phone(raw: str, expected: str | None) -> None:
    assert clean_phone(raw) == expected


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("a@b.org", True), ("a b@c.org", False), ("a@b", False), ("<a@b.org>", False), ("a@@b.org", False)],
)
def test_clean_email(raw: str, ok: bool) -> None:
    assert (clean_email(raw) == raw) is ok


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("https://x.org/a.jpg", True),
        ("http://x.org", True),
        ("javascript:alert(1)", False),
        ("data:image/png;base64,AAA", False),
        ("//x.org/a.jpg", False),
        ("https://x.org/a b.jpg", False),
        ("https://", False),
    ],
)
def test_clean_url(raw: str, ok: bool) -> None:
    assert (clean_url(raw) == raw) is ok


def test_parse_open311_minimal() -> None:
    contact = parse_open311_request(
        {"service_code": "other", "address_string": " 1 Main St "},
        TAXONOMY,
        contact_id="open311:abc",
        received_at=NOW,
    )
    assert contact.request_id == ticket_for("open311:abc")
    assert contact.location is not None
    assert (contact.location.address, contact.location.lat) == ("1 Main St", None)
    assert contact.received_at == NOW
    assert contact.media == ()


def test_parse_open311_unknown_code_before_other_problems() -> None:
    with pytest.raises(Open311Invalid) as info:
        parse_open311_request({"service_code": "nope"}, TAXONOMY, contact_id="open311:x", received_at=NOW)
    assert info.value.status == 404


def test_parse_open311_over_long_code_is_unknown() -> None:
    with pytest.raises(Open311Invalid) as info:
        parse_open311_request({"service_code": "a" * 500}, TAXONOMY, contact_id="open311:x", received_at=NOW)
    assert info.value.status == 404
    assert len(info.value.descriptions[0]) < 150


def test_parse_web_form_collects_all_errors() -> None:
    with pytest.raises(FormInvalid) as info:
        parse_web_form(
            FormFields(description="", address="", photo_url="nope", contact="x", service_code="zzz"),
            TAXONOMY,
            contact_id="web:x",
            received_at=NOW,
        )
    assert list(info.value.errors) == ["description", "address", "photo_url", "contact", "service_code"]


def test_web_form_key() -> None:
    fields = FormFields(description="hole", address="Main", form_id="abcdef0123456789")
    assert web_form_key(fields) == web_form_key(FormFields(**{**fields.__dict__}))
    assert web_form_key(fields) != web_form_key(FormFields(**{**fields.__dict__, "description": "holes"}))
    assert web_form_key(FormFields(description="hole", form_id="short")) is None
    assert web_form_key(FormFields(description="hole", form_id="<script>alert(1)</script>")) is None


def test_xml_strips_characters_xml_cannot_carry() -> None:
    body = to_xml("errors", "error", [{"code": 400, "description": "bad\x00\x1bthing <&>"}])
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    assert b"<description>badthing &lt;&amp;&gt;</description>" in body


def test_json_renders_datetimes_and_nulls() -> None:
    # Compact (orjson), UTF-8 as is: whitespace between tokens means nothing to a JSON client.
    assert to_json([{"when": NOW, "none": None, "flag": False, "text": "café"}]) == (
        '[{"when":"2024-05-01T12:00:00+00:00","none":null,"flag":false,"text":"café"}]'.encode()
    )
