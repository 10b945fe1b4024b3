"""Conversation, opt-out and delivery state for channels that talk back (SMS, voice acks).

A resident's texts reach whichever web process the load balancer picks, and a process may
restart between a question and its answer, so this state lives outside the process: SQLite
under the data directory (one host, several processes: WAL) or Redis (several hosts). Both
implement ``ConversationStore``; ``open_store`` picks one from a URL.

Addresses (phone numbers) are stored as keyed hashes, never in clear: the store only needs to
recognise a number again, and Redis is often shared with other applications.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from intake311.sqlite import connect
from schemas.contact import ANSWERS_LOCATION, ANSWERS_QUESTION

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

# Later statuses win over earlier ones; callbacks can arrive out of order (sent after delivered).
_STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "receiving": 3,
    "received": 4,
    "delivered": 4,
    "read": 5,
    "undelivered": 6,
    "failed": 6,
    "canceled": 6,
}
DELIVERY_TTL_S = 30 * 24 * 3600  # long enough to investigate a complaint, short enough to forget


def address_key(channel: str, address: str) -> str:
    """The stored key for a resident's address: a hash, so the store holds no phone numbers."""
    normalised = "".join(address.split()).lower()
    return hashlib.sha256(f"intake311\x1f{channel}\x1f{normalised}".encode()).hexdigest()[:40]


LOCATION = ANSWERS_LOCATION  # Conversation.awaiting: what we asked, what the next text answers
QUESTION = ANSWERS_QUESTION


@dataclass(frozen=True)
class Conversation:
    """An open exchange with one resident: which ticket their next message belongs to."""

    request_id: str
    opened_by: str  # contact id of the first message: a provider retry of it is not a follow-up
    language: str = "en"
    # What the resident's next message answers: LOCATION (the reply asked where) or QUESTION (we
    # texted a service's question, channels.sms.plugin.SmsChannel.send); None: nothing asked.
    awaiting: str | None = None
    opened_at: float = 0.0
    updated_at: float = 0.0
    messages: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Conversation:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def touched(self, **changes: Any) -> Conversation:
        return replace(self, updated_at=time.time(), **changes)


@dataclass(frozen=True)
class Delivery:
    """What the provider last told us about one outbound message."""

    sid: str
    status: str
    error_code: str | None = None
    request_id: str | None = None
    updated_at: float = 0.0


def asked(live: Conversation | None, candidate: Conversation) -> Conversation:
    """What ``ConversationStore.ask`` stores over ``live`` (the conversation there now, if any)."""
    if live is not None and live.request_id == candidate.request_id:
        return live.touched(awaiting=candidate.awaiting)
    return candidate


def should_replace(old: str | None, new: str) -> bool:
    """True unless ``new`` is an earlier step than what we already know (out-of-order callback)."""
    if old is None:
        return True
    return _STATUS_RANK.get(new, 0) >= _STATUS_RANK.get(old, 0)


