"""One intake path for every way mail arrives: parse, guard, store photos, publish, acknowledge.

The order is the channel's promise. A contact is published (and acknowledged by Kafka) before
the sender hears "accepted" — SMTP 250, a webhook 200, an IMAP checkpoint moving on — so a
broker outage turns into the sender's retry, never a lost report. The acknowledgement email is
only queued on the outbox afterwards: a relay outage delays it and blocks nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from enum import StrEnum
from typing import Protocol

from structlog.stdlib import BoundLogger

from channels.base import ContactPublisher
from channels.email.ack import acknowledgement
from channels.email.config import EmailConfig
from channels.email.contact import to_contact
from channels.email.media import MediaStore
from channels.email.parse import ParsedEmail, parse_email, parse_message
from channels.email.state import EmailState
from intake311.logging import get_logger
from schemas.contact import Media, RawContact, SenderKind, mask
from schemas.emergency import EmergencyRules
from schemas.language import DEFAULT_LANGUAGES
from schemas.outbound import OutboundMessage

log = get_logger("channels.email")

ACK_QUEUE_TIMEOUT_S = 10.0


class OutboxLike(Protocol):
    async def send(self, *messages: OutboundMessage) -> None: ...


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # published (a new request or an addition to one)
    IGNORED = "ignored"  # a bounce, an auto-reply or our own mail: dropped on purpose
    REJECTED = "rejected"  # unreadable: the sender should not retry


class TemporaryFailure(Exception):
    """Nothing was accepted and a retry can succeed (broker or media store down)."""


@dataclass
class EmailStats:
    """Counters since start, reported by ``health()``."""

    accepted: int = 0
    continued: int = 0
    rejected: int = 0
    auto_ignored: int = 0
    loops_ignored: int = 0
    publish_failed: int = 0
    acks_queued: int = 0
    acks_rate_limited: int = 0
    acks_skipped: int = 0
    acks_sent: int = 0
    send_failed: int = 0
    media_stored: int = 0
    attachments_ignored: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    reason: str = ""
    contact: RawContact | None = None


class EmailIntake:
    """Turns one message into at most one published contact and one queued acknowledgement."""

    def __init__(
        self,
        config: EmailConfig,
        publisher: ContactPublisher,
        outbox: OutboxLike,
        media: MediaStore,
        state: EmailState,
        stats: EmailStats,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        emergencies: EmergencyRules | None = None,
        languages: Sequence[str] = DEFAULT_LANGUAGES,
    ) -> None:
        self.config = config
        self.languages = tuple(languages)  # settings.languages: what parse_email detects among
        self.emergencies = emergencies  # None: the packaged rules
        self.publisher = publisher
        self.outbox = outbox
        self.media = media
        self.state = state
        self.stats = stats
        self.clock = clock

    async def ingest_bytes(
        self, raw: bytes, *, source: str, envelope_from: str | None = None, mailbox: str | None = None
    ) -> IngestResult:
        try:
            # In a thread: the stdlib parser decodes every attachment (~600 ms for an 11 MB mail
            # with one photo, here), and this loop also answers the web stage's submissions.
            parsed = await asyncio.to_thread(
                parse_email, raw, envelope_from=envelope_from, languages=self.languages
            )
        except Exception as exc:  # the stdlib parser is lenient; this is truly unreadable input
            self.stats.rejected += 1
            log.warning("email unreadable", source=source, error=type(exc).__name__)
            return IngestResult(Outcome.REJECTED, f"unreadable: {type(exc).__name__}")
        return await self.ingest(parsed, source=source, mailbox=mailbox)

    async def ingest_message(
        self, message: EmailMessage, *, source: str, envelope_from: str | None = None
    ) -> IngestResult:
        parsed = await asyncio.to_thread(
            parse_message, message, envelope_from=envelope_from, languages=self.languages
        )  # a thread, as ``ingest_bytes``: it decodes the attachments
        return await self.ingest(parsed, source=source)

    async def ingest(self, parsed: ParsedEmail, *, source: str, mailbox: str | None = None) -> IngestResult:
        """Raise ``TemporaryFailure`` if the contact could not be published (the sender retries)."""
        sender = mask(parsed.from_address, SenderKind.EMAIL)
        bound = log.bind(source=source, sender=sender, message=parsed.provider_id[:80])
        if self.config.is_ours(parsed.from_address):
            self.stats.loops_ignored += 1
            bound.info("email from our own address ignored (mail loop guard)")
            return IngestResult(Outcome.IGNORED, "from our own address")
        if parsed.automatic:
            self.stats.auto_ignored += 1
            bound.info("automatic email ignored", kind=parsed.automatic, reason=parsed.no_ack)
            return IngestResult(Outcome.IGNORED, f"{parsed.automatic}: {parsed.no_ack}")

        media, ignored = await self._store_media(parsed)
        contact = to_contact(
            parsed,
            received_at=self.clock(),
            domain=self.config.message_domain,
            media=media,
            source=source,
            mailbox=mailbox,
            ignored_attachments=ignored,
        )
        bound = bound.bind(contact_id=contact.contact_id, request_id=contact.request_id)
        try:
            await self.publisher.publish(contact)
        except Exception as exc:  # PublishError, a timeout: the broker did not take it
            self.stats.publish_failed += 1
            bound.warning("email not published; sender must retry", error=type(exc).__name__)
            raise TemporaryFailure(f"publish failed: {type(exc).__name__}") from exc
        self.stats.accepted += 1
        self.stats.continued += contact.continues
        bound.info(
            "email accepted",
            continues=contact.continues,
            media=len(media),
            language=contact.language,
        )
        await self._acknowledge(contact, parsed, bound)
        return IngestResult(Outcome.ACCEPTED, contact=contact)

    async def _store_media(self, parsed: ParsedEmail) -> tuple[list[Media], int]:
        media: list[Media] = []
        ignored = 0
        for attachment in parsed.attachments:
            if not attachment.is_image or len(media) >= self.config.media.max_per_message:
                ignored += 1
                continue
            try:
                stored = await self.media.put(attachment.data, attachment.content_type)
            except OSError as exc:
                raise TemporaryFailure(f"media store: {type(exc).__name__}") from exc
            if stored is None:
                ignored += 1
            elif stored not in media:
                media.append(stored)
        self.stats.media_stored += len(media)
        self.stats.attachments_ignored += ignored
        return media, ignored

    async def _acknowledge(self, contact: RawContact, parsed: ParsedEmail, bound: BoundLogger) -> None:
        if not self.config.acknowledge or contact.reply is None or parsed.no_ack:
            self.stats.acks_skipped += 1
            if parsed.no_ack:
                bound.info("no acknowledgement", reason=parsed.no_ack)
            return
        try:
            allowed = await self.state.run(
                self.state.allow_ack,
                contact.reply.address,
                contact.contact_id,
                self.config.ack_limit_per_hour,
            )
            if not allowed:
                self.stats.acks_rate_limited += 1
                bound.warning("acknowledgement rate limit reached for sender")
                return
            # Bounded: the sender is still waiting for its 250 while this runs.
            ack = acknowledgement(contact, from_name=self.config.from_name, emergencies=self.emergencies)
            await asyncio.wait_for(self.outbox.send(ack), ACK_QUEUE_TIMEOUT_S)
        except Exception as exc:
            # The contact is on Kafka and the sender got its 250: a missing acknowledgement is
            # worth a warning, not a refused report.
            bound.warning("acknowledgement not queued", error=type(exc).__name__)
            return
        self.stats.acks_queued += 1
