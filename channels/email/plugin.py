"""``EmailChannel``: the plugin that wires the email channel's parts to the running process."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

from channels.email.ack import build_email, relay_send
from channels.email.config import EmailConfig
from channels.email.imap import ImapPoller
from channels.email.intake import EmailIntake, EmailStats
from channels.email.media import FileMediaStore, MediaStore
from channels.email.smtp import SmtpListener
from channels.email.state import EmailState
from channels.email.webhooks import email_routes
from channels.plugin import ChannelConfig, ChannelContext, ChannelHealth, ChannelPlugin, SendError
from intake311.logging import get_logger
from schemas.contact import mask
from schemas.outbound import OutboundMessage

if TYPE_CHECKING:
    from fastapi import APIRouter

log = get_logger("channels.email")

MEDIA_ROUTE = "/channels/email/media"


def build_media_store(config: EmailConfig, context: ChannelContext) -> MediaStore:
    """The configured store (``media.store``) or files under ``data_dir/media`` served by us."""
    if config.media.store:
        module, _, attr = config.media.store.partition(":")
        store = getattr(importlib.import_module(module), attr)(config, context)
        if not isinstance(store, MediaStore):
            raise TypeError(f"media.store {config.media.store} did not return a MediaStore")
        return store
    base = (config.media.base_url or context.settings.web.public_url).rstrip("/")
    return FileMediaStore(context.data_dir / "media", base + MEDIA_ROUTE, max_bytes=config.media.max_bytes)


class EmailChannel(ChannelPlugin):
    """Residents write to the 311 mailbox; each email becomes a request or adds to one.

    Ways in: an SMTP listener, IMAP polling, Mailgun and Postmark webhooks (any subset).
    Acknowledgements with the ticket go out through an SMTP relay from ``send``.
    """

    name: ClassVar[str] = "email"
    config_model: ClassVar[type[ChannelConfig]] = EmailConfig
    description: ClassVar[str] = (
        "Email to the 311 mailbox: SMTP listener, IMAP polling, Mailgun/Postmark webhooks"
    )

    def __init__(
        self, config: ChannelConfig, context: ChannelContext, *, media: MediaStore | None = None
    ) -> None:
        assert isinstance(config, EmailConfig)
        super().__init__(config, context)
        self.config: EmailConfig = config
        self.stats = EmailStats()
        self.state = EmailState(context.data_dir / "state.sqlite3")
        self.media = media or build_media_store(config, context)
        self.intake = EmailIntake(
            config,
            context.publisher,
            context.outbox,
            self.media,
            self.state,
            self.stats,
            emergencies=self.emergencies,
            languages=context.settings.languages,
        )
        self.smtp = (
            SmtpListener(config, self.intake, self.stats)
            if config.smtp is not None and config.smtp.enabled
            else None
        )
        self.imap = (
            ImapPoller(config.imap, self.intake, self.state, self.stats, max_bytes=config.max_message_bytes)
            if config.imap is not None and config.imap.enabled
            else None
        )
        self._started = False

    def http_routes(self) -> APIRouter:
        return email_routes(
            self.config, self.intake, self.state, self.media, dead_letters=self.context.outbox.dead_letter
        )

    async def start(self) -> None:
        if self._started:
            return
        if self.smtp is not None:
            await self.smtp.start()
        if self.imap is not None:
            await self.imap.start()
        self._started = True

    async def stop(self) -> None:
        if self.imap is not None:
            await self.imap.stop()
        if self.smtp is not None:
            await self.smtp.stop()
        self.state.close()  # reopens if a webhook still comes in
        self._started = False

    async def send(self, message: OutboundMessage) -> None:
        """Send through the relay; 4xx and network errors are retryable, 5xx are not."""
        if self.config.relay is None:
            raise SendError("email channel has no relay configured", retryable=False)
        try:
            mail = build_email(message, self.config)
        except ValueError as exc:  # an address or header the generator refuses: retrying won't help
            raise SendError(f"message cannot be built: {exc}"[:300], retryable=False) from exc
        try:
            await relay_send(mail, self.config.relay, self.config.sender)
        except SendError:
            self.stats.send_failed += 1
            raise
        self.stats.acks_sent += 1
        log.info(
            "email sent",
            kind=str(message.kind),
            to=mask(message.to),
            request_id=message.request_id,
            message_id=str(mail["Message-ID"]),
        )

    def _ways(self) -> dict[str, str]:
        ways: dict[str, str] = {}
        if self.smtp is not None:
            listening = self.smtp.listening
            ways["smtp"] = (
                f"listening on {self.smtp.config.host}:{self.smtp.port}" if listening else "not listening"
            )
        if self.imap is not None:
            if not self.imap.running:
                ways["imap"] = "not polling"
            elif self.imap.last_error:
                ways["imap"] = f"error: {self.imap.last_error}"
            else:
                ways["imap"] = f"polling ({self.imap.polls} polls)"
        if self.config.mailgun is not None and self.config.mailgun.enabled:
            ways["mailgun"] = "webhook"
        if self.config.postmark is not None and self.config.postmark.enabled:
            ways["postmark"] = "webhook"
        return ways

    def status(self) -> dict[str, object]:
        """What ``health()`` summarises: the state of each way in and the counters."""
        return {"started": self._started, "ways": self._ways(), **self.stats.as_dict()}

    async def health(self) -> ChannelHealth:
        """Not ok when a started listener is down or IMAP has not succeeded lately."""
        ok = True
        if self._started:
            ok = (self.smtp is None or self.smtp.listening) and (self.imap is None or self.imap.healthy)
        ways = "; ".join(f"{k}: {v}" for k, v in self._ways().items())
        s = self.stats
        detail = (
            f"{ways} | accepted={s.accepted} rejected={s.rejected} auto_ignored={s.auto_ignored} "
            f"loops_ignored={s.loops_ignored} publish_failed={s.publish_failed} acks_sent={s.acks_sent} "
            f"acks_rate_limited={s.acks_rate_limited}"
        )
        return ChannelHealth(ok, detail)
