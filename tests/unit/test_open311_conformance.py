"""GeoReport v2 conformance: what third-party Open311 checks ask of a server, run against our app.

The rules are restated here in our own words, from three public checkers and the spec itself
(none of their code or schema files is copied: open311/schema-validation and
kvlahromei/validopen311 carry no licence; SeeClickFix/open311-validator is Apache-2.0 Ruby):

* open311/schema-validation: JSON Schemas per resource (service, service definition, request)
  and a Swagger 2.0 file (request response, token response). Required fields, enums, and the
  ``date-time`` and ``uri`` formats; an optional field may be absent (the schemas also accept
  null, Swagger does not, so we write neither).
* SeeClickFix/open311-validator: service discovery in both formats, non-empty ``contact`` and
  ``key_service``, ISO 8601 changesets in the past, each endpoint with specification, url,
  changeset, type and a list of formats, and every GeoReport v2 endpoint offering ``text/xml``.
* kvlahromei/validopen311: every XML answer is ``text/xml; charset=utf-8``; the XML structure of
  services, service definitions and requests (``keywords`` present, booleans as true/false, dates
  and coordinates that parse); ``tokens/{token}`` answers.
* The spec (wiki.open311.org/GeoReport_v2, Service_Discovery): UTF-8 with the XML declaration,
  W3C datetimes with a zone, errors as ``[{"code", "description"}]`` for every failure.

The app is built as tests/unit/test_web_open311.py builds it (its fixtures). Checks that need
the app to mount ``discovery_router`` and ``open311_http_errors`` (channels/web/app.py) carry
``NEEDS_APP_WIRING``, strict: once the app mounts them, set ``APP_WIRED`` (or the marks fail).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from channels.web import create_app
from channels.web.open311 import discovery_document, request_record
from intake311.settings import Settings, WebSettings
from schemas.open311 import REQUEST_FIELDS, REQUIRED_REQUEST_FIELDS
from schemas.taxonomy import load_taxonomy
from tests.support import asgi_client
from tests.unit import test_web_open311 as web
from tests.unit.test_web_open311 import BASE, TAXONOMY, FakePublisher, valid

# The app as test_web_open311 builds it: its fixtures, shared by name (not copied).
settings, publisher, lookup, client = web.settings, web.publisher, web.lookup, web.client

# Flip to True when channels/web/app.py mounts them; then this flag and its mark can go.
APP_WIRED = True
NEEDS_APP_WIRING = pytest.mark.xfail(
    not APP_WIRED,
    strict=True,
    reason="channels/web/app.py does not mount open311.discovery_router / open311_http_errors yet",
)
XML_TYPE = "text/xml; charset=utf-8"
JSON_TYPE = "application/json"
FMTS = ["json", "xml"]

# --- the rules, in our words ---------------------------------------------------------------------

_TEXT = {"type": "string"}
_OPTIONAL_TEXT = {"type": "string"}  # present: a string; absent: left out (never null)
_W3C_DATETIME = {"type": "string", "format": "date-time"}

SERVICE = {
    "type": "object",
    "required": ["service_code", "service_name", "metadata", "type"],
    "properties": {
        "service_code": _TEXT,
        "service_name": _TEXT,
        "description": _OPTIONAL_TEXT,
        "metadata": {"type": "boolean"},
        "type": {"enum": ["realtime", "batch", "blackbox"]},
        "keywords": _OPTIONAL_TEXT,
        "group": _OPTIONAL_TEXT,
    },
}
ATTRIBUTE = {
    "type": "object",
    "required": ["variable", "code", "datatype", "required"],
    "properties": {
        "variable": {"type": "boolean"},
        "code": _TEXT,
        "datatype": {"enum": ["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]},
        "required": {"type": "boolean"},
        "datatype_description": _OPTIONAL_TEXT,
        "order": {"type": "integer", "minimum": 0},
        "description": _OPTIONAL_TEXT,
        "values": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "name"],
                "properties": {"key": _TEXT, "name": _TEXT},
            },
        },
    },
}
SERVICE_DEFINITION = {
    "type": "object",
    "required": ["service_code", "attributes"],
    "properties": {"service_code": _TEXT, "attributes": {"type": "array", "items": ATTRIBUTE}},
}
REQUEST = {
    "type": "object",
    "required": list(REQUIRED_REQUEST_FIELDS),
    "properties": {
        "service_request_id": _TEXT,
        "status": {"enum": ["open", "closed"]},
        "status_notes": _OPTIONAL_TEXT,
        "service_name": _OPTIONAL_TEXT,
        "service_code": _TEXT,
        "description": {"type": "string", "maxLength": 4000},
        "agency_responsible": _OPTIONAL_TEXT,
        "service_notice": _OPTIONAL_TEXT,
        "requested_datetime": _W3C_DATETIME,
        "updated_datetime": _W3C_DATETIME,
        "expected_datetime": _W3C_DATETIME,
        "address": _OPTIONAL_TEXT,
        "address_id": _OPTIONAL_TEXT,
        "zipcode": _OPTIONAL_TEXT,
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "long": {"type": "number", "minimum": -180, "maximum": 180},
        "media_url": {"type": "string", "format": "uri"},
    },
}
POST_ANSWER = {
    "type": "object",
    "properties": {"service_request_id": _TEXT, "token": _TEXT, "service_notice": _TEXT, "account_id": _TEXT},
    "anyOf": [{"required": ["service_request_id"]}, {"required": ["token"]}],
}
TOKEN_ANSWER = {
    "type": "object",
    "required": ["token", "service_request_id"],
    "properties": {"token": _TEXT, "service_request_id": _TEXT},
}
ERROR = {
    "type": "object",
    "required": ["code", "description"],
    "properties": {"code": {"type": "integer"}, "description": {"type": "string", "minLength": 1}},
}


def list_of(item: dict[str, Any], at_least: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": at_least}


FORMAT_CHECKER = jsonschema.FormatChecker(formats=())


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _w3c_datetime(value: object) -> bool:
    """The spec's W3C subset of ISO 8601: a date, a time, and a zone (Z or ±HH:MM) always."""
    return not isinstance(value, str) or ("T" in value and datetime.fromisoformat(value).tzinfo is not None)


