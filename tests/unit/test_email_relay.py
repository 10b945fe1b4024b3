"""Acknowledgements sent by ``send()`` through a real SMTP relay (aiosmtpd), and config checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from channels.email import EmailConfig, acknowledgement, parse_email, to_contact
from channels.plugin import SendError
from schemas import RawContact
from schemas.outbound import MessageKind, OutboundMessage
from tests.unit.test_email_support import email_config, fake_relay, harness, make_message

NOW = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)


def ack_for(text: str = "Pothole outside 12 Elm Street", **kwargs: Any) -> tuple[RawContact, OutboundMessage]:
    parsed = parse_email(bytes(make_message(text, **kwargs)))
    contact = to_contact(parsed, received_at=NOW, domain="city.example")
    return contact, acknowledgement(contact, from_name="City 311")


async def test_acknowledgement_reaches_the_relay_threaded_with_the_ticket(tmp_path: Path) -> None:
    contact, ack = ack_for()
    ticket = contact.request_id
    async with fake_relay() as relay:
        relay_config = {"host": "127.0.0.1", "port": relay.port, "security": "none"}
        async with harness(tmp_path, start=False, relay=relay_config) as h:
            await h.channel.send(ack)
            [mail] = relay.messages
            assert relay.envelopes == [("311@city.example", ["ana@example.org"])]
            message_id = str(mail["Message-ID"])
            assert message_id.startswith(f"<311.{ticket}.") and message_id.endswith("@city.example>")
            assert mail["In-Reply-To"] == "<m1@example.org>"
            assert mail["References"] == "<m1@example.org>"
            assert mail["Auto-Submitted"] == "auto-replied"
            assert mail["X-Auto-Response-Suppress"] == "All"
            assert mail["To"] == "ana@example.org"
            assert mail["From"] == "City 311 <311@city.example>"
            assert f"[311 #{ticket}]" in str(mail["Subject"])
            assert str(mail["Subject"]).startswith("Re: Graffiti on the library")
            body = mail.get_content()
            assert f"Your ticket number is {ticket}" in body and "911" in body
            # Sending again (a replayed outbound record) produces the same Message-ID.
            await h.channel.send(ack)
            assert str(relay.messages[1]["Message-ID"]) == message_id
            assert h.channel.stats.acks_sent == 2


async def test_our_acknowledgement_coming_back_is_not_a_request(tmp_path: Path) -> None:
    """If the acknowledgement loops back into the mailbox, both guards drop it."""
    _, ack = ack_for()
    async with fake_relay() as relay:
        relay_config = {"host": "127.0.0.1", "port": relay.port, "security": "none"}
        async with harness(tmp_path, start=False, relay=relay_config) as h:
            await h.channel.send(ack)
            parsed = parse_email(relay.messages[0].as_bytes())
            assert parsed.automatic == "auto-reply"
            result = await h.channel.intake.ingest(parsed, source="smtp")
            assert result.outcome.value == "ignored" and h.publisher.contacts == []


def test_spanish_and_follow_up_templates() -> None:
    contact, ack = ack_for(
        "Hay un bache muy grande en la calle 5, frente a la escuela. Gracias", subject="Bache"
    )
    assert ack.language == "es" and f"Su número de caso es {contact.request_id}" in ack.text
    reply = make_message(
        "Ahora es más grande", subject=f"Re: Bache [311 #{contact.request_id}]", message_id="<m2@example.org>"
    )
    follow = to_contact(parse_email(bytes(reply)), received_at=NOW, domain="city.example")
    follow_ack = acknowledgement(follow, from_name="311")
    assert follow.continues and "Agregamos su mensaje al caso" in follow_ack.text
    assert follow_ack.message_id != ack.message_id
    assert follow_ack.kind is MessageKind.ACKNOWLEDGEMENT


@pytest.mark.parametrize(
    ("reply", "retryable"), [("550 5.1.1 no such user", False), ("451 4.3.0 later", True)]
)
async def test_relay_refusals_map_to_send_errors(tmp_path: Path, reply: str, retryable: bool) -> None:
    _, ack = ack_for()
    async with fake_relay() as relay:
        relay.refuse_with = reply
        relay_config = {"host": "127.0.0.1", "port": relay.port, "security": "none"}
        async with harness(tmp_path, start=False, relay=relay_config) as h:
            with pytest.raises(SendError) as error:
                await h.channel.send(ack)
            assert error.value.retryable is retryable
            assert h.channel.stats.send_failed == 1


async def test_relay_down_is_retryable(tmp_path: Path) -> None:
    _, ack = ack_for()
    async with harness(
        tmp_path, start=False, relay={"host": "127.0.0.1", "port": 1, "security": "none"}
    ) as h:
        with pytest.raises(SendError) as error:
            await h.channel.send(ack)
        assert error.value.retryable


# --- configuration ------------------------------------------------------------------------------


def test_defaults_derive_from_the_addresses() -> None:
    config = EmailConfig.model_validate(email_config(from_address=None, domain=None))
    assert config.sender == "311@city.example" and config.message_domain == "city.example"
    assert config.is_ours("311+tag@CITY.example") and not config.is_ours("other@city.example")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"smtp": None}, "no way in is enabled"),
        ({"smtp": {"enabled": False}}, "no way in is enabled"),
        ({"relay": None}, "needs a 'relay'"),
        ({"addresses": ["not-an-address"]}, "not an email address"),
        ({"addresses": []}, "at least 1"),
        ({"postmark": {"username": "u"}}, "go together"),
        ({"postmark": {"token": "short"}}, "at least 16"),
        ({"postmark": {}}, "does not sign"),
        ({"mailgun": {}}, "signing_key"),
        ({"mailgun": {"signing_key_env": "INTAKE311_TEST_UNSET_VAR"}}, "not set"),
        ({"relay": {"host": "r", "username": "u"}}, "go together"),
        ({"smtp": {"tls_cert_file": "/x.pem"}}, "go together"),
        ({"domain": "bad domain"}, "not a domain"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_invalid_config_is_explained(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmailConfig.model_validate(email_config(**overrides))


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MAILGUN_KEY", "from-env-key")
    config = EmailConfig.model_validate(email_config(mailgun={"signing_key_env": "TEST_MAILGUN_KEY"}))
    assert config.mailgun is not None and config.mailgun.key == b"from-env-key"
    assert "from-env-key" not in repr(config)


def test_acknowledgements_can_be_off_without_a_relay() -> None:
    config = EmailConfig.model_validate(email_config(relay=None, acknowledge=False))
    assert config.relay is None


def test_channel_is_registered() -> None:
    from channels.email import EmailChannel
    from channels.plugin import load_plugin

    assert load_plugin("email") is EmailChannel
