import pytest

from intake311.stage import Record
from normalizer.normalize import Normalizer
from router.app import route_batch
from router.routing import Router, RoutingTable, load_routing
from schemas import ServiceRequest
from schemas.request import Priority
from schemas.taxonomy import load_taxonomy
from schemas.topics import TOPICS
from tests.conftest import make_contact


@pytest.fixture(scope="module")
def taxonomy():
    return load_taxonomy()


def request_for(text: str, **fields) -> ServiceRequest:
    return Normalizer.from_taxonomy(load_taxonomy()).normalize(make_contact(text, **fields))


def test_default_route_is_the_taxonomy_department(taxonomy) -> None:
    router = Router(load_routing(), taxonomy, TOPICS)
    deliveries = router.route(request_for("pothole outside 12 Elm Street"))
    assert [(d.department, d.topic) for d in deliveries] == [
        ("public-works", "intake311.department.public-works")
    ]
    assert deliveries[0].request.agency_responsible == "public-works"


def test_triage_goes_to_triage_department(taxonomy) -> None:
    router = Router(load_routing(), taxonomy, TOPICS)
    [delivery] = router.route(request_for("please call me"))
    assert delivery.department == "triage"


def test_routes_override_and_rules_add_by_geography(taxonomy) -> None:
    table = RoutingTable.model_validate(
        {
            "routes": {"graffiti": ["sanitation"]},
            "rules": [
                {
                    "name": "downtown",
                    "services": ["graffiti"],
                    "within": {"min_lat": 41.30, "max_lat": 41.32, "min_long": -72.94, "max_long": -72.90},
                    "departments": ["downtown-district", "public-works"],
                }
            ],
        }
    )
    router = Router(table, taxonomy, TOPICS)
    outside = request_for("graffiti on the wall at 5 Main Street")
    assert router.departments_for(outside) == ["sanitation"]
    from schemas import Location

    inside = request_for("graffiti tag on the wall", location=Location(lat=41.31, long=-72.92))
    assert router.departments_for(inside) == ["downtown-district", "public-works"]
    assert "downtown-district" in router.all_departments()


def test_table_validation_names_the_problem(taxonomy, tmp_path) -> None:
    with pytest.raises(ValueError, match="taxonomy does not have: nonsense"):
        Router(RoutingTable.model_validate({"routes": {"nonsense": "x"}}), taxonomy, TOPICS)
    bad = tmp_path / "routing.yaml"
    bad.write_text("routes: {pothole: [Public Works]}\n")
    with pytest.raises(ValueError, match=str(bad)):
        load_routing(bad)
    bad.write_text("rules: [{name: a, departments: [x]}, {name: a, departments: [y]}]\n")
    with pytest.raises(ValueError, match="duplicate rule names: a"):
        load_routing(bad)


def test_route_batch_keys_by_request_and_dead_letters_garbage(taxonomy) -> None:
    router = Router(load_routing(), taxonomy, TOPICS)
    request = request_for("Noise from a party at 10 Howe Street all night")
    out = route_batch(
        [
            Record(value=b"[]", topic=TOPICS.requests, offset=1),
            Record(value=request.model_dump_json().encode()),
        ],
        router,
        TOPICS.deadletter,
    )
    assert out[0].topic == TOPICS.deadletter
    assert out[1].key == request.request_id
    assert out[1].topic == TOPICS.department(router.departments_for(request)[0])


def test_departments_subscribe_to_services_and_areas(taxonomy, tmp_path) -> None:
    from router.routing import load_interests
    from schemas import Location

    file = tmp_path / "subscriptions.yaml"
    file.write_text(
        "departments:\n"
        '  "*": {sinks: [{name: file, type: jsonl}]}\n'
        "  code-enforcement: {services: [noise]}\n"
        "  downtown-district:\n"
        "    services: [graffiti, illegal-dumping]\n"
        "    within: {min_lat: 41.30, max_lat: 41.32, min_long: -72.94, max_long: -72.90}\n"
        "  parks: {sinks: []}\n"
    )
    router = Router(load_routing(), taxonomy, TOPICS, load_interests(file))
    noise = request_for("Loud party music all night at 10 Howe Street")
    assert router.departments_for(noise) == ["police-nonemergency", "code-enforcement"]
    inside = request_for("graffiti tag on the wall", location=Location(lat=41.31, long=-72.92))
    outside = request_for("graffiti tag on the wall", location=Location(lat=41.35, long=-72.92))
    assert router.departments_for(inside) == ["public-works", "downtown-district"]
    assert router.departments_for(outside) == ["public-works"]
    assert "downtown-district" in router.all_departments()
    deliveries = router.route(noise)
    assert [d.request.agency_responsible for d in deliveries] == ["police-nonemergency"] * 2
    file.write_text("departments:\n  parks: {services: [no-such-service]}\n")
    with pytest.raises(ValueError, match="no-such-service"):
        Router(load_routing(), taxonomy, TOPICS, load_interests(file))


