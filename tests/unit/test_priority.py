"""Priority: taxonomy defaults, text cues (English and Spanish), escalation by repeated reports,
emergencies winning; service levels per priority; routing rules and subscriptions by priority."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from normalizer.incidents import IncidentDesk
from normalizer.normalize import Normalizer
from normalizer.priority import SERVICE_DEFAULT, PriorityRules, priority_of
from normalizer.state import Snapshot
from router.routing import Interest, Router, RoutingTable, Rule, load_interests
from schemas import Location
from schemas.emergency import default_rules
from schemas.request import Priority, ServiceRequest
from schemas.taxonomy import Service, Taxonomy, load_taxonomy
from schemas.topics import Topics
from sinks.subscriptions import parse_subscriptions
from tests.conftest import make_contact

TAXONOMY = load_taxonomy()
RULES = PriorityRules.from_taxonomy(TAXONOMY)
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ELM = (41.30712, -72.92652)
NEAR = (41.30722, -72.92660)


def service(code: str) -> Service:
    found = TAXONOMY.get(code)
    assert found is not None
    return found


def prio(text: str, code: str = "pothole", reports: int = 1) -> tuple[Priority, str]:
    return priority_of(
        text, service(code), emergency=default_rules().detect(text), incident_reports=reports, rules=RULES
    )


# --- priority_of ----------------------------------------------------------------------------


def test_service_defaults() -> None:
    assert prio("Traffic light at Whalley and Sherman is out", "traffic-signal") == (
        Priority.HIGH,
        SERVICE_DEFAULT,
    )
    assert prio("Sewer backed up into the basement drain", "sewer-drain")[0] is Priority.HIGH
    assert prio("Large limb down on the lawn", "tree-down")[0] is Priority.HIGH
    assert prio("Graffiti all over the side of the building", "graffiti") == (Priority.LOW, SERVICE_DEFAULT)
    assert prio("Our brown toter was stolen", "trash-bin")[0] is Priority.LOW
    assert prio("There is a huge pothole in front of 45 Elm Street") == (Priority.NORMAL, SERVICE_DEFAULT)


@pytest.mark.parametrize(
    ("text", "code", "cue"),
    [
        # Real New Haven 2014 reports (bench/priority_eval.py), shortened.
        (
            "There is a dangerous manhole cover sticking out due to erosion of the street",
            "pothole",
            "dangerous",
        ),
        (
            "Car parked across the sidewalk in the alley. Dangerous for pedestrians walking",
            "parking-violation",
            "Dangerous",
        ),
        (
            "There is a white Oldsmobile partially blocking my driveway for 3 days",
            "parking-violation",
            "blocking my driveway",
        ),
        (
            "Dumped a couch and mattress, it is just sitting there blocking the sidewalk",
            "illegal-dumping",
            "blocking the sidewalk",
        ),
        (
            "This sidewalk has been like this for 30 years. It is a hazard, next to the new ER School",
            "sidewalk",
            "next to the new ER School",
        ),
        (
            "Tree along curb has many dead branches that fall onto the sidewalk. This is a safety hazard",
            "tree-maintenance",
            "safety hazard",
        ),
        ("Big hole in the road, someone is going to get hurt", "pothole", "someone is going to get hurt"),
        ("Kids walk here every morning and the sidewalk is broken", "sidewalk", "Kids walk here"),
        ("Graffiti on the wall near the playground", "graffiti", "near the playground"),
        # Spanish (accents and case folded as in the emergency rules)
        ("Hay un árbol que bloquea la calle", "tree-maintenance", "bloquea la calle"),
        ("Un bache enorme cerca de la escuela", "pothole", "cerca de la escuela"),
        ("La acera está rota, es muy PELIGROSA", "sidewalk", "PELIGROSA"),
        ("Coche bloqueando la entrada de mi casa", "parking-violation", "bloqueando la entrada"),
        ("el hoyo es peligroso, alguien se va a lastimar", "pothole", "peligroso"),
    ],
)
def test_cues_raise_to_high(text: str, code: str, cue: str) -> None:
    assert prio(text, code) == (Priority.HIGH, f"cue: {cue}")


@pytest.mark.parametrize(
    "text",
    [
        "the school bus stop light is out",  # a place word alone is not a cue
        "Street light out in front of the high school parking lot",
        "Pothole on the road to the hospital",
        "Car has been parked on the block for weeks",  # "block" is not "blocking"
        "Leaves are blocking the storm drain",  # blocking, but not the way
        "The pothole is not dangerous but it is getting bigger",  # guarded
        "No es peligroso pero hay basura",
    ],
)
def test_ordinary_text_is_not_raised(text: str) -> None:
    assert prio(text) == (Priority.NORMAL, SERVICE_DEFAULT)


def test_emergency_always_wins() -> None:
    assert prio("I smell gas near the school, it is dangerous", "graffiti") == (
        Priority.EMERGENCY,
        "emergency: gas",
    )
    assert prio("Huele a gas en la calle", "sewer-drain")[0] is Priority.EMERGENCY
    # The emergency as the normalizer passes it (a kind), and with many reports.
    assert priority_of("anything", service("pothole"), emergency="fire", incident_reports=9, rules=RULES) == (
        Priority.EMERGENCY,
        "emergency: fire",
    )


def test_repeated_reports_raise_to_high() -> None:
    assert prio("Pothole on Elm", reports=2) == (Priority.NORMAL, SERVICE_DEFAULT)
    assert prio("Pothole on Elm", reports=3) == (Priority.HIGH, "3 reports of this incident")
    assert prio("Graffiti on the bridge", "graffiti", reports=4)[0] is Priority.HIGH
    assert prio("Pothole on Elm, dangerous", reports=5) == (
        Priority.HIGH,
        "cue: dangerous; 5 reports of this incident",
    )
    # Already high by default: stays high, says why.
    assert prio("Signal out", "traffic-signal", reports=5) == (Priority.HIGH, SERVICE_DEFAULT)
    never = PriorityRules.from_taxonomy(
        TAXONOMY.model_copy(
            update={"incidents": TAXONOMY.incidents.model_copy(update={"escalate_after": None})}
        )
    )
    assert priority_of("Pothole", service("pothole"), emergency=None, incident_reports=50, rules=never)[
        0
    ] is (Priority.NORMAL)


def test_no_cues_configured() -> None:
    bare = Taxonomy(services=(Service(code="other", name="Other", department="triage"),))
    rules = PriorityRules.from_taxonomy(bare)
    assert rules.cues is None
    assert priority_of("dangerous", bare.services[0], emergency=None, rules=rules) == (
        Priority.NORMAL,
        SERVICE_DEFAULT,
    )


# --- the normalizer and the incident desk ----------------------------------------------------


def test_normalizer_sets_priority_reason_and_due_time() -> None:
    normalizer = Normalizer.from_taxonomy(TAXONOMY)
    contact = make_contact(
        "Deep pothole in the lane, dangerous at night", provider_id="p1", service_code="pothole"
    )
    request = normalizer.normalize(contact)
    assert (request.priority, request.priority_reason) == (Priority.HIGH, "cue: dangerous")
    assert request.expected_datetime == contact.received_at + timedelta(hours=24)  # high: at most 24 h
    plain = normalizer.normalize(make_contact("Pothole on Elm", provider_id="p2", service_code="pothole"))
    assert (plain.priority, plain.priority_reason) == (Priority.NORMAL, SERVICE_DEFAULT)
    assert plain.expected_datetime == plain.requested_datetime + timedelta(hours=72)
    # A follow-up never lowers what raised it.
    follow = make_contact("it is at 45 Elm", provider_id="p3", request_id=contact.request_id, continues=True)
    merged = normalizer.normalize(follow, request)
    assert (merged.priority, merged.priority_reason) == (Priority.HIGH, "cue: dangerous")


def located(text: str, pid: str, at: tuple[float, float], minutes: float) -> object:
    return make_contact(
        text,
        provider_id=pid,
        location=Location(lat=at[0], long=at[1]),
        received_at=T0 + timedelta(minutes=minutes),
        service_code="pothole",
    )


def test_third_report_escalates_the_incident_the_department_receives() -> None:
    desk = IncidentDesk(Normalizer.from_taxonomy(TAXONOMY))
    snap = Snapshot()
    first = located("Pothole outside 45 Elm Street", "w1", ELM, 0)
    (a,) = desk.handle(first, snap).requests  # type: ignore[arg-type]
    assert a.priority is Priority.NORMAL
    _, head2 = desk.handle(located("pothole on elm", "w2", NEAR, 10), snap).requests  # type: ignore[arg-type]
    assert head2.incident_reports == 2 and head2.priority is Priority.NORMAL
    later, head3 = desk.handle(located("pothole on elm again", "w3", NEAR, 20), snap).requests  # type: ignore[arg-type]
    assert head3.request_id == a.request_id and head3.incident_reports == 3
    assert (head3.priority, head3.priority_reason) == (Priority.HIGH, "3 reports of this incident")
    assert head3.expected_datetime == a.requested_datetime + timedelta(hours=24)
    assert head3.event_id != head2.event_id  # a new version: the department gets it
    assert later.priority is Priority.HIGH  # the report's own copy says so too
    # Splitting the third report back out lowers the incident again.
    out = desk.split(later.request_id, snap, at=T0 + timedelta(hours=1))
    head, alone = out.requests
    assert head.incident_reports == 2 and head.priority is Priority.NORMAL
    assert head.expected_datetime == a.requested_datetime + timedelta(hours=72)
    assert alone.priority is Priority.NORMAL


def test_a_later_report_cue_raises_the_incident() -> None:
    desk = IncidentDesk(Normalizer.from_taxonomy(TAXONOMY))
    snap = Snapshot()
    first = located("Pothole outside 45 Elm Street", "c1", ELM, 0)
    desk.handle(first, snap)  # type: ignore[arg-type]
    later, head = desk.handle(
        located("pothole on elm, blocking the lane", "c2", NEAR, 5),
        snap,  # type: ignore[arg-type]
    ).requests
    assert later.priority is Priority.HIGH
    assert (head.priority, head.priority_reason) == (
        Priority.HIGH,
        f"report {later.request_id}: cue: blocking the lane",
    )


# --- taxonomy: service levels per priority and validation ------------------------------------


def test_sla_hours_by_priority() -> None:
    assert TAXONOMY.sla_hours("pothole", Priority.NORMAL) == 72
    assert TAXONOMY.sla_hours("pothole", Priority.HIGH) == 24  # priority_sla_hours caps it
    assert TAXONOMY.sla_hours("pothole", Priority.EMERGENCY) == 4
    assert TAXONOMY.sla_hours("traffic-signal", Priority.HIGH) == 4  # already shorter than the cap
    assert TAXONOMY.sla_hours("traffic-safety", Priority.HIGH) == 168  # the service's own hours win
    assert TAXONOMY.sla_hours("tree-maintenance", Priority.LOW) == 720
    assert TAXONOMY.sla_hours("tree-maintenance", Priority.HIGH) == 72
    assert TAXONOMY.sla_hours("nope", Priority.HIGH) is None
    no_level = Taxonomy(
        services=(Service(code="other", name="Other", department="triage"),), priority_sla_hours={"high": 24}
    )
    assert no_level.sla_hours("other", Priority.HIGH) is None  # no service level at any priority
    assert ("pothole", Priority.HIGH, 24) in TAXONOMY.sla_table()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """\
