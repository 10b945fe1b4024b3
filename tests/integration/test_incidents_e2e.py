"""Issue 8 end to end: one pothole reported by the web form, by SMS and by email is one incident.

On the embedded broker and a real PostgreSQL (case store and the normalizer's shared state),
with a small address-point file and a district layer: the department's file gets the incident
with three reporters, the later reporters are told it is known on their own channels, closing
the incident tells all three, and "Thank you!" texted after the close changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from intake311.pipeline import Runtime, running, web_app
from normalizer.app import STATUS_GROUP
from schemas import make_contact_id, ticket_for
from sinks.postgres.store import CaseStore
from tests.integration.conftest import committed_to_end, wait_for
from tests.support import DepartmentFiles, asgi_client, free_port, pipeline_settings, throwaway_database
from tests.unit.test_email_support import MAILBOX, Relay, fake_relay, make_message
from tests.unit.test_sms_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CITY_NUMBER,
    PUBLIC,
    FakeTwilio,
    post_signed,
    serve_fake_twilio,
    sms_params,
)

pytestmark = pytest.mark.integration

TOKEN = "pw-token-incidents-0123456789"
PHONE = "+12035550177"
WEB_EMAIL = "walker@example.org"
MAILER = "ana@example.org"

# Real New Haven address points (from ../shared/data/newhaven_address_points.csv), a few only.
ADDRESS_POINTS = """LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH
-72.921223,41.307014,1,Elm St,,New Haven,,CT,,,a1
-72.921439,41.307607,19,Elm St,,New Haven,,CT,,,a2
-72.923826,41.307894,100,Elm St,,New Haven,,CT,,,a3
-72.924769,41.308986,133,Elm St,,New Haven,,CT,,,a4
-72.931397,41.310992,304,Elm St,,New Haven,,CT,,,a5
-72.925550,41.306480,1000,Chapel St,,New Haven,,CT,,,a6
-72.928040,41.307270,1100,Chapel St,,New Haven,,CT,,,a7
"""
DOWNTOWN = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"name": "Ward 7"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[-72.94, 41.30], [-72.91, 41.30], [-72.91, 41.32], [-72.94, 41.32], [-72.94, 41.30]]
                ],
            },
        }
    ],
}


@dataclass
class City(DepartmentFiles):
    runtime: Runtime
    web: httpx.AsyncClient
    twilio: FakeTwilio
    relay: Relay
    smtp_port: int
    store: CaseStore

    async def mail(self, text: str, *, sender: str, message_id: str) -> str:
        message = make_message(text, subject="Pothole", sender=sender, message_id=message_id)
        _, response = await aiosmtplib.send(
            message, hostname="127.0.0.1", port=self.smtp_port, start_tls=False, use_tls=False, timeout=20
        )
        return response

    def texts_to(self, number: str) -> list[str]:
        return [m.get("Body", "") for m in self.twilio.sent if m.get("To") == number]

    def mails_to(self, address: str) -> list[str]:
        return [m.get_content() for m in self.relay.messages if address in str(m["To"])]


@pytest.fixture(scope="module")
async def city(
    postgres: None, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[City]:
    data_dir: Path = tmp_path_factory.mktemp("var-incidents")
    (data_dir / "points.csv").write_text(ADDRESS_POINTS)
    (data_dir / "wards.geojson").write_text(json.dumps(DOWNTOWN))
    smtp_port = free_port()
    with throwaway_database() as dsn:
        subscriptions = data_dir / "subscriptions.yaml"
        subscriptions.write_text(
            'departments:\n  "*":\n    sinks:\n      - {name: file, type: jsonl}\n'
            f"      - {{name: cases, type: postgres, dsn: '{dsn}'}}\n"
            "  emergency: {}\n"
        )
        async with fake_relay() as relay:
            async for twilio in serve_fake_twilio(FakeTwilio()):
                settings = pipeline_settings(
                    data_dir,
                    kafka_bootstrap,
                    "inc",
                    subscriptions_file=subscriptions,
                    case_store_dsn=dsn,
                    department_tokens={"public-works": TOKEN},
                    web={"base_url": "http://testserver"},
                    geo={
                        "address_points": data_dir / "points.csv",
                        "boundaries": {"ward": data_dir / "wards.geojson"},
                    },
                    channels={
                        "sms": {
                            "account_sid": ACCOUNT_SID,
                            "auth_token": AUTH_TOKEN,
                            "public_base_url": PUBLIC,
                            "phone_numbers": [CITY_NUMBER],
                            "api_base_url": twilio.url,
                        },
                        "email": {
                            "addresses": [MAILBOX],
                            "from_name": "City 311",
                            "domain": "city.example",
                            "smtp": {"host": "127.0.0.1", "port": smtp_port},
                            "relay": {"host": "127.0.0.1", "port": relay.port, "security": "none"},
                        },
                    },
                )
                stages = ["web", "channels", "normalizer", "router", "sinks"]
                async with running(settings, stages) as runtime, asgi_client(web_app(runtime)) as web:
                    yield City(settings, runtime, web, twilio, relay, smtp_port, runtime.case_store)


def _ticket(text: str) -> str:
    found = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", text)
    assert found, text
    return found.group(1)


async def test_one_pothole_three_channels_one_incident(city: City) -> None:
    # 1. The web form, first: the incident's own ticket.
    response = await city.web.post(
        "/",
        data={"description": "Deep pothole, cars swerve", "address": "45 Elm Street", "contact": WEB_EMAIL},
    )
    assert response.status_code == 200, response.text
    first = _ticket(response.text)
    head = await wait_for(lambda: _head(city, first, 1), what="the web report in public-works.jsonl")
    assert head["lat"] and head["long"] and head["location_precision"] in ("address", "interpolated")
    assert head["districts"] == {"ward": "Ward 7"}

    # 2. By SMS, the same pothole in other words.
    sms = await post_signed(
        city.web, "/channels/sms/inbound", sms_params("big pothole at 45 elm st, blew my tire", sender=PHONE)
    )
    assert sms.status_code == 200, sms.text
    sms_ticket = _ticket(sms.text)
    await wait_for(lambda: _head(city, first, 2), what="the incident with two reporters")

    # 3. By email.
    mail_ticket = ticket_for(make_contact_id("email", "pothole-3@example.org"))
    assert mail_ticket in await city.mail(
        "The pothole in front of 45 Elm St is getting deeper every day.",
        sender=f"Ana <{MAILER}>",
        message_id="<pothole-3@example.org>",
    )
    head = await wait_for(lambda: _head(city, first, 3), what="the incident with three reporters")
    assert [u["request_id"] for u in head["incident_updates"]] == [sms_ticket, mail_ticket]
    later = {line["request_id"]: line for line in city.lines("public-works") if line["request_id"] != first}
    assert {later[sms_ticket]["incident_id"], later[mail_ticket]["incident_id"]} == {first}
    assert {len({sms_ticket, mail_ticket, first})} == {3}  # three tickets, one incident

    # The later reporters are told, on their own channels, that it is already reported.
    known = await wait_for(
        lambda: [t for t in city.texts_to(PHONE) if "already reported" in t],
        what="the SMS 'already reported'",
    )
    assert first in known[0] and sms_ticket in known[0]
    mails = await wait_for(
        lambda: [m for m in city.mails_to(MAILER) if "already reported" in m],
        what="the email 'already reported'",
    )
    assert first in mails[0]

    # 4. The department closes the incident: all three reporters hear, each on their channel.
    closed = await city.web.post(
        f"/api/requests/{first}/status",
        json={"state": "closed", "notes": "patched"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert closed.status_code == 202, closed.text
    for ticket in (first, sms_ticket, mail_ticket):
        await wait_for(lambda t=ticket: _closed(city.store, t), what=f"{ticket} closed in the case store")
    await wait_for(
        lambda: [t for t in city.texts_to(PHONE) if sms_ticket in t and "closed" in t],
        what="SMS close notice",
    )
    await wait_for(
        lambda: [m for m in city.mails_to(MAILER) if mail_ticket in m and "closed" in m], what="email notice"
    )
    await wait_for(
        lambda: [m for m in city.mails_to(WEB_EMAIL) if first in m and "closed" in m], what="web notice"
    )

    # 5. "Thank you!" texted after the close changes nothing. Once the normalizer has the close
    # (its own consumer of the status topic): before that, a text continues an open request.
    settings = city.runtime.settings
    await wait_for(
        lambda: committed_to_end(
            city.runtime.servers[0], settings.topics.group(STATUS_GROUP), settings.topics.status
        ),
        what="the close in the normalizer's state",
    )
    lines_before = len(city.lines("public-works"))
    texts_before = len(city.texts_to(PHONE))
    thanks = await post_signed(city.web, "/channels/sms/inbound", sms_params("Thank you!", sender=PHONE))
    assert thanks.status_code == 200
    marker = await post_signed(
        city.web,
        "/channels/sms/inbound",
        sms_params("pothole in front of 1100 Chapel St", sender="+12035550199"),
    )
    marker_ticket = _ticket(marker.text)
    await wait_for(
        lambda: any(line["request_id"] == marker_ticket for line in city.lines("public-works")),
        what="a later report, so the thanks has been processed",
    )
    assert [line["request_id"] for line in city.lines("public-works")[lines_before:]] == [marker_ticket]
    case = await city.store.get_case(sms_ticket)
    assert case is not None and case.state == "closed"
    assert not [t for t in city.texts_to(PHONE)[texts_before:] if "reopened" in t]


def _head(city: City, ticket: str, reports: int) -> dict[str, Any] | None:
    lines = [line for line in city.lines("public-works") if line["request_id"] == ticket]
    return lines[-1] if lines and lines[-1]["incident_reports"] == reports else None


async def _closed(store: CaseStore, ticket: str) -> Any:
    case = await store.get_case(ticket)
    return case if case and case.state == "closed" else None


async def test_operator_splits_a_wrongly_merged_report(city: City) -> None:
    async def web_report(text: str) -> str:
        response = await city.web.post("/", data={"description": text, "address": "133 Elm Street"})
        assert response.status_code == 200, response.text
        return _ticket(response.text)

    first = await web_report("Pothole in the bike lane")
    await wait_for(lambda: _head(city, first, 1), what="the first report")
    wrong = await web_report("Pothole near the crosswalk, a different one")
    await wait_for(lambda: _head(city, first, 2), what="the second report merged")

    forbidden = await city.web.post(f"/api/requests/{wrong}/split", headers={"Authorization": "Bearer nope"})
    assert forbidden.status_code == 403
    await wait_for(lambda: city.store.get_case(wrong), what="the later report in the case store")
    split = await city.web.post(f"/api/requests/{wrong}/split", headers={"Authorization": f"Bearer {TOKEN}"})
    assert split.status_code == 202, split.text
    assert split.json()["split_from"] == first

    head = await wait_for(lambda: _head(city, first, 1), what="the incident back to one report")
    assert head["incident_updates"] == []
    alone = await wait_for(
        lambda: next(
            (
                line
                for line in reversed(city.lines("public-works"))
                if line["request_id"] == wrong and line["incident_id"] == wrong
            ),
            None,
        ),
        what="the split report as its own incident",
    )
    assert alone["incident_reports"] == 1
    again = await city.web.post(f"/api/requests/{wrong}/split", headers={"Authorization": f"Bearer {TOKEN}"})
    await wait_for(lambda: _not_later(city.store, wrong), what="the case store sees it split")
    assert again.status_code in (202, 409)


async def _not_later(store: CaseStore, ticket: str) -> Any:
    case = await store.get_case(ticket)
    return case if case and not case.is_later_report else None


async def test_sms_gas_leak_gets_the_911_answer_and_reaches_the_emergency_department(city: City) -> None:
    import xml.etree.ElementTree as ET

    response = await post_signed(
        city.web,
        "/channels/sms/inbound",
        sms_params("I smell gas in the basement at 100 Elm St", sender="+12035550155"),
    )
    assert response.status_code == 200, response.text
    reply = ET.fromstring(response.text).findtext("Message") or ""
    assert reply.startswith("If anyone is in danger, call 911 now"), reply
    ticket = _ticket(reply)
    copy = await wait_for(
        lambda: next((line for line in city.lines("emergency") if line["request_id"] == ticket), None),
        what="the request in the emergency department's file",
    )
    assert copy["priority"] == "emergency" and copy["emergency"] == "gas"
    plain = await post_signed(
        city.web,
        "/channels/sms/inbound",
        sms_params("graffiti on the wall at 1 Elm St", sender="+12035550156"),
    )
    assert "911" not in (ET.fromstring(plain.text).findtext("Message") or "")
