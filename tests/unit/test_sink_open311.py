"""The Open311 client sink's parts: config, the form it posts, the answers it reads (JSON and XML,
id or token, the spec's error lists), status diffing, and the sink and its poller against the
spec-following fake city endpoint in process (tests/fakes/georeport.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from intake311.bus import Outgoing
from schemas.contact import Media, Sender, SenderKind
from schemas.external import ExternalRef, external_ref_id
from schemas.ids import event_id_for
from schemas.request import ServiceRequest
from schemas.status import State, StatusChange
from schemas.topics import Topics
from sinks.base import Delivery, DeliveryError, SinkContext, parse_sink_config
from sinks.open311 import (
    AnswerError,
    MemoryRemoteIds,
    Open311Sink,
    Open311SinkConfig,
    RemoteRef,
    RemoteRequest,
    build_form,
    error_descriptions,
    observed,
    parse_created,
    parse_records,
    parse_requests,
    parse_tokens,
    refs_to_poll,
    status_change_for,
)
from sinks.retry import deliver_all
from tests.fakes.georeport import GeoReportFake

ENDPOINT = "http://city.test/open311/v2"
AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def config(**values: Any) -> Open311SinkConfig:
    base: dict[str, Any] = {
        "name": "city",
        "endpoint": ENDPOINT,
        "api_key": "city-key",
        "jurisdiction_id": "city.example",
        "service_codes": {"pothole": "PTH", "graffiti": "GRF"},
    }
    base.update(values)
    return Open311SinkConfig.model_validate(base)


def request(ticket: str = "AB12-CD34", **values: Any) -> ServiceRequest:
    base: dict[str, Any] = {
        "request_id": ticket,
        "event_id": event_id_for(ticket, [f"web:{ticket}"]),
        "service_code": "pothole",
        "service_name": "Pothole",
        "description": "Deep pothole by the school",
        "lat": 41.3083,
        "long": -72.9279,
        "address_string": "12 Elm Street",
        "requested_datetime": AT,
        "updated_datetime": AT,
        "channel": "web",
        "confidence": 0.9,
        "source_contact_ids": (f"web:{ticket}",),
    }
    base.update(values)
    return ServiceRequest.model_validate(base)


# --- config --------------------------------------------------------------------------------------


def test_the_registry_builds_it_from_a_subscriptions_entry() -> None:
    parsed = parse_sink_config(
        {"name": "city", "type": "open311", "endpoint": ENDPOINT, "api_key": "k", "format": "xml"}
    )
    assert isinstance(parsed, Open311SinkConfig)
    assert parsed.url("requests") == f"{ENDPOINT}/requests.xml"


def test_the_api_key_comes_from_the_environment_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITY_OPEN311_KEY", "s3cret-key")
    parsed = config(api_key=None, api_key_env="CITY_OPEN311_KEY")
    assert parsed.key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(parsed) and "s3cret-key" not in str(parsed.model_dump())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_key": None}, "api_key"),
        ({"api_key_env": "NOT_SET_ANYWHERE_311"}, "not both"),
        ({"api_key": None, "api_key_env": "NOT_SET_ANYWHERE_311"}, "NOT_SET_ANYWHERE_311"),
        ({"endpoint": "ftp://city.test/open311"}, "http"),
        ({"endpoint": f"{ENDPOINT}?api_key=x"}, "query"),
        ({"format": "yaml"}, "format"),
        ({"attributes": {"WARD": "districts"}}, "unknown source"),
        ({"service_codes": {"pothole": " "}}, "must not be empty"),
        ({"ticket_note": "from intake311"}, "{ticket}"),
        ({"poll_interval_s": 0.5}, "poll_interval_s"),
        ({"url": ENDPOINT}, "url"),  # a typo'd field name fails at load, not at the first request
    ],
)
def test_invalid_configs_fail_at_load_saying_what(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("?", r"\?")):
        config(**values)


def test_the_remote_id_topic_is_under_the_prefix_per_department_and_sink() -> None:
    assert Topics("nh").open311_ids("public-works", "city") == "nh.open311.public-works.city"
    with pytest.raises(ValueError):
        Topics().open311_ids("Public Works", "city")


# --- the form ---------------------------------------------------------------------------------


def test_the_form_has_the_spec_fields_the_request_carries() -> None:
    form = build_form(config(), request())
    assert form == {
        "api_key": "city-key",
        "jurisdiction_id": "city.example",
        "service_code": "PTH",
        "lat": "41.3083",
        "long": "-72.9279",
        "address_string": "12 Elm Street",
        "description": "Deep pothole by the school\n\n(intake311 ticket AB12-CD34)",
    }


def test_the_form_leaves_out_what_the_request_lacks() -> None:
    form = build_form(
        config(jurisdiction_id=None, ticket_note=None), request(lat=None, long=None, description="")
    )
    assert form == {"api_key": "city-key", "service_code": "PTH", "address_string": "12 Elm Street"}
    only_lat = build_form(config(), request(long=None, address_string=None))
    assert "lat" not in only_lat and "long" not in only_lat  # half a point is no point


def test_the_reporter_goes_only_with_send_reporter_and_by_the_way_they_reached_us() -> None:
    by_email = request(
        reporter=Sender(kind=SenderKind.EMAIL, address="ana@example.org", name="Ana María Ruiz")
    )
    form = build_form(config(), by_email)
    assert (form["email"], form["first_name"], form["last_name"]) == ("ana@example.org", "Ana", "María Ruiz")
    assert "phone" not in form
    by_phone = build_form(config(), request(reporter=Sender(kind=SenderKind.PHONE, address="+12035550100")))
    assert by_phone["phone"] == "+12035550100" and "email" not in by_phone and "first_name" not in by_phone
    social = build_form(config(), request(reporter=Sender(kind=SenderKind.SOCIAL, address="@ana")))
    assert not {"email", "phone"} & set(social)
    private = build_form(config(send_reporter=False), by_email)
    assert not {"email", "phone", "first_name", "last_name"} & set(private)


def test_media_and_attributes() -> None:
    cfg = config(
        attributes={
            "WARD": "district.ward",
            "PRIO": "priority",
            "TICKET": "request_id",
            "SRC": "const:intake311",
            "ZONE": "district.zone",  # the request is in no zone: left out
            "BIN": "answer.stream",
            "ITEMS": "answer.items",
            "LANE": "answer.bike-lane",  # not answered: left out
        }
    )
    form = build_form(
        cfg,
        request(
            districts={"ward": "Ward 7"},
            media=(Media(url="https://m.example/1.jpg"),),
            attributes={"stream": "recycling", "items": ("couch", "tires")},
        ),
    )
    assert form["attribute[BIN]"] == "recycling" and form["attribute[ITEMS]"] == "couch,tires"
    assert "attribute[LANE]" not in form
    assert form["media_url"] == "https://m.example/1.jpg"
    assert form["attribute[WARD]"] == "Ward 7"
    assert form["attribute[PRIO]"] == "normal"
    assert form["attribute[TICKET]"] == "AB12-CD34"
    assert form["attribute[SRC]"] == "intake311"
    assert "attribute[ZONE]" not in form
    own = build_form(cfg, request(media_url="https://m.example/own.jpg", media=(Media(url="https://x/2"),)))
    assert own["media_url"] == "https://m.example/own.jpg"


def test_an_unmapped_service_is_refused_for_good_or_takes_the_default() -> None:
    with pytest.raises(DeliveryError, match="'streetlight' has no Open311 service code") as caught:
        build_form(config(), request(service_code="streetlight"))
    assert caught.value.retryable is False
    assert build_form(config(default_service_code="OTHER"), request(service_code="streetlight"))[
        "service_code"
    ] == ("OTHER")


# --- answers ----------------------------------------------------------------------------------------


XML_ID = b"""<?xml version="1.0" encoding="utf-8"?>
<service_requests><request><service_request_id>293944</service_request_id>
<service_notice>The City will inspect within 5 days.</service_notice><account_id/></request>
</service_requests>"""
XML_TOKEN = b"""<?xml version="1.0" encoding="utf-8"?>
<service_requests><request><token>12345</token></request></service_requests>"""


@pytest.mark.parametrize(
    ("body", "fmt", "expected"),
    [
        (
            b'[{"service_request_id":293944,"service_notice":"ok","account_id":null}]',
            "json",
            ("293944", None),
        ),
        (b'[{"token":"12345"}]', "json", (None, "12345")),
        (b'{"service_request_id":"A-1"}', "json", ("A-1", None)),  # one object, not a list
        (XML_ID, "xml", ("293944", None)),
        (XML_TOKEN, "xml", (None, "12345")),
    ],
)
def test_created_answers_give_an_id_or_a_token(body: bytes, fmt: Any, expected: tuple[Any, Any]) -> None:
    created = parse_created(body, fmt)
    assert (created.service_request_id, created.token) == expected


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"[]", "json"),
        (b'[{"service_notice":"thanks"}]', "json"),
        (b"<html>ok</html>", "json"),
        (b"<a>", "xml"),
    ],
)
def test_an_answer_without_id_or_token_is_an_error(body: bytes, fmt: Any) -> None:
    with pytest.raises(AnswerError):
        parse_created(body, fmt)


def test_error_lists_in_both_formats_and_anything_else() -> None:
    xml = b"""<?xml version="1.0" encoding="utf-8"?><errors><error><code>400</code>
    <description>service_code was not provided</description></error><error><code>400</code>
    <description>lat/long missing</description></error></errors>"""
    assert error_descriptions(xml, "xml") == "400 service_code was not provided; 400 lat/long missing"
    listed = b'[{"code":403,"description":"API key was not provided or is invalid"}]'
    assert error_descriptions(listed, "json") == "403 API key was not provided or is invalid"
    assert error_descriptions(xml, "json").startswith("400 service_code")  # a proxy in the other format
    assert error_descriptions(b"<html><body>Bad Gateway</body></html>", "json") == (
        "<html><body>Bad Gateway</body></html>"
    )


def test_requests_are_read_from_json_and_xml_with_empty_elements_as_absent() -> None:
    xml = b"""<?xml version="1.0" encoding="utf-8"?><service_requests>
    <request><service_request_id>1001</service_request_id><status>closed</status>
    <status_notes>Filled</status_notes><updated_datetime>2026-11-03T08:00:00-05:00</updated_datetime>
    <expected_datetime /><lat /></request>
    <request><service_request_id>1002</service_request_id><status>open</status><status_notes />
    <updated_datetime /></request>
    <request><service_request_id>1003</service_request_id><status>archived</status></request>
    </service_requests>"""
    found = parse_requests(xml, "xml")
    assert [(r.service_request_id, r.status, r.status_notes) for r in found] == [
        ("1001", "closed", "Filled"),
        ("1002", "open", None),
    ]
    assert found[0].updated == datetime(2026, 11, 3, 13, 0, tzinfo=UTC)
    assert found[1].updated is None
    as_json = json.dumps(
        [
            {
                "service_request_id": 7,
                "status": "OPEN",
                "updated_datetime": "2026-11-03T08:00:00Z",
                "status_notes": "",
            }
        ]
    ).encode()
    (one,) = parse_requests(as_json, "json")
    assert (one.service_request_id, one.status, one.status_notes) == ("7", "open", None)
    assert one.updated == datetime(2026, 11, 3, 8, 0, tzinfo=UTC)


def test_tokens_answer_ids_only_once_resolved() -> None:
    assert parse_tokens(b'[{"service_request_id":"1001","token":"t1"}]', "json") == {"t1": "1001"}
    assert parse_tokens(b'[{"service_request_id":null,"token":"t1"}]', "json") == {}
    xml = b"<service_requests><request><service_request_id/><token>t1</token></request></service_requests>"
    assert parse_tokens(xml, "xml") == {}
    assert parse_records(b"<errors/>", "xml") == []


# --- status diffing ------------------------------------------------------------------------------

SOURCE = "open311:public-works/city"


def remote(status: str = "open", notes: str | None = None, minutes: int = 0) -> RemoteRequest:
    return RemoteRequest("1001", status, notes, AT + timedelta(minutes=minutes), AT)


def ref(**values: Any) -> RemoteRef:
    return RemoteRef(request_id="AB12-CD34", department="public-works", service_request_id="1001", **values)


def diff(r: RemoteRef, remote_request: RemoteRequest, open_state: State | None = State.ACKNOWLEDGED) -> Any:
    return status_change_for(r, remote_request, source=SOURCE, open_state=open_state)


def test_the_first_sight_of_an_open_request_is_acknowledged_and_closing_is_closed() -> None:
    first = diff(ref(), remote("open"))
    assert (first.state, first.request_id, first.source, first.department) == (
        State.ACKNOWLEDGED,
        "AB12-CD34",
        SOURCE,
        "public-works",
    )
    closed = diff(ref(remote_status="open"), remote("closed", "Filled the hole", minutes=90))
    assert (closed.state, closed.notes, closed.at) == (
        State.CLOSED,
        "Filled the hole",
        AT + timedelta(minutes=90),
    )


def test_nothing_changed_means_no_change_and_an_updated_time_alone_is_not_news() -> None:
    seen = ref(remote_status="open", remote_notes="Crew assigned")
    assert diff(seen, remote("open", "Crew assigned", minutes=5)) is None
    assert diff(seen, remote("open", " Crew assigned ", minutes=9)) is None


def test_reopened_notes_and_a_muted_open() -> None:
    reopened = diff(ref(remote_status="closed"), remote("open", minutes=30))
    assert reopened.state == State.NEW
    noted = diff(ref(remote_status="open"), remote("open", "Crew assigned", minutes=10))
    assert (noted.state, noted.notes) == (State.ACKNOWLEDGED, "Crew assigned")
    assert diff(ref(), remote("open"), open_state=None) is None
    assert diff(ref(remote_status="closed"), remote("open"), open_state=None).state == State.NEW


def test_change_ids_are_derived_from_request_status_and_remote_time() -> None:
    a = diff(ref(remote_status="open"), remote("closed", "Done", minutes=90))
    again = diff(ref(remote_status="open"), remote("closed", "Done", minutes=90))
    assert a.event_id == again.event_id  # a poll repeated after a restart: the same event
    later = diff(ref(remote_status="open"), remote("closed", "Done", minutes=91))
    assert later.event_id != a.event_id
    other = status_change_for(
        RemoteRef(request_id="ZZ99-ZZ99", department="public-works", service_request_id="1001"),
        remote("closed", "Done", minutes=90),
        source=SOURCE,
        open_state=State.ACKNOWLEDGED,
    )
    assert other is not None and other.event_id != a.event_id
    # No remote time: the id still depends only on what the city said, not on when we asked.
    untimed = RemoteRequest("1001", "closed", "Done", None, None)
    first = diff(ref(remote_status="open"), untimed)
    second = status_change_for(
        ref(remote_status="open"), untimed, source=SOURCE, open_state=None, now=AT + timedelta(days=1)
    )
    assert first.event_id == second.event_id


# --- which requests a poll asks about: closed ones for a while, less often ------------------------

DAY = 86400.0
NOW = AT.timestamp()


def asked(refs: list[RemoteRef], *, poll: int, days: float = 30, every: int = 3) -> list[str]:
    found = refs_to_poll(refs, now=NOW, poll_number=poll, repoll_days=days, every=every)
    return [r.request_id for r in found]


def test_open_requests_every_poll_recently_closed_ones_every_nth_and_old_ones_never() -> None:
    refs = [
        RemoteRef(request_id="OP11-OP11", department="d", service_request_id="1"),
        RemoteRef(
            request_id="RC11-RC11",
            department="d",
            service_request_id="2",
            remote_status="closed",
            closed_at=NOW - 2 * DAY,
        ),
        RemoteRef(
            request_id="OL11-OL11",
            department="d",
            service_request_id="3",
            remote_status="closed",
            closed_at=NOW - 31 * DAY,
        ),
        RemoteRef(request_id="TK11-TK11", department="d", token="tok"),  # no id yet: nothing to ask
    ]
    assert asked(refs, poll=0) == ["OP11-OP11", "RC11-RC11"]  # the first poll after a start
    assert asked(refs, poll=1) == asked(refs, poll=2) == ["OP11-OP11"]
    assert asked(refs, poll=3) == ["OP11-OP11", "RC11-RC11"]
    assert asked(refs, poll=3, every=1) == asked(refs, poll=1, every=1) == ["OP11-OP11", "RC11-RC11"]
    assert asked(refs, poll=0, days=0) == ["OP11-OP11"]  # 0: never
    assert asked(refs, poll=0, days=40) == ["OP11-OP11", "RC11-RC11", "OL11-OL11"]


def test_a_record_from_before_closed_at_counts_from_its_last_write() -> None:
    old = RemoteRef(
        request_id="OL11-OL11",
        department="d",
        service_request_id="3",
        remote_status="closed",
        written_at=NOW - 3 * DAY,
    )
    assert asked([old], poll=0) == ["OL11-OL11"]
    assert asked([replace(old, written_at=NOW - 40 * DAY)], poll=0) == []


def test_observed_keeps_when_it_closed_and_forgets_it_on_a_reopen() -> None:
    closed = observed(ref(remote_status="open"), remote("closed", "Done"), NOW)
    assert (closed.remote_status, closed.closed_at) == ("closed", NOW)
    still = observed(closed, remote("closed", "Done, checked"), NOW + DAY)
    assert still.closed_at == NOW  # counted from the close, not from the last look
    reopened = observed(still, remote("open"), NOW + 2 * DAY)
    assert (reopened.remote_status, reopened.closed_at) == ("open", None)
    assert RemoteRef.from_json(closed.to_json()) == closed
    legacy = RemoteRef.from_json(
        b'{"request_id":"AB12-CD34","department":"d","remote_status":"closed","written_at":%d}' % int(NOW)
    )
    assert (legacy.closed_at, legacy.announced) == (None, False)
    # Seen closed again: it keeps counting from when it was written closed, not from now.
    assert observed(legacy, remote("closed"), NOW + DAY).closed_at == NOW


def test_an_external_ref_has_an_id_derived_from_the_mapping_only() -> None:
    first = ExternalRef.new("ab12 cd34", system=SOURCE, external_id="1001", at=AT)
    again = ExternalRef.new(
        "AB12-CD34", system=SOURCE, external_id="1001", token="tok-1", at=AT + timedelta(days=1)
    )
    assert first.request_id == "AB12-CD34"
    assert first.event_id == again.event_id == external_ref_id("AB12-CD34", SOURCE, "1001")
    assert ExternalRef.new("AB12-CD34", system=SOURCE, external_id="1002").event_id != first.event_id
    assert (
        ExternalRef.new("AB12-CD34", system="open311:roads/city", external_id="1001").event_id
        != first.event_id
    )
    with pytest.raises(ValidationError):
        ExternalRef.new("not a ticket", system=SOURCE, external_id="1001")
    with pytest.raises(ValidationError):
        ExternalRef.new("AB12-CD34", system=SOURCE, external_id="")


# --- the sink against the fake endpoint -----------------------------------------------------------


@dataclass
class Bench:
    fake: GeoReportFake
    sink: Open311Sink
    ids: MemoryRemoteIds
    published: list[Outgoing] = field(default_factory=list)

    def changes(self) -> list[StatusChange]:
        return [StatusChange.model_validate_json(o.value) for o in self.published if o.topic == "t.status"]

    def external(self) -> list[ExternalRef]:
        return [ExternalRef.model_validate_json(o.value) for o in self.published if o.topic == "t.external"]

    async def deliver(self, r: ServiceRequest) -> None:
        await self.sink.deliver(r, department="public-works", delivery_id=f"d-{r.event_id}")


@pytest.fixture
async def client() -> AsyncIterator[tuple[GeoReportFake, httpx.AsyncClient]]:
    fake = GeoReportFake()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app())) as http:
        yield fake, http


def bench_for(
    fake: GeoReportFake,
    http: httpx.AsyncClient,
    ids: MemoryRemoteIds | None = None,
    lease: Any = None,
    **values: Any,
) -> Bench:
    sink = config(**{"poll_interval_s": 0, **values}).build(
        SinkContext(data_dir=Path("unused"), http_client=http)
    )
    bench = Bench(fake, sink, ids or MemoryRemoteIds())

    async def publish(records: Sequence[Outgoing]) -> None:
        bench.published.extend(records)

    sink.use(
        bench.ids,
        publish,
        department="public-works",
        status_topic="t.status",
        now=lambda: fake.clock,
        external_topic="t.external",
        lease=lease,
    )
    return bench


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_a_request_is_created_once_and_its_remote_id_recorded(
    client: tuple[GeoReportFake, httpx.AsyncClient], fmt: str
) -> None:
    fake, http = client
    bench = bench_for(fake, http, format=fmt)
    await bench.sink.start()
    r = request()
    await bench.deliver(r)
    (remote_id,) = fake.requests
    assert fake.requests[remote_id].form["service_code"] == "PTH"
    assert bench.ids.get(r.request_id).service_request_id == remote_id  # type: ignore[union-attr]
    # Redelivered, replayed, or a follow-up version with a new event id: never a second one.
    await bench.deliver(r)
    await bench.deliver(request(event_id=event_id_for(r.request_id, ["web:x", "sms:y"]), description="more"))
    assert fake.posts == 1
    await bench.sink.close()


async def test_later_reports_can_be_left_to_the_incident(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, later_reports="skip")
    await bench.deliver(request("EF56-GH78", incident_id="AB12-CD34"))
    assert fake.posts == 0
    await bench.deliver(request("AB12-CD34"))
    assert fake.posts == 1


@pytest.mark.parametrize(
    ("setup", "status", "says"),
    [
        ({"api_key": "wrong"}, 403, "403 API key was not provided or is invalid"),
        ({"jurisdiction_id": "elsewhere"}, 404, "jurisdiction_id was not found"),
        ({"service_codes": {"pothole": "NOPE"}}, 404, "service_code NOPE was not found"),
        ({"address": True}, 400, "400 location was not provided"),
    ],
)
async def test_what_the_city_refuses_is_not_retried_and_says_why(
    client: tuple[GeoReportFake, httpx.AsyncClient], setup: dict[str, Any], status: int, says: str
) -> None:
    fake, http = client
    nowhere = setup.pop("address", False)
    bench = bench_for(fake, http, format="xml", **setup)
    r = request(lat=None, long=None, address_string=None) if nowhere else request()
    with pytest.raises(DeliveryError) as caught:
        await bench.deliver(r)
    assert caught.value.retryable is False
    assert f"HTTP {status}" in caught.value.reason and says in caught.value.reason
    assert "city-key" not in caught.value.reason and "wrong" not in caught.value.reason
    assert bench.ids.all() == []


async def test_an_outage_is_retryable_with_the_citys_retry_after(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    fake.down = True
    bench = bench_for(fake, http)
    with pytest.raises(DeliveryError) as caught:
        await bench.deliver(request())
    assert caught.value.retryable is True and caught.value.retry_after_s == 1.0
    assert "HTTP 503" in caught.value.reason


async def test_a_connection_error_is_retryable() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        bench = bench_for(GeoReportFake(), http)
        with pytest.raises(DeliveryError, match="ConnectError") as caught:
            await bench.deliver(request())
    assert caught.value.retryable is True


async def test_the_framework_dead_letters_a_refusal_and_holds_the_rest_in_an_outage(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http)
    no_code, fine = request("AA11-AA11", service_code="streetlight"), request("BB22-BB22")
    batch = [Delivery(r, "public-works", f"d-{r.request_id}") for r in (no_code, fine)]
    refused, delivered = await deliver_all(bench.sink, batch, attempts=3, backoff_s=0)
    assert (refused.delivered, refused.held, refused.attempts) == (False, False, 1)
    assert "no Open311 service code" in (refused.reason or "")
    assert delivered.delivered
    fake.down = True
    later = [Delivery(request(t), "public-works", t) for t in ("CC33-CC33", "DD44-DD44")]
    held, waiting = await deliver_all(bench.sink, later, attempts=2, backoff_s=0)
    assert held.held and held.attempts == 2 and waiting.held and waiting.attempts == 0
    assert fake.posts == 1


async def test_an_accepted_but_unreadable_answer_is_dead_lettered_not_posted_again() -> None:
    async def odd(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=[{"service_notice": "thanks"}])

    async with httpx.AsyncClient(transport=httpx.MockTransport(odd)) as http:
        bench = bench_for(GeoReportFake(), http)
        with pytest.raises(DeliveryError, match="check whether the city created it") as caught:
            await bench.deliver(request())
    assert caught.value.retryable is False


class FailingIds(MemoryRemoteIds):
    """A map whose writes fail while ``failing`` (Kafka down)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    async def put(self, refs: Sequence[RemoteRef]) -> None:
        if self.failing and refs:
            raise ConnectionError("broker down (test)")
        await super().put(refs)


