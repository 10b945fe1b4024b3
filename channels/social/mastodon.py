"""Mastodon: mention notifications of the city's account become requests.

Uses Mastodon.py in a worker thread with ``ratelimit_method="throw"``, so a rate limit
becomes our ``RateLimited`` (the poller sleeps without holding a thread) instead of a blocking
sleep inside the library. Notifications are read forward from the checkpoint with ``min_id``,
page by page, so a burst larger than one page leaves no gap. Replies are ``direct`` by default:
only the resident (and the city) see them, which is why the text starts with their handle.
"""

from __future__ import annotations

import asyncio
import mimetypes
from datetime import datetime
from html.parser import HTMLParser
from typing import Any, ClassVar, Literal

import mastodon
from mastodon import Mastodon
from pydantic import Field, SecretStr, model_validator

from channels.social.base import (
    MediaRef,
    Mention,
    MentionPage,
    RateLimit,
    RateLimited,
    SocialChannel,
    SocialConfig,
    SocialError,
    SocialNetwork,
)
from intake311.logging import get_logger

log = get_logger(__name__)

PAGE = 40  # Mastodon's default maximum for notifications
MAX_PAGES = 25

Visibility = Literal["direct", "private", "unlisted", "public"]


class MastodonConfig(SocialConfig):
    """The city's Mastodon account: its server and an access token (``read`` + ``write:statuses``)."""

    api_base_url: str = Field(description="the account's server, e.g. https://mastodon.social")
    access_token: SecretStr | None = None
    access_token_env: str | None = None
    reply_visibility: Visibility = Field(
        default="direct", description="direct keeps the reply between the resident and the city"
    )

    secret_fields: ClassVar[tuple[str, ...]] = ("access_token",)

    @model_validator(mode="after")
    def _token_given(self) -> MastodonConfig:
        if not self.secret("access_token"):
            raise ValueError("give access_token_env (preferred) or access_token")
        return self


