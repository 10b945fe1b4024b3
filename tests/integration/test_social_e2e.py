"""Social channels end to end on the embedded broker: a mention in, a department's file and a reply out.

The X and Mastodon APIs are fake servers on local ports; the channels stage polls them, the
normalizer classifies, the router routes, the JSONL sink writes, and the outbound consumer
posts the acknowledgement back through the real SDKs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from channels.social.replies import reply_text
from intake311.pipeline import running
from schemas import ticket_for
from tests.integration.conftest import wait_for
from tests.support import DepartmentFiles, pipeline_settings
from tests.unit.test_social_fakes import CITY_HANDLE, FakeMastodon, FakeX, served

pytestmark = pytest.mark.integration


@dataclass
class SocialPipeline(DepartmentFiles):
    x: FakeX
    mastodon: FakeMastodon


@pytest.fixture(scope="module")
async def social(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SocialPipeline]:
    async with served(FakeX()) as x, served(FakeMastodon()) as mastodon:
        data_dir: Path = tmp_path_factory.mktemp("social")
        settings = pipeline_settings(
            data_dir,
            kafka_bootstrap,
            "it",
            channels={"x": x.config(poll_interval_s=0.2), "mastodon": mastodon.config(poll_interval_s=0.2)},
        )
        async with running(settings, ["channels", "normalizer", "router", "sinks"]):
            yield SocialPipeline(settings, x, mastodon)


def _replies_to(fake: FakeX, tweet_id: str) -> list[dict[str, Any]]:
    return [p.body for p in fake.posts if p.body["reply"]["in_reply_to_tweet_id"] == tweet_id]


async def test_x_mention_reaches_department_and_reply_carries_ticket(social: SocialPipeline) -> None:
    tweet_id = social.x.mention(f"@{CITY_HANDLE} streetlight out at Chapel St and College St")
    ticket = ticket_for(f"x:{tweet_id}")

    (line,) = await wait_for(
        lambda: social.for_ticket("transportation", ticket), what=f"{ticket} in transportation.jsonl"
    )
    assert line["service_code"] == "street-light" and line["agency_responsible"] == "transportation"
    assert line["channel"] == "x"
    assert line["description"] == "streetlight out at Chapel St and College St"
    assert "Chapel St" in (line["address_string"] or "")

    (reply,) = await wait_for(lambda: _replies_to(social.x, tweet_id), what="the reply at the fake X")
    assert reply["text"] == reply_text(ticket, "en")

    # The next poll and any replay add nothing: one ticket, one line, one reply.
    polls = len(social.x.gets)
    await wait_for(lambda: len(social.x.gets) >= polls + 3, what="three more polls")
    assert len(social.for_ticket("transportation", ticket)) == 1
    assert len(_replies_to(social.x, tweet_id)) == 1


async def test_x_reply_to_our_reply_continues_the_request(social: SocialPipeline) -> None:
    opening = social.x.mention(f"@{CITY_HANDLE} streetlight out on Crown St")
    ticket = ticket_for(f"x:{opening}")
    await wait_for(lambda: _replies_to(social.x, opening), what="the acknowledgement")
    our_reply = _posted_id(social.x, opening)

    follow = social.x.mention(
        f"@{CITY_HANDLE} it is the one outside 200 Crown Street",
        reply_to=our_reply,
        author=("42", "resident"),
    )
    merged = await wait_for(
        lambda: [
            line
            for line in social.for_ticket("transportation", ticket)
            if f"x:{follow}" in line["source_contact_ids"]
        ],
        what="the follow-up merged into the request",
    )
    assert merged[0]["source_contact_ids"] == [f"x:{opening}", f"x:{follow}"]
    (ack,) = await wait_for(lambda: _replies_to(social.x, follow), what="the follow-up acknowledgement")
    assert ack["text"] == reply_text(ticket, "en", follow_up=True)


def _posted_id(fake: FakeX, tweet_id: str) -> str:
    """The id the fake assigned to our reply under ``tweet_id``."""
    return next(
        p.created for p in fake.posts if p.created and p.body["reply"]["in_reply_to_tweet_id"] == tweet_id
    )


async def test_mastodon_mention_reaches_department_with_direct_reply(social: SocialPipeline) -> None:
    status_id = social.mastodon.mention(
        '<p><span class="h-card"><a href="https://city.social/@City311" class="u-url mention">@<span>'
        "City311</span></a></span> Graffiti all over the library wall at 133 Elm Street</p>"
    )
    ticket = ticket_for(f"mastodon:{status_id}")
    (line,) = await wait_for(
        lambda: social.for_ticket("public-works", ticket), what=f"{ticket} in public-works.jsonl"
    )
    assert line["service_code"] == "graffiti" and line["channel"] == "mastodon"
    (post,) = await wait_for(
        lambda: [p.body for p in social.mastodon.posts if p.body["in_reply_to_id"] == status_id],
        what="the reply at the fake Mastodon",
    )
    assert post["status"] == f"@resident@example.social {reply_text(ticket, 'en')}"
    assert post["visibility"] == "direct"