@FORMAT_CHECKER.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(urlsplit(value).scheme and urlsplit(value).netloc)


def check(body: object, schema: dict[str, Any]) -> None:
    jsonschema.validate(body, schema, format_checker=FORMAT_CHECKER)


def is_w3c_datetime(text: str | None) -> bool:
    try:
        return text is not None and _w3c_datetime(text)
    except ValueError:
        return False


# --- an app whose lookup holds one request of each kind --------------------------------------------

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
# As the case store has it: every field the spec knows, filled in.
FULL: dict[str, Any] = {
    "service_request_id": "K7M4-QPXA",
    "status": "closed",
    "status_notes": "Filled on Tuesday",
    "service_name": "Pothole",
    "service_code": "pothole",
    "description": "Deep pothole <outside> no. 12 & 14",
    "agency_responsible": "public-works",
    "service_notice": "Closed.",
    "requested_datetime": T0,
    "updated_datetime": T0.replace(hour=12),
    "expected_datetime": T0.replace(day=5),
    "address": "12 Elm Street",
    "address_id": "A-991",
    "zipcode": "06510",
    "lat": 41.3083,
    "long": -72.9279,
    "media_url": "https://cdn.example.org/1.jpg",
    "extended_attributes": {"districts": {"ward": "Ward 7"}, "priority": "normal", "emergency": None},
}
# What the web process remembers of a form report nobody has classified yet: most fields unknown.
SPARSE: dict[str, Any] = {
    "service_request_id": "ZX81-AB12",
    "status": "open",
    "status_notes": None,
    "service_name": None,
    "service_code": None,
    "description": "something is wrong on my street",
    "agency_responsible": None,
    "service_notice": None,
    "requested_datetime": T0,
    "updated_datetime": T0,
    "expected_datetime": None,
    "address": None,
    "address_id": None,
    "zipcode": None,
    "lat": None,
    "long": None,
    "media_url": None,
    "extended_attributes": {},
}


