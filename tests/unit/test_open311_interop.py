"""A GeoReport v2 client that no one here wrote reads our Open311 endpoints.

``georeport`` (PyPI, Apache-2.0) is a third-party client for city Open311 endpoints: it calls
``services``, ``services/{code}``, ``requests`` and ``requests/{id}`` with ``requests`` and reads
the answers with ``json`` or ``xmltodict``, the way a resident's app or a city dashboard would.
The conformance checks (test_open311_conformance.py) restate the spec's rules; this is the other
half: someone else's reading of the spec, run against our server over a real socket. No Open311
*server* can be installed from a registry to test our client sink against (docs/open311-sink.md);
this client is the nearest independent implementation there is.

The library has no POST call, so requests are created with httpx (as an app would) and read back
with it. The web app is the one test_web_open311 builds, with the project's own taxonomy, so the
service questions (``metadata: true``) go through the client too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from georeport import GeoReport

from channels.web import AcceptedRequests, create_app
from intake311.settings import Settings, WebSettings
from schemas.taxonomy import load_taxonomy
from tests.support import serving
from tests.unit.test_web_open311 import FakePublisher

KEY = "interop-key"
JURISDICTION = "city.test"
TAXONOMY = load_taxonomy()


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(data_dir=tmp_path, web=WebSettings(api_keys=[KEY], jurisdiction_id=JURISDICTION))
    lookup = AcceptedRequests(tmp_path / "accepted.sqlite3")
    app = create_app(settings, FakePublisher(), TAXONOMY, lookup=lookup)
    async with serving(app) as url:
        yield f"{url}/open311/v2"


def client(base_url: str, fmt: str) -> GeoReport:
    return GeoReport(base_url, jurisdiction=JURISDICTION, output_format=fmt)


async def call(func: Any, *args: Any, **kwargs: Any) -> Any:
    """The library is synchronous (``requests``): run it off the loop that serves the app."""
    return await asyncio.to_thread(func, *args, **kwargs)


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_service_list_and_definition(base_url: str, fmt: str) -> None:
    gr = client(base_url, fmt)
    services = await call(gr.get_service_list)
    by_code = {s["service_code"]: s for s in services}
    assert set(by_code) == {s.code for s in TAXONOMY.services}
    # XML gives text, JSON gives booleans: both say which services ask questions.
    assert str(by_code["missed-pickup"]["metadata"]).lower() == "true"
    assert str(by_code["graffiti"]["metadata"]).lower() == "false"

    definition = await call(gr.get_service_definition, "missed-pickup")
    assert definition["service_code"] == "missed-pickup"
    attributes = definition["attributes"]
    if fmt == "xml":  # xmltodict: <attributes><attribute>..</attribute></attributes>
        attributes = attributes["attribute"]
        attributes = attributes if isinstance(attributes, list) else [attributes]
    [stream] = [a for a in attributes if a["code"] == "stream"]
    assert str(stream["required"]).lower() == "true"
    assert stream["datatype"] == "singlevaluelist"
    values = stream["values"]["value"] if fmt == "xml" else stream["values"]
    assert {"trash", "recycling"} <= {v["key"] for v in values}


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_requests_posted_by_an_app_read_back_by_the_client(base_url: str, fmt: str) -> None:
    async with httpx.AsyncClient() as http:
        posted = await http.post(
            f"{base_url}/requests.json",
            data={
                "api_key": KEY,
                "jurisdiction_id": JURISDICTION,
                "service_code": "missed-pickup",
                "attribute[stream]": "recycling",
                "address_string": "200 Orange St",
                "description": "Recycling was not picked up <again> & the bins are full",
                "lat": "41.3083",
                "long": "-72.9279",
            },
        )
    assert posted.status_code == 201, posted.text
    ticket = posted.json()[0]["service_request_id"]
    gr = client(base_url, fmt)

    one = await call(gr.get_service_request, ticket)
    assert one["service_request_id"] == ticket
    assert one["status"] == "open"
    assert one["service_code"] == "missed-pickup"
    assert one["description"] == "Recycling was not picked up <again> & the bins are full"
    assert float(one["lat"]) == pytest.approx(41.3083)
    assert float(one["long"]) == pytest.approx(-72.9279)

    found = await call(gr.get_service_requests, service_request_id=f"{ticket},ZZZZ-ZZZZ")
    if fmt == "xml":  # one <request> comes back as a dict, several as a list
        found = found if isinstance(found, list) else [found]
    assert [r["service_request_id"] for r in found] == [ticket]

    if fmt == "json":  # the client cannot read an empty XML list (<service_requests />: None)
        assert await call(gr.get_service_requests, service_code="graffiti") == []
