"""Outbound texts through the Twilio REST API, faked by a real HTTP server on a local port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.conversation import LOCATION, QUESTION, Conversation
from channels.plugin import SendError
from channels.sms import SmsChannel, SmsConfig
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id
from tests.support import asgi_client, published
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    PUBLIC,
    RESIDENT,
    SERVICE_SID,
    FakeTwilio,
    app_for,
    fake_twilio,  # noqa: F401 (fixture)
    make_context,
    message_of,
    post_signed,
    sms_params,
)


def message(
    to: str = RESIDENT, text: str = "311: Your ticket is K7M4-QPXA.", **fields: Any
) -> OutboundMessage:
    values: dict[str, Any] = {
        "message_id": outbound_message_id("sms", to, "acknowledgement", "K7M4-QPXA"),
        "request_id": "K7M4-QPXA",
        "channel": "sms",
        "to": to,
        "kind": MessageKind.ACKNOWLEDGEMENT,
        "text": text,
    }
    values.update(fields)
    return OutboundMessage.model_validate(values)


async def make_sms(tmp_path: Path, fake: FakeTwilio, **overrides: Any) -> SmsChannel:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "phone_numbers": [CITY_NUMBER],
        "public_base_url": PUBLIC,
        "api_base_url": fake.url,
    }
    values.update(overrides)
    plugin = SmsChannel(SmsConfig.model_validate(values), make_context(tmp_path))
    await plugin.start()
    return plugin


@pytest.fixture
async def sms(tmp_path: Path, fake_twilio: FakeTwilio) -> AsyncIterator[SmsChannel]:  # noqa: F811
    plugin = await make_sms(tmp_path, fake_twilio)
    yield plugin
    await plugin.stop()
    await plugin.context.http.aclose()


async def test_sends_from_the_city_number_with_a_status_callback(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    await sms.send(message())
    assert fake_twilio.sent == [
        {
            "To": RESIDENT,
            "From": CITY_NUMBER,
            "Body": "311: Your ticket is K7M4-QPXA.",
            "StatusCallback": f"{PUBLIC}/channels/sms/status",
        }
    ]
    assert fake_twilio.unauthorised == 0
    assert "sent=1" in (await sms.health()).detail


async def test_sends_through_the_messaging_service_when_configured(
    tmp_path: Path,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    plugin = await make_sms(tmp_path, fake_twilio, messaging_service_sid=SERVICE_SID, status_callback=False)
    await plugin.send(message(text="x" * 2000))
    [sent] = fake_twilio.sent
    assert sent["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in sent and "StatusCallback" not in sent
    assert len(sent["Body"]) == 1600  # Twilio refuses longer bodies
    await plugin.stop()
    await plugin.context.http.aclose()


async def test_the_sent_message_is_recorded_for_status_callbacks(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    await sms.send(message())
    # The fake's sid is not in the form; find it through the store's only record.
    store = await sms.store()
    assert store.kind == "sqlite"
    db = store._db  # type: ignore[attr-defined]
    [(sid, status, request_id)] = db.execute("SELECT sid, status, request_id FROM deliveries").fetchall()
    assert sid.startswith("SM") and status == "queued" and request_id == "K7M4-QPXA"


async def test_nothing_is_sent_to_an_opted_out_number(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    store = await sms.store()
    await store.set_opted_out("sms", RESIDENT, True)
    await sms.send(message())  # not an error: skipped
    await sms.send(message(to="+12035559876"))
    assert [m["To"] for m in fake_twilio.sent] == ["+12035559876"]
    assert fake_twilio.to(RESIDENT) == []
    assert "skipped_opted_out=1" in (await sms.health()).detail


async def test_unsubscribed_recipient_is_recorded_as_opted_out_and_not_retried(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    fake_twilio.failures[RESIDENT] = (400, 21610)
    with pytest.raises(SendError) as caught:
        await sms.send(message())
    assert not caught.value.retryable and "21610" in caught.value.reason
    assert await (await sms.store()).is_opted_out("sms", RESIDENT)
    del fake_twilio.failures[RESIDENT]
    await sms.send(message())  # now skipped before reaching Twilio
    assert fake_twilio.sent == []


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, 21211, False),  # invalid To
        (400, 21614, False),  # not a mobile number
        (429, 20429, True),
        (500, None, True),
        (503, 20500, True),
        (401, 20003, False),
    ],
)
async def test_twilio_errors_map_to_retryable_or_not(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
    status: int,
    code: int | None,
    retryable: bool,
) -> None:
    fake_twilio.failures[RESIDENT] = (status, code)
    with pytest.raises(SendError) as caught:
        await sms.send(message())
    assert caught.value.retryable is retryable
    assert not await (await sms.store()).is_opted_out("sms", RESIDENT)


async def test_unreachable_twilio_is_retryable(tmp_path: Path) -> None:
    fake = FakeTwilio(url="http://127.0.0.1:9")  # nothing listens on the discard port
    plugin = await make_sms(tmp_path, fake)
    with pytest.raises(SendError) as caught:
        await plugin.send(message())
    assert caught.value.retryable
    await plugin.stop()
    await plugin.context.http.aclose()


async def test_a_non_phone_recipient_is_not_retried(sms: SmsChannel) -> None:
    with pytest.raises(SendError) as caught:
        await sms.send(message(to="resident@example.org"))
    assert not caught.value.retryable


def question(to: str = RESIDENT, ticket: str = "K7M4-QPXA", language: str = "en") -> OutboundMessage:
    """What the normalizer's desk queues when a request leaves a required question open."""
    return message(
        to,
        f"311: about your report {ticket}: Which collection was missed? Please reply with one of: Trash.",
        message_id=outbound_message_id("sms", to, "question", ticket, "stream"),
        request_id=ticket,
        kind=MessageKind.QUESTION,
        language=language,
    )


