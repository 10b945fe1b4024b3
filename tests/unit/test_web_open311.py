"""Open311 GeoReport v2 endpoints of the web channel, against a fake publisher (no broker)."""

from __future__ import annotations

import asyncio
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from channels.web import AcceptedRequests, create_app
from intake311.bus import PublishError
from intake311.settings import Settings, WebSettings
from schemas import RawContact, SenderKind, make_contact_id, ticket_for
from schemas.taxonomy import Service, Taxonomy
from tests.support import FakePublisher as RecordingPublisher
from tests.support import asgi_client

TAXONOMY = Taxonomy(
    services=(
        Service(
            code="pothole",
            name="Pothole",
            description="Holes in the road",
            department="public-works",
            group="Streets",
            keywords=("pothole", "hole in road"),
            sla_hours=72,
        ),
        Service(code="streetlight", name="Streetlight out", department="public-works", group="Streets"),
        Service(code="other", name="Something else", department="311"),
    )
)
KEY = "test-key-1"
BASE = "/open311/v2"


class FakePublisher(RecordingPublisher):
    """Records what was published; can fail, or hold each publish until released."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def publish(self, contact: RawContact) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await super().publish(contact)


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path, web=WebSettings(api_keys=[KEY, "other-key"], jurisdiction_id="city.test")
    )


@pytest.fixture
def lookup(tmp_path: Path) -> AcceptedRequests:
    return AcceptedRequests(tmp_path / "accepted.sqlite3")


@pytest.fixture
async def client(
    settings: Settings, publisher: FakePublisher, lookup: AcceptedRequests
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, publisher, TAXONOMY, lookup=lookup)
    async with asgi_client(app, "http://test") as c:
        yield c


def valid(**overrides: str) -> dict[str, str]:
    data = {"api_key": KEY, "service_code": "pothole", "lat": "40.7128", "long": "-74.0060"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def xml_errors(response: httpx.Response) -> list[tuple[str, str]]:
    root = ET.fromstring(response.content)
    assert root.tag == "errors"
    return [(e.findtext("code") or "", e.findtext("description") or "") for e in root.findall("error")]


# --- services -------------------------------------------------------------------------------


async def test_services_json(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/services.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert [s["service_code"] for s in body] == ["pothole", "streetlight", "other"]
    assert body[0] == {
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Holes in the road",
        "metadata": False,
        "type": "realtime",
        "keywords": "pothole,hole in road",
        "group": "Streets",
    }


async def test_services_xml(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/services.xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    root = ET.fromstring(response.content)
    assert root.tag == "services"
    services = root.findall("service")
    assert [s.findtext("service_code") for s in services] == ["pothole", "streetlight", "other"]
    first = services[0]
    assert first.findtext("service_name") == "Pothole"
    assert first.findtext("metadata") == "false"
    assert first.findtext("type") == "realtime"
    assert first.findtext("keywords") == "pothole,hole in road"
    assert first.findtext("group") == "Streets"


async def test_service_definition(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/services/pothole.json")
    assert response.status_code == 200
    assert response.json() == {"service_code": "pothole", "attributes": []}
    response = await client.get(f"{BASE}/services/pothole.xml")
    root = ET.fromstring(response.content)
    assert root.tag == "service_definition"
    assert root.findtext("service_code") == "pothole"
    assert root.find("attributes") is not None


async def test_service_definition_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/services/nope.json")
    assert response.status_code == 404
    assert response.json() == [{"code": 404, "description": "unknown service_code 'nope'"}]
    response = await client.get(f"{BASE}/services/nope.xml")
    assert response.status_code == 404
    assert xml_errors(response) == [("404", "unknown service_code 'nope'")]


async def test_unknown_format_and_jurisdiction(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/services.html")
    assert response.status_code == 404
    assert response.json()[0]["code"] == 404
    response = await client.get(f"{BASE}/services.json", params={"jurisdiction_id": "elsewhere.gov"})
    assert response.status_code == 404
    assert "jurisdiction_id" in response.json()[0]["description"]
    response = await client.get(f"{BASE}/services.json", params={"jurisdiction_id": "city.test"})
    assert response.status_code == 200


# --- POST requests --------------------------------------------------------------------------


async def test_post_json_publishes_and_returns_ticket(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    before = datetime.now(UTC)
    response = await client.post(
        f"{BASE}/requests.json",
        data=valid(
            address_string="5th Ave & Main St",
            description="Deep pothole in the bike lane",
            email="resident@example.org",
            phone="+1 (555) 123-4567",
            first_name="Ada",
            last_name="Lovelace",
            media_url="https://photos.example.org/p/1.jpg",
            device_id="dev-42",
            account_id="acct-7",
        ),
    )
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    [contact] = publisher.contacts
    body = response.json()
    assert len(body) == 1
    assert body[0]["service_request_id"] == ticket_for(contact.contact_id) == contact.request_id
    assert "account_id" not in body[0]  # we keep no accounts: left out, not null
    assert contact.request_id in body[0]["service_notice"]

    assert contact.channel == "open311"
    assert contact.contact_id.startswith("open311:")
    assert contact.service_code == "pothole"
    assert contact.text == "Deep pothole in the bike lane"
    assert contact.location is not None
    assert (contact.location.lat, contact.location.long) == (40.7128, -74.006)
    assert contact.location.address == "5th Ave & Main St"
    assert [m.url for m in contact.media] == ["https://photos.example.org/p/1.jpg"]
    assert contact.sender.kind == SenderKind.EMAIL
    assert contact.sender.address == "resident@example.org"
    assert contact.sender.name == "Ada Lovelace"
    assert contact.reply is not None
    assert (contact.reply.channel, contact.reply.address) == ("email", "resident@example.org")
    assert contact.metadata == {"device_id": "dev-42", "account_id": "acct-7", "phone": "+15551234567"}
    assert contact.received_at.tzinfo is not None
    assert before <= contact.received_at <= datetime.now(UTC)


async def test_post_xml_success(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    response = await client.post(f"{BASE}/requests.xml", data=valid(description="a <b>big</b> & deep one"))
    assert response.status_code == 201
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    root = ET.fromstring(response.content)
    assert root.tag == "service_requests"
    [request] = root.findall("request")
    [contact] = publisher.contacts
    assert request.findtext("service_request_id") == ticket_for(contact.contact_id)
    assert request.find("account_id") is None  # absent, not an empty element
    assert contact.text == "a <b>big</b> & deep one"


@pytest.mark.parametrize(
    ("extra", "kind", "reply"),
    [
        ({"phone": "555-123-4567"}, SenderKind.PHONE, ("sms", "5551234567")),
        ({"first_name": "Grace"}, SenderKind.WEB, None),
        ({}, SenderKind.ANONYMOUS, None),
    ],
)
async def test_post_sender_mapping(
    client: httpx.AsyncClient,
    publisher: FakePublisher,
    extra: dict[str, str],
    kind: SenderKind,
    reply: tuple[str, str] | None,
) -> None:
    response = await client.post(f"{BASE}/requests.json", data=valid(**extra))
    assert response.status_code == 201
    [contact] = publisher.contacts
    assert contact.sender.kind == kind
    actual = (contact.reply.channel, contact.reply.address) if contact.reply else None
    assert actual == reply


async def test_post_address_id_only_is_a_location(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.post(
        f"{BASE}/requests.json", data=valid(lat="", long="", address_id="parcel-123")
    )
    assert response.status_code == 201
    [contact] = publisher.contacts
    assert contact.location is None
    assert contact.metadata["address_id"] == "parcel-123"


async def test_published_before_response(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    publisher.gate = asyncio.Event()
    task = asyncio.create_task(client.post(f"{BASE}/requests.json", data=valid()))
    await asyncio.wait_for(publisher.entered.wait(), timeout=5)
    await asyncio.sleep(0.05)
    assert not task.done(), "the response must wait for the broker's acknowledgement"
    assert publisher.contacts == []
    publisher.gate.set()
    response = await asyncio.wait_for(task, timeout=5)
    assert response.status_code == 201
    assert response.json()[0]["service_request_id"] == publisher.contacts[0].request_id


@pytest.mark.parametrize("api_key", [None, "", "wrong-key", "test-key-1x", "clé"])
@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_post_bad_api_key_is_403(
    client: httpx.AsyncClient, publisher: FakePublisher, api_key: str | None, fmt: str
) -> None:
    data = valid()
    if api_key is None:
        del data["api_key"]
    else:
        data["api_key"] = api_key
    response = await client.post(f"{BASE}/requests.{fmt}", data=data)
    assert response.status_code == 403
    if fmt == "json":
        assert response.json() == [{"code": 403, "description": "a valid api_key is required"}]
    else:
        assert xml_errors(response) == [("403", "a valid api_key is required")]
    assert publisher.contacts == []


async def test_post_second_configured_key_works(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/requests.json", data=valid(api_key="other-key"))
    assert response.status_code == 201


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_post_unknown_service_is_404(
    client: httpx.AsyncClient, publisher: FakePublisher, fmt: str
) -> None:
    response = await client.post(f"{BASE}/requests.{fmt}", data=valid(service_code="unicorns"))
    assert response.status_code == 404
    expected = "unknown service_code 'unicorns'"
    if fmt == "json":
        assert response.json() == [{"code": 404, "description": expected}]
    else:
        assert xml_errors(response) == [("404", expected)]
    assert publisher.contacts == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"service_code": ""}, "service_code is required"),
        ({"lat": "", "long": ""}, "a location is required: lat and long, address_string, or address_id"),
        ({"lat": "north"}, "lat must be a decimal degree between -90 and 90"),
        ({"long": "200"}, "long must be a decimal degree between -180 and 180"),
        ({"lat": "nan"}, "lat must be a decimal degree between -90 and 90"),
        ({"long": ""}, "lat and long must be given together"),
        ({"description": "x" * 4001}, "description is longer than 4000 characters"),
        ({"address_string": "y" * 501}, "address_string is longer than 500 characters"),
        ({"email": "not-an-email"}, "email is not a valid email address"),
        ({"phone": "call me"}, "phone is not a valid phone number"),
        ({"media_url": "javascript:alert(1)"}, "media_url must be an absolute http or https URL"),
    ],
)
async def test_post_invalid_is_400_json(
    client: httpx.AsyncClient, publisher: FakePublisher, overrides: dict[str, str], message: str
) -> None:
    response = await client.post(f"{BASE}/requests.json", data=valid(**overrides))
    assert response.status_code == 400
    assert response.json() == [{"code": 400, "description": message}]
    assert publisher.contacts == []


async def test_post_invalid_lists_every_problem_xml(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/requests.xml", data=valid(lat="abc", email="nope"))
    assert response.status_code == 400
    assert xml_errors(response) == [
        ("400", "lat must be a decimal degree between -90 and 90"),
        ("400", "email is not a valid email address"),
    ]


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("failure", [PublishError("broker down"), RuntimeError("unexpected")])
async def test_publish_failure_is_503_without_ticket(
    client: httpx.AsyncClient, publisher: FakePublisher, fmt: str, failure: Exception
) -> None:
    publisher.fail = failure
    headers = {"Idempotency-Key": f"retry-me-{fmt}-{type(failure).__name__}"}
    response = await client.post(f"{BASE}/requests.{fmt}", data=valid(), headers=headers)
    assert response.status_code == 503
    ticket = ticket_for(make_contact_id("open311", headers["Idempotency-Key"]))
    assert ticket not in response.text
    assert "service_request_id" not in response.text
    if fmt == "json":
        [error] = response.json()
        assert error["code"] == 503
    else:
        [(code, _)] = xml_errors(response)
        assert code == "503"
    # Nothing recorded: the request is unknown to the lookup.
    publisher.fail = None
    assert (await client.get(f"{BASE}/requests/{ticket}.json")).status_code == 404
    assert (await client.get(f"{BASE}/requests.json")).json() == []


async def test_idempotency_key_gives_same_ticket(client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    headers = {"Idempotency-Key": "app-submission-0001"}
    first = await client.post(f"{BASE}/requests.json", data=valid(), headers=headers)
    second = await client.post(f"{BASE}/requests.json", data=valid(), headers=headers)
    assert first.status_code == second.status_code == 201
    ticket = first.json()[0]["service_request_id"]
    assert second.json()[0]["service_request_id"] == ticket
    scoped = make_contact_id(
        "open311", f"{hashlib.sha256(KEY.encode()).hexdigest()[:12]}.app-submission-0001"
    )
    assert ticket == ticket_for(scoped)
    assert [c.contact_id for c in publisher.contacts] == [scoped] * 2
    # Replays are recorded once.
    assert len((await client.get(f"{BASE}/requests.json")).json()) == 1
    # Another API client that happens to use the same key gets its own ticket.
    other = await client.post(f"{BASE}/requests.json", data=valid(api_key="other-key"), headers=headers)
    assert other.status_code == 201
    assert other.json()[0]["service_request_id"] != ticket


async def test_without_idempotency_key_a_different_report_is_new(client: httpx.AsyncClient) -> None:
    first = await client.post(f"{BASE}/requests.json", data=valid(description="pothole by the school"))
    second = await client.post(f"{BASE}/requests.json", data=valid(description="pothole by the church"))
    assert first.json()[0]["service_request_id"] != second.json()[0]["service_request_id"]


async def test_without_idempotency_key_a_same_content_retry_is_the_same_request(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    """A client that got a 503 (or lost the 201) and sends the same report again: one ticket."""
    first = await client.post(f"{BASE}/requests.json", data=valid(description="tree down"))
    again = await client.post(f"{BASE}/requests.json", data=valid(description="tree down"))
    other_app = await client.post(
        f"{BASE}/requests.json", data=valid(description="tree down", api_key="other-key")
    )
    ticket = first.json()[0]["service_request_id"]
    assert again.json()[0]["service_request_id"] == ticket
    assert other_app.status_code == 201 and other_app.json()[0]["service_request_id"] != ticket
    assert len({c.contact_id for c in publisher.contacts}) == 2


# --- GET requests ---------------------------------------------------------------------------


async def test_get_request_after_post(client: httpx.AsyncClient) -> None:
    posted = await client.post(
        f"{BASE}/requests.json",
        data=valid(
            address_string="5th & Main", description="Pothole <here>", media_url="https://x.org/a.jpg"
        ),
    )
    ticket = posted.json()[0]["service_request_id"]

    response = await client.get(f"{BASE}/requests/{ticket}.json")
    assert response.status_code == 200
    [request] = response.json()
    assert request["service_request_id"] == ticket
    assert request["status"] == "open"
    assert request["service_code"] == "pothole"
    assert request["service_name"] == "Pothole"
    assert request["description"] == "Pothole <here>"
    assert request["address"] == "5th & Main"
    assert (request["lat"], request["long"]) == (40.7128, -74.006)
    assert request["media_url"] == "https://x.org/a.jpg"
    requested = datetime.fromisoformat(request["requested_datetime"])
    assert abs(datetime.now(UTC) - requested) < timedelta(minutes=1)

    # A ticket typed loosely by a person still finds it.
    loose = ticket.replace("-", "").lower()
    assert (await client.get(f"{BASE}/requests/{loose}.json")).json()[0]["service_request_id"] == ticket

    root = ET.fromstring((await client.get(f"{BASE}/requests/{ticket}.xml")).content)
    assert root.tag == "service_requests"
    assert root.findtext("request/service_request_id") == ticket
    assert root.findtext("request/description") == "Pothole <here>"
    assert root.findtext("request/address") == "5th & Main"


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_get_unknown_request_is_404(client: httpx.AsyncClient, fmt: str) -> None:
    for request_id in ("ZZZZ-ZZZZ", "not-a-ticket"):
        response = await client.get(f"{BASE}/requests/{request_id}.{fmt}")
        assert response.status_code == 404
        if fmt == "json":
            assert response.json()[0]["code"] == 404
        else:
            assert xml_errors(response)[0][0] == "404"


async def test_search_requests(client: httpx.AsyncClient) -> None:
    pothole = (await client.post(f"{BASE}/requests.json", data=valid())).json()[0]["service_request_id"]
    light = (await client.post(f"{BASE}/requests.json", data=valid(service_code="streetlight"))).json()[0][
        "service_request_id"
    ]

    everything = (await client.get(f"{BASE}/requests.json")).json()
    assert {r["service_request_id"] for r in everything} == {pothole, light}

    by_code = (await client.get(f"{BASE}/requests.json", params={"service_code": "streetlight"})).json()
    assert [r["service_request_id"] for r in by_code] == [light]

    by_id = await client.get(f"{BASE}/requests.json", params={"service_request_id": f"{pothole},ZZZZ-ZZZZ"})
    assert [r["service_request_id"] for r in by_id.json()] == [pothole]

    assert (await client.get(f"{BASE}/requests.json", params={"status": "closed"})).json() == []
    assert len((await client.get(f"{BASE}/requests.json", params={"status": "open"})).json()) == 2

    old = {"start_date": "2001-01-01T00:00:00Z", "end_date": "2001-02-01T00:00:00Z"}
    assert (await client.get(f"{BASE}/requests.json", params=old)).json() == []

    root = ET.fromstring((await client.get(f"{BASE}/requests.xml")).content)
    assert len(root.findall("request")) == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "pending"}, "unknown status 'pending': use open or closed"),
        (
            {"start_date": "yesterday"},
            "start_date must be a W3C/ISO 8601 datetime, e.g. 2024-05-01T00:00:00Z",
        ),
        (
            {"start_date": "2024-01-01T00:00:00Z", "end_date": "2024-06-01T00:00:00Z"},
            "start_date and end_date may not span more than 90 days",
        ),
        (
            {"start_date": "2024-02-01T00:00:00Z", "end_date": "2024-01-01T00:00:00Z"},
            "end_date is before start_date",
        ),
    ],
)
async def test_search_bad_arguments_are_400(
    client: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    response = await client.get(f"{BASE}/requests.json", params=params)
    assert response.status_code == 400
    assert response.json() == [{"code": 400, "description": message}]


# --- recording ------------------------------------------------------------------------------


async def test_record_failure_still_returns_ticket(settings: Settings, publisher: FakePublisher) -> None:
    class BrokenRecorder(AcceptedRequests):
        async def record(self, contact: RawContact, service_name: str | None) -> None:
            raise OSError("disk full")

    app = create_app(settings, publisher, TAXONOMY, lookup=BrokenRecorder(settings.data_dir / "x.sqlite3"))
    async with asgi_client(app, "http://test") as c:
        response = await c.post(f"{BASE}/requests.json", data=valid())
    assert response.status_code == 201
    assert response.json()[0]["service_request_id"] == publisher.contacts[0].request_id


async def test_default_lookup_is_sqlite_under_data_dir(settings: Settings, publisher: FakePublisher) -> None:
    app = create_app(settings, publisher, TAXONOMY)
    async with asgi_client(app, "http://test") as c:
        ticket = (await c.post(f"{BASE}/requests.json", data=valid())).json()[0]["service_request_id"]
        assert (await c.get(f"{BASE}/requests/{ticket}.json")).status_code == 200
    assert (settings.data_dir / "web" / "accepted.sqlite3").is_file()


# --- extended attributes (extensions=true) --------------------------------------------------


class DistrictLookup:
    """A lookup that knows districts and incidents, as the case store does."""

    def __init__(self, districts: dict[str, str]) -> None:
        self.row = {
            "service_request_id": "K7M4-QPXA",
            "status": "open",
            "service_code": "pothole",
            "service_name": "Pothole",
            "requested_datetime": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
            "extended_attributes": {
                "districts": districts,
                "incident_id": "K7M4-QPXA",
                "incident_reports": 3,
                "location_precision": "address",
            },
        }

    async def get(self, request_id: str) -> dict[str, object] | None:
        return self.row if request_id == "K7M4-QPXA" else None

    async def search(self, **query: object) -> list[dict[str, object]]:
        return [self.row]


def district_client(
    settings: Settings, publisher: FakePublisher, districts: dict[str, str]
) -> httpx.AsyncClient:
    return asgi_client(
        create_app(settings, publisher, TAXONOMY, lookup=DistrictLookup(districts)), "http://t"
    )


async def test_extensions_true_adds_extended_attributes_json(
    settings: Settings, publisher: FakePublisher
) -> None:
    districts = {"ward": "Ward 7", "neighborhood": "Dixwell"}
    async with district_client(settings, publisher, districts) as c:
        plain = (await c.get(f"{BASE}/requests/K7M4-QPXA.json")).json()[0]
        off = (await c.get(f"{BASE}/requests/K7M4-QPXA.json", params={"extensions": "false"})).json()[0]
        one = (await c.get(f"{BASE}/requests/K7M4-QPXA.json", params={"extensions": "true"})).json()[0]
        listed = (await c.get(f"{BASE}/requests.json", params={"extensions": "TRUE"})).json()
    assert "extended_attributes" not in plain and "extended_attributes" not in off
    assert list(plain) == list(one)[:-1]  # the spec's fields, then the extension
    expected = {
        "districts": {"ward": "Ward 7", "neighborhood": "Dixwell"},
        "incident_id": "K7M4-QPXA",
        "incident_reports": 3,
        "location_precision": "address",
    }
    assert one["extended_attributes"] == expected
    assert [r["extended_attributes"] for r in listed] == [expected]


async def test_extensions_in_xml_use_valid_element_names(
    settings: Settings, publisher: FakePublisher
) -> None:
    districts = {
        "ward": "Ward 7",
        "Police District": "D2 <east>",
        "2020 Census Tract": "1401",
        "Quartier é": "Q",
    }
    async with district_client(settings, publisher, districts) as c:
        one = await c.get(f"{BASE}/requests/K7M4-QPXA.xml", params={"extensions": "true"})
        listed = await c.get(f"{BASE}/requests.xml", params={"extensions": "true"})
        plain = await c.get(f"{BASE}/requests/K7M4-QPXA.xml")
    for response in (one, listed):
        root = ET.fromstring(response.content)  # parses: every element name is a valid XML name
        ext = root.find("request/extended_attributes")
        assert ext is not None
        layers = ext.find("districts")
        assert layers is not None
        found = {e.tag: e.text for e in layers}
        assert found == {
            "ward": "Ward 7",
            "police_district": "D2 <east>",
            "_2020_census_tract": "1401",
            "quartier_e": "Q",
        }
        assert (ext.findtext("incident_id"), ext.findtext("incident_reports")) == ("K7M4-QPXA", "3")
        assert ext.findtext("location_precision") == "address"
    assert ET.fromstring(plain.content).find("request/extended_attributes") is None


async def test_priority_is_top_level_in_json_and_extended_in_xml(
    settings: Settings, publisher: FakePublisher
) -> None:
    lookup = DistrictLookup({"ward": "Ward 7"})
    lookup.row["extended_attributes"] |= {  # type: ignore[operator]
        "priority": "high",
        "priority_reason": "cue: blocking the road",
        "emergency": None,
    }
    app = create_app(settings, publisher, TAXONOMY, lookup=lookup)
    async with asgi_client(app, "http://t") as c:
        plain = (await c.get(f"{BASE}/requests/K7M4-QPXA.json")).json()[0]
        ext = (await c.get(f"{BASE}/requests.json", params={"extensions": "true"})).json()[0]
        xml = await c.get(f"{BASE}/requests/K7M4-QPXA.xml", params={"extensions": "true"})
        xml_plain = await c.get(f"{BASE}/requests/K7M4-QPXA.xml")
    assert plain["priority"] == "high" and list(plain)[-1] == "priority"  # after the spec's fields
    assert (
        ext["priority"] == "high"
        and ext["extended_attributes"]["priority_reason"] == "cue: blocking the road"
    )
    root = ET.fromstring(xml.content)
    assert root.find("request/priority") is None  # XML keeps to the spec's elements
    assert root.findtext("request/extended_attributes/priority") == "high"
    assert root.findtext("request/extended_attributes/emergency") == ""  # an empty element: none
    assert ET.fromstring(xml_plain.content).find("request/priority") is None


def test_xml_names() -> None:
    from channels.web.open311 import _xml_districts, xml_name

    assert xml_name("Ward") == "ward"
    assert xml_name("Police District") == "police_district"
    assert xml_name("7th precinct") == "_7th_precinct"
    assert xml_name("XML layer") == "_xml_layer"
    assert xml_name("école") == "ecole"
    assert xml_name("  ") == "_"
    assert _xml_districts({"Ward": "A", "ward": "B", "WARD!": "C"}) == {
        "ward": "A",
        "ward_2": "B",
        "ward_3": "C",
    }


async def test_the_local_record_has_no_districts(client: httpx.AsyncClient) -> None:
    """Without a case store the web process knows only what it accepted: an empty extension."""
    ticket = (await client.post(f"{BASE}/requests.json", data=valid())).json()[0]["service_request_id"]
    one = (await client.get(f"{BASE}/requests/{ticket}.json", params={"extensions": "true"})).json()[0]
    assert one["extended_attributes"] == {}
    listed = (await client.get(f"{BASE}/requests.json", params={"extensions": "true"})).json()
    assert [r["extended_attributes"] for r in listed] == [{}]
    xml = await client.get(f"{BASE}/requests/{ticket}.xml", params={"extensions": "true"})
    ext = ET.fromstring(xml.content).find("request/extended_attributes")
    assert ext is not None and list(ext) == []
    plain = (await client.get(f"{BASE}/requests/{ticket}.json")).json()[0]
    assert "extended_attributes" not in plain


# --- language (schemas.language) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "language"),
    [
        ({"description": "el semáforo no funciona"}, "es"),
        ({"description": "Deep pothole in the bike lane"}, "en"),
        ({"description": "bache", "lang": "es"}, "es"),  # one word: the client's lang breaks the tie
        ({"description": "", "locale": "es_MX"}, "es"),
        ({"description": "Deep pothole in the bike lane", "locale": "es"}, "en"),  # the words win
    ],
)
async def test_post_language(
    client: httpx.AsyncClient, publisher: FakePublisher, fields: dict[str, str], language: str
) -> None:
    response = await client.post(f"{BASE}/requests.json", data=valid(**fields))
    assert response.status_code == 201
    assert publisher.contacts[-1].language == language


# --- emergencies: "call 911" first in service_notice ---------------------------------------------


@pytest.mark.parametrize(
    ("description", "first", "service"),
    [
        ("I smell gas in my kitchen", "If anyone is in danger, call 911 now", "Pothole"),
        ("huele a gas en la cocina", "Si alguien está en peligro, llame al 911 ahora", "bache"),
    ],
)
async def test_emergency_request_is_created_with_call_911_first_in_service_notice(
    client: httpx.AsyncClient, publisher: FakePublisher, description: str, first: str, service: str
) -> None:
    response = await client.post(f"{BASE}/requests.json", data=valid(description=description))
    assert response.status_code == 201
    [contact] = publisher.contacts
    notice = response.json()[0]["service_notice"]
    assert notice.startswith(first) and contact.request_id in notice
    assert service in notice  # the service name in the resident's language


async def test_ordinary_request_notice_has_no_911_line(
    client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    response = await client.post(
        f"{BASE}/requests.json", data=valid(description="Deep pothole in the bike lane")
    )
    assert response.status_code == 201 and publisher.contacts
    assert "911" not in response.json()[0]["service_notice"]


# --- hostile bodies: capped before the api_key is checked --------------------------------------


@pytest.mark.parametrize("path", [f"{BASE}/requests.json", "/"], ids=["open311", "form"])
async def test_chunked_body_past_the_cap_is_413_without_being_read(
    client: httpx.AsyncClient, path: str
) -> None:
    from channels.web.accept import MAX_BODY_BYTES
    from tests.unit.test_hostile_input import assert_refused_early, post_counted

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response, body = await post_counted(client, path, 20 * 1024 * 1024, declared=False, headers=headers)
    assert_refused_early(response, body, MAX_BODY_BYTES, declared=False)


@pytest.mark.parametrize("path", [f"{BASE}/requests.json", "/"], ids=["open311", "form"])
async def test_declared_body_past_the_cap_is_refused_without_being_read(
    client: httpx.AsyncClient, path: str
) -> None:
    from tests.unit.test_hostile_input import post_counted

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response, body = await post_counted(client, path, 20 * 1024 * 1024, declared=True, headers=headers)
    assert response.status_code == 413 and body.pulled == 0
