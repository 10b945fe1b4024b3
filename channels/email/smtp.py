"""The SMTP listener: the city's MX (or an internal relay) delivers the 311 mailbox here.

Runs on the process's own event loop (aiosmtpd's protocol on ``loop.create_server``), so the
DATA handler awaits the same Kafka producer as everything else. The reply code is the contract
with the sending server: 250 only after Kafka acknowledged the contact; 451 (try again later)
if it did not, and the sending server keeps the message and retries; 550 for addresses that
are not ours; 552 for oversize mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from channels.email.config import EmailConfig, SmtpListenerConfig
from channels.email.intake import EmailIntake, EmailStats, Outcome, TemporaryFailure
from intake311.logging import get_logger
from schemas.contact import SenderKind, mask

log = get_logger("channels.email.smtp")

# aiosmtpd logs every sender and recipient address at INFO on this logger; residents' addresses
# must not reach info-level logs, so only its warnings pass.
_AIOSMTPD_LOG = "mail.log"


def quiet_aiosmtpd() -> None:
    logger = logging.getLogger(_AIOSMTPD_LOG)
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)


class IntakeHandler:
    """aiosmtpd handler hooks: recipient check, then publish-before-250 in DATA."""

    def __init__(self, config: EmailConfig, intake: EmailIntake, stats: EmailStats) -> None:
        self.config = config
        self.intake = intake
        self.stats = stats

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.config.is_ours(address):
            self.stats.rejected += 1
            log.info("recipient refused", recipient=mask(address, SenderKind.EMAIL))
            return "550 5.1.1 Recipient address rejected: not a 311 mailbox"
        assert self.config.smtp is not None
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        mail_from = envelope.mail_from or ""
        envelope_from = "" if mail_from in ("", "<>") else mail_from
        try:
            result = await self.intake.ingest_bytes(raw, source="smtp", envelope_from=envelope_from)
        except TemporaryFailure:
            return "451 4.3.0 Temporary failure, please try again later"
        except Exception:
            log.exception("smtp intake failed")
            return "451 4.3.0 Temporary failure, please try again later"
        if result.outcome is Outcome.REJECTED:
            return "554 5.6.0 Message could not be read"
        if result.outcome is Outcome.IGNORED:
            return "250 2.0.0 OK (automatic message not processed)"
        ticket = result.contact.request_id if result.contact else ""
        return f"250 2.0.0 OK ticket {ticket}"


class _CountingSMTP(SMTP):
    """aiosmtpd answers oversize mail itself (552); count those refusals for ``health()``."""

    def __init__(self, handler: Any, stats: EmailStats, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._stats = stats

    async def push(self, status: Any) -> None:
        if str(status).startswith("552"):
            self._stats.rejected += 1
        await super().push(status)


class SmtpListener:
    """Owns the listening socket; ``start``/``stop`` from the channel's ``start``/``stop``."""

    def __init__(self, config: EmailConfig, intake: EmailIntake, stats: EmailStats) -> None:
        assert config.smtp is not None
        self.config: SmtpListenerConfig = config.smtp
        self.max_bytes = config.max_message_bytes
        self.handler = IntakeHandler(config, intake, stats)
        self.stats = stats
        self._server: asyncio.AbstractServer | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._hostname: str | None = None
        self.port: int | None = None

    def _tls(self) -> ssl.SSLContext | None:
        if self.config.tls_cert_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.config.tls_cert_file), str(self.config.tls_key_file))
        return context

    def _protocol(self) -> SMTP:
        return _CountingSMTP(
            self.handler,
            self.stats,
            data_size_limit=self.max_bytes,
            enable_SMTPUTF8=True,
            hostname=self._hostname,
            ident="intake311 ESMTP",
            tls_context=self._tls_context,
            timeout=self.config.timeout_s,
        )

    async def start(self) -> None:
        quiet_aiosmtpd()
        self._tls_context = self._tls()
        # aiosmtpd would otherwise resolve the machine's name (a DNS lookup) on every connection.
        self._hostname = self.config.hostname or await asyncio.to_thread(socket.getfqdn)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=self.config.host, port=self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smtp listener started", host=self.config.host, port=self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            # Newer Pythons wait for idle client connections too; do not hang shutdown on them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
            log.info("smtp listener stopped")

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()