async def test_a_question_makes_the_numbers_next_text_its_answer_on_its_ticket(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    store = await sms.store()
    # A caller, or a web report with a phone number: no conversation yet.
    await sms.send(question(language="es"))
    [sent] = fake_twilio.sent
    assert "K7M4-QPXA" in sent["Body"]
    live = await store.get("sms", RESIDENT)
    assert live is not None
    assert (live.request_id, live.awaiting, live.language) == ("K7M4-QPXA", QUESTION, "es")
    assert live.opened_by.startswith("outbound:")  # no text of theirs opened it
    # A live conversation about the same ticket keeps its opener.
    opened = Conversation(request_id="AAAA-BBBB", opened_by="sms:SM1", awaiting=LOCATION)
    await store.put("sms", "+12035559876", opened, 60)
    await sms.send(question("+12035559876", "AAAA-BBBB"))
    again = await store.get("sms", "+12035559876")
    assert again is not None and (again.opened_by, again.awaiting) == ("sms:SM1", QUESTION)


async def test_other_messages_and_opted_out_numbers_await_no_answer(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    store = await sms.store()
    await sms.send(message())  # the acknowledgement of a call: nothing was asked
    assert await store.get("sms", RESIDENT) is None
    await store.set_opted_out("sms", "+12035559876", True)
    await sms.send(question("+12035559876"))
    assert await store.get("sms", "+12035559876") is None
    assert [m["To"] for m in fake_twilio.sent] == [RESIDENT]


async def test_a_question_whose_answer_cannot_be_awaited_is_not_sent(
    sms: SmsChannel,
    fake_twilio: FakeTwilio,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store down: the outbound loop retries the question rather than have its answer open a
    new ticket."""
    store = await sms.store()

    async def down(*_: object) -> Conversation:
        raise ConnectionError("store down (test)")

    monkeypatch.setattr(store, "ask", down)
    with pytest.raises(ConnectionError):
        await sms.send(question())
    assert fake_twilio.sent == []


async def test_a_question_sent_on_one_host_is_answered_through_another_via_redis(
    tmp_path: Path,
    fake_twilio: FakeTwilio,  # noqa: F811
) -> None:
    """The channels stage texts the question, a web process on another host (another data
    directory) gets the answer: the shared store, not either host, knows it is one."""
    from tests.unit.test_sms_store import REDIS_URL, forget_test_keys, redis_or_skip

    probe = await redis_or_skip()
    await probe.close()
    config = SmsConfig.model_validate(
        {
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "phone_numbers": [CITY_NUMBER],
            "public_base_url": PUBLIC,
            "api_base_url": fake_twilio.url,
            "state_url": REDIS_URL,
        }
    )
    sender = SmsChannel(config, make_context(tmp_path / "channels-host"))
    web = SmsChannel(config, make_context(tmp_path / "web-host"))
    web.context.settings = sender.context.settings  # one deployment: same key prefix
    await sender.send(question())
    async with asgi_client(app_for(web)) as client:
        reply = message_of(await post_signed(client, "/channels/sms/inbound", sms_params("Trash")))
    [answer] = published(web).contacts
    assert (answer.request_id, answer.continues, answer.metadata["answers"]) == ("K7M4-QPXA", True, QUESTION)
    assert "K7M4-QPXA" in reply
    await forget_test_keys(await sender.store())  # type: ignore[arg-type]
    for plugin in (sender, web):
        await plugin.stop()
        await plugin.context.http.aclose()
