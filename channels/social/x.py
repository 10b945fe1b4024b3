"""X (Twitter): mentions of the city's account become requests; replies carry the ticket.

Uses tweepy's synchronous ``Client`` in a worker thread (one blocking call at a time per
client), with ``return_type=requests.Response`` so the rate-limit headers are not thrown away.
Reading uses the app's bearer token when given (its own, larger rate limit), else the user
context; replying always needs the city account's OAuth 1.0a user tokens.
"""

from __future__ import annotations

import asyncio
import html
import logging
import mimetypes
from datetime import datetime
from typing import Any, ClassVar

import requests
import tweepy
from pydantic import Field, SecretStr, model_validator
from requests.adapters import HTTPAdapter

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

X_API = "https://api.twitter.com"  # the host tweepy addresses; see _XTransport for others
MAX_PAGES = 20  # 100 mentions a page: a 2,000-mention backlog per poll, then a warning

EXPANSIONS = ["geo.place_id", "attachments.media_keys", "author_id"]
TWEET_FIELDS = [
    "created_at",
    "geo",
    "conversation_id",
    "in_reply_to_user_id",
    "referenced_tweets",
    "lang",
    "attachments",
    "author_id",
]
MEDIA_FIELDS = ["url", "preview_image_url", "type"]
PLACE_FIELDS = ["full_name", "geo", "place_type"]
USER_FIELDS = ["username"]


class _NoRequestHeaders(logging.Filter):
    """tweepy logs request headers (the bearer token) at DEBUG: drop those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Making API request")


logging.getLogger("tweepy.client").addFilter(_NoRequestHeaders())
# OAuth 1.0a signing logs the consumer key and access token at DEBUG; unless an operator chose
# a level for these loggers, keep them at INFO.
for _name in ("oauthlib", "requests_oauthlib"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)


class _XTransport(HTTPAdapter):
    """Adds a timeout to every call (tweepy sets none) and sends them to ``base_url``.

    tweepy hard-codes api.twitter.com; a different base (an egress gateway, a test server)
    is reached by rewriting the prepared request, after OAuth signing, so auth is unchanged.
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__()
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if request.url and request.url.startswith(X_API) and self._base != X_API:
            request.url = self._base + request.url[len(X_API) :]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return super().send(request, **kwargs)


class XConfig(SocialConfig):
    """The city's X account and its app's credentials (``*_env`` names an environment variable)."""

    user_id: str = Field(pattern=r"^\d{1,20}$", description="numeric id of the city's account")
    bearer_token: SecretStr | None = None
    bearer_token_env: str | None = None
    consumer_key: SecretStr | None = None
    consumer_key_env: str | None = None
    consumer_secret: SecretStr | None = None
    consumer_secret_env: str | None = None
    access_token: SecretStr | None = None
    access_token_env: str | None = None
    access_token_secret: SecretStr | None = None
    access_token_secret_env: str | None = None
    api_base_url: str = Field(default=X_API, description="change only for a gateway or a test server")

    secret_fields: ClassVar[tuple[str, ...]] = (
        "bearer_token",
        "consumer_key",
        "consumer_secret",
        "access_token",
        "access_token_secret",
    )
    user_secrets: ClassVar[tuple[str, ...]] = (
        "consumer_key",
        "consumer_secret",
        "access_token",
        "access_token_secret",
    )

    @model_validator(mode="after")
    def _enough_credentials(self) -> XConfig:
        user = [name for name in self.user_secrets if self.secret(name)]
        if user and len(user) < len(self.user_secrets):
            missing = sorted(set(self.user_secrets) - set(user))
            raise ValueError(f"OAuth 1.0a user credentials incomplete: missing {', '.join(missing)}")
        if not user and self.acknowledge:
            raise ValueError(
                "replies need the account's consumer_key, consumer_secret, access_token and"
                " access_token_secret (or set acknowledge: false)"
            )
        if not user and not self.secret("bearer_token"):
            raise ValueError("give bearer_token(_env) or the OAuth 1.0a user credentials")
        return self

    @property
    def has_user_auth(self) -> bool:
        return all(self.secret(name) for name in self.user_secrets)


def _rate_limit(response: requests.Response) -> RateLimit:
    def number(name: str) -> int | None:
        value = response.headers.get(name)
        return int(value) if value and value.isdigit() else None

    reset = number("x-rate-limit-reset")
    return RateLimit(number("x-rate-limit-limit"), number("x-rate-limit-remaining"), reset)


def _error(exc: Exception) -> SocialError:
    """tweepy/requests errors -> SocialError: 429 waits, 5xx and network retry, 4xx does not."""
    if isinstance(exc, tweepy.TooManyRequests):
        return RateLimited("429 too many requests", reset_at=exc.reset_time)
    if isinstance(exc, tweepy.TwitterServerError):
        return SocialError(str(exc)[:300], retryable=True, status=exc.response.status_code)
    if isinstance(exc, tweepy.Forbidden):
        messages = " ".join(str(m) for m in exc.api_messages).lower()
        reason = "duplicate content" if "duplicate" in messages else str(exc)[:300]
        return SocialError(f"403 forbidden: {reason}", retryable=False, status=403)
    if isinstance(exc, tweepy.HTTPException):  # 400, 401, 404: the same call will fail again
        return SocialError(str(exc)[:300], retryable=False, status=exc.response.status_code)
    if isinstance(exc, requests.RequestException):
        return SocialError(f"network error: {type(exc).__name__}", retryable=True)
    return SocialError(f"{type(exc).__name__}: {exc}"[:300], retryable=True)