async def test_a_map_that_cannot_be_written_holds_the_sink_without_posting_twice(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    ids = FailingIds()
    bench = bench_for(fake, http, ids=ids)
    r = request()
    with pytest.raises(DeliveryError, match="cannot record 1 remote id") as caught:
        await bench.deliver(r)
    assert caught.value.retryable is True and fake.posts == 1
    with pytest.raises(DeliveryError):
        await bench.deliver(r)  # still down: the redelivery waits, and posts nothing
    ids.failing = False
    await bench.deliver(r)
    assert fake.posts == 1 and ids.get(r.request_id).service_request_id == "1001"  # type: ignore[union-attr]


async def test_an_unbound_sink_says_what_the_stage_must_do(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    _, http = client
    sink = config().build(SinkContext(data_dir=Path("unused"), http_client=http))
    with pytest.raises(RuntimeError, match=r"sink.bind\(broker, settings, department\)"):
        await sink.start()


# --- the poller ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_status_comes_back_once_even_after_a_restart(
    client: tuple[GeoReportFake, httpx.AsyncClient], fmt: str
) -> None:
    fake, http = client
    bench = bench_for(fake, http, format=fmt)
    r = request()
    await bench.deliver(r)
    assert bench.sink.poller is not None
    first = await bench.sink.poller.poll_once()
    assert [c.state for c in first] == [State.ACKNOWLEDGED]
    assert await bench.sink.poller.poll_once() == []
    fake.close("1001", "Filled the hole")
    (closed,) = await bench.sink.poller.poll_once()
    assert (closed.state, closed.notes, closed.request_id, closed.at) == (
        State.CLOSED,
        "Filled the hole",
        r.request_id,
        fake.clock,
    )
    # A restarted sink reads the same map: it tells nobody again.
    restarted = bench_for(fake, http, ids=bench.ids, format=fmt)
    assert await restarted.sink.poller.poll_once() == []  # type: ignore[union-attr]
    assert [c.state for c in bench.changes()] == [State.ACKNOWLEDGED, State.CLOSED]
    never = bench_for(fake, http, ids=bench.ids, format=fmt, repoll_closed_days=0)
    fake.calls.clear()
    assert await never.sink.poller.poll_once() == []  # type: ignore[union-attr]
    assert fake.calls == []  # repoll_closed_days 0: a closed request is not asked about again


async def test_a_crash_before_the_map_is_updated_repeats_the_same_change_ids(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    ids = FailingIds()
    ids.failing = False
    bench = bench_for(fake, http, ids=ids)
    await bench.deliver(request())
    fake.close("1001", "Done")
    ids.failing = True  # the changes go out, what the poller saw is not recorded
    with pytest.raises(ConnectionError):
        await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    ids.failing = False
    again = await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    first_ids = [c.event_id for c in bench.changes()[: len(again)]]
    assert [c.event_id for c in again] == first_ids  # the case store and the channel take each once
    assert await bench.sink.poller.poll_once() == []  # type: ignore[union-attr]


async def test_tokens_are_resolved_then_followed(client: tuple[GeoReportFake, httpx.AsyncClient]) -> None:
    fake, http = client
    fake.mode = "token"
    bench = bench_for(fake, http, format="xml")
    r = request()
    await bench.deliver(r)
    pending = bench.ids.get(r.request_id)
    assert pending is not None and (pending.token, pending.service_request_id) == ("tok-1", None)
    await bench.deliver(r)
    assert fake.posts == 1  # a pending token counts as created
    assert await bench.sink.poller.poll_once() == []  # type: ignore[union-attr]
    assert bench.ids.get(r.request_id).service_request_id is None  # type: ignore[union-attr]
    fake.resolve_tokens()
    (ack,) = await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert ack.state == State.ACKNOWLEDGED
    assert bench.ids.get(r.request_id).service_request_id == "1001"  # type: ignore[union-attr]


async def test_an_unknown_token_is_asked_again_later(client: tuple[GeoReportFake, httpx.AsyncClient]) -> None:
    fake, http = client
    bench = bench_for(fake, http)
    await bench.ids.put([RemoteRef(request_id="AB12-CD34", department="public-works", token="nope")])
    assert await bench.sink.poller.poll_once() == []  # type: ignore[union-attr]
    assert bench.ids.get("AB12-CD34").token == "nope"  # type: ignore[union-attr]


async def test_ids_are_asked_in_batches_and_by_window_when_configured(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, poll_batch=2, poll_by="updated", poll_overlap_s=0)
    tickets = ["AA11-AA11", "BB22-BB22", "CC33-CC33"]
    for t in tickets:
        await bench.deliver(request(t))
    poller = bench.sink.poller
    assert poller is not None
    assert len(await poller.poll_once()) == 3
    by_ids = [q for m, q in fake.calls if m == "GET"]
    assert len(by_ids) == 2 and all("service_request_id=" in q for q in by_ids)  # 2 + 1, first poll by ids
    assert all("jurisdiction_id=city.example" in q for q in by_ids)
    fake.calls.clear()
    fake.close("1002", "Cleaned")
    (closed,) = await poller.poll_once()
    assert closed.request_id == "BB22-BB22"
    (call,) = [q for m, q in fake.calls if m == "GET"]
    assert "updated_after=" in call and "updated_before=" in call and "service_request_id" not in call


async def test_a_failed_poll_is_logged_and_tried_again(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http)
    await bench.deliver(request())
    fake.down = True
    with pytest.raises(DeliveryError):
        await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert bench.changes() == []
    fake.down = False
    assert len(await bench.sink.poller.poll_once()) == 1  # type: ignore[union-attr]


async def test_the_poll_loop_runs_every_interval_and_outlives_a_failed_poll(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, poll_interval_s=30)
    await bench.deliver(request())
    poller = bench.sink.poller
    assert poller is not None
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        fake.down = len(slept) == 1  # the first poll finds the city down
        if len(slept) == 4:
            raise asyncio.CancelledError

    poller.sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        await poller.run()
    assert slept == [30, 30, 30, 30]
    assert [c.state for c in bench.changes()] == [State.ACKNOWLEDGED]  # polls 2 and 3; once


async def test_start_runs_the_poller_and_close_stops_it(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, poll_interval_s=30)
    await bench.sink.start()
    task = bench.sink._poll_task
    assert task is not None and not task.done()
    await bench.sink.close()
    assert task.cancelled() and bench.sink._poll_task is None
    await bench.sink.close()  # safe twice
    idle = bench_for(fake, http)  # poll_interval_s 0: no poller task
    await idle.sink.start()
    assert idle.sink._poll_task is None


# --- a reopen by the city, the remote id told to the case store, one poller -------------------


async def test_a_reopen_by_the_city_is_published_once(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, repoll_closed_every=3)
    r = request()
    await bench.deliver(r)
    poller = bench.sink.poller
    assert poller is not None
    assert [c.state for c in await poller.poll_once()] == [State.ACKNOWLEDGED]  # poll 0
    fake.close("1001", "Filled the hole")
    assert [c.state for c in await poller.poll_once()] == [State.CLOSED]  # poll 1: open when asked
    fake.reopen("1001", "Sunk again")
    fake.calls.clear()
    assert await poller.poll_once() == []  # poll 2: closed requests wait for every 3rd poll
    assert fake.calls == []
    reopened = await poller.poll_once()  # poll 3
    assert [(c.request_id, c.state, c.notes) for c in reopened] == [(r.request_id, State.NEW, "Sunk again")]
    assert await poller.poll_once() == [] and await poller.poll_once() == []  # open again: every poll
    assert len([q for m, q in fake.calls if m == "GET"]) == 3
    assert [c.state for c in bench.changes()] == [State.ACKNOWLEDGED, State.CLOSED, State.NEW]


async def test_a_request_closed_longer_than_repoll_closed_days_is_left_alone(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http, repoll_closed_days=30, repoll_closed_every=1)
    await bench.deliver(request())
    fake.close("1001", "Done")
    poller = bench.sink.poller
    assert poller is not None
    assert [c.state for c in await poller.poll_once()] == [State.CLOSED]
    fake.tick(29 * 86400)
    fake.calls.clear()
    assert await poller.poll_once() == []
    assert len(fake.calls) == 1  # 29 days after: still asked
    fake.tick(2 * 86400)
    fake.reopen("1001", "Too late to hear of")
    fake.calls.clear()
    assert await poller.poll_once() == []
    assert fake.calls == []  # 31 days after it closed: not asked any more


async def test_the_remote_id_is_announced_once_with_a_derived_id(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http)
    r = request()
    await bench.deliver(r)
    (announced,) = bench.external()
    assert (announced.request_id, announced.system, announced.external_id) == (
        r.request_id,
        "open311:public-works/city",
        "1001",
    )
    assert announced.event_id == external_ref_id(r.request_id, "open311:public-works/city", "1001")
    assert bench.ids.get(r.request_id).announced  # type: ignore[union-attr]
    await bench.deliver(r)
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert len(bench.external()) == 1 and fake.posts == 1


async def test_a_token_is_announced_when_it_resolves(client: tuple[GeoReportFake, httpx.AsyncClient]) -> None:
    fake, http = client
    fake.mode = "token"
    bench = bench_for(fake, http)
    await bench.deliver(request())
    assert bench.external() == []  # a token is no id yet
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert bench.external() == []
    fake.resolve_tokens()
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    (announced,) = bench.external()
    assert (announced.external_id, announced.token) == ("1001", "tok-1")
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert len(bench.external()) == 1


async def test_a_map_from_before_announcing_is_backfilled_by_the_poller_in_slices(
    client: tuple[GeoReportFake, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sinks.open311

    fake, http = client
    bench = bench_for(fake, http)
    legacy = [
        RemoteRef(request_id=t, department="public-works", service_request_id=str(i))
        for i, t in enumerate(["AA11-AA11", "BB22-BB22", "CC33-CC33"])
    ]
    await bench.ids.put(legacy)
    monkeypatch.setattr(sinks.open311, "ANNOUNCE_PER_POLL", 2)
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert len(bench.external()) == 2
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    await bench.sink.poller.poll_once()  # type: ignore[union-attr]
    assert sorted(e.request_id for e in bench.external()) == ["AA11-AA11", "BB22-BB22", "CC33-CC33"]
    assert all(r.announced for r in bench.ids.all())


async def test_a_failed_announcement_holds_the_request_and_its_redelivery_announces_it(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    bench = bench_for(fake, http)
    down = True

    async def publish(records: Sequence[Outgoing]) -> None:
        if down and any(o.topic == "t.external" for o in records):
            raise ConnectionError("broker down (test)")
        bench.published.extend(records)

    bench.sink._publish = publish
    r = request()
    with pytest.raises(DeliveryError, match="cannot announce") as caught:
        await bench.deliver(r)
    assert caught.value.retryable is True
    assert bench.ids.get(r.request_id).service_request_id == "1001"  # type: ignore[union-attr]
    down = False
    await bench.deliver(r)  # the redelivery: no second work order, the announcement made
    assert fake.posts == 1 and [e.external_id for e in bench.external()] == ["1001"]


class Lease:
    """A lease the test hands over by hand."""

    def __init__(self, held: bool) -> None:
        self.held = held

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.held = False


async def test_only_the_lease_holder_polls_and_a_new_holder_starts_with_the_closed_ones(
    client: tuple[GeoReportFake, httpx.AsyncClient],
) -> None:
    fake, http = client
    lease = Lease(held=False)
    bench = bench_for(fake, http, lease=lease, poll_interval_s=30, repoll_closed_every=100)
    await bench.deliver(request())
    poller = bench.sink.poller
    assert poller is not None
    # (the lease as each sleep ends, what the city does meanwhile)
    turns: list[tuple[bool, Any]] = [
        (False, None),
        (False, None),
        (True, None),  # taken: acknowledged
        (True, lambda: fake.close("1001", "Done")),  # closed
        (True, lambda: fake.reopen("1001", "Open again")),  # closed ones wait for the 100th poll
        (False, None),  # handed over to another host
        (True, None),  # taken again: the first poll asks about closed ones too
    ]

    async def sleep(seconds: float) -> None:
        if not turns:
            raise asyncio.CancelledError
        lease.held, city_does = turns.pop(0)
        if city_does is not None:
            city_does()

    poller.sleep = sleep
    with pytest.raises(asyncio.CancelledError):
        await poller.run()
    assert poller.polls_done == 4  # only while held
    assert [c.state for c in bench.changes()] == [State.ACKNOWLEDGED, State.CLOSED, State.NEW]


async def test_close_gives_the_lease_up(client: tuple[GeoReportFake, httpx.AsyncClient]) -> None:
    fake, http = client
    lease = Lease(held=True)
    bench = bench_for(fake, http, lease=lease, poll_interval_s=30)
    await bench.sink.start()
    assert bench.sink._lease_task is not None and not bench.sink._lease_task.done()
    await bench.sink.close()
    assert lease.held is False and bench.sink._lease_task is None


# --- against another GeoReport v2 server: our own web channel, as a second city's endpoint ------


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_another_intake311s_open311_endpoint_takes_it_and_answers_status(
    tmp_path: Path, fmt: str
) -> None:
    """Not a third party's server (none is installable: the registries have Open311 clients
    only), but an implementation the fake did not come from: its own parsing, answers and XML."""
    from channels.web import AcceptedRequests, create_app
    from intake311.settings import Settings, WebSettings
    from schemas.taxonomy import Service, Taxonomy
    from tests.support import FakePublisher

    taxonomy = Taxonomy(
        services=(
            Service(code="road-hole", name="Pothole", department="public-works"),
            Service(code="other", name="Something else", department="311"),
        )
    )
    settings = Settings(
        data_dir=tmp_path, web=WebSettings(api_keys=["city-key"], jurisdiction_id="city.example")
    )
    publisher = FakePublisher()
    app = create_app(settings, publisher, taxonomy, lookup=AcceptedRequests(tmp_path / "accepted.sqlite3"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://city.test") as http:
        bench = bench_for(GeoReportFake(), http, format=fmt, service_codes={"pothole": "road-hole"})
        r = request(reporter=Sender(kind=SenderKind.EMAIL, address="ana@example.org", name="Ana Ruiz"))
        await bench.deliver(r)
        (contact,) = publisher.contacts
        remote_id = bench.ids.get(r.request_id).service_request_id  # type: ignore[union-attr]
        assert remote_id == contact.request_id  # the other city's ticket
        assert contact.service_code == "road-hole" and "(intake311 ticket AB12-CD34)" in contact.text
        assert contact.sender.address == "ana@example.org"
        (ack,) = await bench.sink.poller.poll_once()  # type: ignore[union-attr]
        assert (ack.request_id, ack.state) == (r.request_id, State.ACKNOWLEDGED)
        await bench.deliver(r)
        assert len(publisher.contacts) == 1