class TwoRequests:
    """A lookup with one complete and one sparse request (the two ends a client must read)."""

    rows = {r["service_request_id"]: r for r in (FULL, SPARSE)}

    async def get(self, request_id: str) -> dict[str, Any] | None:
        return self.rows.get(request_id)

    async def search(self, **query: object) -> list[dict[str, Any]]:
        return list(self.rows.values())


@pytest.fixture
async def city(settings: Settings, publisher: FakePublisher) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(settings, publisher, TAXONOMY, lookup=TwoRequests()), "http://t") as c:
        yield c


@pytest.fixture
async def asking_city(settings: Settings, publisher: FakePublisher) -> AsyncIterator[httpx.AsyncClient]:
    """The packaged taxonomy, whose services ask questions (schemas/attributes.py)."""
    app = create_app(settings, publisher, load_taxonomy(), lookup=TwoRequests())
    async with asgi_client(app, "http://t") as c:
        yield c


async def test_services_with_questions_say_metadata_and_list_them(asking_city: httpx.AsyncClient) -> None:
    services = {s["service_code"]: s for s in (await asking_city.get(f"{BASE}/services.json")).json()}
    assert services["missed-pickup"]["metadata"] is True and services["noise"]["metadata"] is False
    body = (await asking_city.get(f"{BASE}/services/missed-pickup.json")).json()
    check(body, SERVICE_DEFINITION)
    [stream] = body["attributes"]
    assert (stream["code"], stream["datatype"], stream["required"], stream["variable"]) == (
        "stream",
        "singlevaluelist",
        True,
        True,
    )
    assert {v["key"] for v in stream["values"]} == {"trash", "recycling", "yard-waste", "public-can"}
    assert all(set(v) == {"key", "name"} for v in stream["values"])  # the words stay ours
    root = xml_root(await asking_city.get(f"{BASE}/services/missed-pickup.xml"))
    [attribute] = root.findall("attributes/attribute")
    assert attribute.findtext("code") == "stream" and attribute.findtext("required") == "true"
    assert [v.findtext("key") for v in attribute.findall("values/value")] == [
        "trash",
        "recycling",
        "yard-waste",
        "public-can",
    ]


