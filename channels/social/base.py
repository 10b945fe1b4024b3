"""One adapter interface for every social network, and the one channel that polls them.

A ``SocialNetwork`` only speaks its provider's API: fetch the mentions after a checkpoint,
post a reply, report rate limits. ``SocialChannel`` does the 311 part once for all of them:

1. poll in a background task, sleeping until the provider's reset time when rate-limited;
2. turn each mention into a ``RawContact`` (own ``@handle`` stripped, geo and media kept) and
   publish it — a reply to one of our replies continues that ticket (``continues=True``);
3. queue an acknowledgement on the outbox; ``send`` posts it as a reply under the mention;
4. only then move the ``since_id`` checkpoint (SQLite under ``context.data_dir``), so a crash
   replays mentions (deduped downstream by contact id) instead of losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from channels.plugin import ChannelConfig, ChannelContext, ChannelHealth, ChannelPlugin, SendError
from channels.social.replies import personal_data_in, reply_text, strip_handle
from channels.social.state import SocialState
from intake311.bus import PublishError
from intake311.logging import get_logger
from intake311.secrets import resolve_secret
from intake311.stage import explain
from schemas.contact import Location, Media, MetadataValue, RawContact, ReplyVia, Sender, SenderKind, mask
from schemas.emergency import warning
from schemas.ids import find_ticket, make_contact_id, ticket_for
from schemas.language import detector
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id

log = get_logger(__name__)

RATE_LIMIT_MARGIN_S = 0.5  # providers' reset times are whole seconds; don't arrive early
FIRST_START_GRACE_S = 300.0  # clock skew between us and the provider must not drop a report
# Handles and links are not tickets, even when they look like one (@jdoe1985, t.co/Ab12Cd34).
_NOT_TICKETS = re.compile(r"@[\w.@-]+|https?://\S+")


# --- what a network adapter returns -------------------------------------------------------


@dataclass(frozen=True)
class MediaRef:
    """A photo or video attached to a mention; the bytes stay with the provider."""

    url: str
    content_type: str | None = None


@dataclass(frozen=True)
class Mention:
    """A post that mentions the city's account, in provider-neutral form.

    ``id`` is the post (contact id, reply target); ``cursor`` is the position for the
    checkpoint (the tweet id on X, the notification id on Mastodon). ``place`` is a place
    name; ``place_is_address`` says it is precise enough to send a crew to (a point of
    interest, not a city).
    """

    id: str
    author_id: str
    author_handle: str
    text: str
    created_at: datetime | None = None
    cursor: str = ""
    lat: float | None = None
    long: float | None = None
    place: str | None = None
    place_is_address: bool = False
    media: tuple[MediaRef, ...] = ()
    in_reply_to_id: str | None = None
    conversation_id: str | None = None
    language: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if not self.cursor:
            object.__setattr__(self, "cursor", self.id)


@dataclass(frozen=True)
class RateLimit:
    """The provider's last word on a rate-limit window (reset as unix seconds)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None

    def wait_s(self, now: float | None = None) -> float:
        """Seconds to wait before the next call: zero unless the window is used up."""
        if self.remaining is None or self.remaining > 0 or self.reset_at is None:
            return 0.0
        return max(0.0, self.reset_at - (now or time.time()))


@dataclass(frozen=True)
class MentionPage:
    """Mentions after the checkpoint, oldest first, and the checkpoint to store once all are in."""

    mentions: list[Mention] = field(default_factory=list)
    newest: str | None = None
    rate_limit: RateLimit | None = None