class ConversationStore(Protocol):
    """Shared state for talking back to residents. Every method is safe across processes."""

    kind: str

    async def claim(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        """The live conversation for ``address``, or ``candidate`` stored atomically if none is."""
        ...

    async def ask(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        """Record, atomically, that we asked the resident something about ``candidate.request_id``
        (``candidate.awaiting``): their next message answers it, within ``ttl_s`` of now.

        That ticket's live conversation is kept (opener, language, count) with ``awaiting``
        replaced; any other, or none, gives way to ``candidate``: a resident answers the last
        thing we asked. Returns what is stored."""
        ...

    async def get(self, channel: str, address: str) -> Conversation | None: ...

    async def put(self, channel: str, address: str, conversation: Conversation, ttl_s: float) -> None: ...

    async def release(self, channel: str, address: str, opened_by: str) -> None:
        """Forget the conversation if ``opened_by`` opened it (its first message was refused)."""
        ...

    async def end(self, channel: str, address: str) -> None: ...

    async def is_opted_out(self, channel: str, address: str) -> bool: ...

    async def set_opted_out(self, channel: str, address: str, opted_out: bool) -> None:
        """Record STOP (True) or START (False); kept until changed, never expires."""
        ...

    async def record_delivery(
        self, sid: str, status: str, error_code: str | None = None, request_id: str | None = None
    ) -> Delivery: ...

    async def delivery(self, sid: str) -> Delivery | None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (for health checks)."""
        ...

    async def close(self) -> None: ...


class SqliteConversationStore:
    """SQLite (WAL) store: survives restarts, shared by every process on one host."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS conversations (
                key TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS opt_outs (
                key TEXT PRIMARY KEY, opted_out INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS deliveries (
                sid TEXT PRIMARY KEY, status TEXT NOT NULL, error_code TEXT, request_id TEXT,
                updated_at REAL NOT NULL) WITHOUT ROWID;
            """
        )

    async def _run(self, fn: Any, *args: Any) -> Any:
        # A write may wait on another process's lock: keep that off the event loop.
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    def _tx(self, fn: Any) -> Any:
        # IMMEDIATE, not intake311.sqlite.transaction's deferred BEGIN: these read, then write,
        # and another process's write in between would fail the upgrade instead of waiting.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def _live(self, key: str, now: float) -> Conversation | None:
        row = self._db.execute(
            "SELECT body FROM conversations WHERE key = ? AND expires_at > ?", (key, now)
        ).fetchone()
        return Conversation.from_json(row[0]) if row else None

    def _put(self, key: str, conversation: Conversation, expires_at: float) -> None:
        self._db.execute(
            "INSERT INTO conversations (key, body, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET body = excluded.body, expires_at = excluded.expires_at",
            (key, conversation.to_json(), expires_at),
        )

    async def claim(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        key = address_key(channel, address)

        def work() -> Conversation:
            now = time.time()
            existing = self._live(key, now)
            if existing is not None:
                return existing
            self._put(key, candidate, now + ttl_s)
            return candidate

        return await self._run(self._tx, work)

    async def ask(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        key = address_key(channel, address)

        def work() -> Conversation:
            now = time.time()
            stored = asked(self._live(key, now), candidate)
            self._put(key, stored, now + ttl_s)
            return stored

        return await self._run(self._tx, work)

    async def get(self, channel: str, address: str) -> Conversation | None:
        return await self._run(self._live, address_key(channel, address), time.time())

    async def put(self, channel: str, address: str, conversation: Conversation, ttl_s: float) -> None:
        await self._run(self._put, address_key(channel, address), conversation, time.time() + ttl_s)

    async def release(self, channel: str, address: str, opened_by: str) -> None:
        key = address_key(channel, address)

        def work() -> None:
            existing = self._live(key, time.time())
            if existing is not None and existing.opened_by == opened_by:
                self._db.execute("DELETE FROM conversations WHERE key = ?", (key,))

        await self._run(self._tx, work)

    async def end(self, channel: str, address: str) -> None:
        await self._run(
            self._db.execute, "DELETE FROM conversations WHERE key = ?", (address_key(channel, address),)
        )

    async def is_opted_out(self, channel: str, address: str) -> bool:
        def work() -> bool:
            row = self._db.execute(
                "SELECT opted_out FROM opt_outs WHERE key = ?", (address_key(channel, address),)
            ).fetchone()
            return bool(row and row[0])

        return await self._run(work)

    async def set_opted_out(self, channel: str, address: str, opted_out: bool) -> None:
        await self._run(
            self._db.execute,
            "INSERT INTO opt_outs (key, opted_out, at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET opted_out = excluded.opted_out, at = excluded.at",
            (address_key(channel, address), int(opted_out), time.time()),
        )

    async def record_delivery(
        self, sid: str, status: str, error_code: str | None = None, request_id: str | None = None
    ) -> Delivery:
        def work() -> Delivery:
            now = time.time()
            row = self._db.execute(
                "SELECT status, error_code, request_id FROM deliveries WHERE sid = ?", (sid,)
            ).fetchone()
            old_status, old_error, old_request = row if row else (None, None, None)
            if old_status is not None and not should_replace(old_status, status):
                return Delivery(sid, old_status, old_error, old_request, now)
            record = Delivery(sid, status, error_code or old_error, request_id or old_request, now)
            self._db.execute(
                "INSERT INTO deliveries (sid, status, error_code, request_id, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sid) DO UPDATE SET status = excluded.status,"
                " error_code = excluded.error_code, request_id = excluded.request_id,"
                " updated_at = excluded.updated_at",
                (sid, record.status, record.error_code, record.request_id, now),
            )
            self._db.execute("DELETE FROM deliveries WHERE updated_at < ?", (now - DELIVERY_TTL_S,))
            return record

        return await self._run(self._tx, work)

    async def delivery(self, sid: str) -> Delivery | None:
        def work() -> Delivery | None:
            row = self._db.execute(
                "SELECT sid, status, error_code, request_id, updated_at FROM deliveries WHERE sid = ?", (sid,)
            ).fetchone()
            return Delivery(*row) if row else None

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(self._db.execute, "SELECT 1")

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisConversationStore:
    """Redis store: one conversation state for every web process on every host."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = "intake311") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix

    def _conv(self, channel: str, address: str) -> str:
        return f"{self._prefix}:conversation:{address_key(channel, address)}"

    def _opt(self, channel: str, address: str) -> str:
        return f"{self._prefix}:opt-out:{address_key(channel, address)}"

    def _delivery(self, sid: str) -> str:
        return f"{self._prefix}:delivery:{sid}"

    async def claim(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        key = self._conv(channel, address)
        ttl_ms = max(1, int(ttl_s * 1000))
        for _ in range(3):  # the existing one may expire between SET NX and GET
            if await self._redis.set(key, candidate.to_json(), nx=True, px=ttl_ms):
                return candidate
            raw = await self._redis.get(key)
            if raw is not None:
                return Conversation.from_json(raw)
        return candidate

    async def ask(self, channel: str, address: str, candidate: Conversation, ttl_s: float) -> Conversation:
        from redis.exceptions import WatchError

        key = self._conv(channel, address)
        ttl_ms = max(1, int(ttl_s * 1000))
        while True:  # optimistic: another process's write in between starts it again
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    stored = asked(Conversation.from_json(raw) if raw is not None else None, candidate)
                    pipe.multi()
                    pipe.set(key, stored.to_json(), px=ttl_ms)
                    await pipe.execute()
                except WatchError:
                    continue
                return stored

    async def get(self, channel: str, address: str) -> Conversation | None:
        raw = await self._redis.get(self._conv(channel, address))
        return Conversation.from_json(raw) if raw is not None else None

    async def put(self, channel: str, address: str, conversation: Conversation, ttl_s: float) -> None:
        await self._redis.set(
            self._conv(channel, address), conversation.to_json(), px=max(1, int(ttl_s * 1000))
        )

    async def release(self, channel: str, address: str, opened_by: str) -> None:
        key = self._conv(channel, address)
        raw = await self._redis.get(key)
        if raw is not None and Conversation.from_json(raw).opened_by == opened_by:
            await self._redis.delete(key)

    async def end(self, channel: str, address: str) -> None:
        await self._redis.delete(self._conv(channel, address))

    async def is_opted_out(self, channel: str, address: str) -> bool:
        return bool(await self._redis.exists(self._opt(channel, address)))

    async def set_opted_out(self, channel: str, address: str, opted_out: bool) -> None:
        key = self._opt(channel, address)
        if opted_out:
            await self._redis.set(key, str(int(time.time())))
        else:
            await self._redis.delete(key)

    async def record_delivery(
        self, sid: str, status: str, error_code: str | None = None, request_id: str | None = None
    ) -> Delivery:
        key = self._delivery(sid)
        old = cast("dict[str, str]", await self._redis.hgetall(key))  # decode_responses=True
        now = time.time()
        if old and not should_replace(old.get("status"), status):
            return Delivery(
                sid, old["status"], old.get("error_code") or None, old.get("request_id") or None, now
            )
        record = Delivery(
            sid,
            status,
            error_code or old.get("error_code") or None,
            request_id or old.get("request_id") or None,
            now,
        )
        fields: dict[FieldT, EncodableT] = {"status": record.status, "updated_at": str(now)}
        if record.error_code:
            fields["error_code"] = record.error_code
        if record.request_id:
            fields["request_id"] = record.request_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, DELIVERY_TTL_S)
            await pipe.execute()
        return record

    async def delivery(self, sid: str) -> Delivery | None:
        data = cast("dict[str, str]", await self._redis.hgetall(self._delivery(sid)))  # decode_responses=True
        if not data:
            return None
        return Delivery(
            sid,
            data["status"],
            data.get("error_code") or None,
            data.get("request_id") or None,
            float(data.get("updated_at", 0)),
        )

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str | None, data_dir: Path, *, prefix: str = "intake311") -> ConversationStore:
    """The store a ``state_url`` names: ``sqlite:///rel/or/abs.sqlite3``, ``redis://…``, or None.

    None means SQLite at ``data_dir/state.sqlite3``; a relative SQLite path is taken under
    ``data_dir`` so two deployments on one host do not share a file by accident.
    """
    if not url:
        return SqliteConversationStore(data_dir / "state.sqlite3")
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisConversationStore(url, prefix=prefix)
    if scheme == "sqlite":
        raw = url[len("sqlite://") :]
        raw = raw[1:] if raw.startswith("/") else raw  # sqlite:///x -> x ; sqlite:////abs -> /abs
        path = Path(raw)
        return SqliteConversationStore(path if path.is_absolute() else data_dir / path)
    raise ValueError(f"state_url must start with sqlite:/// or redis://, got scheme {scheme!r}")


def validate_state_url(url: str | None) -> str | None:
    """Config-time check of a ``state_url`` (so a typo stops the process at start)."""
    if url is None:
        return None
    scheme = urlsplit(url).scheme
    if scheme not in ("sqlite", "redis", "rediss", "unix"):
        raise ValueError("state_url must be sqlite:///PATH or redis://HOST:PORT/DB")
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise ValueError("a SQLite state_url is sqlite:///relative/path or sqlite:////absolute/path")
    return url