async def test_post_requests_checks_the_answers_to_the_services_questions(
    asking_city: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    """The spec: a required attribute left out, or a value not in the list, is a 400."""
    form = valid(service_code="missed-pickup", address_string="12 Elm Street")
    missing = await asking_city.post(f"{BASE}/requests.json", data=form)
    assert missing.status_code == 400
    assert missing.json() == [
        {"code": 400, "description": "attribute[stream] is required: Which collection was missed?"}
    ]
    wrong = await asking_city.post(f"{BASE}/requests.xml", data={**form, "attribute[stream]": "compost"})
    assert wrong.status_code == 400 and b"not one of" in wrong.content
    assert not publisher.contacts  # nothing published for either
    ok = await asking_city.post(f"{BASE}/requests.json", data={**form, "attribute[stream]": "recycling"})
    assert ok.status_code == 201, ok.text
    [contact] = publisher.contacts
    assert contact.attributes == {"stream": "recycling"}
    # Optional questions may be left out; a service without questions refuses answers to none.
    pothole = await asking_city.post(f"{BASE}/requests.json", data=valid(description="deep hole"))
    assert pothole.status_code == 201, pothole.text
    extra = await asking_city.post(f"{BASE}/requests.json", data={**valid(), "attribute[colour]": "red"})
    assert extra.status_code == 400 and "does not ask it" in extra.json()[0]["description"]


def xml_root(response: httpx.Response) -> ET.Element:
    assert response.content.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(response.content)


def empty_elements(element: ET.Element) -> list[str]:
    """Elements of the spec's fields written without content (``<lat />``): none allowed."""
    return [child.tag for child in element if not list(child) and not (child.text or "").strip()]


# --- content types and encoding (validopen311, the spec) -------------------------------------------

GET_PATHS = [
    "/services.{fmt}",
    "/services/pothole.{fmt}",
    "/requests.{fmt}",
    "/requests/K7M4-QPXA.{fmt}",
    "/tokens/K7M4-QPXA.{fmt}",
]


@pytest.mark.parametrize("path", GET_PATHS)
async def test_every_xml_answer_is_text_xml_utf8(city: httpx.AsyncClient, path: str) -> None:
    response = await city.get(BASE + path.format(fmt="xml"))
    assert response.status_code == 200
    assert response.headers["content-type"] == XML_TYPE
    xml_root(response)


@pytest.mark.parametrize("path", GET_PATHS)
async def test_every_json_answer_is_application_json_utf8(city: httpx.AsyncClient, path: str) -> None:
    response = await city.get(BASE + path.format(fmt="json"))
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{JSON_TYPE}; charset=utf-8"  # the spec's header
    response.content.decode("utf-8")  # and it is UTF-8


async def test_post_answers_are_the_spec_media_types(client: httpx.AsyncClient) -> None:
    xml = await client.post(f"{BASE}/requests.xml", data=valid())
    assert (xml.status_code, xml.headers["content-type"]) == (201, XML_TYPE)
    xml_root(xml)
    as_json = await client.post(f"{BASE}/requests.json", data=valid(description="a second one"))
    assert as_json.headers["content-type"].split(";")[0] == JSON_TYPE


# --- JSON bodies against the schemas (open311/schema-validation, restated) -----------------------


async def test_services_json_is_a_list_of_services(city: httpx.AsyncClient) -> None:
    body = (await city.get(f"{BASE}/services.json")).json()
    check(body, list_of(SERVICE, at_least=1))


async def test_service_without_description_or_group_leaves_them_out(city: httpx.AsyncClient) -> None:
    by_code = {s["service_code"]: s for s in (await city.get(f"{BASE}/services.json")).json()}
    assert "description" not in by_code["streetlight"] and "group" not in by_code["other"]
    assert by_code["other"]["keywords"] == ""  # always there (validopen311 requires the element)


@pytest.mark.parametrize("code", ["pothole", "streetlight", "other"])
async def test_service_definition_json(city: httpx.AsyncClient, code: str) -> None:
    body = (await city.get(f"{BASE}/services/{code}.json")).json()
    check(body, SERVICE_DEFINITION)
    assert body["service_code"] == code


async def test_requests_json_are_requests(city: httpx.AsyncClient) -> None:
    body = (await city.get(f"{BASE}/requests.json")).json()
    check(body, list_of(REQUEST, at_least=2))


@pytest.mark.parametrize("ticket", ["K7M4-QPXA", "ZX81-AB12"])
async def test_one_request_json_is_a_request(city: httpx.AsyncClient, ticket: str) -> None:
    body = (await city.get(f"{BASE}/requests/{ticket}.json", params={"extensions": "true"})).json()
    check(body, list_of(REQUEST, at_least=1))
    assert len(body) == 1


async def test_absent_fields_are_left_out_not_null(city: httpx.AsyncClient) -> None:
    [sparse] = (await city.get(f"{BASE}/requests/ZX81-AB12.json")).json()
    assert None not in sparse.values()
    assert not {"lat", "long", "expected_datetime", "address", "zipcode", "status_notes"} & set(sparse)
    [full] = (await city.get(f"{BASE}/requests/K7M4-QPXA.json")).json()
    assert [k for k in full if k in REQUEST_FIELDS] == list(REQUEST_FIELDS)  # the spec's order


async def test_an_unclassified_request_still_has_a_service_code(city: httpx.AsyncClient) -> None:
    """service_code is required; a report no one has classified shows the taxonomy's fallback."""
    [sparse] = (await city.get(f"{BASE}/requests/ZX81-AB12.json")).json()
    fallback = TAXONOMY.get(TAXONOMY.fallback_code)
    assert fallback is not None
    assert (sparse["service_code"], sparse["service_name"]) == (fallback.code, fallback.name)


async def test_a_form_report_without_a_category_reads_back_as_a_valid_request(
    client: httpx.AsyncClient,
) -> None:
    """Through the real path: the resident form, then the local record of what was accepted."""
    page = await client.post("/", data={"description": "something is odd here", "address": "Elm St"})
    assert page.status_code == 200
    listed = (await client.get(f"{BASE}/requests.json")).json()
    check(listed, list_of(REQUEST, at_least=1))


async def test_post_answer_json(client: httpx.AsyncClient) -> None:
    body = (await client.post(f"{BASE}/requests.json", data=valid())).json()
    check(body, list_of(POST_ANSWER, at_least=1))


@pytest.mark.parametrize("fmt", FMTS)
async def test_errors_are_the_spec_error_list(city: httpx.AsyncClient, fmt: str) -> None:
    for path in ("/services/nothing", "/requests/ZZZZ-ZZZZ", "/tokens/ZZZZ-ZZZZ"):
        response = await city.get(f"{BASE}{path}.{fmt}")
        assert response.status_code == 404
        if fmt == "json":
            check(response.json(), list_of(ERROR, at_least=1))
        else:
            root = xml_root(response)
            assert root.tag == "errors" and [e.findtext("code") for e in root] == ["404"]


# --- XML structure (validopen311's shapes, the spec's examples) ------------------------------------


async def test_services_xml_structure(city: httpx.AsyncClient) -> None:
    root = xml_root(await city.get(f"{BASE}/services.xml"))
    assert root.tag == "services" and len(root) == len(TAXONOMY.services)
    for service in root:
        assert service.tag == "service"
        for required in ("service_code", "service_name", "metadata", "type", "keywords"):
            assert service.find(required) is not None, required
        assert service.findtext("metadata") in ("true", "false")
        assert service.findtext("type") in ("realtime", "batch", "blackbox")
        assert [e for e in empty_elements(service) if e != "keywords"] == []


async def test_service_definition_xml_structure(city: httpx.AsyncClient) -> None:
    root = xml_root(await city.get(f"{BASE}/services/pothole.xml"))
    assert root.tag == "service_definition"
    assert root.findtext("service_code") == "pothole"
    attributes = root.find("attributes")
    assert attributes is not None and all(a.tag == "attribute" for a in attributes)


@pytest.mark.parametrize("path", ["/requests.xml", "/requests/K7M4-QPXA.xml", "/requests/ZX81-AB12.xml"])
async def test_requests_xml_structure(city: httpx.AsyncClient, path: str) -> None:
    root = xml_root(await city.get(BASE + path))
    assert root.tag == "service_requests" and len(root) >= 1
    for request in root:
        assert request.tag == "request"
        for required in REQUIRED_REQUEST_FIELDS:
            assert (request.findtext(required) or "").strip(), required
        assert request.findtext("status") in ("open", "closed")
        for stamp in ("requested_datetime", "updated_datetime", "expected_datetime"):
            if request.find(stamp) is not None:
                assert is_w3c_datetime(request.findtext(stamp)), stamp
        for coordinate in ("lat", "long"):
            if request.find(coordinate) is not None:
                float(request.findtext(coordinate) or "")
        assert empty_elements(request) == []  # no <expected_datetime />, no <lat />


async def test_sparse_request_xml_leaves_absent_elements_out(city: httpx.AsyncClient) -> None:
    request = xml_root(await city.get(f"{BASE}/requests/ZX81-AB12.xml")).find("request")
    assert request is not None
    for absent in ("lat", "long", "expected_datetime", "zipcode", "address", "status_notes"):
        assert request.find(absent) is None, absent


async def test_post_answer_xml_has_no_empty_elements(client: httpx.AsyncClient) -> None:
    root = xml_root(await client.post(f"{BASE}/requests.xml", data=valid()))
    assert root.tag == "service_requests"
    [answer] = list(root)
    assert answer.tag == "request" and answer.findtext("service_request_id")
    assert empty_elements(answer) == []


# --- tokens (the spec; validopen311 calls it) ------------------------------------------------------


@pytest.mark.parametrize("fmt", FMTS)
async def test_a_token_is_the_ticket(city: httpx.AsyncClient, fmt: str) -> None:
    response = await city.get(f"{BASE}/tokens/k7m4qpxa.{fmt}")  # typed loosely, as a person might
    assert response.status_code == 200
    if fmt == "json":
        body = response.json()
        check(body, list_of(TOKEN_ANSWER, at_least=1))
        assert body == [{"token": "K7M4-QPXA", "service_request_id": "K7M4-QPXA"}]
    else:
        request = xml_root(response).find("request")
        assert request is not None
        assert (request.findtext("token"), request.findtext("service_request_id")) == ("K7M4-QPXA",) * 2


async def test_the_token_of_a_fresh_post_resolves(client: httpx.AsyncClient) -> None:
    ticket = (await client.post(f"{BASE}/requests.json", data=valid())).json()[0]["service_request_id"]
    body = (await client.get(f"{BASE}/tokens/{ticket}.json")).json()
    assert body == [{"token": ticket, "service_request_id": ticket}]


async def test_token_answers_the_jurisdiction_and_format_errors(city: httpx.AsyncClient) -> None:
    wrong = await city.get(f"{BASE}/tokens/K7M4-QPXA.xml", params={"jurisdiction_id": "elsewhere"})
    assert wrong.status_code == 404 and xml_root(wrong).tag == "errors"
    odd = await city.get(f"{BASE}/tokens/K7M4-QPXA.yaml")
    assert odd.status_code == 404
    check(odd.json(), list_of(ERROR, at_least=1))


# --- service discovery (SeeClickFix's validator, the spec's Service_Discovery) --------------------


def endpoints_of(fmt: str, response: httpx.Response) -> list[dict[str, Any]]:
    """The endpoints as dicts, whichever format: XML's ``formats`` become a list of strings."""
    if fmt == "json":
        return list(response.json()["endpoints"])
    root = xml_root(response)
    found = []
    container = root.find("endpoints")
    assert container is not None
    for endpoint in container:
        assert endpoint.tag == "endpoint"
        fields: dict[str, Any] = {
            child.tag: (child.text or "") for child in endpoint if child.tag != "formats"
        }
        formats = endpoint.find("formats")
        fields["formats"] = [f.text for f in formats if f.tag == "format"] if formats is not None else []
        found.append(fields)
    return found


def top_level(fmt: str, response: httpx.Response) -> dict[str, str]:
    if fmt == "json":
        return {k: v for k, v in response.json().items() if k != "endpoints"}
    root = xml_root(response)
    assert root.tag == "discovery"
    return {child.tag: child.text or "" for child in root if child.tag != "endpoints"}


@pytest.mark.parametrize("fmt", ["json", pytest.param("xml", marks=NEEDS_APP_WIRING)])
async def test_discovery_is_served_in_both_formats(city: httpx.AsyncClient, fmt: str) -> None:
    response = await city.get(f"/open311/discovery.{fmt}")  # the url ends in /discovery.<format>
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == {"json": JSON_TYPE, "xml": "text/xml"}[fmt]


@NEEDS_APP_WIRING
@pytest.mark.parametrize("fmt", FMTS)
async def test_discovery_has_contact_key_service_and_a_past_changeset(
    city: httpx.AsyncClient, fmt: str
) -> None:
    fields = top_level(fmt, await city.get(f"/open311/discovery.{fmt}"))
    assert fields["contact"].strip() and fields["key_service"].strip()
    assert is_w3c_datetime(fields["changeset"])
    assert datetime.fromisoformat(fields["changeset"]) < datetime.now(UTC)


@NEEDS_APP_WIRING
async def test_discovery_says_the_same_in_both_formats(city: httpx.AsyncClient) -> None:
    as_json = top_level("json", await city.get("/open311/discovery.json"))
    assert as_json == top_level("xml", await city.get("/open311/discovery.xml"))


@NEEDS_APP_WIRING
@pytest.mark.parametrize("fmt", FMTS)
async def test_discovery_endpoints(city: httpx.AsyncClient, settings: Settings, fmt: str) -> None:
    endpoints = endpoints_of(fmt, await city.get(f"/open311/discovery.{fmt}"))
    assert len(endpoints) >= 1
    for endpoint in endpoints:
        assert endpoint["specification"].strip() and endpoint["url"].strip()
        assert is_w3c_datetime(endpoint["changeset"])
        assert datetime.fromisoformat(endpoint["changeset"]) < datetime.now(UTC)
        assert endpoint["type"] in ("production", "test")
        assert endpoint["formats"] and all(endpoint["formats"])
        if endpoint["specification"].lower().endswith("_v2"):
            assert "text/xml" in endpoint["formats"]  # XML is the spec's required format
    [ours] = endpoints
    assert ours["url"] == settings.web.public_url + BASE
    assert set(ours["formats"]) == {"text/xml", "application/json"}


async def test_the_discovered_endpoint_answers(city: httpx.AsyncClient) -> None:
    [endpoint] = (await city.get("/open311/discovery.json")).json()["endpoints"]
    path = urlsplit(endpoint["url"]).path
    for fmt in FMTS:
        assert (await city.get(f"{path}/services.{fmt}")).status_code == 200


def test_discovery_values_come_from_the_arguments(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, web=WebSettings(base_url="https://311.city.example/"))
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    document = discovery_document(
        settings,
        changeset=when,
        contact="311@city.example",
        key_service="https://city.example/keys",
        endpoint_type="test",
    )
    assert (document["changeset"], document["contact"], document["key_service"]) == (
        when,
        "311@city.example",
        "https://city.example/keys",
    )
    [endpoint] = document["endpoints"]
    assert (endpoint["url"], endpoint["type"], endpoint["changeset"]) == (
        "https://311.city.example/open311/v2",
        "test",
        when,
    )


def test_discovery_changeset_is_the_taxonomy_files_mtime(tmp_path: Path) -> None:
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text("services: []\n")
    stamp = datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC).timestamp()
    os.utime(taxonomy, (stamp, stamp))
    settings = Settings(data_dir=tmp_path, taxonomy_file=taxonomy)
    assert discovery_document(settings)["changeset"] == datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC)


