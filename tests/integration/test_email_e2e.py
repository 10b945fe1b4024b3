"""The email channel end to end on the embedded broker.

A resident emails the SMTP listener with a photo; the request reaches the department's JSONL
file with the photo's URL; the acknowledgement reaches the (fake, real-SMTP) relay; the
resident's reply to it adds to the same request instead of opening a second ticket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from intake311.pipeline import running, web_app
from schemas import make_contact_id, ticket_for
from tests.integration.conftest import wait_for
from tests.support import DepartmentFiles, asgi_client, free_port, jsonl_subscriptions, pipeline_settings
from tests.unit.test_email_support import MAILBOX, PNG, Relay, fake_relay, make_message

pytestmark = pytest.mark.integration


@dataclass
class EmailPipeline(DepartmentFiles):
    web: httpx.AsyncClient
    relay: Relay
    smtp_port: int

    async def mail(self, message: EmailMessage) -> str:
        _, response = await aiosmtplib.send(
            message, hostname="127.0.0.1", port=self.smtp_port, start_tls=False, use_tls=False, timeout=20
        )
        return response


@pytest.fixture(scope="module")
async def email_pipeline(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EmailPipeline]:
    data_dir: Path = tmp_path_factory.mktemp("var-email")
    smtp_port = free_port()
    async with fake_relay() as relay:
        settings = pipeline_settings(
            data_dir,
            kafka_bootstrap,
            "itmail",
            subscriptions_file=jsonl_subscriptions(data_dir),
            web={"base_url": "http://testserver"},
            channels={
                "email": {
                    "addresses": [MAILBOX],
                    "from_name": "City 311",
                    "domain": "city.example",
                    "smtp": {"host": "127.0.0.1", "port": smtp_port},
                    "relay": {"host": "127.0.0.1", "port": relay.port, "security": "none"},
                }
            },
        )
        async with (
            running(settings, ["web", "channels", "normalizer", "router", "sinks"]) as runtime,
            asgi_client(web_app(runtime)) as web,
        ):
            yield EmailPipeline(settings, web, relay, smtp_port)


async def test_email_with_photo_reply_adds_to_the_same_request(email_pipeline: EmailPipeline) -> None:
    pipeline = email_pipeline
    first = make_message(
        "Someone spray painted graffiti tags all over the library wall at 133 Elm Street last night.",
        subject="Graffiti on the library",
        sender="Ana Resident <ana@example.org>",
        message_id="<e2e-1@example.org>",
        images=[("wall.png", PNG)],
    )
    ticket = ticket_for(make_contact_id("email", "e2e-1@example.org"))
    assert ticket in await pipeline.mail(first)

    line = await wait_for(
        lambda: next((r for r in pipeline.lines("public-works") if r["request_id"] == ticket), None),
        what=f"{ticket} in public-works.jsonl",
    )
    assert line["service_code"] == "graffiti"
    assert line["channel"] == "email"
    assert line["media_url"] and line["media_url"].startswith("http://testserver/channels/email/media/")
    photo = await pipeline.web.get(line["media_url"].removeprefix("http://testserver"))
    assert photo.status_code == 200 and photo.content == PNG

    # The acknowledgement went out through the relay, threaded under the resident's message.
    ack = await wait_for(
        lambda: next((m for m in pipeline.relay.messages if m["In-Reply-To"] == "<e2e-1@example.org>"), None),
        what="the acknowledgement at the relay",
    )
    assert ack["To"] == "ana@example.org"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert str(ack["Message-ID"]).startswith(f"<311.{ticket}.")
    assert ticket in ack.get_content()

    # The resident answers the acknowledgement: same request, not a second ticket.
    reply = make_message(
        "They also tagged the side door, see the second photo.\n\n"
        f"On Mon, Nov 2, 2026 at 9:31 AM City 311 <{MAILBOX}> wrote:\n> Your ticket number is {ticket}.",
        subject=str(ack["Subject"]).replace("Re: ", "Re: Re: ", 1),
        sender="Ana Resident <ana@example.org>",
        message_id="<e2e-2@example.org>",
        headers={
            "In-Reply-To": str(ack["Message-ID"]),
            "References": f"<e2e-1@example.org> {ack['Message-ID']}",
        },
    )
    assert ticket in await pipeline.mail(reply)

    def merged() -> dict[str, Any] | None:
        mine = [r for r in pipeline.lines("public-works") if r["request_id"] == ticket]
        if mine and "side door" in mine[-1]["description"]:
            return mine[-1]
        return None

    last = await wait_for(merged, what=f"the reply merged into {ticket}")
    assert "library wall" in last["description"] and "side door" in last["description"]
    assert "Your ticket number" not in last["description"]  # the quoted acknowledgement is stripped
    assert last["media_url"] == line["media_url"]
    # One ticket per incident: no other request carries the reply.
    everywhere = [
        r for dept in ("public-works", "triage", "sanitation", "transportation") for r in pipeline.lines(dept)
    ]
    assert {r["request_id"] for r in everywhere if "side door" in r["description"]} == {ticket}

    follow_ack = await wait_for(
        lambda: next((m for m in pipeline.relay.messages if m["In-Reply-To"] == "<e2e-2@example.org>"), None),
        what="the follow-up acknowledgement",
    )
    assert f"added your message to report {ticket}" in follow_ack.get_content()


async def test_auto_reply_to_the_mailbox_is_not_a_request(email_pipeline: EmailPipeline) -> None:
    pipeline = email_pipeline
    ooo = make_message(
        "I am out of the office until Monday.",
        subject="Automatic reply: graffiti",
        sender="Bo <bo@example.net>",
        message_id="<e2e-ooo@example.net>",
        headers={"Auto-Submitted": "auto-replied"},
    )
    assert "not processed" in await pipeline.mail(ooo)
    marker = make_message(
        "Missed trash pickup again at 77 Orange Street",
        subject="Trash",
        sender="Bo <bo@example.net>",
        message_id="<e2e-marker@example.net>",
    )
    marker_ticket = ticket_for(make_contact_id("email", "e2e-marker@example.net"))
    await pipeline.mail(marker)
    await wait_for(
        lambda: any(r["request_id"] == marker_ticket for r in pipeline.lines("sanitation")),
        what="the marker request",
    )
    ooo_ticket = ticket_for(make_contact_id("email", "e2e-ooo@example.net"))
    departments = pipeline.settings.data_dir / "departments"
    assert all(ooo_ticket not in file.read_text() for file in departments.glob("*.jsonl"))