services:
  - code: pothole
    name: Pothole
    department: public-works
{extra}
  - code: other
    name: Other
    department: triage
"""


def test_sla_mapping_in_yaml(tmp_path: Path) -> None:
    taxonomy = load_taxonomy(write(tmp_path, BASE.format(extra="    sla_hours: {high: 12, normal: 48}")))
    pothole = taxonomy.get("pothole")
    assert pothole is not None and pothole.sla_hours == 48
    assert taxonomy.sla_hours("pothole", Priority.HIGH) == 12
    low = load_taxonomy(write(tmp_path, BASE.format(extra="    priority: low\n    sla_hours: {low: 300}")))
    assert low.sla_hours("pothole", Priority.LOW) == 300


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    sla_hours: {high: 12}", "must give the service's own priority 'normal'"),
        ("    sla_hours: {normal: 48, urgent: 4}", "urgent"),
        ("    sla_hours: {normal: 0}", "greater than 0"),
        ("    priority: emergency", "emergency comes from the text"),
        ("    priority: urgent", "priority"),
    ],
)
def test_bad_priority_settings_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        load_taxonomy(write(tmp_path, BASE.format(extra=extra)))
    assert "code 'pothole'" in str(err.value)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("priority_cues: ['... road']", "priority_cues"),
        ("priority_cues: ['']", "empty"),
        ("priority_sla_hours: {urgent: 4}", "priority_sla_hours"),
        ("incidents: {escalate_after: 1}", "escalate_after"),
    ],
)
def test_bad_top_level_priority_settings_are_refused(tmp_path: Path, top: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_taxonomy(write(tmp_path, top + "\n" + BASE.format(extra="")))


# --- routing rules and subscriptions by priority ----------------------------------------------


def request(priority: Priority, code: str = "pothole") -> ServiceRequest:
    return ServiceRequest(
        request_id="K7M4-QPXA",
        event_id="e1",
        service_code=code,
        service_name="x",
        requested_datetime=T0,
        updated_datetime=T0,
        channel="web",
        confidence=0.9,
        priority=priority,
        source_contact_ids=("web:1",),
    )


def test_interest_and_rule_match_on_priority() -> None:
    duty = Interest.model_validate({"priority": ["emergency", "high"]})
    assert duty.matches(request(Priority.HIGH)) and duty.matches(request(Priority.EMERGENCY))
    assert not duty.matches(request(Priority.NORMAL))
    urgent_potholes = Interest.model_validate({"services": ["pothole"], "priority": "High"})
    assert urgent_potholes.matches(request(Priority.HIGH))
    assert not urgent_potholes.matches(request(Priority.HIGH, "graffiti"))
    rule = Rule.model_validate({"name": "urgent", "priority": ["high"], "departments": "night-crew"})
    table = RoutingTable(rules=(rule,))
    router = Router(table, TAXONOMY, Topics(), {"duty-officer": duty})
    assert router.departments_for(request(Priority.HIGH)) == ["night-crew", "duty-officer"]
    assert router.departments_for(request(Priority.NORMAL)) == ["public-works"]
    assert router.departments_for(request(Priority.EMERGENCY)) == [
        "public-works",
        "duty-officer",
        "emergency",
    ]


@pytest.mark.parametrize("value", [["urgent"], [], "", ["high", "asap"]])
def test_unknown_priorities_are_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="priority"):
        Interest.model_validate({"priority": value})
    with pytest.raises(ValidationError, match="priority"):
        Rule.model_validate({"name": "r", "priority": value, "departments": "x"})


def test_subscriptions_file_accepts_priority(tmp_path: Path) -> None:
    text = (
        "departments:\n"
        "  duty-officer:\n"
        "    priority: [emergency, high]\n"
        "    sinks:\n"
        "      - {name: file, type: jsonl}\n"
    )
    path = tmp_path / "subscriptions.yaml"
    path.write_text(text)
    import yaml

    parse_subscriptions(yaml.safe_load(text), source=str(path))  # the sinks stage allows the key
    interests = load_interests(path)  # the router validates it
    assert interests["duty-officer"].priority == (Priority.EMERGENCY, Priority.HIGH)
    path.write_text(text.replace("high]", "urgent]"))
    with pytest.raises(ValueError, match=r"(?s)department 'duty-officer':.*priority.*urgent"):
        load_interests(path)
