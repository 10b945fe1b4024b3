"""Acknowledgements: the resident's ticket number, by email, in the thread they started.

``acknowledgement(contact, …)`` is the ``OutboundMessage`` queued on the outbox once the
contact is on Kafka; ``build_email(message, …)`` turns any outbound message into the MIME
message ``send`` hands the relay. Its Message-ID embeds the ticket, so the resident's reply
finds its request again; ``Auto-Submitted: auto-replied`` tells well-behaved robots (and our
own guard) not to answer it.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP

import aiosmtplib

from channels.email.config import EmailConfig, RelayConfig
from channels.email.thread import ack_message_id, clean_subject, subject_token
from channels.plugin import SendError
from schemas.contact import RawContact
from schemas.emergency import EmergencyRules, warning
from schemas.messages import render, resolve_language
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id


def acknowledgement(
    contact: RawContact, *, from_name: str, emergencies: EmergencyRules | None = None
) -> OutboundMessage:
    """The acknowledgement for a published contact (which must have a ``reply`` address).

    Its ``message_id`` derives from the resident's message, so a replayed contact queues the
    same message and the outbound stage sends it once. Emergency language (``emergencies``: the
    configured rules, None: the packaged ones) puts "call 911" first: in the subject and as the
    body's first line.
    """
    assert contact.reply is not None
    language = resolve_language(contact.language)
    original = clean_subject(str(contact.metadata.get("subject") or ""))
    token = subject_token(contact.request_id)
    default_subject = render("email.ack.subject", language)
    subject = f"Re: {original} {token}" if original else f"{default_subject} {token}"
    key = "email.ack.added" if contact.continues else "email.ack.new"
    body = render(key, language, name=from_name, ticket=contact.request_id, token=token)
    danger = warning(f"{original}\n{contact.text}", language, emergencies)
    if danger is not None:
        subject = render("email.ack.emergency_subject", language, subject=subject)
        body = f"{danger}\n\n{body}"
    thread = contact.reply.thread
    return OutboundMessage(
        message_id=outbound_message_id(
            "email", contact.reply.address, MessageKind.ACKNOWLEDGEMENT, thread or contact.contact_id
        ),
        request_id=contact.request_id,
        channel="email",
        to=contact.reply.address,
        thread=thread,
        language=language,
        kind=MessageKind.ACKNOWLEDGEMENT,
        subject=subject[:300],
        text=body,
    )


def build_email(
    message: OutboundMessage, config: EmailConfig, *, now: datetime | None = None
) -> EmailMessage:
    """The MIME message for one outbound message (no I/O)."""
    mail = EmailMessage(policy=SMTP)
    subject = message.subject or (subject_token(message.request_id) if message.request_id else "311")
    if message.request_id and message.request_id not in subject:
        subject = f"{subject} {subject_token(message.request_id)}"
    mail["Subject"] = " ".join(subject.split())
    mail["From"] = email.utils.formataddr((config.from_name, config.sender))
    mail["To"] = message.to
    mail["Date"] = email.utils.format_datetime(now or datetime.now(UTC))
    ticket = message.request_id or "0000-0000"
    mail["Message-ID"] = ack_message_id(ticket, message.message_id, config.message_domain)
    if message.thread:
        mail["In-Reply-To"] = message.thread
        mail["References"] = message.thread
    auto = "auto-replied" if message.kind == MessageKind.ACKNOWLEDGEMENT else "auto-generated"
    mail["Auto-Submitted"] = auto
    # Exchange honours this: no out-of-office replies to our acknowledgements.
    mail["X-Auto-Response-Suppress"] = "All"
    mail["Content-Language"] = message.language
    if message.request_id:
        mail["X-Intake311-Request"] = message.request_id
    mail.set_content(message.text + "\n")
    return mail


def _smtp_error(prefix: str, exc: Exception) -> SendError:
    """4xx replies and network trouble may pass; 5xx replies and TLS/AUTH mismatches will not."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        return SendError(
            f"{prefix}: recipient refused ({codes})", retryable=any(400 <= c < 500 for c in codes)
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendError(
            f"{prefix}: SMTP {exc.code} {str(exc.message)[:200]}", retryable=400 <= exc.code < 500
        )
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SendError(f"{prefix}: {exc} (check relay.security)", retryable=False)
    return SendError(f"{prefix}: {type(exc).__name__}: {exc}"[:400], retryable=True)


async def relay_send(mail: EmailMessage, relay: RelayConfig, envelope_from: str) -> None:
    """Hand one message to the relay, or raise ``SendError`` saying whether a retry can help."""
    prefix = f"email relay {relay.host}:{relay.smtp_port}"
    try:
        await aiosmtplib.send(
            mail,
            sender=envelope_from,
            hostname=relay.host,
            port=relay.smtp_port,
            username=relay.username,
            password=relay.secret,
            use_tls=relay.security == "ssl",
            start_tls=relay.security == "starttls",
            validate_certs=relay.validate_certs,
            timeout=relay.timeout_s,
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise _smtp_error(prefix, exc) from exc
