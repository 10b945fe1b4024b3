"""Fake X v2 and Mastodon servers: real HTTP on a local port, so the SDKs make real requests.

Shared by the social unit and integration tests. Each fake records what it was asked (query
parameters, bodies, headers, arrival time) and can be told to fail the next calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support import FakeOutbox, FakePublisher, serving

CITY_USER_ID = "1000"
CITY_HANDLE = "City311"
X_TOKENS = {
    "bearer_token": "bearer-SECRET-123",
    "consumer_key": "ck-SECRET",
    "consumer_secret": "cs-SECRET",
    "access_token": "at-SECRET",
    "access_token_secret": "ats-SECRET",
}
MASTODON_TOKEN = "masto-SECRET-456"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Failure:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


@dataclass
class Call:
    at: float
    params: dict[str, Any]
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)
    created: str | None = None  # id of the post this call created, if it succeeded


@dataclass
class FakeX:
    """``GET /2/users/:id/mentions`` and ``POST /2/tweets`` as X answers them (the fields we use)."""

    tweets: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, dict[str, Any]] = field(default_factory=dict)
    places: dict[str, dict[str, Any]] = field(default_factory=dict)
    gets: list[Call] = field(default_factory=list)
    posts: list[Call] = field(default_factory=list)
    post_ids: list[str] = field(default_factory=list)  # ids given to successful posts, in order
    get_failures: list[Failure] = field(default_factory=list)
    post_failures: list[Failure] = field(default_factory=list)
    page_limit: int = 100
    base_url: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1_800_000_000_000_000_001))

    def mention(
        self,
        text: str,
        *,
        author: tuple[str, str] = ("42", "resident"),
        point: tuple[float, float] | None = None,
        place: dict[str, Any] | None = None,
        photos: list[str] = (),  # type: ignore[assignment]
        reply_to: str | None = None,
        created_at: str | None = None,
        lang: str | None = None,
    ) -> str:
        """Add a tweet mentioning the city; returns its id."""
        tweet_id = str(next(self._ids))
        self.users[author[0]] = {"id": author[0], "username": author[1], "name": "Resident Name"}
        tweet: dict[str, Any] = {
            "id": tweet_id,
            "text": text,
            "author_id": author[0],
            "created_at": created_at or _now_iso(),
            "conversation_id": tweet_id,
            "edit_history_tweet_ids": [tweet_id],
        }
        if lang:
            tweet["lang"] = lang
        if point or place:
            tweet["geo"] = {}
            if point:
                tweet["geo"]["coordinates"] = {"type": "Point", "coordinates": [point[1], point[0]]}
            if place:
                self.places[place["id"]] = place
                tweet["geo"]["place_id"] = place["id"]
        if photos:
            keys = []
            for n, url in enumerate(photos):
                key = f"3_{tweet_id}_{n}"
                self.media[key] = {"media_key": key, "type": "photo", "url": url}
                keys.append(key)
            tweet["attachments"] = {"media_keys": keys}
        if reply_to:
            tweet["referenced_tweets"] = [{"type": "replied_to", "id": reply_to}]
            tweet["in_reply_to_user_id"] = CITY_USER_ID
        self.tweets.append(tweet)
        return tweet_id

    async def get_mentions(self, request: Request) -> Response:
        self.gets.append(Call(time.time(), dict(request.query_params), dict(request.headers)))
        if self.get_failures:
            return self.get_failures.pop(0).response()
        params = request.query_params
        since = params.get("since_id")
        size = min(int(params.get("max_results", "10")), self.page_limit)
        offset = int(params.get("pagination_token", "0"))
        matching = sorted(
            (t for t in self.tweets if since is None or int(t["id"]) > int(since)),
            key=lambda t: int(t["id"]),
            reverse=True,
        )
        page = matching[offset : offset + size]
        meta: dict[str, Any] = {"result_count": len(page)}
        if page:
            meta["newest_id"], meta["oldest_id"] = page[0]["id"], page[-1]["id"]
        if offset + size < len(matching):
            meta["next_token"] = str(offset + size)
        body: dict[str, Any] = {"meta": meta}
        if page:
            body["data"] = page
            keys = [k for t in page for k in t.get("attachments", {}).get("media_keys", [])]
            place_ids = {t["geo"]["place_id"] for t in page if t.get("geo", {}).get("place_id")}
            body["includes"] = {
                "users": [self.users[t["author_id"]] for t in page],
                **({"media": [self.media[k] for k in keys]} if keys else {}),
                **({"places": [self.places[p] for p in place_ids]} if place_ids else {}),
            }
        headers = {
            "x-rate-limit-limit": "450",
            "x-rate-limit-remaining": "449",
            "x-rate-limit-reset": str(int(time.time()) + 900),
        }
        return JSONResponse(body, headers=headers)

    async def post_tweet(self, request: Request) -> Response:
        body = await request.json()
        self.posts.append(Call(time.time(), {}, dict(request.headers), body))
        if self.post_failures:
            return self.post_failures.pop(0).response()
        tweet_id = str(next(self._ids))
        self.post_ids.append(tweet_id)
        self.posts[-1].created = tweet_id
        return JSONResponse(
            {"data": {"id": tweet_id, "text": body["text"], "edit_history_tweet_ids": [tweet_id]}},
            status_code=201,
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/2/users/{user_id}/mentions", self.get_mentions, methods=["GET"]),
                Route("/2/tweets", self.post_tweet, methods=["POST"]),
            ]
        )

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A channel config pointing the X plugin at this fake."""
        return {
            "handle": CITY_HANDLE,
            "user_id": CITY_USER_ID,
            "api_base_url": self.base_url,
            "poll_interval_s": 0.05,
            **X_TOKENS,
            **overrides,
        }