# --- every error under /open311/ in the spec's shape ----------------------------------------------


@NEEDS_APP_WIRING
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/open311/v2/nothing.json", 404),
        ("GET", "/open311/v2/services", 404),  # no format suffix
        ("GET", "/open311/v2/requests/K7M4-QPXA/notes.json", 404),
        ("GET", "/open311/georeport.json", 404),
        ("DELETE", "/open311/v2/services.json", 405),
    ],
)
async def test_unknown_open311_paths_answer_the_error_list_json(
    city: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await city.request(method, path)
    assert response.status_code == status
    body = response.json()
    check(body, list_of(ERROR, at_least=1))
    assert body[0]["code"] == status


@NEEDS_APP_WIRING
@pytest.mark.parametrize("path", ["/open311/v2/nothing.xml", "/open311/discovery/extra.xml"])
async def test_unknown_open311_paths_answer_the_error_list_xml(city: httpx.AsyncClient, path: str) -> None:
    response = await city.get(path)
    assert (response.status_code, response.headers["content-type"]) == (404, XML_TYPE)
    root = xml_root(response)
    assert root.tag == "errors" and root.findtext("error/code") == "404"
    assert root.findtext("error/description")


@NEEDS_APP_WIRING
async def test_unknown_format_answers_the_error_list(city: httpx.AsyncClient) -> None:
    response = await city.get("/open311/discovery.yaml")
    assert response.status_code == 404
    check(response.json(), list_of(ERROR, at_least=1))


async def test_method_not_allowed_keeps_its_allow_header(city: httpx.AsyncClient) -> None:
    response = await city.delete(f"{BASE}/services.json")
    assert "GET" in response.headers.get("allow", "")


async def test_other_paths_keep_fastapis_answer(city: httpx.AsyncClient) -> None:
    response = await city.get("/nothing-here")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


# --- the record builder, without HTTP ---------------------------------------------------------------


def test_request_record_keeps_required_fields_and_order() -> None:
    record = request_record(FULL, "json", extensions=False)
    assert list(record)[: len(REQUEST_FIELDS)] == list(REQUEST_FIELDS)
    sparse = request_record(SPARSE, "xml", extensions=False, unclassified=TAXONOMY.get("other"))
    assert set(REQUIRED_REQUEST_FIELDS) <= set(sparse) and None not in sparse.values()
