"""The SMS webhooks through the ASGI app: signatures, TwiML, conversations, keywords."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from channels.conversation import QUESTION, Conversation
from channels.sms import SmsChannel, SmsConfig
from intake311.bus import PublishError
from schemas import parse_ticket
from schemas.messages import render
from tests.support import asgi_client, published, started
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    POOL_NUMBER,
    PUBLIC,
    RESIDENT,
    SERVICE_SID,
    app_for,
    make_context,
    post_signed,
    signed_form,
    sms_params,
)

INBOUND = "/channels/sms/inbound"


def sms_config(**overrides: Any) -> SmsConfig:
    values: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "phone_numbers": [CITY_NUMBER],
        "messaging_service_sid": SERVICE_SID,
        "public_base_url": PUBLIC,
    }
    values.update(overrides)
    return SmsConfig.model_validate(values)


@pytest.fixture
async def sms(tmp_path: Path) -> AsyncIterator[SmsChannel]:
    async with started(SmsChannel(sms_config(), make_context(tmp_path))) as plugin:
        yield plugin


@pytest.fixture
async def client(sms: SmsChannel) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app_for(sms)) as c:
        yield c


def reply_of(response: httpx.Response) -> str | None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    return root.findtext("Message")


def ticket_in(text: str | None) -> str:
    assert text
    found = [parse_ticket(w.strip(".,")) for w in text.split() if "-" in w]
    tickets = [t for t in found if t]
    assert tickets, text
    return tickets[0]


async def test_report_with_address_is_published_then_answered_with_its_ticket(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    params = sms_params("Huge pothole outside 12 Elm Street, my tire blew", sid="SM" + "a" * 32)
    reply = reply_of(await post_signed(client, INBOUND, params))
    [contact] = published(sms).contacts
    assert contact.contact_id == "sms:SM" + "a" * 32
    assert ticket_in(reply) == contact.request_id
    assert "address" not in (reply or "")  # it had one: no question
    assert contact.channel == "sms" and not contact.continues
    assert contact.sender.address == RESIDENT
    assert contact.reply is not None and contact.reply.address == RESIDENT and contact.reply.language == "en"
    assert contact.metadata["to"] == CITY_NUMBER


async def test_no_location_asks_where_and_the_answer_joins_the_same_ticket(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    first = reply_of(await post_signed(client, INBOUND, sms_params("There's a huge pothole, my tire blew")))
    assert "What is the address or nearest intersection?" in (first or "")
    second = reply_of(await post_signed(client, INBOUND, sms_params("Corner of Oak St and 5th Ave")))
    opening, answer = published(sms).contacts
    assert ticket_in(first) == ticket_in(second) == opening.request_id == answer.request_id
    assert answer.continues and not opening.continues
    assert answer.location is not None and answer.location.address == "Corner of Oak St and 5th Ave"
    assert answer.metadata["answers"] == "location"
    assert "location" in (second or "")
    # A third text in the window adds to the same ticket, with no location claim.
    third = reply_of(await post_signed(client, INBOUND, sms_params("It is about a foot deep")))
    assert ticket_in(third) == opening.request_id
    assert published(sms).contacts[2].location is None


async def test_other_numbers_do_not_join_a_conversation(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    await post_signed(client, INBOUND, sms_params("Pothole, huge one"))
    await post_signed(client, INBOUND, sms_params("Graffiti on the wall", sender="+12035559876"))
    a, b = published(sms).contacts
    assert a.request_id != b.request_id and not b.continues


async def test_twilio_retry_of_a_message_is_the_same_contact_and_ticket(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    params = sms_params("Streetlight out at 40 Oak Street")
    one = reply_of(await post_signed(client, INBOUND, params))
    two = reply_of(await post_signed(client, INBOUND, params))
    a, b = published(sms).contacts
    # Same contact id and ticket (only received_at differs): the normalizer dedupes it.
    assert (a.contact_id, a.request_id, a.text) == (b.contact_id, b.request_id, b.text)
    assert not b.continues
    assert ticket_in(one) == ticket_in(two)


async def test_publish_failure_is_503_and_the_retry_gets_the_ticket(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    params = sms_params("Dead raccoon in the road at 7 Park Place")
    published(sms).fail = PublishError("broker down")
    response = await post_signed(client, INBOUND, params)
    assert response.status_code == 503
    assert "Message" not in response.text and not published(sms).contacts
    published(sms).fail = None
    reply = reply_of(await post_signed(client, INBOUND, params))
    [contact] = published(sms).contacts
    assert ticket_in(reply) == contact.request_id and not contact.continues


async def test_failed_follow_up_leaves_the_question_open(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    await post_signed(client, INBOUND, sms_params("Big pothole, car damage"))
    answer = sms_params("Main St and 3rd Ave")
    published(sms).fail = PublishError("broker down")
    assert (await post_signed(client, INBOUND, answer)).status_code == 503
    published(sms).fail = None
    reply_of(await post_signed(client, INBOUND, answer))
    opening, retried = published(sms).contacts
    assert retried.request_id == opening.request_id
    assert retried.location is not None and retried.location.address == "Main St and 3rd Ave"


async def test_the_text_after_a_question_answers_it_on_the_questions_ticket(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    """``send`` recorded the question (a caller's ticket: no text opened it); the next text is
    its answer there, in the question's language, and the one after is an ordinary follow-up."""
    store = await sms.store()
    asked = Conversation(request_id="K7M4-QPXA", opened_by="outbound:m1", language="es", awaiting=QUESTION)
    await store.ask("sms", RESIDENT, asked, 60)
    reply = reply_of(await post_signed(client, INBOUND, sms_params("Basura")))
    [answer] = published(sms).contacts
    assert (answer.request_id, answer.continues, answer.language) == ("K7M4-QPXA", True, "es")
    assert answer.metadata["answers"] == QUESTION and answer.location is None
    assert reply == render("sms.answer_added", "es", brand="311", ticket="K7M4-QPXA")
    live = await store.get("sms", RESIDENT)
    assert live is not None and live.awaiting is None and live.messages == 2
    reply_of(await post_signed(client, INBOUND, sms_params("gracias")))
    assert "answers" not in published(sms).contacts[1].metadata


async def test_an_answer_is_confirmed_as_an_answer(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    store = await sms.store()
    await store.ask(
        "sms", RESIDENT, Conversation(request_id="K7M4-QPXA", opened_by="outbound:m1", awaiting=QUESTION), 60
    )
    reply = reply_of(await post_signed(client, INBOUND, sms_params("trash")))
    assert reply == "311: Thanks, we added your answer to ticket K7M4-QPXA."


@pytest.mark.parametrize(
    "headers_for",
    [
        pytest.param(lambda body, h: {"Content-Type": h["Content-Type"]}, id="unsigned"),
        pytest.param(lambda body, h: {**h, "X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"}, id="forged"),
    ],
)
async def test_unsigned_or_forged_requests_are_refused_and_counted(
    sms: SmsChannel, client: httpx.AsyncClient, headers_for: Any
) -> None:
    body, headers = signed_form(INBOUND, sms_params("Pothole at 1 Elm St"))
    response = await client.post(INBOUND, content=body, headers=headers_for(body, headers))
    assert response.status_code == 403
    assert not published(sms).contacts
    health = await sms.health()
    assert "rejected_signature=1" in health.detail


async def test_wrong_token_tampered_body_and_internal_url_are_refused(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    params = sms_params("Pothole at 1 Elm St")
    assert (await post_signed(client, INBOUND, params, token="not-the-token")).status_code == 403
    body, headers = signed_form(INBOUND, params)
    tampered = body.replace("Pothole", "Sinkhole")
    assert (await client.post(INBOUND, content=tampered, headers=headers)).status_code == 403
    # Signed for the URL this process sees, not the public one Twilio calls: refused.
    body, headers = signed_form(INBOUND, params, base="http://testserver")
    assert (await client.post(INBOUND, content=body, headers=headers)).status_code == 403
    assert not published(sms).contacts
    assert "rejected_signature=3" in (await sms.health()).detail


async def test_query_string_is_part_of_the_signed_url(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    path = INBOUND + "?city=new-haven"
    reply = reply_of(await post_signed(client, path, sms_params("Pothole at 1 Elm St")))
    assert ticket_in(reply)


async def test_json_body_signed_with_body_sha256(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    body = json.dumps(sms_params("Overflowing trash can at 55 Church Street"))
    path = f"{INBOUND}?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    reply = reply_of(await client.post(path, content=body, headers=headers))
    assert ticket_in(reply) == published(sms).contacts[0].request_id
    # The same signature with another body fails the body hash.
    other = body.replace("55", "56")
    assert (await client.post(path, content=other, headers=headers)).status_code == 403


async def test_messaging_service_pool_numbers_are_accepted(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    params = sms_params("Pothole at 1 Elm St", To=POOL_NUMBER, MessagingServiceSid=SERVICE_SID)
    assert ticket_in(reply_of(await post_signed(client, INBOUND, params)))


async def test_numbers_the_channel_does_not_serve_are_refused(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    stranger = sms_params("Pothole at 1 Elm St", To=POOL_NUMBER)
    other_service = sms_params("Pothole at 1 Elm St", To=POOL_NUMBER, MessagingServiceSid="MG" + "9" * 32)
    for params in (stranger, other_service):
        assert (await post_signed(client, INBOUND, params)).status_code == 403
    assert not published(sms).contacts
    assert "rejected_number=2" in (await sms.health()).detail


async def test_spanish_text_gets_a_spanish_reply(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    reply = reply_of(
        await post_signed(client, INBOUND, sms_params("Hay un bache enorme y se me ponchó la llanta"))
    )
    assert reply and "Su número de caso es" in reply and "¿Cuál es la dirección" in reply
    answer = reply_of(await post_signed(client, INBOUND, sms_params("Oak St y 5th Ave")))
    assert answer and "agregamos la ubicación" in answer
    first, second = published(sms).contacts
    assert first.language == second.language == "es"
    assert first.reply is not None and first.reply.language == "es"


async def test_media_becomes_attachments(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    params = sms_params(
        "Graffiti at 9 Crown Street",
        NumMedia="2",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
        MediaContentType0="image/jpeg",
        MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME2",
        MediaContentType1="image/png",
        FromCity="NEW HAVEN",
        FromZip="06510",
    )
    reply_of(await post_signed(client, INBOUND, params))
    [contact] = published(sms).contacts
    assert [m.content_type for m in contact.media] == ["image/jpeg", "image/png"]
    assert contact.metadata["from_city"] == "NEW HAVEN"
    assert contact.location is None  # where the phone is registered is not where the graffiti is


async def test_stop_opts_out_start_opts_back_in(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    assert reply_of(await post_signed(client, INBOUND, sms_params("Stop"))) is None
    store = await sms.store()
    assert await store.is_opted_out("sms", RESIDENT)
    # A report from an opted-out number is accepted, but nothing is texted back.
    assert reply_of(await post_signed(client, INBOUND, sms_params("Pothole at 1 Elm St"))) is None
    assert len(published(sms).contacts) == 1
    assert reply_of(await post_signed(client, INBOUND, sms_params("HELP"))) is None
    reply = reply_of(await post_signed(client, INBOUND, sms_params("START")))
    assert reply and "STOP" in reply
    assert not await store.is_opted_out("sms", RESIDENT)


@pytest.mark.parametrize("word", ["STOP", "unsubscribe", "Cancel", "END", "quit", " stop. "])
async def test_every_carrier_stop_word_opts_out_and_is_not_a_report(
    sms: SmsChannel, client: httpx.AsyncClient, word: str
) -> None:
    assert reply_of(await post_signed(client, INBOUND, sms_params(word))) is None
    assert await (await sms.store()).is_opted_out("sms", RESIDENT)
    assert not published(sms).contacts


async def test_help_in_english_and_spanish(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    english = reply_of(await post_signed(client, INBOUND, sms_params("HELP")))
    spanish = reply_of(await post_signed(client, INBOUND, sms_params("ayuda")))
    assert english and "To reach a person, call 311" in english and "911" in english
    assert spanish and "llame al 311" in spanish
    unstop = reply_of(await post_signed(client, INBOUND, sms_params("UNSTOP")))
    assert unstop
    assert not published(sms).contacts


async def test_new_keyword_starts_a_new_ticket(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    await post_signed(client, INBOUND, sms_params("Pothole at 1 Elm St"))
    assert "new" in (reply_of(await post_signed(client, INBOUND, sms_params("NEW"))) or "")
    await post_signed(client, INBOUND, sms_params("Graffiti at 2 Elm St"))
    a, b = published(sms).contacts
    assert a.request_id != b.request_id and not b.continues


async def test_empty_text_gets_help_not_a_ticket(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    reply = reply_of(await post_signed(client, INBOUND, sms_params("   ")))
    assert reply and "what the problem is" in reply
    assert not published(sms).contacts


async def test_conversation_survives_a_restart(tmp_path: Path) -> None:
    """Another process (or this one restarted) on the same data dir continues the ticket."""
    first = SmsChannel(sms_config(), make_context(tmp_path))
    async with asgi_client(app_for(first)) as client:
        await post_signed(client, INBOUND, sms_params("Water main leaking everywhere"))
    await first.stop()
    second = SmsChannel(sms_config(), make_context(tmp_path))
    async with asgi_client(app_for(second)) as client:
        reply = reply_of(await post_signed(client, INBOUND, sms_params("200 Whitney Avenue")))
    await second.stop()
    [opening] = published(first).contacts
    [answer] = published(second).contacts
    assert answer.request_id == opening.request_id == ticket_in(reply)
    assert answer.location is not None and answer.location.address == "200 Whitney Avenue"
    for plugin in (first, second):
        await plugin.context.http.aclose()


async def test_status_callback_records_delivery_and_keeps_the_latest(
    sms: SmsChannel, client: httpx.AsyncClient
) -> None:
    path = "/channels/sms/status"
    sid = "SM" + "b" * 32
    for status in ("sent", "delivered", "sent"):  # the late "sent" must not undo "delivered"
        params = {"MessageSid": sid, "MessageStatus": status, "To": RESIDENT, "AccountSid": ACCOUNT_SID}
        assert (await post_signed(client, path, params)).status_code == 204
    store = await sms.store()
    record = await store.delivery(sid)
    assert record is not None and record.status == "delivered"
    failed = {
        "MessageSid": "SM" + "c" * 32,
        "MessageStatus": "undelivered",
        "ErrorCode": "21610",
        "To": RESIDENT,
    }
    assert (await post_signed(client, path, failed)).status_code == 204
    record = await store.delivery("SM" + "c" * 32)
    assert record is not None and record.error_code == "21610"
    assert await store.is_opted_out("sms", RESIDENT)
    forged = await client.post(path, data={"MessageSid": sid, "MessageStatus": "failed"})
    assert forged.status_code == 403
    record = await store.delivery(sid)
    assert record is not None and record.status == "delivered"


def test_config_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="phone_numbers, messaging_service_sid"):
        SmsConfig.model_validate({"account_sid": ACCOUNT_SID, "auth_token": "x"})
    with pytest.raises(ValueError, match="auth_token"):
        SmsConfig.model_validate({"account_sid": ACCOUNT_SID, "phone_numbers": [CITY_NUMBER]})
    with pytest.raises(ValueError, match="TWILIO_TEST_TOKEN"):
        sms_config(auth_token=None, auth_token_env="TWILIO_TEST_TOKEN")
    monkeypatch.setenv("TWILIO_TEST_TOKEN", "from-env")
    assert sms_config(auth_token=None, auth_token_env="TWILIO_TEST_TOKEN").token() == "from-env"
    with pytest.raises(ValueError, match=r"E\.164"):
        sms_config(phone_numbers=["203-555-0100"])
    with pytest.raises(ValueError, match="state_url"):
        sms_config(state_url="postgres://db/x")
    assert AUTH_TOKEN not in repr(sms_config())


async def test_without_a_public_url_the_request_url_is_what_is_signed(tmp_path: Path) -> None:
    plugin = SmsChannel(sms_config(public_base_url=None), make_context(tmp_path))
    async with asgi_client(app_for(plugin)) as client:
        body, headers = signed_form(INBOUND, sms_params("Pothole at 1 Elm St"), base="http://testserver")
        assert ticket_in(reply_of(await client.post(INBOUND, content=body, headers=headers)))
        assert (await post_signed(client, INBOUND, sms_params("Pothole at 1 Elm St"))).status_code == 403
    await plugin.stop()
    await plugin.context.http.aclose()


async def test_two_web_processes_share_conversations_through_redis(tmp_path: Path) -> None:
    """Question answered by one process, answer received by another: one ticket via Redis."""
    from tests.unit.test_sms_store import REDIS_URL, forget_test_keys, redis_or_skip

    probe = await redis_or_skip()
    await probe.close()
    config = sms_config(state_url=REDIS_URL)
    one = SmsChannel(config, make_context(tmp_path / "one"))
    two = SmsChannel(config, make_context(tmp_path / "two"))
    two.context.settings = one.context.settings  # one deployment: same key prefix
    async with asgi_client(app_for(one)) as a, asgi_client(app_for(two)) as b:
        asked = reply_of(await post_signed(a, INBOUND, sms_params("Tree branch blocking the road")))
        answered = reply_of(await post_signed(b, INBOUND, sms_params("Whalley Ave and Dwight St")))
    [opening], [answer] = published(one).contacts, published(two).contacts
    assert ticket_in(asked) == ticket_in(answered) == opening.request_id == answer.request_id
    assert answer.continues and answer.location is not None
    assert (await one.health()).detail.startswith("store=redis")
    store = await one.store()
    await forget_test_keys(store)  # type: ignore[arg-type]
    for plugin in (one, two):
        await plugin.stop()
        await plugin.context.http.aclose()


# ---- emergencies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "first"),
    [
        ("I smell gas in my kitchen at 12 Elm Street", "If anyone is in danger, call 911 now"),
        ("huele a gas en la cocina, calle Elm 12", "Si alguien está en peligro, llame al 911 ahora"),
    ],
)
async def test_an_emergency_text_gets_call_911_first_and_is_still_published(
    sms: SmsChannel, client: httpx.AsyncClient, body: str, first: str
) -> None:
    reply = reply_of(await post_signed(client, INBOUND, sms_params(body)))
    [contact] = published(sms).contacts
    assert reply is not None and reply.startswith(first)
    assert ticket_in(reply) == contact.request_id


async def test_an_ordinary_text_gets_no_911_line(sms: SmsChannel, client: httpx.AsyncClient) -> None:
    reply = reply_of(await post_signed(client, INBOUND, sms_params("Huge pothole outside 12 Elm Street")))
    assert published(sms).contacts
    assert reply is not None and "911" not in reply


async def test_a_city_rules_file_from_the_setting_adds_a_phrase(tmp_path: Path) -> None:
    rules = tmp_path / "emergency.yaml"
    rules.write_text("kinds:\n  sinkhole:\n    en: [sinkhole swallowed]\n", encoding="utf-8")
    context = make_context(tmp_path)
    context.settings = context.settings.model_copy(update={"emergency_rules_file": rules})
    async with started(SmsChannel(sms_config(), context)) as plugin, asgi_client(app_for(plugin)) as c:
        text = "A sinkhole swallowed a car at 12 Elm Street"
        reply = reply_of(await post_signed(c, INBOUND, sms_params(text)))
        assert reply is not None and reply.startswith("If anyone is in danger, call 911")
        assert published(plugin).contacts
        # The city's file replaces the packaged one: its phrases, not the packaged ones, count.
        gas = reply_of(await post_signed(c, INBOUND, sms_params("I smell gas", sender="+12035559876")))
        assert gas is not None and "911" not in gas


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[" * 30_000, "nested too deeply"),  # deeper than json's recursion limit, inside the cap
        ('{"From": "+12035550123", "Body": "bache \\ud800"}', "surrogate"),
        ("[1, 2]", "not a JSON object"),
    ],
    ids=["deep", "surrogate", "array"],
)
async def test_signed_json_body_that_cannot_be_read_is_400(
    sms: SmsChannel, client: httpx.AsyncClient, body: str, reason: str
) -> None:
    """Signed (bodySHA256) but unreadable: a 400 naming the problem, not a 500 Twilio retries."""
    path = f"{INBOUND}?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert reason in response.text
    assert published(sms).contacts == []