@dataclass
class FakeMastodon:
    """``GET /api/v1/notifications`` and ``POST /api/v1/statuses`` of a Mastodon 4 server."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    gets: list[Call] = field(default_factory=list)
    posts: list[Call] = field(default_factory=list)
    post_ids: list[str] = field(default_factory=list)
    get_failures: list[Failure] = field(default_factory=list)
    post_failures: list[Failure] = field(default_factory=list)
    other_paths: list[str] = field(default_factory=list)
    base_url: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(110_000_000_000_000_001))

    def _account(self, acct: str, account_id: str) -> dict[str, Any]:
        username = acct.split("@", 1)[0]
        return {
            "id": account_id,
            "username": username,
            "acct": acct,
            "display_name": "Resident Name",
            "url": f"https://example.social/@{username}",
        }

    def mention(
        self,
        html: str,
        *,
        acct: str = "resident@example.social",
        account_id: str = "77",
        reply_to: str | None = None,
        images: list[str] = (),  # type: ignore[assignment]
        kind: str = "mention",
        language: str | None = "en",
    ) -> str:
        """Add a mention notification; returns the status id."""
        status_id = str(next(self._ids))
        notification_id = str(len(self.notifications) + 1001)
        account = self._account(acct, account_id)
        status = {
            "id": status_id,
            "created_at": _now_iso(),
            "in_reply_to_id": reply_to,
            "in_reply_to_account_id": None,
            "visibility": "public",
            "language": language,
            "uri": f"https://example.social/users/x/statuses/{status_id}",
            "url": f"https://example.social/@x/{status_id}",
            "content": html,
            "spoiler_text": "",
            "account": account,
            "media_attachments": [
                {"id": f"{status_id}{n}", "type": "image", "url": url, "preview_url": url}
                for n, url in enumerate(images)
            ],
            "mentions": [],
            "tags": [],
            "emojis": [],
        }
        self.notifications.append(
            {
                "id": notification_id,
                "type": kind,
                "created_at": _now_iso(),
                "account": account,
                "status": status,
            }
        )
        return status_id

    async def get_notifications(self, request: Request) -> Response:
        params = request.query_params
        self.gets.append(
            Call(
                time.time(),
                {k: params.getlist(k) if k.endswith("[]") else params[k] for k in params},
                dict(request.headers),
            )
        )
        if self.get_failures:
            return self.get_failures.pop(0).response()
        types = params.getlist("types[]")
        limit = min(int(params.get("limit", "40")), 80)
        items = [n for n in self.notifications if not types or n["type"] in types]
        items.sort(key=lambda n: int(n["id"]))
        if "min_id" in params:
            items = [n for n in items if int(n["id"]) > int(params["min_id"])][:limit]
        elif "since_id" in params:
            items = [n for n in items if int(n["id"]) > int(params["since_id"])][-limit:]
        else:
            items = items[-limit:]
        headers = {
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "299",
            "X-RateLimit-Reset": datetime.fromtimestamp(time.time() + 300, UTC).isoformat(),
        }
        return JSONResponse(list(reversed(items)), headers=headers)

    async def post_status(self, request: Request) -> Response:
        form = await request.form()
        body = {k: form[k] for k in form}
        self.posts.append(Call(time.time(), {}, dict(request.headers), body))
        if self.post_failures:
            return self.post_failures.pop(0).response()
        status_id = str(next(self._ids))
        self.post_ids.append(status_id)
        self.posts[-1].created = status_id
        return JSONResponse(
            {
                "id": status_id,
                "created_at": _now_iso(),
                "in_reply_to_id": body.get("in_reply_to_id"),
                "visibility": body.get("visibility", "public"),
                "content": f"<p>{body.get('status', '')}</p>",
                "account": self._account(CITY_HANDLE, "1"),
                "media_attachments": [],
                "mentions": [],
                "tags": [],
                "emojis": [],
                "spoiler_text": "",
                "uri": f"https://example.social/users/City311/statuses/{status_id}",
                "url": f"https://example.social/@City311/{status_id}",
            }
        )

    async def anything_else(self, request: Request) -> Response:
        self.other_paths.append(request.url.path)
        return JSONResponse({"error": "not faked"}, status_code=404)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/notifications", self.get_notifications, methods=["GET"]),
                Route("/api/v1/statuses", self.post_status, methods=["POST"]),
                Route("/{path:path}", self.anything_else, methods=["GET", "POST"]),
            ]
        )

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A channel config pointing the Mastodon plugin at this fake."""
        return {
            "handle": CITY_HANDLE,
            "api_base_url": self.base_url,
            "access_token": MASTODON_TOKEN,
            "poll_interval_s": 0.05,
            **overrides,
        }


