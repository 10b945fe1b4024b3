"""The email channel: residents write to the 311 mailbox and get their ticket number back.

Four ways in, any of which can be off: an SMTP listener (``smtp``), IMAP polling of an
existing mailbox (``imap``), and Mailgun / Postmark inbound-parse webhooks. All of them feed one
intake path (``intake.EmailIntake``): parse, drop robots, store photos, publish to Kafka, then
queue the acknowledgement. See ``docs/email.md``.
"""

from channels.email.ack import acknowledgement, build_email
from channels.email.config import EmailConfig
from channels.email.contact import thread_ticket, to_contact
from channels.email.intake import EmailIntake, EmailStats, Outcome, TemporaryFailure
from channels.email.media import FileMediaStore, MediaStore, StoredMedia
from channels.email.parse import Attachment, ParsedEmail, parse_email, parse_message
from channels.email.plugin import EmailChannel
from channels.email.thread import ack_message_id, ticket_from_ids, ticket_from_subject

__all__ = [
    "Attachment",
    "EmailChannel",
    "EmailConfig",
    "EmailIntake",
    "EmailStats",
    "FileMediaStore",
    "MediaStore",
    "Outcome",
    "ParsedEmail",
    "StoredMedia",
    "TemporaryFailure",
    "ack_message_id",
    "acknowledgement",
    "build_email",
    "parse_email",
    "parse_message",
    "thread_ticket",
    "ticket_from_ids",
    "ticket_from_subject",
    "to_contact",
]
