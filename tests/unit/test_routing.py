import pytest

from intake311.stage import Record
from normalizer.normalize import Normalizer
from router.app import route_batch
from router.routing import Router, RoutingTable, load_routing
from schemas import ServiceRequest
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
