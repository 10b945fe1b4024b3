"""Real SMTP sessions (aiosmtplib client) against the channel's listener, with fake Kafka."""

from __future__ import annotations

from pathlib import Path

import aiosmtplib
import pytest
import structlog

from schemas import make_contact_id, ticket_for
from schemas.outbound import MessageKind
from tests.unit.test_email_support import MAILBOX, PNG, harness, make_message


async def send(port: int, message: object, **kwargs: object) -> str:
    _, response = await aiosmtplib.send(
        message,  # type: ignore[arg-type]
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        use_tls=False,
        timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )
    return response


async def test_accepted_mail_is_published_with_photo_then_acknowledged(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        message = make_message(images=[("photo.png", PNG)], files=[("notes.pdf", "application/pdf", b"%PDF")])
        response = await send(h.port, message)
        ticket = ticket_for(make_contact_id("email", "m1@example.org"))
        assert ticket in response
        [contact] = h.publisher.contacts
        assert contact.request_id == ticket and contact.channel == "email"
        assert contact.metadata["source"] == "smtp"
        assert contact.metadata["attachments_ignored"] == 1
        [media] = contact.media
        assert media.content_type == "image/png"
        assert media.url.startswith("http://testserver/channels/email/media/")
        stored = tmp_path / "channels" / "email" / "media" / media.url.rsplit("/", 1)[1]
        assert stored.read_bytes() == PNG
        [ack] = h.outbox.messages
        assert ack.kind is MessageKind.ACKNOWLEDGEMENT
        assert (ack.to, ack.thread, ack.request_id) == ("ana@example.org", "<m1@example.org>", ticket)
        assert ticket in ack.text and f"[311 #{ticket}]" in (ack.subject or "")
        assert h.channel.stats.accepted == 1


async def test_recipient_that_is_not_ours_gets_550(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.port, start_tls=False, timeout=10)
        await client.connect()
        try:
            await client.ehlo()
            await client.mail("ana@example.org")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("mayor@city.example")
            assert refused.value.code == 550
            # Our addresses, including a +tag and any case, are accepted.
            for address in ("311@City.Example", "311+potholes@city.example", "reports@city.example"):
                code, _ = await client.rcpt(address)
                assert code == 250
        finally:
            await client.quit()
        assert h.channel.stats.rejected == 1
        assert h.publisher.contacts == []


async def test_oversize_mail_gets_552(tmp_path: Path) -> None:
    async with harness(tmp_path, max_message_bytes=20_000) as h:
        big = make_message("x" * 30_000)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await send(h.port, big)
        assert refused.value.code == 552
        assert h.publisher.contacts == []
        assert h.channel.stats.rejected == 1
        # The connection-level limit does not affect normal mail.
        await send(h.port, make_message())
        assert len(h.publisher.contacts) == 1


async def test_publish_failure_answers_451_and_the_retry_is_accepted(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.publisher.fail_next = 1
        with pytest.raises(aiosmtplib.SMTPDataError) as temporary:
            await send(h.port, make_message())
        assert temporary.value.code == 451
        assert h.publisher.contacts == [] and h.outbox.messages == []
        # The sending server keeps the message and tries again: nothing is lost.
        await send(h.port, make_message())
        [contact] = h.publisher.contacts
        assert contact.contact_id == make_contact_id("email", "m1@example.org")
        assert len(h.outbox.messages) == 1
        assert h.channel.stats.publish_failed == 1


async def test_auto_reply_and_bounce_are_accepted_but_not_requests(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        ooo = make_message("I am out of the office until Monday.", headers={"Auto-Submitted": "auto-replied"})
        assert "not processed" in await send(h.port, ooo)
        bounce = make_message("Delivery failed", sender="MAILER-DAEMON@mx.example.org", message_id="<b1@mx>")
        await send(h.port, bounce, sender="")  # MAIL FROM:<> (the null return path)
        assert h.publisher.contacts == [] and h.outbox.messages == []
        assert h.channel.stats.auto_ignored == 2
        health = await h.channel.health()
        assert health.ok and "auto_ignored=2" in health.detail


async def test_mail_from_our_own_address_is_ignored(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await send(h.port, make_message(sender=f"City 311 <{MAILBOX}>"))
        assert h.publisher.contacts == [] and h.channel.stats.loops_ignored == 1


async def test_list_mail_is_published_without_acknowledgement(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await send(h.port, make_message(headers={"List-Id": "<block.lists.example.org>"}))
        assert len(h.publisher.contacts) == 1 and h.outbox.messages == []


async def test_acknowledgements_are_rate_limited_per_sender_across_restarts(tmp_path: Path) -> None:
    async with harness(tmp_path, ack_limit_per_hour=2) as h:
        for n in range(3):
            await send(
                h.port, make_message(f"Pothole number {n} on Main St", message_id=f"<p{n}@example.org>")
            )
        # The same message again (a retry) does not use up the allowance.
        await send(h.port, make_message("Pothole number 0 on Main St", message_id="<p0@example.org>"))
        await send(h.port, make_message("Another sender", sender="bo@example.net", message_id="<q@x>"))
        assert len(h.publisher.contacts) == 5  # every report is still a request
        assert [m.to for m in h.outbox.messages] == ["ana@example.org"] * 3 + ["bo@example.net"]
        assert h.channel.stats.acks_rate_limited == 1
    async with harness(tmp_path, ack_limit_per_hour=2) as h:
        await send(h.port, make_message("Pothole number 9", message_id="<p9@example.org>"))
        assert len(h.publisher.contacts) == 1 and h.outbox.messages == []


async def test_health_reports_listener_state(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        health = await h.channel.health()
        assert health.ok and f"listening on 127.0.0.1:{h.port}" in health.detail
        await h.channel.stop()
        assert h.channel.status()["ways"] == {"smtp": "not listening"}


async def test_addresses_are_masked_in_logs(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        with structlog.testing.capture_logs() as logs:
            await send(h.port, make_message())
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=h.port, start_tls=False, timeout=10)
            await client.connect()
            await client.mail("ana@example.org")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused):
                await client.rcpt("mayor@city.example")
            await client.quit()
    text = repr(logs)
    assert "email accepted" in text and "a***@example.org" in text
    assert "ana@example.org" not in text and "mayor@city.example" not in text


# ---- emergencies: "call 911" first in the acknowledgement ---------------------------------------


@pytest.mark.parametrize(
    ("subject", "text", "line", "content_language"),
    [
        ("Gas", "I smell gas in my kitchen, 12 Elm Street.", "If anyone is in danger, call 911", "en"),
        ("Gas", "Huele a gas en la cocina, calle Elm 12.", "Si alguien está en peligro, llame al 911", "es"),
    ],
)
async def test_emergency_mail_is_published_and_acknowledged_with_call_911_first(
    tmp_path: Path, subject: str, text: str, line: str, content_language: str
) -> None:
    async with harness(tmp_path, start=False) as h:
        message = make_message(text, subject=subject, headers={"Content-Language": content_language})
        await h.channel.intake.ingest_message(message, source="test")
        [contact] = h.publisher.contacts
        [ack] = h.outbox.messages
        assert ack.text.splitlines()[0].startswith(line)
        assert contact.request_id in ack.text
        assert (ack.subject or "").startswith(line)


async def test_ordinary_mail_acknowledgement_has_no_911_line_first(tmp_path: Path) -> None:
    async with harness(tmp_path, start=False) as h:
        await h.channel.intake.ingest_message(
            make_message("Huge pothole outside 12 Elm Street."), source="test"
        )
        assert h.publisher.contacts
        [ack] = h.outbox.messages
        assert not ack.text.startswith("If anyone") and (ack.subject or "").startswith("Re: ")
