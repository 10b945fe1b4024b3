"""Mailgun and Postmark inbound webhooks and the media route, through the ASGI app (fake Kafka)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from channels.email import ack_message_id
from schemas import make_contact_id, ticket_for
from schemas.deadletter import DeadLetter
from tests.unit.test_email_support import JPEG, PNG, Harness, harness, make_message

MAILGUN_KEY = "key-mailgun-signing-0123456789"
POSTMARK_TOKEN = "postmark-token-0123456789abcdef"


@pytest.fixture
async def hooks(tmp_path: Path) -> AsyncIterator[tuple[Harness, httpx.AsyncClient]]:
    overrides = {
        "smtp": None,
        "mailgun": {"signing_key": MAILGUN_KEY, "max_age_s": 300},
        "postmark": {"token": POSTMARK_TOKEN, "username": "postmark", "password": "basic-secret"},
        "max_message_bytes": 50_000,
    }
    async with harness(tmp_path, **overrides) as h:
        app = FastAPI()
        app.include_router(h.channel.http_routes(), prefix="/channels/email")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as web:
            yield h, web


def signed(timestamp: float | None = None, token: str = "tok-1", key: str = MAILGUN_KEY) -> dict[str, str]:
    ts = str(int(timestamp if timestamp is not None else time.time()))
    signature = hmac.new(key.encode(), f"{ts}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": ts, "token": token, "signature": signature}


def mailgun_fields(message_id: str = "<mg1@example.org>", **extra: str) -> dict[str, str]:
    headers = [
        ["From", "Ana Resident <ana@example.org>"],
        ["To", "311@city.example"],
        ["Subject", "Graffiti on the underpass"],
        ["Message-Id", message_id],
        ["Date", "Mon, 02 Nov 2026 09:30:00 -0500"],
    ]
    fields = {
        "recipient": "311@city.example",
        "sender": "ana@example.org",
        "from": "Ana Resident <ana@example.org>",
        "subject": "Graffiti on the underpass",
        "body-plain": "Someone spray painted tags on the underpass wall.\n\nSent from my iPhone",
        "stripped-text": "Someone spray painted tags on the underpass wall.",
        "message-headers": json.dumps(headers),
        "attachment-count": "2",
    }
    fields.update(extra)
    return fields


async def test_mailgun_signed_post_is_published_with_photo(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    files = {
        "attachment-1": ("tags.jpg", JPEG, "image/jpeg"),
        "attachment-2": ("invoice.pdf", b"%PDF-1.4", "application/pdf"),
    }
    response = await web.post("/channels/email/mailgun", data={**mailgun_fields(), **signed()}, files=files)
    assert response.status_code == 200, response.text
    ticket = ticket_for(make_contact_id("email", "mg1@example.org"))
    assert response.json() == {"status": "accepted", "ticket": ticket}
    [contact] = h.publisher.contacts
    assert contact.text == "Graffiti on the underpass\n\nSomeone spray painted tags on the underpass wall."
    assert contact.metadata["source"] == "mailgun"
    assert [m.content_type for m in contact.media] == ["image/jpeg"]
    assert contact.metadata["attachments_ignored"] == 1
    # Binary file parts survive the multipart parsing byte for byte.
    assert (await web.get(contact.media[0].url.removeprefix("http://testserver"))).content == JPEG
    assert len(h.outbox.messages) == 1


async def test_mailgun_raw_mime_post(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    raw = bytes(make_message(message_id="<mime1@example.org>", images=[("p.png", PNG)])).decode()
    response = await web.post(
        "/channels/email/mailgun", data={"body-mime": raw, "sender": "ana@example.org", **signed()}
    )
    assert response.status_code == 200, response.text
    [contact] = h.publisher.contacts
    assert contact.contact_id == make_contact_id("email", "mime1@example.org")
    assert len(contact.media) == 1


async def test_mailgun_mime_url_with_latin1_body(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    raw = (
        b"From: Jos\xe9 <jose@example.org>\r\nTo: 311@city.example\r\nSubject: Farola\r\n"
        b"Message-ID: <latin1@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"La farola est\xe1 apagada en la calle Ma\xf1ana.\r\n"
    )
    files = {"body-mime": ("message.mime", raw, "message/rfc822")}
    response = await web.post("/channels/email/mailgun/mime", data=signed(token="mime"), files=files)
    assert response.status_code == 200, response.text
    [contact] = h.publisher.contacts
    assert "La farola está apagada en la calle Mañana." in contact.text


async def test_mailgun_forged_signature_is_refused(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    response = await web.post(
        "/channels/email/mailgun", data={**mailgun_fields(), **signed(key="not-the-key")}
    )
    assert response.status_code == 403
    missing = await web.post("/channels/email/mailgun", data=mailgun_fields())
    assert missing.status_code == 403
    assert h.publisher.contacts == []


async def test_mailgun_stale_timestamp_is_refused(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    response = await web.post(
        "/channels/email/mailgun", data={**mailgun_fields(), **signed(time.time() - 3600)}
    )
    assert response.status_code == 406
    assert "stale" in response.text
    assert h.publisher.contacts == []


async def test_mailgun_replayed_token_is_refused(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    post = {**mailgun_fields(), **signed(token="once")}
    assert (await web.post("/channels/email/mailgun", data=post)).status_code == 200
    replay = await web.post("/channels/email/mailgun", data=post)
    assert replay.status_code == 406 and "replayed" in replay.text
    assert len(h.publisher.contacts) == 1


async def test_mailgun_publish_failure_is_503_and_the_retry_is_accepted(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    h, web = hooks
    h.publisher.fail_next = 1
    post = {**mailgun_fields(), **signed(token="retry-me")}
    assert (await web.post("/channels/email/mailgun", data=post)).status_code == 503
    assert h.publisher.contacts == []
    # Mailgun retries the same post (same token): it must not be taken for a replay.
    assert (await web.post("/channels/email/mailgun", data=post)).status_code == 200
    assert len(h.publisher.contacts) == 1


async def test_mailgun_oversize_post_is_413(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    big = {**mailgun_fields(), "body-plain": "x" * 400_000, **signed()}
    assert (await web.post("/channels/email/mailgun", data=big)).status_code == 413
    assert h.publisher.contacts == []


def postmark_payload(message_id: str = "<pm1@example.org>", **extra: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "From": "Luis <luis@example.net>",
        "FromFull": {"Email": "luis@example.net", "Name": "Luis"},
        "To": "311@city.example",
        "Subject": "Bache en la calle",
        "MessageID": "0b1c2d3e-postmark",
        "Date": "Mon, 2 Nov 2026 09:30:00 -0500",
        "TextBody": "Hay un bache muy grande en la calle Elm frente a la escuela.\n\nGracias",
        "HtmlBody": "<p>Hay un bache muy grande</p>",
        "Headers": [
            {"Name": "Message-ID", "Value": message_id},
            {"Name": "Return-Path", "Value": "<luis@example.net>"},
        ],
        "Attachments": [
            {"Name": "bache.png", "Content": base64.b64encode(PNG).decode(), "ContentType": "image/png"},
            {
                "Name": "virus.exe",
                "Content": base64.b64encode(b"MZ....").decode(),
                "ContentType": "application/x-msdownload",
            },
        ],
    }
    payload.update(extra)
    return payload


async def test_postmark_with_token_is_published(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", json=postmark_payload())
    assert response.status_code == 200, response.text
    [contact] = h.publisher.contacts
    assert contact.contact_id == make_contact_id("email", "pm1@example.org")
    assert contact.language == "es" and contact.metadata["source"] == "postmark"
    assert [m.content_type for m in contact.media] == ["image/png"]
    [ack] = h.outbox.messages
    assert ack.language == "es" and "Su número de caso es" in ack.text


async def test_postmark_basic_auth(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    good = await web.post(
        "/channels/email/postmark", json=postmark_payload(), auth=("postmark", "basic-secret")
    )
    assert good.status_code == 200
    bad = await web.post(
        "/channels/email/postmark", json=postmark_payload("<pm2@x>"), auth=("postmark", "guess")
    )
    assert bad.status_code == 401 and "Basic" in bad.headers.get("www-authenticate", "")
    assert len(h.publisher.contacts) == 1


async def test_postmark_without_credentials_is_refused(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    assert (await web.post("/channels/email/postmark", json=postmark_payload())).status_code == 401
    assert (
        await web.post("/channels/email/postmark?token=wrong", json=postmark_payload())
    ).status_code == 401
    header = {"X-Intake311-Token": POSTMARK_TOKEN}
    assert (
        await web.post("/channels/email/postmark", json=postmark_payload(), headers=header)
    ).status_code == 200
    assert len(h.publisher.contacts) == 1


async def test_postmark_reply_continues_by_in_reply_to(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    ticket = ticket_for(make_contact_id("email", "pm1@example.org"))
    ack_id = ack_message_id(ticket, "feedc0ffee", "city.example")
    payload = postmark_payload(
        "<pm-reply@example.net>",
        Subject="Re: Bache en la calle",
        TextBody="Ahora es más grande.\n\n"
        "El lun, 2 nov 2026 a las 9:31, 311 <311@city.example> escribió:\n> ...",
        Attachments=[],
    )
    payload["Headers"] = [*payload["Headers"], {"Name": "In-Reply-To", "Value": ack_id}]  # type: ignore[misc]
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", json=payload)
    assert response.json()["ticket"] == ticket
    [contact] = h.publisher.contacts
    assert contact.continues and contact.text == "Ahora es más grande."


async def test_postmark_publish_failure_is_503(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    h.publisher.fail_next = 1
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", json=postmark_payload())
    assert response.status_code == 503
    assert h.outbox.messages == []


async def test_postmark_bad_json_is_refused_without_retries_and_kept(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    h, web = hooks
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", content=b"not json")
    assert response.status_code == 403 and "not JSON" in response.json()["reason"]
    assert [letter.original for letter in kept(h)] == [b"not json"]


async def test_postmark_auto_reply_is_ignored(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    payload = postmark_payload()
    payload["Headers"] = [*payload["Headers"], {"Name": "Auto-Submitted", "Value": "auto-replied"}]  # type: ignore[misc]
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", json=payload)
    assert response.json() == {"status": "ignored"}
    assert h.publisher.contacts == [] and h.channel.stats.auto_ignored == 1


async def test_media_route_serves_stored_photos_only(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", json=postmark_payload())
    [media] = h.publisher.contacts[0].media
    path = media.url.removeprefix("http://testserver")
    response = await web.get(path)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert (await web.get("/channels/email/media/" + "0" * 40 + ".png")).status_code == 404
    assert (await web.get("/channels/email/media/..%2Fstate.sqlite3")).status_code == 404
    assert (await web.get("/channels/email/media/state.sqlite3")).status_code == 404


async def test_disabled_webhooks_have_no_routes(tmp_path: Path) -> None:
    async with harness(tmp_path, start=False) as h:
        app = FastAPI()
        app.include_router(h.channel.http_routes(), prefix="/channels/email")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as web:
            assert (await web.post("/channels/email/mailgun", data={})).status_code in (404, 405)
            assert (await web.post("/channels/email/postmark", json={})).status_code in (404, 405)


# ---- hostile but authenticated input: a 4xx that stops the provider's retries, and the post kept ----


def kept(h: Harness) -> list[DeadLetter]:
    """What the webhook put on the dead-letter topic (through the fake outbox)."""
    return h.outbox.dead_letters


async def test_postmark_deeply_nested_json_is_refused_and_kept(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    h, web = hooks
    body = b"[" * 100_000
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", content=body)
    # 403 is the one answer after which Postmark stops retrying.
    assert response.status_code == 403, response.text
    assert "nested too deeply" in response.json()["reason"]
    [letter] = kept(h)
    assert letter.original == body and letter.stage == "channels.email.postmark"
    assert "nested too deeply" in letter.reason
    assert POSTMARK_TOKEN not in letter.model_dump_json()  # the URL's secret is not kept with it
    assert h.publisher.contacts == []


@pytest.mark.parametrize(
    "field",
    [
        {"TextBody": 5},
        {"HtmlBody": ["<p>x</p>"]},
        {"Headers": 7},
        {"Headers": [{"Name": 5, "Value": "x"}]},
        {"Attachments": [{"Name": "a.png", "Content": 12, "ContentType": "image/png"}]},
        {"Attachments": [{"Name": ["a.png"], "Content": "iVBORw0KGgo=", "ContentType": "image/png"}]},
        {"Attachments": 3},
        {"TextBody": "Hay un bache \ud800 en la calle"},
    ],
    ids=lambda f: "-".join(f"{k}={type(v).__name__}" for k, v in f.items()),
)
async def test_postmark_fields_of_the_wrong_type_are_refused_and_kept(
    hooks: tuple[Harness, httpx.AsyncClient], field: dict[str, object]
) -> None:
    h, web = hooks
    body = json.dumps(postmark_payload(**field)).encode()
    response = await web.post(
        f"/channels/email/postmark?token={POSTMARK_TOKEN}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 403, response.text
    assert response.json()["status"] == "rejected" and response.json()["reason"]
    [letter] = kept(h)
    assert letter.original == body and letter.reason == response.json()["reason"]
    assert h.publisher.contacts == []


async def test_postmark_non_utf8_body_is_refused_and_kept(hooks: tuple[Harness, httpx.AsyncClient]) -> None:
    h, web = hooks
    body = json.dumps(postmark_payload()).encode().replace(b"Bache", b"B\xe1che")
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", content=body)
    assert response.status_code == 403 and "UTF-8" in response.json()["reason"]
    assert [letter.original for letter in kept(h)] == [body]


async def test_postmark_malformed_post_is_retried_when_it_cannot_be_kept(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    """If the dead-letter topic is down too, only a retry keeps the report: 503, not a 4xx."""
    h, web = hooks
    h.outbox.fail_dead_letters = True
    response = await web.post(f"/channels/email/postmark?token={POSTMARK_TOKEN}", content=b"[" * 5000)
    assert response.status_code == 503
    assert kept(h) == []


@pytest.mark.parametrize(
    "headers",
    [
        json.dumps([{"From": "x"}]),  # objects, not [name, value] pairs
        "[" * 100_000,
        json.dumps([["From", "Ana <ana@example.org>"], ["Subject", "\ud800"]]),
    ],
    ids=["objects", "deep", "surrogate"],
)
async def test_mailgun_message_headers_of_the_wrong_shape_are_refused_and_kept(
    hooks: tuple[Harness, httpx.AsyncClient], headers: str
) -> None:
    h, web = hooks
    post = {**mailgun_fields(**{"message-headers": headers}), **signed(token=f"shape-{len(headers)}")}
    response = await web.post("/channels/email/mailgun", data=post)
    # 406 is the one answer after which Mailgun stops retrying.
    assert response.status_code == 406, response.text
    assert "message-headers" in response.json()["reason"]
    [letter] = kept(h)
    assert letter.stage == "channels.email.mailgun" and b"message-headers" in letter.original
    assert h.publisher.contacts == []


async def test_mailgun_part_with_an_unknown_charset_is_read_as_utf8(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    """A charset Python does not know is read as UTF-8 (with replacements), as the mail parser does."""
    h, web = hooks
    fields = {**mailgun_fields(), **signed(token="charset")}
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
        + ("Content-Type: text/plain; charset=no-such-charset\r\n" if name == "body-plain" else "")
        + f"\r\n{value}\r\n"
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    response = await web.post(
        "/channels/email/mailgun",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    [contact] = h.publisher.contacts
    assert "spray painted tags on the underpass wall" in contact.text


async def test_mailgun_unreadable_form_is_refused_but_not_kept(
    hooks: tuple[Harness, httpx.AsyncClient],
) -> None:
    """A body we cannot parse carries no signature we can check: anyone could have sent it, so
    it is not written to Kafka."""
    h, web = hooks
    body = b"--x\r\nno headers end here"
    response = await web.post(
        "/channels/email/mailgun", content=body, headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 400
    assert kept(h) == []


async def test_a_mail_of_megabytes_is_read_off_the_event_loop(tmp_path: Path) -> None:
    """The channel's loop is the web stage's too: reading a resident's photos must not stop it."""
    import asyncio
    import os

    from channels.email.parse import parse_email
    from tests.unit.test_email_support import make_message

    # Four phone photos: no single C call of the parser (a photo's base64 decode) is near the whole.
    photos = [(f"pothole-{i}.jpg", JPEG[:-2] + os.urandom(1536 * 1024) + JPEG[-2:]) for i in range(4)]
    raw = make_message(images=photos).as_bytes()
    costs = []
    for _ in range(2):  # the second is warm, as the channel's reading is
        started = time.perf_counter()
        parse_email(raw)
        costs.append(time.perf_counter() - started)
    cost = min(costs)  # what reading it on the loop would stall the loop for
    async with harness(tmp_path, start=False, max_message_bytes=len(raw) * 2) as h:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        result = await h.channel.intake.ingest_bytes(raw, source="test")
        done.set()
        await task
    assert result.contact is not None and len(h.publisher.contacts) == 1
    assert h.publisher.contacts[0].media, "the photo was stored"
    assert cost > 0.02, f"parsing {len(raw)} bytes took only {cost:.3f} s: the test proves nothing"
    # Off the loop the longest gap is one C call of the parser's (a photo's decode), not the parse.
    assert max(gaps) < cost / 2, (max(gaps), cost)
