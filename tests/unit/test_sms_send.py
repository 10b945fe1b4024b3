"""Outbound texts through the Twilio REST API, faked by a real HTTP server on a local port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.plugin import SendError
from channels.sms import SmsChannel, SmsConfig
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    PUBLIC,
    RESIDENT,
    SERVICE_SID,
    FakeTwilio,
    fake_twilio,  # noqa: F401 (fixture)
    make_context,
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