class _Text(HTMLParser):
    """Status HTML -> plain text: paragraphs and <br> become line breaks, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p" and self.parts:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """The readable text of a status's HTML ``content``."""
    parser = _Text()
    parser.feed(html or "")
    parser.close()
    lines = ("".join(parser.parts)).splitlines()
    return "\n".join(" ".join(line.split()) for line in lines).strip()


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def _created(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    return None


def _media(item: Any) -> MediaRef | None:
    url = _get(item, "url") or _get(item, "remote_url") or _get(item, "preview_url")
    if not url:
        return None
    guessed = mimetypes.guess_type(str(url).split("?", 1)[0])[0]
    return MediaRef(url=str(url), content_type=guessed)


def parse_notification(notification: Any) -> Mention | None:
    """A mention notification as a ``Mention``; None for any other kind."""
    status = _get(notification, "status")
    if _get(notification, "type") != "mention" or status is None:
        return None
    account = _get(status, "account") or _get(notification, "account")
    text = html_to_text(_get(status, "content") or "")
    warning = _get(status, "spoiler_text") or ""
    attached = [_media(m) for m in _get(status, "media_attachments") or []]
    return Mention(
        id=str(_get(status, "id")),
        cursor=str(_get(notification, "id")),
        author_id=str(_get(account, "id", "")),
        author_handle=str(_get(account, "acct", "")),
        text=f"{warning}\n{text}".strip() if warning else text,
        created_at=_created(_get(status, "created_at")),
        media=tuple(m for m in attached if m is not None),
        in_reply_to_id=_id(_get(status, "in_reply_to_id")),
        language=_get(status, "language"),
        url=_get(status, "url"),
    )


def _order(cursor: str) -> tuple[int, str]:
    # Snowflake ids (Mastodon) and flake ids (Pleroma, GoToSocial) both sort by length then text.
    return len(cursor), cursor


def _error(exc: Exception, api: Mastodon) -> SocialError:
    """Mastodon.py errors -> SocialError: 429 waits, 5xx and network retry, other 4xx do not."""
    if isinstance(exc, mastodon.MastodonRatelimitError):
        return RateLimited("429 too many requests", reset_at=api.ratelimit_reset)
    if isinstance(exc, mastodon.MastodonNetworkError):
        return SocialError(f"network error: {type(exc).__name__}", retryable=True)
    if isinstance(exc, mastodon.MastodonAPIError):
        status = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
        detail = (
            exc.args[3] if len(exc.args) > 3 and exc.args[3] else (exc.args[2] if len(exc.args) > 2 else "")
        )
        retryable = isinstance(exc, mastodon.MastodonServerError) or (status is not None and status >= 500)
        return SocialError(f"{status} {detail}"[:300], retryable=retryable, status=status)
    return SocialError(f"{type(exc).__name__}: {exc}"[:300], retryable=True)


class MastodonNetwork(SocialNetwork):
    """A Mastodon server's API through Mastodon.py: mention notifications and replies."""

    name: ClassVar[str] = "mastodon"

    def __init__(self, config: MastodonConfig) -> None:
        self.config = config
        # Separate clients: reading and posting have their own rate-limit windows and threads.
        self._reader = self._client()
        self._writer = self._client()

    def _client(self) -> Mastodon:
        return Mastodon(
            access_token=self.config.secret("access_token"),
            api_base_url=self.config.api_base_url,
            ratelimit_method="throw",
            request_timeout=self.config.request_timeout_s,
            version_check_mode="none",
            user_agent="intake311",
        )

    def is_own(self, mention: Mention) -> bool:
        return mention.author_handle.lower() == self.config.handle.lower()

    def _rate_limit(self) -> RateLimit:
        api = self._reader
        return RateLimit(api.ratelimit_limit, api.ratelimit_remaining, api.ratelimit_reset)

    async def fetch_mentions(self, since: str | None, *, recent: int) -> MentionPage:
        return await asyncio.to_thread(self._fetch, since, recent)

    def _notifications(self, **params: Any) -> list[Any]:
        try:
            return list(self._reader.notifications(types=["mention"], **params))
        except mastodon.MastodonError as exc:
            raise _error(exc, self._reader) from exc

    def _fetch(self, since: str | None, recent: int) -> MentionPage:
        if since is None:
            page = self._notifications(limit=min(max(recent, 1), PAGE))
            cursors = [str(_get(n, "id")) for n in page]
            mentions = [m for m in map(parse_notification, page) if m is not None]
            newest = max(cursors, key=_order) if cursors else None
            return MentionPage(sorted(mentions, key=lambda m: _order(m.cursor)), newest, self._rate_limit())
        mentions = []
        cursor = since
        for _ in range(MAX_PAGES):
            page = self._notifications(min_id=cursor, limit=PAGE)
            if not page:
                break
            cursor = max((str(_get(n, "id")) for n in page), key=_order)
            mentions += [m for m in map(parse_notification, page) if m is not None]
            if len(page) < PAGE:
                break
        else:
            log.warning("mastodon mention backlog larger than one poll reads", pages=MAX_PAGES)
        ordered = sorted({m.cursor: m for m in mentions}.values(), key=lambda m: _order(m.cursor))
        newest = cursor if cursor != since else None
        return MentionPage(ordered, newest, self._rate_limit())

    async def reply(
        self, thread_id: str, text: str, *, to: str | None = None, idempotency_key: str | None = None
    ) -> str:
        # Direct (and followers-only) posts reach only the accounts they mention.
        status_text = f"@{to.lstrip('@')} {text}" if to else text
        writer = self._writer

        def post() -> str:
            try:
                status = writer.status_post(
                    status_text,
                    in_reply_to_id=thread_id,
                    visibility=self.config.reply_visibility,
                    idempotency_key=idempotency_key,
                )
            except mastodon.MastodonError as exc:
                raise _error(exc, writer) from exc
            return str(_get(status, "id"))

        return await asyncio.to_thread(post)

    async def close(self) -> None:
        for api in (self._reader, self._writer):
            api.session.close()


class MastodonChannel(SocialChannel):
    """Plugin ``mastodon``: residents mention the city's account; a direct reply carries the ticket."""

    name: ClassVar[str] = "mastodon"
    description: ClassVar[str] = "Mastodon mentions of the city's account"
    config_model: ClassVar[type[SocialConfig]] = MastodonConfig
    config: MastodonConfig

    def make_network(self) -> SocialNetwork:
        return MastodonNetwork(self.config)
