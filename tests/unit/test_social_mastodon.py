"""The Mastodon channel against a fake Mastodon server on a local port (Mastodon.py makes real requests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels.plugin import SendError
from channels.social.mastodon import MastodonChannel, html_to_text
from channels.social.replies import reply_text
from schemas import SenderKind, ticket_for
from schemas.outbound import MessageKind
from tests.unit.test_social_fakes import (
    CITY_HANDLE,
    MASTODON_TOKEN,
    Failure,
    FakeMastodon,
    make_channel,
    served,
    wait_until,
)

MENTION_HTML = (
    '<p><span class="h-card"><a href="https://city.social/@City311" class="u-url mention">'
    "@<span>City311</span></a></span> Streetlight out at Chapel St &amp; College St<br />"
    "since Tuesday</p>"
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeMastodon]:
    async with served(FakeMastodon()) as server:
        yield server


def channel(fake: FakeMastodon, data_dir: Path, **overrides: object) -> MastodonChannel:
    return make_channel(MastodonChannel, fake.config(backfill=20, **overrides), data_dir)


def test_html_is_stripped() -> None:
    assert html_to_text(MENTION_HTML) == "@City311 Streetlight out at Chapel St & College St\nsince Tuesday"
    assert html_to_text("<p>one</p><p>two &lt;3</p>") == "one\n\ntwo <3"


async def test_mention_becomes_contact_and_acknowledgement(fake: FakeMastodon, tmp_path: Path) -> None:
    status_id = fake.mention(MENTION_HTML, images=["https://files.example.social/photo.png"])
    fake.mention("<p>a boost</p>", kind="reblog")
    plugin = channel(fake, tmp_path)
    assert await plugin.poll_once() == 1

    (contact,) = plugin.context.publisher.contacts
    assert contact.contact_id == f"mastodon:{status_id}"
    assert contact.request_id == ticket_for(contact.contact_id)
    assert contact.text == "Streetlight out at Chapel St & College St\nsince Tuesday"
    assert contact.sender.kind == SenderKind.SOCIAL
    assert contact.sender.address == "@resident@example.social"
    assert [(m.url, m.content_type) for m in contact.media] == [
        ("https://files.example.social/photo.png", "image/png")
    ]
    (ack,) = plugin.context.outbox.messages
    assert ack.thread == status_id and ack.kind == MessageKind.ACKNOWLEDGEMENT
    assert ack.text == reply_text(contact.request_id, "en")

    (call,) = fake.gets
    assert call.params["types[]"] == ["mention"]
    assert call.headers["authorization"] == f"Bearer {MASTODON_TOKEN}"
    assert fake.other_paths == []  # no version check or other calls
    assert plugin.state.checkpoint() == "1001"  # the reblog (1002) was filtered by types[]


async def test_checkpoint_is_sent_and_survives_restart(fake: FakeMastodon, tmp_path: Path) -> None:
    fake.mention(MENTION_HTML)
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    second = fake.mention("<p>@City311 graffiti on the library wall</p>")
    await plugin.poll_once()
    assert fake.gets[1].params["min_id"] == "1001"
    assert [c.contact_id for c in plugin.context.publisher.contacts][-1] == f"mastodon:{second}"
    await plugin.stop()

    restarted = channel(fake, tmp_path)
    assert await restarted.poll_once() == 0
    assert fake.gets[2].params["min_id"] == "1002"
    await restarted.stop()


async def test_a_burst_larger_than_a_page_is_read_forward_without_gaps(
    fake: FakeMastodon, tmp_path: Path
) -> None:
    fake.mention("<p>@City311 first</p>")
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    ids = [fake.mention(f"<p>@City311 report {n}</p>") for n in range(45)]
    assert await plugin.poll_once() == 45
    assert [c.contact_id for c in plugin.context.publisher.contacts[1:]] == [f"mastodon:{i}" for i in ids]
    assert [c.params["min_id"] for c in fake.gets[1:]] == ["1001", "1041"]


async def test_rate_limit_reset_is_honoured(fake: FakeMastodon, tmp_path: Path) -> None:
    reset = int(time.time()) + 2
    fake.get_failures.append(
        Failure(
            429,
            {"error": "Too many requests"},
            {
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": datetime.fromtimestamp(reset, UTC).isoformat(),
            },
        )
    )
    status_id = fake.mention(MENTION_HTML)
    plugin = channel(fake, tmp_path)
    await plugin.start()
    try:
        await wait_until(
            lambda: plugin.context.publisher.contacts, timeout=10, what="a contact after the reset"
        )
    finally:
        await plugin.stop()
    assert len(fake.gets) == 2, "polled again before the rate limit reset"
    assert fake.gets[1].at >= reset
    assert plugin.context.publisher.contacts[0].contact_id == f"mastodon:{status_id}"


async def test_direct_reply_with_ticket_and_no_personal_data(fake: FakeMastodon, tmp_path: Path) -> None:
    status_id = fake.mention(
        "<p>@City311 I'm Jane Doe, there is a pothole outside 12 Elm Street. "
        "Text me on (203) 555-0142 or mail jane.doe@example.org</p>"
    )
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    (ack,) = plugin.context.outbox.messages
    await plugin.send(ack)

    (post,) = fake.posts
    ticket = ticket_for(f"mastodon:{status_id}")
    assert post.body == {
        "status": f"@resident@example.social {reply_text(ticket, 'en')}",
        "in_reply_to_id": status_id,
        "visibility": "direct",
        "sensitive": "0",
    }
    assert post.headers["idempotency-key"] == ack.message_id
    for personal in ("Jane", "Doe", "Elm", "203", "555", "0142", "example.org"):
        assert personal not in post.body["status"]


async def test_reply_to_our_reply_continues_and_visibility_is_configurable(
    fake: FakeMastodon, tmp_path: Path
) -> None:
    opening = fake.mention(MENTION_HTML)
    plugin = channel(fake, tmp_path, reply_visibility="unlisted")
    await plugin.poll_once()
    await plugin.send(plugin.context.outbox.messages[0])
    assert fake.posts[0].body["visibility"] == "unlisted"
    (our_reply,) = fake.post_ids
    follow = fake.mention("<p>@City311 the pole is by the bus stop</p>", reply_to=our_reply)
    await plugin.poll_once()
    contact = plugin.context.publisher.contacts[-1]
    assert contact.contact_id == f"mastodon:{follow}"
    assert contact.request_id == ticket_for(f"mastodon:{opening}") and contact.continues


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (503, True), (401, False), (404, False), (422, False)]
)
async def test_send_errors_are_mapped(
    fake: FakeMastodon, tmp_path: Path, status: int, retryable: bool
) -> None:
    fake.mention(MENTION_HTML)
    plugin = channel(fake, tmp_path)
    await plugin.poll_once()
    fake.post_failures.append(Failure(status, {"error": "nope"}))
    with pytest.raises(SendError) as caught:
        await plugin.send(plugin.context.outbox.messages[0])
    assert caught.value.retryable is retryable


def test_config_needs_a_token() -> None:
    from pydantic import ValidationError

    from channels.social.mastodon import MastodonConfig

    with pytest.raises(ValidationError, match="access_token"):
        MastodonConfig(handle=CITY_HANDLE, api_base_url="https://city.social")
    with pytest.raises(ValidationError, match="reply_visibility"):
        MastodonConfig(
            handle=CITY_HANDLE, api_base_url="https://city.social", access_token="t", reply_visibility="x"
        )
