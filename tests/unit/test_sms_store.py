"""The conversation/opt-out store, SQLite and Redis: same behaviour, checked by the same tests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.conversation import (
    LOCATION,
    QUESTION,
    Conversation,
    ConversationStore,
    RedisConversationStore,
    SqliteConversationStore,
    address_key,
    open_store,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
NUMBER = "+12035551234"


async def redis_or_skip() -> RedisConversationStore:
    store = RedisConversationStore(REDIS_URL, prefix="test" + secrets.token_hex(6))
    try:
        await asyncio.wait_for(store.ping(), 2)
    except Exception as exc:
        await store.close()
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    return store


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    made: ConversationStore
    if request.param == "sqlite":
        made = SqliteConversationStore(tmp_path / "state.sqlite3")
    else:
        made = await redis_or_skip()
    yield made
    if isinstance(made, RedisConversationStore):
        await forget_test_keys(made)
    await made.close()


async def forget_test_keys(store: RedisConversationStore) -> None:
    """Leave a shared Redis as we found it (opt-outs never expire on their own)."""
    redis = store._redis
    keys = [key async for key in redis.scan_iter(match=f"{store._prefix}:*")]
    if keys:
        await redis.delete(*keys)


def conversation(ticket: str = "K7M4-QPXA", opened_by: str = "sms:SM1", **fields: object) -> Conversation:
    return Conversation(request_id=ticket, opened_by=opened_by, **fields)  # type: ignore[arg-type]


async def test_claim_is_first_come_and_get_sees_it(store: ConversationStore) -> None:
    first = conversation(opened_by="sms:SM1", awaiting="location")
    assert await store.claim("sms", NUMBER, first, 60) == first
    second = conversation("AAAA-BBBB", opened_by="sms:SM2")
    assert await store.claim("sms", NUMBER, second, 60) == first
    assert await store.get("sms", NUMBER) == first
    assert await store.get("sms", "+12035550000") is None
    assert await store.get("email", NUMBER) is None  # channels do not share conversations


async def test_claims_racing_from_many_tasks_agree_on_one_conversation(store: ConversationStore) -> None:
    candidates = [conversation(f"T{i:03d}-AAAA", opened_by=f"sms:SM{i}") for i in range(20)]
    won = await asyncio.gather(*(store.claim("sms", NUMBER, c, 60) for c in candidates))
    assert len({w.opened_by for w in won}) == 1


async def test_conversations_expire(store: ConversationStore) -> None:
    await store.claim("sms", NUMBER, conversation(), 0.2)
    await asyncio.sleep(0.35)
    assert await store.get("sms", NUMBER) is None
    fresh = conversation("AAAA-BBBB", opened_by="sms:SM9")
    assert await store.claim("sms", NUMBER, fresh, 60) == fresh


async def test_put_release_and_end(store: ConversationStore) -> None:
    opened = conversation(awaiting="location")
    await store.claim("sms", NUMBER, opened, 60)
    answered = opened.touched(awaiting=None, messages=2)
    await store.put("sms", NUMBER, answered, 60)
    assert await store.get("sms", NUMBER) == answered
    await store.release("sms", NUMBER, "sms:SOMEONE-ELSE")
    assert await store.get("sms", NUMBER) == answered
    await store.release("sms", NUMBER, opened.opened_by)
    assert await store.get("sms", NUMBER) is None
    await store.put("sms", NUMBER, answered, 60)
    await store.end("sms", NUMBER)
    assert await store.get("sms", NUMBER) is None


async def test_asking_keeps_the_tickets_conversation_and_replaces_any_other(store: ConversationStore) -> None:
    """We texted a question: the number's next message answers it, on the question's ticket."""
    opened = conversation(awaiting=LOCATION, language="es", messages=2)
    await store.claim("sms", NUMBER, opened, 60)
    asked = await store.ask("sms", NUMBER, conversation(opened_by="outbound:m1", awaiting=QUESTION), 60)
    # The same ticket: its opener, language and count stay (a retry of its first text is no answer).
    assert (asked.opened_by, asked.language, asked.messages, asked.awaiting) == ("sms:SM1", "es", 2, QUESTION)
    assert await store.get("sms", NUMBER) == asked
    # Another ticket's question (the resident answers the last thing we asked), or no conversation.
    other = conversation("AAAA-BBBB", opened_by="outbound:m2", awaiting=QUESTION)
    assert await store.ask("sms", NUMBER, other, 60) == other
    assert await store.get("sms", NUMBER) == other
    await store.end("sms", NUMBER)
    assert await store.ask("sms", NUMBER, other, 60) == other
    assert await store.get("sms", NUMBER) == other


async def test_asking_restarts_the_window(store: ConversationStore) -> None:
    await store.claim("sms", NUMBER, conversation(), 0.2)
    await store.ask("sms", NUMBER, conversation(opened_by="outbound:m1", awaiting=QUESTION), 60)
    await asyncio.sleep(0.35)
    live = await store.get("sms", NUMBER)
    assert live is not None and live.awaiting == QUESTION and live.opened_by == "sms:SM1"


async def test_asks_racing_claims_end_with_the_question(store: ConversationStore) -> None:
    """A claim writes only where nothing is live, an ask always writes: whatever the order, the
    number ends up waiting for the answer, and at most one text opened a conversation."""
    question = conversation(opened_by="outbound:m1", awaiting=QUESTION)
    texts = [conversation(f"T{i:03d}-AAAA", opened_by=f"sms:SM{i}") for i in range(10)]
    results = await asyncio.gather(
        *(store.claim("sms", NUMBER, c, 60) for c in texts[:5]),
        *(store.ask("sms", NUMBER, question, 60) for _ in range(5)),
        *(store.claim("sms", NUMBER, c, 60) for c in texts[5:]),
    )
    live = await store.get("sms", NUMBER)
    assert live is not None and (live.request_id, live.awaiting) == (question.request_id, QUESTION)
    claimed = [r for r, c in zip(results[:5] + results[10:], texts, strict=True) if r == c]
    assert len(claimed) <= 1


async def test_opt_out_is_kept_until_opt_in(store: ConversationStore) -> None:
    assert not await store.is_opted_out("sms", NUMBER)
    await store.set_opted_out("sms", NUMBER, True)
    assert await store.is_opted_out("sms", NUMBER)
    assert await store.is_opted_out("sms", " +1 203 555 1234 ")  # spacing does not matter
    assert not await store.is_opted_out("sms", "+12035550000")
    await store.set_opted_out("sms", NUMBER, False)
    assert not await store.is_opted_out("sms", NUMBER)


async def test_delivery_status_never_goes_backwards(store: ConversationStore) -> None:
    sid = "SM" + secrets.token_hex(16)
    await store.record_delivery(sid, "queued", request_id="K7M4-QPXA")
    await store.record_delivery(sid, "delivered")
    record = await store.record_delivery(sid, "sent")
    assert record.status == "delivered"
    stored = await store.delivery(sid)
    assert stored is not None
    assert (stored.status, stored.request_id) == ("delivered", "K7M4-QPXA")
    failed = await store.record_delivery("SM" + secrets.token_hex(16), "undelivered", "30006")
    assert failed.error_code == "30006"
    assert await store.delivery("SMnothing") is None
    await store.ping()


async def test_sqlite_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteConversationStore(path)
    await first.claim("sms", NUMBER, conversation(), 600)
    await first.set_opted_out("sms", "+12035559999", True)
    await first.close()
    again = SqliteConversationStore(path)
    assert await again.get("sms", NUMBER) == conversation()
    assert await again.is_opted_out("sms", "+12035559999")
    await again.close()
    # No phone number is stored in clear.
    assert NUMBER.encode() not in path.read_bytes()
    assert NUMBER[1:].encode() not in path.read_bytes()


async def test_sqlite_is_shared_between_two_connections(tmp_path: Path) -> None:
    """Two web processes on one host: two connections to one WAL file see each other's claims."""
    path = tmp_path / "shared.sqlite3"
    one, two = SqliteConversationStore(path), SqliteConversationStore(path)
    first = await one.claim("sms", NUMBER, conversation(opened_by="sms:A"), 60)
    second = await two.claim("sms", NUMBER, conversation("AAAA-BBBB", opened_by="sms:B"), 60)
    assert first == second
    await one.close()
    await two.close()


async def test_open_store_chooses_by_url(tmp_path: Path) -> None:
    default = open_store(None, tmp_path)
    assert isinstance(default, SqliteConversationStore) and default.path == tmp_path / "state.sqlite3"
    relative = open_store("sqlite:///sub/state.db", tmp_path)
    assert isinstance(relative, SqliteConversationStore) and relative.path == tmp_path / "sub" / "state.db"
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db", tmp_path / "elsewhere")
    assert isinstance(absolute, SqliteConversationStore) and absolute.path == tmp_path / "abs.db"
    redis_store = open_store(REDIS_URL, tmp_path)
    assert isinstance(redis_store, RedisConversationStore)
    for made in (default, relative, absolute, redis_store):
        await made.close()
    with pytest.raises(ValueError):
        open_store("postgres://x/y", tmp_path)


def test_address_keys_are_hashes_scoped_by_channel() -> None:
    key = address_key("sms", NUMBER)
    assert NUMBER[1:] not in key
    assert key == address_key("sms", "+1 203 555 1234")
    assert key != address_key("email", NUMBER)
