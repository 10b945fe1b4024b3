"""``to_contact(parsed, …) -> RawContact``: an email becomes a new request or adds to one.

Pure. The contact id comes from the Message-ID, so the same message arriving twice (an SMTP
retry after a 451, the IMAP poller and a webhook both seeing it) is one contact and one ticket.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from channels.email.parse import MAX_TEXT, ParsedEmail
from channels.email.thread import clean_subject, ticket_from_ids, ticket_from_subject
from schemas.contact import Media, RawContact, ReplyVia, Sender, SenderKind
from schemas.ids import make_contact_id, ticket_for

CHANNEL = "email"


def thread_ticket(parsed: ParsedEmail, domain: str | None) -> str | None:
    """The ticket this message continues: our Message-ID in its headers, else a subject token."""
    if domain:
        ticket = ticket_from_ids((*parsed.references, *parsed.in_reply_to), domain)
        if ticket:
            return ticket
    return ticket_from_subject(parsed.subject)


def to_contact(
    parsed: ParsedEmail,
    *,
    received_at: datetime,
    domain: str | None,
    media: Sequence[Media] = (),
    source: str = "smtp",
    mailbox: str | None = None,
    ignored_attachments: int = 0,
) -> RawContact:
    """The contact for one parsed email.

    A new request's text is the subject followed by the body (residents often put the whole
    report in the subject); a reply's text is only what it adds. A forward with no words of
    its own keeps the forwarded text, unquoted, because that is the report.
    """
    contact_id = make_contact_id(CHANNEL, parsed.provider_id)
    continues = thread_ticket(parsed, domain)
    subject = clean_subject(parsed.subject)
    if continues:
        text = parsed.text  # the subject is ours ("Re: … [311 #…]"): nothing the resident added
    else:
        body = parsed.text or parsed.full_text
        if subject and not body.lower().startswith(subject.lower()):
            text = f"{subject}\n\n{body}" if body else subject
        else:
            text = body
    sender = (
        Sender(kind=SenderKind.EMAIL, address=parsed.from_address, name=(parsed.from_name or None))
        if parsed.from_address
        else Sender()
    )
    reply = (
        ReplyVia(
            channel=CHANNEL, address=parsed.from_address, thread=parsed.message_id, language=parsed.language
        )
        if parsed.from_address
        else None
    )
    metadata: dict[str, str | int | float | bool | None] = {
        "source": source,
        "subject": parsed.subject[:500],
        "message_id": (parsed.message_id or "")[:500] or None,
        "html_only": parsed.html_only,
    }
    if mailbox:
        metadata["mailbox"] = mailbox
    if parsed.in_reply_to:
        metadata["in_reply_to"] = parsed.in_reply_to[-1][:500]
    if ignored_attachments:
        metadata["attachments_ignored"] = ignored_attachments
    if parsed.no_ack:
        metadata["no_ack"] = parsed.no_ack
    return RawContact(
        contact_id=contact_id,
        request_id=continues or ticket_for(contact_id),
        channel=CHANNEL,
        received_at=received_at,
        sender=sender,
        text=text.strip()[:MAX_TEXT],
        media=tuple(media),
        reply=reply,
        language=parsed.language,
        continues=continues is not None,
        metadata=metadata,
    )
