"""``GET /api/requests`` and ``GET /api/requests/{id}`` against a real PostgreSQL case store.

The feed (``changed_at`` order, cursor pages), its filters, department scope, the history of
one request, the 4xx answers, and the OpenAPI document's schemas. The module gets a throwaway
database; every test starts from empty tables. Skipped, saying why, without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from intake311.settings import Settings
from schemas.contact import ReplyVia, Sender, SenderKind
from schemas.request import Priority, ServiceRequest
from schemas.status import State
from schemas.taxonomy import Service, Taxonomy
from sinks.postgres import CaseStore
from sinks.requests_api import decode_cursor, encode_cursor, request_api_routes

pytestmark = pytest.mark.integration

PHONE = "+12035550142"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)
WORKS, PARKS = "works-token-0123456789", "parks-token-0123456789"
TAXONOMY = Taxonomy(
    services=(
        Service(code="pothole", name="Pothole", department="public-works", sla_hours=72),
        Service(code="graffiti", name="Graffiti", department="public-works", sla_hours=120),
        Service(code="tree", name="Tree down", department="parks"),
        Service(code="other", name="Something else", department="triage"),
    )
)


@pytest.fixture
async def api(store: CaseStore) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        department_tokens={"public-works": SecretStr(WORKS), "parks": SecretStr(PARKS)}  # type: ignore[arg-type]
    )
    app = FastAPI()
    app.include_router(request_api_routes(settings, store, settle_s=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_request(request_id: str, **changes: Any) -> ServiceRequest:
    requested = changes.pop("requested_datetime", T0)
    values: dict[str, Any] = {
        "request_id": request_id,
        "event_id": changes.pop("event_id", f"ev-{request_id}"),
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Deep pothole",
        "lat": 41.3,
        "long": -72.9,
        "address_string": "12 Elm Street",
        "requested_datetime": requested,
        "updated_datetime": changes.pop("updated_datetime", requested),
        "agency_responsible": "public-works",
        "channel": "sms",
        "reporter": Sender(kind=SenderKind.PHONE, address=PHONE, name="Dana Resident"),
        "reply": ReplyVia(channel="sms", address=PHONE),
        "confidence": 0.9,
        "source_contact_ids": (f"sms:{request_id}",),
    }
    values.update(changes)
    return ServiceRequest(**values)


async def ids(client: httpx.AsyncClient, token: str = WORKS, **params: Any) -> list[str]:
    response = await client.get("/api/requests", params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    return [r["service_request_id"] for r in response.json()["requests"]]


async def test_pages_follow_changes_and_a_cursor_resumes_after_later_changes(
    store: CaseStore, api: httpx.AsyncClient
) -> None:
    for n in range(1, 6):
        await store.upsert_requests([make_request(f"AAAA-000{n}")], "public-works")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/requests", params=params, headers=auth(WORKS))).json()
        pages += 1
        seen += [r["service_request_id"] for r in page["requests"]]
        cursor = page["next_cursor"]
        if not page["more"]:
            break
    assert seen == [f"AAAA-000{n}" for n in range(1, 6)] and pages == 3  # in write order, each once
    # Caught up: an empty page keeps the cursor, so the system resumes from the same place.
    empty = (await api.get("/api/requests", params={"cursor": cursor}, headers=auth(WORKS))).json()
    assert empty == {"requests": [], "next_cursor": cursor, "more": False}

    # Tomorrow: a status change on the first request and a new request come after the cursor.
    assert await store.record_status("AAAA-0001", State.IN_PROGRESS, "Crew out", T0 + H, "slack:U1")
    await store.upsert_requests([make_request("AAAA-0006")], "public-works")
    assert await ids(api, cursor=cursor) == ["AAAA-0001", "AAAA-0006"]


async def test_a_replayed_event_is_not_a_change(store: CaseStore, api: httpx.AsyncClient) -> None:
    await store.upsert_requests([make_request("AAAA-0001"), make_request("AAAA-0002")], "public-works")
    page = (await api.get("/api/requests", headers=auth(WORKS))).json()
    await store.upsert_requests([make_request("AAAA-0001")], "public-works")  # redelivered
    assert await ids(api, cursor=page["next_cursor"]) == []
    # A later report of the same request (new event, newer content) is one.
    later = make_request("AAAA-0001", event_id="ev-2", description="Deeper", updated_datetime=T0 + H)
    await store.upsert_requests([later], "public-works")
    assert await ids(api, cursor=page["next_cursor"]) == ["AAAA-0001"]


async def test_filters(store: CaseStore, api: httpx.AsyncClient) -> None:
    await store.upsert_requests(
        [
            make_request("AAAA-0001", districts={"ward": "Ward 7", "neighborhood": "Dixwell"}),
            make_request(
                "AAAA-0002", service_code="graffiti", service_name="Graffiti", districts={"ward": "Ward 2"}
            ),
            make_request("AAAA-0003", priority=Priority.HIGH, priority_reason="school zone"),
        ],
        "public-works",
    )
    assert await store.record_status("AAAA-0002", State.CLOSED, "Painted over", T0 + H, "slack:U1")
    assert await ids(api, service_code="graffiti") == ["AAAA-0002"]
    assert sorted(await ids(api, service_code="graffiti,pothole")) == ["AAAA-0001", "AAAA-0002", "AAAA-0003"]
    assert sorted(await ids(api, status="open")) == ["AAAA-0001", "AAAA-0003"]
    assert await ids(api, state="closed") == ["AAAA-0002"]
    assert await ids(api, priority="high") == ["AAAA-0003"]
    assert await ids(api, district="ward:Ward 7") == ["AAAA-0001"]
    assert await ids(api, district=["ward:Ward 7", "neighborhood:Dixwell"]) == ["AAAA-0001"]
    assert await ids(api, district=["ward:Ward 7", "neighborhood:Downtown"]) == []
    # updated_since is the record's change time: everything was written just now.
    assert len(await ids(api, updated_since="2000-01-01T00:00:00Z")) == 3
    assert await ids(api, updated_since=(datetime.now(UTC) + H).isoformat()) == []


async def test_a_token_sees_its_own_department_only(store: CaseStore, api: httpx.AsyncClient) -> None:
    await store.upsert_requests([make_request("AAAA-0001")], "public-works")
    tree = make_request(
        "BBBB-0001", service_code="tree", service_name="Tree down", agency_responsible="parks"
    )
    await store.upsert_requests([tree], "parks")
    assert await ids(api, WORKS) == ["AAAA-0001"]
    assert await ids(api, PARKS) == ["BBBB-0001"]
    other = await api.get("/api/requests", params={"department": "parks"}, headers=auth(WORKS))
    assert other.status_code == 403 and "parks" in other.json()[0]["description"]
    assert (await api.get("/api/requests/BBBB-0001", headers=auth(WORKS))).status_code == 403
    for headers in ({}, auth("wrong"), {"Authorization": WORKS}):
        response = await api.get("/api/requests", headers=headers)
        assert response.status_code == 403, headers
        assert response.json()[0]["code"] == 403
        assert (await api.get("/api/requests/AAAA-0001", headers=headers)).status_code == 403


async def test_one_request_with_its_history_and_no_personal_data(
    store: CaseStore, api: httpx.AsyncClient
) -> None:
    await store.upsert_requests([make_request("AAAA-0001")], "public-works")
    assert await store.record_status("AAAA-0001", State.ACKNOWLEDGED, "Seen", T0 + H, "api:public-works")
    response = await api.get("/api/requests/aaaa0001", headers=auth(WORKS))  # the ticket as typed
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["service_request_id"] == "AAAA-0001" and body["state"] == "acknowledged"
    assert [(h["kind"], h["state"], h["source"]) for h in body["history"]] == [
        ("received", "new", "pipeline:public-works"),
        ("status", "acknowledged", "api:public-works"),
    ]
    assert PHONE not in response.text and "Dana" not in response.text
    assert body["attributes"] == {}
    await store.upsert_requests(
        [make_request("AAAA-0002", service_code="missed-pickup", attributes={"stream": "recycling"})],
        "public-works",
    )
    answered = (await api.get("/api/requests/AAAA-0002", headers=auth(WORKS))).json()
    assert answered["attributes"] == {"stream": "recycling"}
    missing = await api.get("/api/requests/ZZZZ-9999", headers=auth(WORKS))
    assert missing.status_code == 404 and missing.json()[0]["code"] == 404


async def test_the_citys_id_is_in_the_answer_and_the_feed_once_the_sink_announced_it(
    store: CaseStore, api: httpx.AsyncClient
) -> None:
    from schemas.external import ExternalRef

    system = "open311:public-works/city"
    await store.upsert_requests([make_request("AAAA-0003")], "public-works")
    page = (await api.get("/api/requests", headers=auth(WORKS))).json()
    assert [r["external_ids"] for r in page["requests"]] == [{}]
    await store.record_external(ExternalRef.new("AAAA-0003", system=system, external_id="1001", at=T0 + H))
    body = (await api.get("/api/requests/AAAA-0003", headers=auth(WORKS))).json()
    assert body["external_ids"] == {system: "1001"}
    assert [(h["kind"], h["source"], h["notes"]) for h in body["history"]][-1] == (
        "external",
        system,
        f"{system} #1001",
    )
    # A department system following the feed sees the request again, with the id.
    later = (
        await api.get("/api/requests", params={"cursor": page["next_cursor"]}, headers=auth(WORKS))
    ).json()
    assert [(r["service_request_id"], r["external_ids"]) for r in later["requests"]] == [
        ("AAAA-0003", {system: "1001"})
    ]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "pending"}, "status"),
        ({"state": "done"}, "state"),
        ({"priority": "urgent"}, "priority"),
        ({"district": "Ward 7"}, "layer:name"),
        ({"district": "ward:7\x00"}, "NUL"),
        ({"service_code": "pot\x00hole"}, "NUL"),
        ({"service_code": "x" * 201}, "200 characters"),
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": encode_cursor(T0, "AAAA\x00")}, "cursor"),
        ({"cursor": encode_cursor(T0, "x")[:-3] + "@@@"}, "cursor"),
    ],
)
async def test_bad_queries_are_400_with_the_reason(
    api: httpx.AsyncClient, params: dict[str, str], reason: str
) -> None:
    response = await api.get("/api/requests", params=params, headers=auth(WORKS))
    assert response.status_code == 400, response.text
    assert reason in response.json()[0]["description"]


def test_cursor_round_trip() -> None:
    at = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "AAAA-0001")) == (at, "AAAA-0001")
    with pytest.raises(ValueError, match="cursor"):
        decode_cursor(encode_cursor(at, "x").replace("A", "B"))


async def test_changes_of_the_last_moments_are_held_back(store: CaseStore) -> None:
    await store.upsert_requests([make_request("AAAA-0001")], "public-works")
    assert await store.changed(settle_s=3600) == []
    assert [c.request_id for c in await store.changed(settle_s=0)] == ["AAAA-0001"]


async def test_the_openapi_document_describes_the_answers(api: httpx.AsyncClient) -> None:
    settings = Settings()
    app = FastAPI()
    app.include_router(request_api_routes(settings, None))  # type: ignore[arg-type]
    schema = app.openapi()
    listing = schema["paths"]["/api/requests"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RequestPage"
    )
    assert {"400", "403"} <= set(listing["responses"])
    detail = schema["components"]["schemas"]["DepartmentRequestDetail"]
    assert "history" in detail["properties"] and "reporter" not in detail["properties"]
    assert detail["properties"]["external_ids"]["type"] == "object"
    names = {p["name"] for p in listing["parameters"]}
    assert names >= {
        "service_code",
        "status",
        "state",
        "priority",
        "district",
        "updated_since",
        "cursor",
        "limit",
    }


async def test_a_case_store_that_does_not_answer_is_a_503_not_a_500() -> None:
    class Down:
        async def changed(self, **_: Any) -> list[Any]:
            raise OSError("connection refused (test)")

        async def get_case(self, _: str) -> Any:
            raise OSError("connection refused (test)")

    settings = Settings(department_tokens={"public-works": SecretStr(WORKS)})  # type: ignore[arg-type]
    app = FastAPI()
    app.include_router(request_api_routes(settings, Down(), settle_s=0))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for path in ("/api/requests", "/api/requests/AAAA-0001"):
            response = await client.get(path, headers=auth(WORKS))
            assert response.status_code == 503, (path, response.text)
            assert "retry" in response.json()[0]["description"]