Fake = TypeVar("Fake", "FakeX", "FakeMastodon")


@contextlib.asynccontextmanager
async def served(fake: Fake) -> AsyncIterator[Fake]:
    """``fake`` serving on a free local port, its ``base_url`` set."""
    async with serving(fake.app()) as url:
        fake.base_url = url
        yield fake


async def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_fake_x_pages_newest_first() -> None:
    fake = FakeX(page_limit=2)
    ids = [fake.mention(f"@{CITY_HANDLE} report {n}") for n in range(3)]
    async with serving(fake.app()) as url:
        import httpx

        async with httpx.AsyncClient(base_url=url) as client:
            first = (await client.get(f"/2/users/{CITY_USER_ID}/mentions", params={"since_id": "1"})).json()
            second = (
                await client.get(
                    f"/2/users/{CITY_USER_ID}/mentions",
                    params={"since_id": "1", "pagination_token": first["meta"]["next_token"]},
                )
            ).json()
    assert [t["id"] for t in first["data"]] == [ids[2], ids[1]]
    assert [t["id"] for t in second["data"]] == [ids[0]] and "next_token" not in second["meta"]


def make_channel(plugin_cls: Any, config: dict[str, Any], data_dir: Any) -> Any:
    """A channel plugin with recording publisher/outbox and its state under ``data_dir``."""
    import httpx

    from channels.plugin import ChannelContext
    from intake311.settings import Settings

    context = ChannelContext(
        settings=Settings(data_dir=data_dir),
        publisher=FakePublisher(),
        outbox=FakeOutbox(),  # type: ignore[arg-type]
        http=httpx.AsyncClient(),
        data_dir=data_dir,
    )
    return plugin_cls(plugin_cls.config_model.model_validate(config), context)
