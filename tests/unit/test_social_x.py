"""The X channel against a fake X API v2 on a local port (tweepy makes real HTTP requests)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.plugin import SendError
from channels.social.replies import personal_data_in, reply_text
from channels.social.x import XChannel
from schemas import SenderKind, make_contact_id, ticket_for
from schemas.outbound import MessageKind, OutboundMessage
from tests.unit.test_social_fakes import (
    CITY_HANDLE,
    CITY_USER_ID,
    X_TOKENS,
    Failure,
    FakeX,
    make_channel,
    served,
    wait_until,
)

POI = {"id": "01a9a39529b27f36", "full_name": "Chapel St & College St", "place_type": "poi"}
CITY = {"id": "0c2e6999105f8070", "full_name": "New Haven, CT", "place_type": "city"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeX]:
    async with served(FakeX()) as x:
        yield x


def channel(fake: FakeX, data_dir: Path, **overrides: object) -> XChannel:
    return make_channel(XChannel, fake.config(backfill=20, **overrides), data_dir)


async def test_mention_becomes_contact_with_geo_media_and_acknowledgement(
    fake: FakeX, tmp_path: Path
) -> None:
    tweet_id = fake.mention(
        f"@{CITY_HANDLE} streetlight out at Chapel St and College St",
        point=(41.3083, -72.9279),
        place=POI,
        photos=["https://pbs.twimg.com/media/abc.jpg"],
    )
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 1

    (contact,) = plugin.context.publisher.contacts
    assert contact.contact_id == make_contact_id("x", tweet_id) == f"x:{tweet_id}"
    assert contact.request_id == ticket_for(contact.contact_id)
    assert contact.channel == "x" and not contact.continues
    assert contact.text == "streetlight out at Chapel St and College St"
    assert (contact.location.lat, contact.location.long) == (41.3083, -72.9279)
    assert contact.location.address == "Chapel St & College St"
    assert [(m.url, m.content_type) for m in contact.media] == [
        ("https://pbs.twimg.com/media/abc.jpg", "image/jpeg")
    ]
    assert contact.sender.kind == SenderKind.SOCIAL and contact.sender.address == "@resident"
    assert contact.reply.thread == tweet_id and contact.reply.channel == "x"

    (ack,) = plugin.context.outbox.messages
    assert ack.kind == MessageKind.ACKNOWLEDGEMENT and ack.channel == "x"
    assert ack.thread == tweet_id and ack.request_id == contact.request_id
    assert ack.text == reply_text(contact.request_id, "en")

    # tweepy asked for what the mapping needs, as the app (bearer token).
    (call,) = fake.gets
    assert set(call.params["expansions"].split(",")) >= {
        "geo.place_id",
        "attachments.media_keys",
        "author_id",
    }
    assert {"created_at", "geo", "conversation_id", "referenced_tweets"} <= set(
        call.params["tweet.fields"].split(",")
    )
    assert {"url", "preview_image_url", "type"} <= set(call.params["media.fields"].split(","))
    assert {"full_name", "geo"} <= set(call.params["place.fields"].split(","))
    assert call.headers["authorization"] == f"Bearer {X_TOKENS['bearer_token']}"
    assert plugin.state.checkpoint() == tweet_id


async def test_a_city_place_is_not_taken_as_the_address(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} pothole on Elm Street", place=CITY)
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    (contact,) = plugin.context.publisher.contacts
    assert contact.location is None  # the normalizer finds "Elm Street" in the text instead
    assert contact.metadata["place"] == "New Haven, CT"


async def test_second_poll_sends_since_id_and_restart_does_not_duplicate(fake: FakeX, tmp_path: Path) -> None:
    first = fake.mention(f"@{CITY_HANDLE} graffiti on the library")
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    assert "since_id" not in fake.gets[0].params

    second = fake.mention(f"@{CITY_HANDLE} missed trash pickup on Orange St")
    await plugin.poll_once()
    assert fake.gets[1].params["since_id"] == first
    assert [c.contact_id for c in plugin.context.publisher.contacts] == [f"x:{first}", f"x:{second}"]
    await plugin.stop()

    restarted = channel(fake, tmp_path)  # a new process: same data directory, nothing in memory
    assert await restarted.poll_once() == 0
    assert fake.gets[2].params["since_id"] == second
    assert restarted.context.publisher.contacts == []
    await restarted.stop()


async def test_backlog_is_paged_and_published_oldest_first(fake: FakeX, tmp_path: Path) -> None:
    plugin = channel(fake, tmp_path)
    seed = fake.mention(f"@{CITY_HANDLE} first")
    await plugin.poll_once()
    fake.page_limit = 2
    ids = [fake.mention(f"@{CITY_HANDLE} report {n}") for n in range(5)]
    assert await plugin.poll_once() == 5
    assert [c.contact_id for c in plugin.context.publisher.contacts[1:]] == [f"x:{i}" for i in ids]
    pages = fake.gets[1:]
    assert len(pages) == 3 and all(p.params["since_id"] == seed for p in pages)
    assert [p.params.get("pagination_token") for p in pages] == [None, "2", "4"]
    assert plugin.state.checkpoint() == ids[-1]


async def test_checkpoint_moves_only_after_publishing(fake: FakeX, tmp_path: Path) -> None:
    tweet_id = fake.mention(f"@{CITY_HANDLE} dead animal on Main St")
    plugin = channel(fake, tmp_path)
    plugin.context.publisher.fail_next = 1
    with pytest.raises(Exception, match="broker down"):
        await plugin.poll_once()
    assert plugin.state.checkpoint() is None
    assert await plugin.poll_once() == 1
    assert plugin.context.publisher.contacts[0].contact_id == f"x:{tweet_id}"


async def test_first_start_skips_history_unless_backfilled(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} old complaint", created_at="2020-01-01T00:00:00.000Z")
    plugin = make_channel(XChannel, fake.config(), tmp_path)  # backfill 0
    await plugin.start()
    await plugin.stop()
    plugin = make_channel(XChannel, fake.config(), tmp_path)
    new = fake.mention(f"@{CITY_HANDLE} new pothole on Elm St")
    await plugin.poll_once()
    assert [c.contact_id for c in plugin.context.publisher.contacts] == [f"x:{new}"]


async def test_rate_limit_reset_is_honoured(fake: FakeX, tmp_path: Path) -> None:
    reset = int(time.time()) + 2
    fake.get_failures.append(
        Failure(429, {"title": "Too Many Requests", "status": 429}, {"x-rate-limit-reset": str(reset)})
    )
    tweet_id = fake.mention(f"@{CITY_HANDLE} broken sidewalk on Crown St")
    plugin = channel(fake, tmp_path)  # polls every 0.05 s
    await plugin.start()
    try:
        await wait_until(
            lambda: plugin.context.publisher.contacts, timeout=10, what="a contact after the reset"
        )
        health = await plugin.health()
    finally:
        await plugin.stop()
    assert len(fake.gets) == 2, "polled again before the rate limit reset"
    assert fake.gets[1].at >= reset
    assert plugin.context.publisher.contacts[0].contact_id == f"x:{tweet_id}"
    assert health.ok


async def test_reply_posts_exact_ticket_text_without_personal_data(fake: FakeX, tmp_path: Path) -> None:
    tweet_id = fake.mention(
        f"@{CITY_HANDLE} Jane Doe here, pothole outside 12 Elm Street. Call me 203-555-0142 "
        "or jane.doe@example.org"
    )
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    (ack,) = plugin.context.outbox.messages
    await plugin.send(ack)

    (post,) = fake.posts
    ticket = ticket_for(f"x:{tweet_id}")
    assert post.body == {"text": reply_text(ticket, "en"), "reply": {"in_reply_to_tweet_id": tweet_id}}
    assert post.body["text"] == (
        f"Thanks for reporting this to 311. Your ticket number is {ticket}. "
        "Reply here to add details, but please don't post personal information."
    )
    for personal in ("Jane", "Doe", "Elm", "12 ", "203", "555", "0142", "example.org", "@resident"):
        assert personal not in post.body["text"]
    assert post.headers["authorization"].startswith("OAuth ")  # user context, not the app token


async def test_spanish_mention_gets_spanish_reply(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} hay un bache enorme en la calle Chapel, por favor")
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    (ack,) = plugin.context.outbox.messages
    assert ack.language == "es"
    assert ack.text.startswith("Gracias por reportar esto al 311. Su número de caso es ")


async def test_reply_to_our_reply_continues_the_ticket(fake: FakeX, tmp_path: Path) -> None:
    opening = fake.mention(f"@{CITY_HANDLE} streetlight out on Chapel St")
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    await plugin.send(plugin.context.outbox.messages[0])
    (our_reply,) = fake.post_ids
    ticket = ticket_for(f"x:{opening}")

    follow = fake.mention(f"@{CITY_HANDLE} @resident it is the pole next to the bus stop", reply_to=our_reply)
    other = fake.mention(f"@{CITY_HANDLE} any news on {ticket.lower()}?", author=("43", "neighbour"))
    await plugin.poll_once()
    contacts = {c.contact_id: c for c in plugin.context.publisher.contacts}
    assert contacts[f"x:{follow}"].request_id == ticket and contacts[f"x:{follow}"].continues
    assert contacts[f"x:{follow}"].text == "@resident it is the pole next to the bus stop"
    assert contacts[f"x:{other}"].request_id == ticket and contacts[f"x:{other}"].continues
    follow_ack = plugin.context.outbox.messages[1]
    assert follow_ack.thread == follow and follow_ack.text == reply_text(ticket, "en", follow_up=True)


async def test_own_tweets_are_not_ticketed(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} reminder: bulk pickup is on Monday", author=(CITY_USER_ID, CITY_HANDLE))
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 0
    assert plugin.state.checkpoint() is not None


def _message(text: str = "Your ticket K7M4-QPXA is closed.") -> OutboundMessage:
    return OutboundMessage(
        message_id="m1",
        request_id="K7M4-QPXA",
        channel="x",
        to="@resident",
        thread="1800000000000000001",
        kind=MessageKind.STATUS,
        text=text,
    )


@pytest.mark.parametrize(
    ("status", "body", "retryable", "reason"),
    [
        (429, {"title": "Too Many Requests"}, True, "rate limited"),
        (503, {"title": "Service Unavailable"}, True, "503"),
        (401, {"title": "Unauthorized"}, False, "401"),
        (
            403,
            {"detail": "You are not allowed to create a Tweet with duplicate content.", "status": 403},
            False,
            "duplicate content",
        ),
    ],
)
async def test_send_errors_are_mapped(
    fake: FakeX, tmp_path: Path, status: int, body: dict, retryable: bool, reason: str
) -> None:
    headers = {"x-rate-limit-reset": str(int(time.time()) + 600)} if status == 429 else {}
    fake.post_failures.append(Failure(status, body, headers))
    plugin = channel(fake, tmp_path)
    with pytest.raises(SendError, match=reason) as caught:
        await plugin.send(_message())
    assert caught.value.retryable is retryable
    if status == 429:  # the next attempt waits for the reset (too long here) instead of calling X
        with pytest.raises(SendError, match="rate limited for another") as again:
            await plugin.send(_message())
        assert again.value.retryable and len(fake.posts) == 1


async def test_send_refuses_personal_data(fake: FakeX, tmp_path: Path) -> None:
    plugin = channel(fake, tmp_path)
    with pytest.raises(SendError, match="phone") as caught:
        await plugin.send(_message("We called you at +1 203 555 0142 about K7M4-QPXA"))
    assert not caught.value.retryable and fake.posts == []


async def test_tokens_never_reach_the_logs(
    fake: FakeX, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.mention(f"@{CITY_HANDLE} noise complaint on Park St")
    plugin = channel(fake, tmp_path)
    with caplog.at_level(logging.DEBUG):
        await plugin.poll_once()
        await plugin.send(plugin.context.outbox.messages[0])
    logged = caplog.text + repr(plugin.config)
    assert caplog.records, "expected debug logs from tweepy/urllib3"
    for token in X_TOKENS.values():
        assert token not in logged


def test_config_needs_credentials() -> None:
    from pydantic import ValidationError

    from channels.social.x import XConfig

    with pytest.raises(ValidationError, match="replies need"):
        XConfig(handle=CITY_HANDLE, user_id=CITY_USER_ID, bearer_token="b")
    with pytest.raises(ValidationError, match="missing access_token_secret"):
        XConfig(handle=CITY_HANDLE, user_id=CITY_USER_ID, **{**X_TOKENS, "access_token_secret": None})
    with pytest.raises(ValidationError, match="X_MISSING_ENV is not set"):
        XConfig(handle=CITY_HANDLE, user_id=CITY_USER_ID, acknowledge=False, bearer_token_env="X_MISSING_ENV")
    read_only = XConfig(handle="@City311", user_id=CITY_USER_ID, bearer_token="b", acknowledge=False)
    assert read_only.handle == "City311" and not read_only.has_user_auth


async def test_threads_by_the_same_author_continue_but_strangers_open_new_tickets(
    fake: FakeX, tmp_path: Path
) -> None:
    opening = fake.mention(f"@{CITY_HANDLE} water main leak on Elm St &amp; Orange St (1/2)")
    own_thread = fake.mention(f"@{CITY_HANDLE} (2/2) water is flooding the basement", reply_to=opening)
    stranger = fake.mention(
        f"@{CITY_HANDLE} @resident same on my street", reply_to=opening, author=("43", "n8")
    )
    handle_only = fake.mention(f"@{CITY_HANDLE} @jdoe1985 pothole on Park St", author=("44", "someone"))
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    contacts = {c.contact_id: c for c in plugin.context.publisher.contacts}
    ticket = ticket_for(f"x:{opening}")
    assert contacts[f"x:{opening}"].text == "water main leak on Elm St & Orange St (1/2)"
    assert contacts[f"x:{own_thread}"].request_id == ticket and contacts[f"x:{own_thread}"].continues
    assert contacts[f"x:{stranger}"].request_id == ticket_for(f"x:{stranger}")
    assert not contacts[f"x:{stranger}"].continues
    assert contacts[f"x:{handle_only}"].request_id == ticket_for(f"x:{handle_only}")  # not "JD0E-1985"


async def test_unrepresentable_mention_is_skipped_not_blocking(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} broken geo", point=(200.0, 10.0))
    good = fake.mention(f"@{CITY_HANDLE} graffiti on Chapel St")
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 1
    assert [c.contact_id for c in plugin.context.publisher.contacts] == [f"x:{good}"]
    assert plugin.state.checkpoint() == good
    assert (await plugin.health()).ok


# ---- emergencies: the public reply says "call 911" first ----------------------------------------


@pytest.mark.parametrize(
    ("text", "lang", "first"),
    [
        ("I smell gas in my kitchen on Elm Street", "en", "If anyone is in danger, call 911 now"),
        ("huele a gas en la cocina, calle Elm", "es", "Si alguien está en peligro, llame al 911 ahora"),
    ],
)
async def test_an_emergency_mention_is_published_and_the_reply_says_call_911_first(
    fake: FakeX, tmp_path: Path, text: str, lang: str, first: str
) -> None:
    fake.mention(f"@{CITY_HANDLE} {text}")
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 1
    (contact,) = plugin.context.publisher.contacts
    (ack,) = plugin.context.outbox.messages
    assert contact.language == lang
    assert ack.text.startswith(first) and contact.request_id in ack.text
    assert len(ack.text) <= 280 and personal_data_in(ack.text) == []
    assert "kitchen" not in ack.text and "cocina" not in ack.text  # nothing of the resident's


async def test_an_ordinary_mention_reply_has_no_911_line(fake: FakeX, tmp_path: Path) -> None:
    fake.mention(f"@{CITY_HANDLE} huge pothole outside 12 Elm Street")
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 1
    (ack,) = plugin.context.outbox.messages
    assert "911" not in ack.text
