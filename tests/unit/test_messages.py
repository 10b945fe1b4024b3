"""The message catalogues: complete translations, service names, and a city's own languages."""

from __future__ import annotations

import string
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from channels.sms import SmsChannel
from channels.social.replies import MAX_PUBLIC_REPLY, personal_data_in, reply_text
from schemas import messages
from schemas.messages import MESSAGES_DIR, render, service_name, use_messages_dir
from schemas.status import State, StatusChange
from schemas.taxonomy import load_taxonomy
from sinks.postgres.store import Case
from sinks.status import notification_for
from tests.support import asgi_client, published, started
from tests.unit.test_sms_support import app_for, make_context, post_signed, sms_params
from tests.unit.test_sms_webhook import INBOUND, sms_config

TAXONOMY_SECTIONS = ("service", "service_group")  # names from the taxonomy: English has none


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def packaged(language: str) -> dict[str, str]:
    data = yaml.safe_load((MESSAGES_DIR / f"{language}.yaml").read_text(encoding="utf-8"))
    return {k: v for k, v in flatten(data).items() if k.split(".")[0] not in TAXONOMY_SECTIONS}


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_english_and_spanish_have_the_same_keys() -> None:
    en, es = packaged("en"), packaged("es")
    assert sorted(set(en) - set(es)) == [], "missing in es.yaml"
    assert sorted(set(es) - set(en)) == [], "missing in en.yaml"


def test_every_spanish_placeholder_exists_in_english() -> None:
    en, es = packaged("en"), packaged("es")
    wrong = {key: placeholders(text) - placeholders(en[key]) for key, text in es.items()}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_every_service_and_group_of_the_taxonomy_has_a_spanish_name() -> None:
    taxonomy = load_taxonomy(None)
    es = yaml.safe_load((MESSAGES_DIR / "es.yaml").read_text(encoding="utf-8"))
    assert sorted(s.code for s in taxonomy.services if s.code not in es["service"]) == []
    assert (
        sorted({s.group for s in taxonomy.services if s.group and s.group not in es["service_group"]}) == []
    )


def test_service_names_fall_back_to_the_taxonomy() -> None:
    assert service_name("pothole", "es", "Pothole") == "bache"
    assert service_name("pothole", "es-MX", "Pothole") == "bache"
    assert service_name("pothole", "en", "Pothole") == "Pothole"
    assert service_name("city-special", "es", "Leaf pickup") == "Leaf pickup"
    assert service_name(None, "es", "Pothole") == "Pothole"


def test_the_public_reply_stays_within_the_platform_limit_in_every_language() -> None:
    longest = max(load_taxonomy(None).services, key=lambda s: len(service_name(s.code, "es", s.name)))
    for language in messages.languages():
        for follow_up in (False, True):
            text = reply_text(
                "K7M4-QPXA",
                language,
                follow_up=follow_up,
                service=longest.name,
                service_code=longest.code,
                warning=render("call_911", language),
            )
            assert text.startswith(render("call_911", language))
            assert len(text) <= MAX_PUBLIC_REPLY and personal_data_in(text) == []


# ---- status notifications ---------------------------------------------------------------------


def case(language: str, channel: str = "sms", **overrides: Any) -> Case:
    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    values: dict[str, Any] = {
        "request_id": "K7M4-QPXA",
        "event_id": "e1",
        "status": State.IN_PROGRESS.status,
        "state": State.IN_PROGRESS,
        "status_notes": None,
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Huge pothole",
        "agency_responsible": "public-works",
        "departments": ("public-works",),
        "channel": channel,
        "requested_datetime": at,
        "updated_datetime": at,
        "expected_datetime": None,
        "closed_datetime": None,
        "address": "12 Elm St",
        "lat": None,
        "long": None,
        "media_url": None,
        "confidence": 0.9,
        "triage": False,
        "language": language,
        "reporter": {},
        "reply": {"channel": channel, "address": "+12035551234", "language": language},
        "source_contact_ids": ("sms:SM1",),
    }
    values.update(overrides)
    return Case(**values)