def _media(item: dict[str, Any]) -> MediaRef | None:
    url = item.get("url") or item.get("preview_image_url")
    if not url:
        return None
    return MediaRef(url=url, content_type=mimetypes.guess_type(url.split("?", 1)[0])[0])


def parse_mentions(body: dict[str, Any]) -> list[Mention]:
    """One page of ``GET /2/users/:id/mentions`` as ``Mention``s (in the page's order)."""
    includes = body.get("includes") or {}
    users = {u["id"]: u for u in includes.get("users", [])}
    media = {m["media_key"]: m for m in includes.get("media", [])}
    places = {p["id"]: p for p in includes.get("places", [])}
    out = []
    for tweet in body.get("data") or []:
        author_id = str(tweet.get("author_id", ""))
        handle = (users.get(author_id) or {}).get("username") or author_id
        geo = tweet.get("geo") or {}
        point = (geo.get("coordinates") or {}).get("coordinates") or []
        place = places.get(geo.get("place_id") or "") or {}
        created = tweet.get("created_at")
        replied_to = next(
            (r["id"] for r in tweet.get("referenced_tweets") or [] if r.get("type") == "replied_to"), None
        )
        attached = [
            _media(media[k]) for k in (tweet.get("attachments") or {}).get("media_keys", []) if k in media
        ]
        out.append(
            Mention(
                id=str(tweet["id"]),
                author_id=author_id,
                author_handle=handle,
                text=html.unescape(tweet.get("text", "")),  # X escapes &, < and > in text
                created_at=datetime.fromisoformat(created) if created else None,
                lat=float(point[1]) if len(point) == 2 else None,
                long=float(point[0]) if len(point) == 2 else None,
                place=place.get("full_name"),
                place_is_address=place.get("place_type") == "poi",
                media=tuple(m for m in attached if m is not None),
                in_reply_to_id=replied_to,
                conversation_id=tweet.get("conversation_id"),
                language=tweet.get("lang"),
                url=f"https://x.com/{handle}/status/{tweet['id']}",
            )
        )
    return out


class XNetwork(SocialNetwork):
    """The X API v2 through tweepy: mentions timeline and replies."""

    name: ClassVar[str] = "x"

    def __init__(self, config: XConfig) -> None:
        self.config = config
        user = {name: config.secret(name) for name in config.user_secrets}
        bearer = config.secret("bearer_token")
        self._read_as_user = bearer is None
        # Two clients, two sessions: a poll and a reply may run at once in different threads.
        self._reader = self._client(bearer_token=bearer, **user)
        self._writer = self._client(**user) if config.has_user_auth else None

    def _client(self, **credentials: str | None) -> tweepy.Client:
        client = tweepy.Client(**credentials, return_type=requests.Response, wait_on_rate_limit=False)
        transport = _XTransport(self.config.api_base_url, self.config.request_timeout_s)
        client.session.mount(X_API, transport)
        return client

    def is_own(self, mention: Mention) -> bool:
        return mention.author_id == self.config.user_id

    async def fetch_mentions(self, since: str | None, *, recent: int) -> MentionPage:
        return await asyncio.to_thread(self._fetch, since, recent)

    def _get(self, **params: Any) -> requests.Response:
        try:
            return self._reader.get_users_mentions(
                self.config.user_id,
                user_auth=self._read_as_user,
                expansions=EXPANSIONS,
                tweet_fields=TWEET_FIELDS,
                media_fields=MEDIA_FIELDS,
                place_fields=PLACE_FIELDS,
                user_fields=USER_FIELDS,
                **params,
            )
        except Exception as exc:
            raise _error(exc) from exc

    def _fetch(self, since: str | None, recent: int) -> MentionPage:
        if since is None:
            response = self._get(max_results=min(max(recent, 5), 100))
            body = response.json()
            mentions = parse_mentions(body)
            newest = (body.get("meta") or {}).get("newest_id")
            return MentionPage(_oldest_first(mentions), newest, _rate_limit(response))
        mentions = []
        newest = None
        token = None
        limit = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"since_id": since, "max_results": 100}
            if token:
                params["pagination_token"] = token
            response = self._get(**params)
            limit = _rate_limit(response)
            body = response.json()
            meta = body.get("meta") or {}
            newest = newest or meta.get("newest_id")  # the first page holds the newest
            mentions += parse_mentions(body)
            token = meta.get("next_token")
            if not token:
                break
        else:
            log.warning("x mention backlog larger than one poll reads", pages=MAX_PAGES)
        return MentionPage(_oldest_first(mentions), newest, limit)

    async def reply(
        self, thread_id: str, text: str, *, to: str | None = None, idempotency_key: str | None = None
    ) -> str:
        if self._writer is None:
            raise SocialError("no user credentials to post replies with", retryable=False)
        writer = self._writer

        def post() -> str:
            try:
                response = writer.create_tweet(text=text, in_reply_to_tweet_id=thread_id, user_auth=True)
            except Exception as exc:
                raise _error(exc) from exc
            return str(response.json()["data"]["id"])

        return await asyncio.to_thread(post)

    async def close(self) -> None:
        self._reader.session.close()
        if self._writer is not None:
            self._writer.session.close()


def _oldest_first(mentions: list[Mention]) -> list[Mention]:
    unique = {m.id: m for m in mentions}
    return sorted(unique.values(), key=lambda m: (len(m.id), m.id))


class XChannel(SocialChannel):
    """Plugin ``x``: residents mention the city's X account; the reply carries the ticket."""

    name: ClassVar[str] = "x"
    description: ClassVar[str] = "X (Twitter) mentions of the city's account"
    config_model: ClassVar[type[SocialConfig]] = XConfig
    config: XConfig

    def make_network(self) -> SocialNetwork:
        return XNetwork(self.config)
