"""Helpers shared by the email channel tests: fakes for Kafka, a real SMTP relay, messages.

No tests here; the other ``test_email*`` modules import it. Generic fakes are in ``tests.support``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

from channels.email import EmailChannel, EmailConfig
from channels.plugin import ChannelContext
from intake311.settings import Settings
from tests.support import FakeOutbox, FakePublisher

# A 1x1 PNG: real magic bytes, so the media store's sniffing accepts it.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"
MAILBOX = "311@city.example"


def make_message(
    text: str = "There is graffiti all over the library wall at 133 Elm Street.",
    *,
    subject: str = "Graffiti on the library",
    sender: str = "Ana Resident <ana@example.org>",
    to: str = MAILBOX,
    message_id: str = "<m1@example.org>",
    headers: dict[str, str] | None = None,
    html: str | None = None,
    images: list[tuple[str, bytes]] | None = None,
    files: list[tuple[str, str, bytes]] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Date"] = "Mon, 02 Nov 2026 09:30:00 -0500"
    for name, value in (headers or {}).items():
        message[name] = value
    if text:
        message.set_content(text)
        if html:
            message.add_alternative(html, subtype="html")
    elif html:
        message.set_content(html, subtype="html")
    for filename, data in images or []:
        subtype = "png" if filename.endswith(".png") else "jpeg"
        message.add_attachment(data, maintype="image", subtype=subtype, filename=filename)
    for filename, ctype, data in files or []:
        maintype, _, subtype = ctype.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message


def email_config(**overrides: Any) -> dict[str, Any]:
    """A valid channel config (as in settings.channels) with a relay, SMTP listener on a free port."""
    config: dict[str, Any] = {
        "addresses": [MAILBOX, "reports@city.example"],
        "from_address": MAILBOX,
        "from_name": "City 311",
        "domain": "city.example",
        "smtp": {"host": "127.0.0.1", "port": 0},
        "relay": {"host": "127.0.0.1", "port": 2, "security": "none"},
    }
    config.update(overrides)
    return config


@dataclass
class Harness:
    channel: EmailChannel
    publisher: FakePublisher
    outbox: FakeOutbox
    http: httpx.AsyncClient

    @property
    def port(self) -> int:
        assert self.channel.smtp is not None and self.channel.smtp.port is not None
        return self.channel.smtp.port


@contextlib.asynccontextmanager
async def harness(tmp_path: Path, *, start: bool = True, **overrides: Any) -> AsyncIterator[Harness]:
    """An ``EmailChannel`` with fake Kafka, started (listener up) unless ``start=False``."""
    config = EmailConfig.model_validate(email_config(**overrides))
    publisher, outbox = FakePublisher(), FakeOutbox()
    settings = Settings(data_dir=tmp_path, web={"base_url": "http://testserver"})
    async with httpx.AsyncClient() as http:
        context = ChannelContext(
            settings=settings,
            publisher=publisher,
            outbox=outbox,  # type: ignore[arg-type]
            http=http,
            data_dir=tmp_path / "channels" / "email",
        )
        channel = EmailChannel(config, context)
        if start:
            await channel.start()
        try:
            yield Harness(channel, publisher, outbox, http)
        finally:
            await channel.stop()


@dataclass
class Relay:
    """A real SMTP server (aiosmtpd) standing in for the city's relay; records what it got."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    refuse_with: str | None = None
    port: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_with:
            return self.refuse_with
        raw = envelope.original_content or b""
        message = BytesParser(policy=default_policy).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        self.arrived.set()
        return "250 OK"


@contextlib.asynccontextmanager
async def fake_relay() -> AsyncIterator[Relay]:
    relay = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, enable_SMTPUTF8=True), "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