def change(state: State = State.IN_PROGRESS, notes: str | None = None) -> StatusChange:
    return StatusChange(
        event_id="ev1",
        request_id="K7M4-QPXA",
        state=state,
        notes=notes,
        at=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
        source="api:public-works",
    )


def test_status_notification_names_the_service_in_the_residents_language() -> None:
    es = notification_for(case("es"), change(notes="Cuadrilla asignada"))
    assert es is not None and es.language == "es"
    assert es.text == (
        "Actualización 311, caso K7M4-QPXA: comenzó el trabajo en su reporte de bache. "
        "Nota: Cuadrilla asignada"
    )
    en = notification_for(case("en"), change(State.CLOSED))
    assert (
        en is not None
        and en.text == "311 update, ticket K7M4-QPXA: your pothole report is closed. Thank you."
    )
    assert en.subject == "Update on your 311 request K7M4-QPXA"
    # Unknown languages fall back to English; public channels get no staff notes.
    de = notification_for(case("de", channel="x"), change(notes="call Bob"))
    assert de is not None and de.language == "en" and "Bob" not in de.text


# ---- a third language is a file ------------------------------------------------------------------

VIETNAMESE = """
sms:
  received: "{brand}: Cảm ơn, chúng tôi đã nhận được báo cáo của bạn. Mã số của bạn là {ticket}."
status:
  in_progress: "Cập nhật 311, mã {ticket}: công việc về báo cáo {service} của bạn đã bắt đầu.{notes}"
service:
  pothole: ổ gà
"""


@pytest.fixture
def city_messages(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "messages"
    directory.mkdir()
    (directory / "vi.yaml").write_text(VIETNAMESE, encoding="utf-8")
    use_messages_dir(directory)
    try:
        yield directory
    finally:
        use_messages_dir(None)


def test_a_city_file_adds_a_language_with_english_for_what_it_lacks(city_messages: Path) -> None:
    assert "vi" in messages.languages()
    message = notification_for(case("vi"), change())
    assert message is not None and message.language == "vi"
    assert message.text == "Cập nhật 311, mã K7M4-QPXA: công việc về báo cáo ổ gà của bạn đã bắt đầu."
    assert message.subject == "Update on your 311 request K7M4-QPXA"  # not translated: English
    closed = notification_for(case("vi"), change(State.CLOSED))
    assert closed is not None and closed.text.startswith("311 update, ticket K7M4-QPXA: your")


def test_a_city_file_overrides_single_packaged_keys(city_messages: Path) -> None:
    (city_messages / "en.yaml").write_text('sms:\n  added: "{brand}: Got it, ticket {ticket}."\n', "utf-8")
    use_messages_dir(city_messages)
    assert render("sms.added", "en", brand="311", ticket="X") == "311: Got it, ticket X."
    assert render("sms.received", "en", brand="311", ticket="X").startswith("311: Thanks")  # kept


async def test_an_sms_in_a_city_language_is_answered_in_it(tmp_path: Path, city_messages: Path) -> None:
    context = make_context(tmp_path)
    context.settings = context.settings.model_copy(update={"languages": ["en", "vi"]})
    async with started(SmsChannel(sms_config(), context)) as plugin, asgi_client(app_for(plugin)) as client:
        text = "Có một ổ gà rất lớn ở 12 Elm Street, xe của tôi bị hỏng"
        response = await post_signed(client, INBOUND, sms_params(text))
        reply = ET.fromstring(response.text).findtext("Message") or ""
        [contact] = published(plugin).contacts
    assert contact.language == "vi"
    assert (
        reply
        == f"311: Cảm ơn, chúng tôi đã nhận được báo cáo của bạn. Mã số của bạn là {contact.request_id}."
    )
    # Later messages (status updates) go to the same number in the same language.
    assert contact.reply is not None and contact.reply.language == "vi"


def test_a_missing_messages_dir_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such directory"):
        use_messages_dir(tmp_path / "nope")