# -- districts -------------------------------------------------------------------------------


def located(service_code: str = "street-light", **districts: str) -> ServiceRequest:
    """A request as the normalizer emits it once geocoded: built directly, no classifier involved."""
    from datetime import UTC, datetime

    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    return ServiceRequest(
        request_id="K7M4-QPXA",
        event_id="e1",
        service_code=service_code,
        service_name=service_code,
        lat=41.32,
        long=-72.93,
        districts=districts,
        requested_datetime=at,
        updated_datetime=at,
        channel="web",
        confidence=0.9,
        source_contact_ids=("web:m1",),
    )


def test_rules_match_on_districts_with_lists_and_single_names(taxonomy) -> None:
    table = RoutingTable.model_validate(
        {
            "rules": [
                {
                    "name": "east-lighting",
                    "services": ["street-light"],
                    "districts": {"ward": ["Ward 7", "Ward 8"]},
                    "departments": ["east-lighting"],
                    "stop": True,
                },
                {
                    "name": "dixwell",
                    "districts": {"ward": "ward 7", "neighborhood": "Dixwell"},  # case is ignored
                    "departments": ["dixwell-team"],
                },
            ]
        }
    )
    assert table.rules[1].districts == {"ward": ("ward 7",), "neighborhood": ("Dixwell",)}
    router = Router(table, taxonomy, TOPICS)
    assert router.departments_for(located(ward="Ward 8")) == ["east-lighting"]
    assert router.departments_for(located(ward="Ward 9")) == ["transportation"]
    assert router.departments_for(located()) == ["transportation"]  # no district: no match
    # Every listed layer must match; extra layers on the request do not matter.
    pothole = located("pothole", ward="Ward 7", neighborhood="Dixwell", police="District 2")
    assert router.departments_for(pothole) == ["dixwell-team"]
    assert router.departments_for(located("pothole", ward="Ward 7")) == ["public-works"]
    assert router.departments_for(located("pothole", neighborhood="Dixwell")) == ["public-works"]


def test_districts_and_the_box_combine(taxonomy) -> None:
    box = {"min_lat": 41.30, "max_lat": 41.33, "min_long": -72.94, "max_long": -72.90}
    rule = {"name": "r", "within": box, "districts": {"ward": ["Ward 7"]}, "departments": ["x"]}
    router = Router(RoutingTable.model_validate({"rules": [rule]}), taxonomy, TOPICS)
    assert router.departments_for(located(ward="Ward 7")) == ["x"]
    outside = located(ward="Ward 7").model_copy(update={"lat": 41.0})
    assert router.departments_for(outside) == ["transportation"]