class SocialError(Exception):
    """A provider call failed; ``retryable`` says whether trying again can help."""

    def __init__(self, reason: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status


class RateLimited(SocialError):
    """HTTP 429: wait until ``reset_at`` (unix seconds; None if the provider did not say)."""

    def __init__(self, reason: str, *, reset_at: float | None) -> None:
        super().__init__(reason, retryable=True, status=429)
        self.reset_at = reset_at


class SocialNetwork(ABC):
    """A provider adapter: the only code that knows a network's API."""

    name: ClassVar[str]

    @abstractmethod
    async def fetch_mentions(self, since: str | None, *, recent: int) -> MentionPage:
        """Mentions after the ``since`` cursor, oldest first (all pages).

        With no checkpoint yet, the ``recent`` newest mentions (providers may round up).
        Raises ``RateLimited`` or ``SocialError``.
        """

    @abstractmethod
    async def reply(
        self, thread_id: str, text: str, *, to: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Post ``text`` as a reply under ``thread_id`` (addressed to handle ``to`` where the
        network needs it); return the new post's id. Raises ``RateLimited`` or ``SocialError``."""

    def is_own(self, mention: Mention) -> bool:
        """Whether the city's account wrote this (never ticket our own posts)."""
        return False

    async def close(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing
        """Release connections."""


# --- config --------------------------------------------------------------------------------


class SocialConfig(ChannelConfig):
    """What every social channel needs; credentials are resolved at start so a typo stops it."""

    handle: str = Field(min_length=1, description="the city's account, e.g. City311 (stripped from text)")
    poll_interval_s: float = Field(default=60.0, gt=0, le=3600)
    backfill: int = Field(
        default=0, ge=0, le=100, description="on the very first start, also take this many older mentions"
    )
    acknowledge: bool = Field(default=True, description="reply to each mention with its ticket number")
    max_rate_limit_wait_s: float = Field(default=900.0, gt=0, description="cap on one rate-limit sleep")
    max_send_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="a reply waits this long for a rate-limit reset, else is retried later",
    )
    retention_days: int = Field(
        default=90, ge=1, description="how long replies to our posts continue a ticket"
    )
    api_base_url: str = Field(description="where the provider's API is reached")
    request_timeout_s: float = Field(default=20.0, gt=0, le=300)

    _secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)
    secret_fields: ClassVar[tuple[str, ...]] = ()

    @field_validator("handle")
    @classmethod
    def _handle(cls, value: str) -> str:
        return value.strip().lstrip("@")

    @field_validator("api_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("api_base_url must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _resolve_secrets(self) -> SocialConfig:
        for name in self.secret_fields:
            secret = resolve_secret(getattr(self, name), getattr(self, f"{name}_env"), name, required=False)
            if secret is not None:
                self._secrets[name] = secret
        return self

    def secret(self, name: str) -> str | None:
        """A resolved credential's value (hand it to the SDK; never log it)."""
        found = self._secrets.get(name)
        return found.get_secret_value() if found else None


# --- the channel ---------------------------------------------------------------------------


class SocialChannel(ChannelPlugin):
    """Polls one network for mentions of the city and answers each with its ticket."""

    config: SocialConfig
    config_model: ClassVar[type[SocialConfig]] = SocialConfig

    def __init__(self, config: SocialConfig, context: ChannelContext) -> None:  # type: ignore[override]
        super().__init__(config, context)
        self.network = self.make_network()
        self._state: SocialState | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failures = 0
        self._last_poll: float | None = None
        self._last_error: str | None = None
        self._fetch_reset: float | None = None
        self._rate_limit: RateLimit | None = None
        self._send_reset: float | None = None

    def make_network(self) -> SocialNetwork:
        """The provider adapter, built from ``self.config`` (each network's channel overrides it)."""
        raise NotImplementedError

    @property
    def state(self) -> SocialState:
        # Opened on first use: a web-only process builds the plugin but never polls or sends.
        if self._state is None:
            self._state = SocialState(self.context.data_dir / "social.sqlite3")
        return self._state

    # background polling

    async def start(self) -> None:
        self.state.first_started()
        pruned = self.state.prune(self.config.retention_days * 86400)
        if pruned:
            log.info("social posts forgotten", channel=self.name, count=pruned)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-mentions")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.network.close()
        if self._state is not None:
            self._state.close()
            self._state = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.config.poll_interval_s
            try:
                await self.poll_once()
                self._failures = 0
                self._last_error = None
                if self._rate_limit is not None and (wait := self._rate_limit.wait_s()) > 0:
                    # The window is used up: polling before the reset would only earn a 429.
                    delay = self._rate_limit_delay(self._rate_limit.reset_at)
                    self._fetch_reset = time.time() + delay
                    log.info("social rate limit window used up", channel=self.name, wait_s=round(wait, 1))
            except RateLimited as exc:
                delay = self._rate_limit_delay(exc.reset_at)
                self._fetch_reset = time.time() + delay
                self._last_error = "rate limited"
                log.warning("social rate limited", channel=self.name, wait_s=round(delay, 1))
            except (SocialError, PublishError) as exc:
                self._failures += 1
                retryable = getattr(exc, "retryable", True)
                delay = min(self.config.poll_interval_s * 2 ** min(self._failures, 6), 900.0)
                self._last_error = str(exc)[:200]
                log.warning(
                    "social poll failed",
                    channel=self.name,
                    reason=self._last_error,
                    retryable=retryable,
                    retry_in_s=round(delay, 1),
                )
            except Exception as exc:  # a bug or an SDK surprise must not end polling for good
                self._failures += 1
                delay = min(self.config.poll_interval_s * 2 ** min(self._failures, 6), 900.0)
                self._last_error = f"{type(exc).__name__}: {exc}"[:200]
                log.exception("social poll crashed", channel=self.name, retry_in_s=round(delay, 1))
            await self._sleep(delay)

    def _rate_limit_delay(self, reset_at: float | None) -> float:
        if reset_at is None:
            return min(self.config.poll_interval_s * 4, self.config.max_rate_limit_wait_s)
        wait = reset_at - time.time() + RATE_LIMIT_MARGIN_S
        return min(max(wait, self.config.poll_interval_s), self.config.max_rate_limit_wait_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def poll_once(self) -> int:
        """Fetch, publish and acknowledge new mentions, then move the checkpoint; the count."""
        since = self.state.checkpoint()
        # First poll: read a full page, then keep what is new since the first start (+ backfill).
        page = await self.network.fetch_mentions(since, recent=100)
        self._last_poll = time.time()
        mentions = page.mentions
        if since is None:
            mentions = self._first_poll(mentions)
        published = 0
        for mention in mentions:
            if self.network.is_own(mention):
                continue
            if await self._ingest(mention):
                published += 1
        if page.newest:
            self.state.set_checkpoint(page.newest)
        self._rate_limit = page.rate_limit
        return published

    def _first_poll(self, mentions: list[Mention]) -> list[Mention]:
        """No checkpoint yet: mentions since the first start, plus ``backfill`` older ones."""
        started = self.state.first_started() - FIRST_START_GRACE_S

        def is_new(m: Mention) -> bool:
            return m.created_at is None or m.created_at.timestamp() >= started

        old = [m.id for m in mentions if not is_new(m)]
        kept = set(old[len(old) - self.config.backfill :] if self.config.backfill else [])
        return [m for m in mentions if is_new(m) or m.id in kept]

    # one mention -> one contact (+ one acknowledgement)

    def ticket_of(self, mention: Mention, contact_id: str) -> tuple[str, bool]:
        """The mention's ticket and whether it continues an existing request.

        A reply to one of our replies, or to the same author's earlier ticketed mention, or a
        text quoting a ticket continues that request; anything else opens one.
        """
        known = self.state.post(mention.id)
        if known is not None:  # a replay: decide exactly as the first time
            return known.ticket, known.continues
        parent = self.state.post(mention.in_reply_to_id)
        if parent is not None and (parent.ours or parent.by(mention.author_id)):
            return parent.ticket, True
        quoted = find_ticket(_NOT_TICKETS.sub(" ", mention.text))
        if quoted:
            return quoted, True
        return ticket_for(contact_id), False

    def to_contact(self, mention: Mention) -> RawContact:
        """The ``RawContact`` for a mention: handle stripped, geo -> Location, media -> Media."""
        contact_id = make_contact_id(self.name, mention.id)
        ticket, continues = self.ticket_of(mention, contact_id)
        text = strip_handle(mention.text, self.config.handle)
        # The provider's tag (X "lang", Mastodon "language") only breaks a tie: both tag short
        # posts by their own guess, often "und" or wrong (docs/language.md).
        language = detector(self.context.settings.languages).choose(text, hint=mention.language)
        handle = f"@{mention.author_handle.lstrip('@')}"
        address = mention.place if mention.place_is_address else None
        location = Location(lat=mention.lat, long=mention.long, address=address)
        metadata: dict[str, MetadataValue] = {
            "post_id": mention.id,
            "author_id": mention.author_id,
            "in_reply_to_id": mention.in_reply_to_id,
            "conversation_id": mention.conversation_id,
            "place": mention.place,
            "url": mention.url,
        }
        return RawContact(
            contact_id=contact_id,
            request_id=ticket,
            channel=self.name,
            received_at=mention.created_at or datetime.now(UTC),
            sender=Sender(kind=SenderKind.SOCIAL, address=handle),
            text=text,
            media=tuple(Media(url=m.url, content_type=m.content_type) for m in mention.media),
            location=None if location.is_empty else location,
            reply=ReplyVia(channel=self.name, address=handle, thread=mention.id, language=language),
            language=language,
            continues=continues,
            metadata={k: v for k, v in metadata.items() if v is not None},
        )

    async def _ingest(self, mention: Mention) -> bool:
        try:
            contact = self.to_contact(mention)
        except ValueError as exc:  # provider data we cannot represent: skip, don't block the rest
            # explain() names fields, never values: the text may hold personal data.
            log.warning(
                "social mention skipped", channel=self.name, post_id=mention.id, reason=explain(exc)[:300]
            )
            return False
        await self.context.publisher.publish(contact)  # PublishError: the checkpoint stays put
        self.state.remember(
            mention.id,
            contact.request_id,
            ours=False,
            continues=contact.continues,
            author_id=mention.author_id,
        )
        if self.config.acknowledge and contact.reply is not None:
            await self.context.outbox.send(self.acknowledgement(contact))
        log.info(
            "social mention published",
            channel=self.name,
            contact_id=contact.contact_id,
            request_id=contact.request_id,
            author=contact.sender.masked(),
            continues=contact.continues,
        )
        return True

    def acknowledgement(self, contact: RawContact) -> OutboundMessage:
        """The reply under the mention: the ticket in a fixed template, nothing of the resident's."""
        assert contact.reply is not None
        to = contact.reply.address
        return OutboundMessage(
            message_id=outbound_message_id(self.name, to, MessageKind.ACKNOWLEDGEMENT, contact.contact_id),
            request_id=contact.request_id,
            channel=self.name,
            to=to,
            thread=contact.reply.thread,
            language=contact.reply.language,
            kind=MessageKind.ACKNOWLEDGEMENT,
            text=reply_text(
                contact.request_id,
                contact.reply.language,
                follow_up=contact.continues,
                warning=warning(contact.text, contact.reply.language, self.emergencies),
            ),
        )

    # outbound

    async def send(self, message: OutboundMessage) -> None:
        """Post a message as a reply under ``message.thread``; refuse one carrying personal data."""
        if not message.thread:
            raise SendError(f"{self.name} replies need a thread (the post to answer)", retryable=False)
        leaked = personal_data_in(message.text)
        if leaked:
            raise SendError(f"refusing to post {'/'.join(leaked)} publicly on {self.name}", retryable=False)
        await self._wait_for_send_window()
        try:
            post_id = await self.network.reply(
                message.thread, message.text, to=message.to, idempotency_key=message.message_id
            )
        except RateLimited as exc:
            self._send_reset = exc.reset_at
            raise SendError(f"{self.name} rate limited: {exc.reason}", retryable=True) from exc
        except SocialError as exc:
            raise SendError(exc.reason, retryable=exc.retryable) from exc
        if message.request_id:
            self.state.remember(post_id, message.request_id, ours=True)
        log.info(
            "social reply posted",
            channel=self.name,
            request_id=message.request_id,
            to=mask(message.to, SenderKind.SOCIAL),
            kind=str(message.kind),
        )

    async def _wait_for_send_window(self) -> None:
        if self._send_reset is None:
            return
        wait = self._send_reset - time.time() + RATE_LIMIT_MARGIN_S
        if wait <= 0:
            self._send_reset = None
            return
        if wait > self.config.max_send_wait_s:
            raise SendError(f"{self.name} rate limited for another {wait:.0f}s", retryable=True)
        await asyncio.sleep(wait)
        self._send_reset = None

    async def health(self) -> ChannelHealth:
        now = time.time()
        if self._fetch_reset and self._fetch_reset > now:
            return ChannelHealth(True, f"rate limited for {self._fetch_reset - now:.0f}s")
        if self._last_error and self._failures:
            return ChannelHealth(False, f"last poll failed ({self._failures}x): {self._last_error}")
        if self._last_poll is None:
            return ChannelHealth(True, "not polled yet")
        return ChannelHealth(True, f"last poll {now - self._last_poll:.0f}s ago")