@pytest.mark.parametrize(
    ("districts", "message"),
    [
        ({}, "at least one layer"),
        ({"ward": []}, "non-empty list"),
        ({"ward": [""]}, "non-empty strings"),
        ({"ward": "  "}, "non-empty strings"),
        ({"": ["Ward 7"]}, "layer names must be non-empty"),
        ({"ward": [None]}, "non-empty strings"),
        ({"ward": {"a": 1}}, "non-empty list"),
    ],
)
def test_district_conditions_are_validated(districts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingTable.model_validate({"rules": [{"name": "r", "districts": districts, "departments": ["x"]}]})


def test_numbers_are_district_names(taxonomy) -> None:
    table = RoutingTable.model_validate(
        {"rules": [{"name": "r", "districts": {"council": 3}, "departments": ["x"]}]}
    )
    assert table.rules[0].districts == {"council": ("3",)}
    assert Router(table, taxonomy, TOPICS).departments_for(located(council="3")) == ["x"]


def test_unknown_layers_are_refused_when_the_boundaries_are_known(taxonomy) -> None:
    from router.routing import Interest

    table = RoutingTable.model_validate(
        {"rules": [{"name": "r", "districts": {"wrad": "Ward 7"}, "departments": ["x"]}]}
    )
    interests = {"ward-office": Interest.model_validate({"districts": {"ward": "Ward 7"}})}
    with pytest.raises(ValueError, match="do not have: wrad"):
        Router(table, taxonomy, TOPICS, interests, layers=("ward", "neighborhood"))
    router = Router(table, taxonomy, TOPICS, interests)  # boundaries unknown: accepted
    assert router.district_layers() == ["ward", "wrad"]


def test_departments_subscribe_to_districts(taxonomy, tmp_path) -> None:
    from router.routing import load_interests
    from sinks.subscriptions import load_subscriptions

    file = tmp_path / "subscriptions.yaml"
    file.write_text(
        "departments:\n"
        '  "*": {sinks: [{name: file, type: jsonl}]}\n'
        '  ward-7-office: {districts: {ward: "Ward 7"}}\n'
        "  dixwell-team:\n"
        "    services: [graffiti]\n"
        "    districts: {neighborhood: [Dixwell, Newhallville]}\n"
    )
    load_subscriptions(file)  # the sinks stage accepts the key too
    router = Router(load_routing(), taxonomy, TOPICS, load_interests(file))
    assert router.departments_for(located(ward="Ward 7")) == ["transportation", "ward-7-office"]
    assert router.departments_for(located(ward="Ward 8")) == ["transportation"]
    graffiti = located("graffiti", ward="Ward 2", neighborhood="Newhallville")
    assert router.departments_for(graffiti) == ["public-works", "dixwell-team"]
    assert router.departments_for(located("pothole", neighborhood="Dixwell")) == ["public-works"]
    file.write_text("departments:\n  ward-7-office: {districts: {ward: []}}\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_interests(file)


def test_packaged_examples_parse_when_uncommented(taxonomy) -> None:
    """The commented district examples in routing.yaml and subscriptions.yaml are valid as written."""
    import yaml

    from router.routing import DEFAULT_ROUTING_PATH, Interest

    text = DEFAULT_ROUTING_PATH.read_text()
    block = [line for line in text.splitlines() if line.startswith("  # ")]
    rules = yaml.safe_load("\n".join(line[4:] for line in block if not line.strip().startswith("# noise")))
    table = RoutingTable.model_validate({"rules": rules})
    assert {r.name for r in table.rules if r.districts} == {
        "east-side-streetlights",
        "dixwell-illegal-dumping",
    }
    subs = (DEFAULT_ROUTING_PATH.parents[1] / "sinks" / "subscriptions.yaml").read_text()
    assert 'districts: {ward: "Ward 7"}' in subs
    assert Interest.model_validate(yaml.safe_load('districts: {ward: "Ward 7"}')).districts == {
        "ward": ("Ward 7",)
    }


def test_build_router_checks_layers_against_the_boundaries(tmp_path) -> None:
    from intake311.settings import GeoSettings, Settings
    from router.app import build_router

    routing = tmp_path / "routing.yaml"
    routing.write_text("rules: [{name: r, districts: {wrad: Ward 7}, departments: [x]}]\n")
    boundaries = {"ward": tmp_path / "wards.geojson"}
    with pytest.raises(ValueError, match="wrad"):
        build_router(Settings(routing_file=routing, geo=GeoSettings(boundaries=boundaries)))
    assert build_router(Settings(routing_file=routing)).district_layers() == ["wrad"]  # warned only


def test_emergencies_are_copied_to_the_emergency_department() -> None:
    from normalizer.normalize import Normalizer
    from router.routing import Router, load_routing
    from schemas.request import Priority
    from schemas.taxonomy import load_taxonomy
    from schemas.topics import TOPICS
    from tests.conftest import make_contact

    router = Router(load_routing(), load_taxonomy(), TOPICS)
    request = Normalizer.from_taxonomy(load_taxonomy()).normalize(
        make_contact("water leak from a pipe, and I smell gas in the basement")
    )
    assert request.priority is Priority.EMERGENCY
    assert router.departments_for(request)[-1] == "emergency"
    assert "emergency" in router.all_departments()
    unsure = request.model_copy(update={"triage": True})
    assert router.departments_for(unsure) == ["triage", "emergency"]
    calm = request.model_copy(update={"priority": Priority.NORMAL})
    assert "emergency" not in router.departments_for(calm)


def test_every_copy_of_a_routed_request_is_the_routed_model_s_own_json(taxonomy) -> None:
    """The bytes path (``route_json``) gives each department exactly what ``route`` would dump."""
    router = Router(load_routing(), taxonomy, TOPICS)
    request = request_for("water leak from a pipe, and I smell gas in the basement at 5 Elm St")
    raw = request.model_dump_json().encode()
    out = route_batch([Record(value=raw)], router, TOPICS.deadletter)
    expected = router.route(request)
    assert len(out) == len(expected) >= 2  # the owner and the emergency copy
    for record, delivery in zip(out, expected, strict=True):
        assert (record.topic, record.headers["x-department"]) == (delivery.topic, delivery.department)
        assert record.value == delivery.request.model_dump_json().encode()  # byte for byte
    assert len({id(r.value) for r in out}) == 1  # serialised once for all the copies


def test_routed_json_passes_an_already_routed_request_through_untouched(taxonomy) -> None:
    from router.routing import routed_json

    request = request_for("pothole outside 12 Elm Street").model_copy(
        update={"agency_responsible": "public-works"}
    )
    raw = b" " + request.model_dump_json(indent=2).encode()  # not how the stages write it
    assert routed_json(raw, ServiceRequest.model_validate_json(raw), "public-works") is raw


@pytest.mark.parametrize(
    "spell",
    [
        lambda r: r.model_dump_json(indent=1),  # other spacing: no exact match
        lambda r: r.model_dump_json(exclude={"agency_responsible"}),  # left out: its default
        lambda r: r.model_dump_json().replace('"agency_responsible"', '"agency_respons\\u0069ble"'),
    ],
)
def test_routed_json_falls_back_to_the_model_when_the_bytes_differ(taxonomy, spell) -> None:
    from router.routing import routed_json

    request = request_for("pothole outside 12 Elm Street")
    raw = spell(request).encode()
    parsed = ServiceRequest.model_validate_json(raw)
    assert parsed == request
    value = routed_json(raw, parsed, "parks")
    assert ServiceRequest.model_validate_json(value) == request.model_copy(
        update={"agency_responsible": "parks"}
    )


def test_routed_json_is_not_fooled_by_the_field_name_inside_text(taxonomy) -> None:
    from router.routing import routed_json

    text = 'pothole, "agency_responsible":null and \\"agency_responsible\\":null'
    request = request_for(text)
    raw = request.model_dump_json().encode()
    value = routed_json(raw, ServiceRequest.model_validate_json(raw), "parks")
    routed = ServiceRequest.model_validate_json(value)
    assert routed.agency_responsible == "parks"
    assert routed.description == request.description


def test_only_the_top_level_can_hold_agency_responsible() -> None:
    """What ``routed_json``'s byte replacement relies on: no model nested in a request has a field
    of that name or accepts unknown keys (so the one match is the request's own field)."""
    from pydantic import BaseModel

    def nested(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
        for field in model.model_fields.values():
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                    seen.add(arg)
                    nested(arg, seen)
        return seen

    models = nested(ServiceRequest, set())
    assert {"Sender", "Media", "IncidentReport"} <= {m.__name__ for m in models}
    for model in models:
        assert "agency_responsible" not in model.model_fields, model
        assert model.model_config.get("extra") == "forbid", model
    assert ServiceRequest.model_config.get("extra") == "forbid"


def _types_in(annotation: object) -> list[object]:
    import typing

    args = typing.get_args(annotation)
    return [annotation] if not args else [t for a in args for t in _types_in(a)]


def _variants() -> list[ServiceRequest]:
    """Requests that differ in one routing field each, asked in an order that would reuse a wrongly
    keyed decision: the same service on another channel, priority, district or assignment."""
    base = located("street-light", ward="Ward 7")
    return [
        base,
        base.model_copy(update={"channel": "sms"}),
        base.model_copy(update={"priority": Priority.HIGH}),
        base.model_copy(update={"priority": Priority.EMERGENCY}),
        base.model_copy(update={"districts": {"ward": "Ward 8"}}),
        base.model_copy(update={"districts": {}}),
        base.model_copy(update={"assigned_department": "parks"}),
        base.model_copy(update={"triage": True}),
        base.model_copy(update={"service_code": "pothole"}),
        base,
    ]


def test_remembered_routing_decisions_are_the_decisions(taxonomy) -> None:
    """``route_json`` remembers a decision per routing key: every field a rule or subscription
    can read without a box must be in it, or a request would get another one's departments."""
    from router.routing import Interest

    table = RoutingTable.model_validate(
        {
            "rules": [
                {"name": "texted", "channels": ["sms"], "departments": ["sms-desk"]},
                {"name": "urgent", "priority": ["high"], "departments": ["hotline"]},
                {"name": "east", "districts": {"ward": "Ward 7"}, "departments": ["east-lighting"]},
            ]
        }
    )
    interests = {"ward-8-office": Interest(districts={"ward": ["Ward 8"]})}
    router = Router(table, taxonomy, TOPICS, interests)
    for request in _variants():
        raw = request.model_dump_json().encode()
        for _ in range(2):  # decided, then remembered
            copies = router.route_json(raw, request)
            assert [d for d, _, _ in copies] == router.departments_for(request)
            assert [t for _, t, _ in copies] == [
                TOPICS.department(d) for d in router.departments_for(request)
            ]


def test_a_box_rule_decides_every_request_afresh(taxonomy) -> None:
    table = RoutingTable.model_validate(
        {
            "rules": [
                {
                    "name": "downtown",
                    "within": {"min_lat": 41.30, "max_lat": 41.33, "min_long": -72.94, "max_long": -72.90},
                    "departments": ["downtown-district"],
                }
            ]
        }
    )
    router = Router(table, taxonomy, TOPICS)
    inside = located()
    outside = inside.model_copy(update={"lat": 41.40})
    for request, owner in (
        (inside, "downtown-district"),
        (outside, "transportation"),
        (inside, "downtown-district"),
    ):
        [(department, _, _)] = router.route_json(request.model_dump_json().encode(), request)
        assert department == owner


def test_an_assignment_that_is_not_a_slug_is_dead_lettered_every_time(taxonomy) -> None:
    router = Router(load_routing(), taxonomy, TOPICS)
    bad = located().model_copy(update={"assigned_department": "../etc"})
    records = [
        Record(value=bad.model_dump_json().encode(), topic=TOPICS.requests, offset=i) for i in range(2)
    ]
    out = route_batch(records, router, TOPICS.deadletter)
    assert [r.topic for r in out] == [TOPICS.deadletter, TOPICS.deadletter]


def test_routing_fields_are_validated_as_the_request_s_own() -> None:
    """``RoutingFields`` validates each field it reads as ``ServiceRequest`` does (what routing
    may read of them, mypy checks: ``Routable`` is the union of the two)."""
    from router.routing import RoutingFields

    for name, field in RoutingFields.model_fields.items():
        own = ServiceRequest.model_fields[name]
        assert field.annotation == own.annotation, name
        assert field.is_required() == own.is_required(), name
        if not own.is_required():
            assert field.get_default(call_default_factory=True) == own.get_default(call_default_factory=True)


async def test_a_record_that_is_no_request_but_routes_is_dead_lettered_by_the_sinks(
    taxonomy, tmp_path
) -> None:
    """The router reads only the fields it routes on; the sinks validate the whole request
    before delivering, so a record that is not one still ends as a dead letter with its reason."""
    import json

    from intake311.dedupe import SeenStore
    from intake311.settings import Settings
    from sinks.app import deliver_batch
    from sinks.base import SinkContext
    from sinks.jsonl import JsonlSinkConfig

    router = Router(load_routing(), taxonomy, TOPICS)
    request = request_for("pothole outside 12 Elm Street")
    broken = json.loads(request.model_dump_json())
    del broken["event_id"]
    raw = json.dumps(broken, separators=(",", ":")).encode()
    (copy,) = route_batch(
        [Record(value=raw, topic=TOPICS.requests, partition=0, offset=3)], router, TOPICS.deadletter
    )
    assert copy.topic == TOPICS.department("public-works")
    assert (
        route_batch([Record(value=b'{"request_id": "x"}')], router, TOPICS.deadletter)[0].topic
        == TOPICS.deadletter
    )

    settings = Settings(data_dir=tmp_path)
    sink = JsonlSinkConfig(name="file", type="jsonl").build(SinkContext.from_settings(settings))
    seen = SeenStore(tmp_path / "seen.sqlite3")
    record = Record(value=copy.value, topic=copy.topic, partition=0, offset=0)
    result = await deliver_batch(
        [record], sink, department="public-works", sink_name="file", seen=seen, settings=settings
    )
    seen.close()
    (letter,) = result.letters
    assert letter.topic == TOPICS.deadletter
    assert b"event_id" in letter.value
    assert not list(tmp_path.rglob("*.jsonl"))
