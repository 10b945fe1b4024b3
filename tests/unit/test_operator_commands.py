"""Operator commands (re-classify, re-route, merge) end to end through the pure cores.

Each command is built the way the console builds it, applied by the normalizer's ``IncidentDesk``
to the stored state (as under the stage's lock), and the resulting request routed by the router.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from intake311.stage import Record
from normalizer.app import normalize_batch
from normalizer.incidents import CommandRefused, IncidentDesk
from normalizer.normalize import Normalizer
from normalizer.state import Snapshot
from router.routing import Interest, Router, RoutingTable, load_routing
from schemas import Location, RawContact
from schemas.contact import (
    ACTION,
    ACTION_MERGE,
    ACTION_RECLASSIFY,
    ACTION_REROUTE,
    ReplyVia,
    merge_command,
    reclassify_command,
    reroute_command,
)
from schemas.request import Priority, ServiceRequest
from schemas.taxonomy import load_taxonomy
from schemas.topics import TOPICS
from tests.conftest import make_contact

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ELM = (41.30712, -72.92652)
NEAR = (41.30722, -72.92660)  # ~13 m
BLOCK = (41.30760, -72.92652)  # ~53 m: outside a pothole's 30 m radius
BY = "console:alice"


@pytest.fixture(scope="module")
def desk() -> IncidentDesk:
    return IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()))


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(load_routing(), load_taxonomy(), TOPICS)


def report(
    text: str,
    at: tuple[float, float] | None = ELM,
    *,
    pid: str,
    minutes: float = 0,
    reply: ReplyVia | None = None,
) -> RawContact:
    return make_contact(
        text,
        provider_id=pid,
        location=Location(lat=at[0], long=at[1]) if at else None,
        received_at=T0 + timedelta(minutes=minutes),
        reply=reply,
    )


def followup(first: RawContact, text: str, *, pid: str, minutes: float) -> RawContact:
    return make_contact(
        text,
        provider_id=pid,
        channel=first.channel,
        request_id=first.request_id,
        continues=True,
        received_at=T0 + timedelta(minutes=minutes),
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def departments(router: Router, request: ServiceRequest) -> list[str]:
    return [d.department for d in router.route(request)]


# -- the commands as contacts ---------------------------------------------------------------------
def test_commands_are_operator_contacts_with_derived_ids() -> None:
    ticket = report("pothole", pid="a").request_id
    one = reclassify_command(ticket, service_code="street-light", now=at(5), by=BY, nonce="f1")
    assert one.channel == "operator" and one.continues and one.request_id == ticket
    assert one.metadata == {
        ACTION: ACTION_RECLASSIFY,
        "service_code": "street-light",
        "by": BY,
        "nonce": "f1",
    }
    # A retried click (same form, same nonce) is the same contact; a new form is a new one.
    again = reclassify_command(ticket.lower(), service_code="street-light", now=at(6), by=BY, nonce="f1")
    assert again.contact_id == one.contact_id and again.request_id == ticket
    assert reclassify_command(
        ticket, service_code="street-light", now=at(5), by=BY, nonce="f2"
    ).contact_id != (one.contact_id)
    assert reclassify_command(ticket, service_code="pothole", now=at(5), by=BY, nonce="f1").contact_id != (
        one.contact_id
    )
    route = reroute_command(ticket, department="parks", now=at(5), by=BY, nonce="f1")
    assert route.metadata[ACTION] == ACTION_REROUTE and route.metadata["department"] == "parks"
    assert route.contact_id != one.contact_id
    other = report("pothole", pid="b").request_id
    merge = merge_command(ticket, into=other.lower().replace("-", ""), now=at(5), by=BY, nonce="f1")
    assert merge.metadata[ACTION] == ACTION_MERGE and merge.metadata["into"] == other


@pytest.mark.parametrize(
    "build",
    [
        lambda t: reclassify_command("nope", service_code="pothole", now=T0, by=BY, nonce="n"),
        lambda t: reclassify_command(t, service_code="", now=T0, by=BY, nonce="n"),
        lambda t: reclassify_command(t, service_code="pothole", now=T0, by=BY, nonce=""),
        lambda t: reroute_command(t, department="Public Works", now=T0, by=BY, nonce="n"),
        lambda t: reroute_command(t, department="parks", now=T0, by=" ", nonce="n"),
        lambda t: merge_command(t, into="not a ticket", now=T0, by=BY, nonce="n"),
        lambda t: merge_command(t, into=t, now=T0, by=BY, nonce="n"),
    ],
)
def test_command_builders_refuse_bad_input(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        build(report("pothole", pid="a").request_id)


# -- re-classify ------------------------------------------------------------------------------------
def test_reclassify_sets_the_service_its_level_and_the_route(desk: IncidentDesk, router: Router) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    (before,) = desk.handle(first, snap).requests
    assert before.service_code == "pothole" and departments(router, before) == ["public-works"]

    command = reclassify_command(first.request_id, service_code="water-leak", now=at(30), by=BY, nonce="f1")
    out = desk.handle(command, snap)
    (after,) = out.requests
    assert after.service_code == "water-leak" and after.service_name == "Water leak or main break"
    assert after.confidence == 1.0 and not after.triage and after.triage_reason is None
    assert after.decided_by == BY and after.assigned_department is None
    assert (
        after.status_notes
        == f"Re-classified by {BY}: Pothole (pothole) -> Water leak or main break (water-leak)"
    )
    assert after.updated_datetime == at(30) and after.requested_datetime == before.requested_datetime
    # Priority and service level follow the new service (a water leak is high, due in 4 h; a
    # pothole normal, due in 72 h).
    assert before.priority is Priority.NORMAL and after.priority is Priority.HIGH
    assert after.expected_datetime == before.requested_datetime + timedelta(hours=4)
    assert before.expected_datetime == before.requested_datetime + timedelta(hours=72)
    assert after.event_id != before.event_id and command.contact_id in after.source_contact_ids
    assert departments(router, after) == ["water"]
    assert router.route(after)[0].request.agency_responsible == "water"
    # The incident takes the new service: a later water-leak report nearby joins it.
    incident = snap.incident(first.request_id)
    assert incident is not None and incident.service_code == "water-leak"
    leak = desk.handle(report("water leaking from the street", NEAR, pid="b", minutes=40), snap)
    assert leak.requests[0].service_code == "water-leak" and leak.requests[0].incident_id == first.request_id


def test_reclassify_takes_a_request_out_of_triage_and_places_it(desk: IncidentDesk, router: Router) -> None:
    snap = Snapshot()
    known = report("pothole outside 45 Elm Street", pid="a")
    desk.handle(known, snap)
    vague = report("please come and look at this, it is bad", NEAR, pid="b", minutes=5)
    (unclear,) = desk.handle(vague, snap).requests
    assert unclear.triage and departments(router, unclear) == ["triage"]
    assert snap.incident_of(vague.request_id) is None

    command = reclassify_command(vague.request_id, service_code="pothole", now=at(20), by=BY, nonce="f1")
    out = desk.handle(command, snap)
    now, head = out.requests  # classified now, it is a report of the pothole next to it
    assert now.request_id == vague.request_id and now.incident_id == known.request_id
    assert not now.triage and now.service_code == "pothole" and now.decided_by == BY
    assert head.request_id == known.request_id and head.incident_reports == 2
    assert departments(router, now) == ["public-works"]


def test_reclassify_replayed_is_the_same_events(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    desk.handle(first, snap)
    command = reclassify_command(first.request_id, service_code="sidewalk", now=at(30), by=BY, nonce="f1")
    once = desk.handle(command, snap)
    again = desk.handle(command, snap)
    assert [r.event_id for r in again.requests] == [r.event_id for r in once.requests]
    assert again.requests[0].status_notes == once.requests[0].status_notes
    assert again.requests[0].source_contact_ids.count(command.contact_id) == 1
    # Back to pothole later (a new form, a new nonce): a new version, then forward again: another.
    back = desk.handle(
        reclassify_command(first.request_id, service_code="pothole", now=at(40), by=BY, nonce="f2"), snap
    )
    forth = desk.handle(
        reclassify_command(first.request_id, service_code="sidewalk", now=at(50), by=BY, nonce="f3"), snap
    )
    ids = {once.requests[0].event_id, back.requests[0].event_id, forth.requests[0].event_id}
    assert len(ids) == 3 and back.requests[0].service_code == "pothole"
    assert (
        forth.requests[0].status_notes
        == f"Re-classified by {BY}: Pothole (pothole) -> Sidewalk or curb damage (sidewalk)"
    )


def test_followup_keeps_the_operators_service(desk: IncidentDesk, router: Router) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    desk.handle(first, snap)
    desk.handle(
        reclassify_command(first.request_id, service_code="water-leak", now=at(30), by=BY, nonce="f1"), snap
    )
    # The resident's words would classify it as a pothole again: the operator's choice holds.
    out = desk.handle(
        followup(first, "the pothole is getting deeper, huge pothole", pid="a2", minutes=60), snap
    )
    (later,) = out.requests
    assert later.service_code == "water-leak" and later.decided_by == BY and later.confidence == 1.0
    assert "getting deeper" in later.description
    assert later.expected_datetime == later.requested_datetime + timedelta(hours=4)
    assert departments(router, later) == ["water"]


def test_unknown_service_code_is_refused(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    (before,) = desk.handle(first, snap).requests
    command = reclassify_command(first.request_id, service_code="unicorns", now=at(30), by=BY, nonce="f1")
    with pytest.raises(CommandRefused, match="unicorns"):
        desk.handle(command, snap)
    stored = snap.request(first.request_id)
    assert stored is not None and stored.request == before  # nothing changed


def test_unknown_ticket_and_bad_command_dead_letter_with_a_reason(desk: IncidentDesk) -> None:
    """Through the stage's pure batch: a command that cannot apply becomes a dead letter."""
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    missing = report("never seen", pid="zz").request_id
    commands = [
        first,
        reclassify_command(first.request_id, service_code="unicorns", now=at(30), by=BY, nonce="f1"),
        reroute_command(missing, department="parks", now=at(30), by=BY, nonce="f1"),
        merge_command(first.request_id, into=missing, now=at(30), by=BY, nonce="f1"),
    ]
    records = [
        Record(c.model_dump_json().encode(), TOPICS.contacts(c.channel), 0, i, c.request_id.encode())
        for i, c in enumerate(commands)
    ]
    out = normalize_batch(records, desk, snap, TOPICS)
    letters = [o for o in out if o.topic == TOPICS.deadletter]
    assert len(letters) == 3
    text = b"\n".join(o.value for o in letters)
    assert b"unicorns" in text and b"is not known to the normalizer" in text
    assert len([o for o in out if o.topic == TOPICS.requests]) == 1


# -- re-route ------------------------------------------------------------------------------------------
def test_reroute_assigns_the_owner_before_the_table(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    (before,) = desk.handle(first, snap).requests
    router = Router(
        RoutingTable(), load_taxonomy(), TOPICS, interests={"ward-7": Interest(services=("pothole",))}
    )
    assert departments(router, before) == ["public-works", "ward-7"]
    command = reroute_command(first.request_id, department="parks", now=at(30), by=BY, nonce="f1")
    (after,) = desk.handle(command, snap).requests
    assert after.assigned_department == "parks" and after.decided_by == BY
    assert after.service_code == "pothole" and after.expected_datetime == before.expected_datetime
    assert after.status_notes == f"Re-routed to parks by {BY}" and after.updated_datetime == at(30)
    assert after.event_id != before.event_id
    # The owner is the operator's department; subscriptions still get their copy.
    assert departments(router, after) == ["parks", "ward-7"]
    assert router.route(after)[0].request.agency_responsible == "parks"
    again = desk.handle(command, snap)
    assert [r.event_id for r in again.requests] == [after.event_id]
    # A follow-up keeps the department; a new re-route (new nonce) replaces it.
    (later,) = desk.handle(followup(first, "still a pothole here", pid="a2", minutes=40), snap).requests
    assert later.assigned_department == "parks" and departments(router, later)[0] == "parks"
    (moved,) = desk.handle(
        reroute_command(
            first.request_id, department="public-works", now=at(50), by="console:bob", nonce="f2"
        ),
        snap,
    ).requests
    assert moved.assigned_department == "public-works" and moved.decided_by == "console:bob"
    assert departments(router, moved) == ["public-works", "ward-7"]


def test_reroute_takes_it_out_of_triage_and_keeps_the_emergency_copy(
    desk: IncidentDesk, router: Router
) -> None:
    snap = Snapshot()
    vague = report("please call me back", None, pid="v")
    (before,) = desk.handle(vague, snap).requests
    assert before.triage and departments(router, before) == ["triage"]
    command = reroute_command(vague.request_id, department="code-enforcement", now=at(5), by=BY, nonce="f1")
    (after,) = desk.handle(command, snap).requests
    assert not after.triage and after.triage_reason is None
    assert departments(router, after) == ["code-enforcement"]
    # A follow-up the classifier finds no clearer does not send it back to triage.
    (later,) = desk.handle(followup(vague, "hello?", pid="v2", minutes=30), snap).requests
    assert not later.triage and departments(router, later) == ["code-enforcement"]

    gas = report("I smell gas near the pothole outside 45 Elm Street", pid="g")
    (danger,) = desk.handle(gas, snap).requests
    assert danger.priority is Priority.EMERGENCY
    command = reroute_command(gas.request_id, department="water", now=at(5), by=BY, nonce="f1")
    (routed,) = desk.handle(command, snap).requests
    assert departments(router, routed) == ["water", "emergency"]


# -- merge -----------------------------------------------------------------------------------------------
def test_merge_joins_another_incident_regardless_of_distance(desk: IncidentDesk, router: Router) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    desk.handle(first, snap)
    apart = report(
        "pothole on elm street",
        BLOCK,
        pid="b",
        minutes=10,
        reply=ReplyVia(channel="sms", address="+12035550101"),
    )
    (alone,) = desk.handle(apart, snap).requests
    assert alone.incident_id == apart.request_id  # 53 m: its own incident

    command = merge_command(apart.request_id, into=first.request_id, now=at(30), by=BY, nonce="f1")
    out = desk.handle(command, snap)
    merged, head = out.requests
    assert merged.request_id == apart.request_id and merged.incident_id == first.request_id
    assert merged.is_later_report and merged.incident_reports == 2
    assert merged.status_notes == f"Merged into incident {first.request_id} by {BY}"
    assert merged.updated_datetime == at(30) and merged.event_id != alone.event_id
    assert head.request_id == first.request_id and head.incident_reports == 2
    assert [u.request_id for u in head.incident_updates] == [apart.request_id]
    (told,) = out.messages
    assert told.to == "+12035550101" and first.request_id in told.text
    incident = snap.incident(first.request_id)
    assert incident is not None and incident.members == (first.request_id, apart.request_id)
    assert snap.incident_of(apart.request_id) == first.request_id
    # Both are still routed as before: the report is delivered too, marked with its incident.
    assert departments(router, merged) == ["public-works"] == departments(router, head)

    # Replayed: the same events, never a third report.
    again = desk.handle(command, snap)
    assert [r.event_id for r in again.requests] == [merged.event_id, head.event_id]
    assert [m.message_id for m in again.messages] == [told.message_id]
    assert snap.incident(first.request_id).reports == 2  # type: ignore[union-attr]
    # Asked again with a new nonce (a second console form): already there, nothing changes.
    twice = desk.handle(
        merge_command(apart.request_id, into=first.request_id, now=at(40), by=BY, nonce="f2"), snap
    )
    assert [r.event_id for r in twice.requests] == [merged.event_id] and not twice.messages
    assert snap.incident(first.request_id).reports == 2  # type: ignore[union-attr]
    # Its old incident record is retired: a report next to it no longer joins a later report.
    near_old = desk.handle(report("pothole again", BLOCK, pid="c", minutes=50), snap)
    assert near_old.requests[0].incident_id in (near_old.requests[0].request_id, first.request_id)
    assert near_old.requests[0].incident_id != apart.request_id


def test_merge_into_a_later_report_joins_that_reports_incident(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    second = report("pothole here", NEAR, pid="b", minutes=3)
    desk.handle(first, snap)
    desk.handle(second, snap)
    # A report elsewhere (no coordinates: never matched) that the operator knows is this one.
    third = report("the pothole by the church on elm", None, pid="c", minutes=20)
    desk.handle(third, snap)
    out = desk.handle(
        merge_command(third.request_id, into=second.request_id, now=at(30), by=BY, nonce="f1"), snap
    )
    merged, head = out.requests
    assert merged.incident_id == first.request_id and head.request_id == first.request_id
    assert head.incident_reports == 3 and merged.incident_reports == 3
    assert [u.request_id for u in head.incident_updates] == [second.request_id, third.request_id]


def test_merge_out_of_one_incident_into_another(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    wrong = report("pothole here", NEAR, pid="b", minutes=3)
    other = report("pothole by the school", (41.31500, -72.92652), pid="c", minutes=5)
    for contact in (first, wrong, other):
        desk.handle(contact, snap)
    out = desk.handle(
        merge_command(wrong.request_id, into=other.request_id, now=at(30), by=BY, nonce="f1"), snap
    )
    left, moved, joined = out.requests
    assert left.request_id == first.request_id and left.incident_reports == 1 and not left.incident_updates
    assert (
        left.status_notes == f"Report {wrong.request_id} was merged into incident {other.request_id} by {BY}"
    )
    assert moved.request_id == wrong.request_id and moved.incident_id == other.request_id
    assert joined.request_id == other.request_id and joined.incident_reports == 2
    assert snap.incident(first.request_id).members == (first.request_id,)  # type: ignore[union-attr]


def test_merge_into_a_request_with_no_incident_yet(desk: IncidentDesk) -> None:
    snap = Snapshot()
    vague = report("please come and look at this, it is bad", ELM, pid="v")
    desk.handle(vague, snap)  # in triage: no incident record
    assert snap.incident(vague.request_id) is None
    nowhere = report("the same thing as my neighbour said", None, pid="n", minutes=5)
    desk.handle(nowhere, snap)
    merged, head = desk.handle(
        merge_command(nowhere.request_id, into=vague.request_id, now=at(10), by=BY, nonce="f1"), snap
    ).requests
    assert merged.incident_id == vague.request_id and head.incident_reports == 2
    incident = snap.incident(vague.request_id)
    assert incident is not None and (incident.lat, incident.long) == ELM
    assert incident.members == (vague.request_id, nowhere.request_id)


def test_merge_refusals(desk: IncidentDesk) -> None:
    snap = Snapshot()
    a = report("the same thing as my neighbour said", None, pid="a")
    b = report("it is bad over here", None, pid="b", minutes=1)
    desk.handle(a, snap)
    desk.handle(b, snap)
    with pytest.raises(CommandRefused, match="neither request has a location"):
        desk.handle(merge_command(b.request_id, into=a.request_id, now=at(5), by=BY, nonce="f1"), snap)
    first = report("pothole outside 45 Elm Street", pid="c")
    second = report("pothole here", NEAR, pid="d", minutes=3)
    desk.handle(first, snap)
    desk.handle(second, snap)
    with pytest.raises(CommandRefused, match="first report of an incident"):
        desk.handle(merge_command(first.request_id, into=b.request_id, now=at(5), by=BY, nonce="f1"), snap)
    unknown = report("never seen", pid="zz").request_id
    with pytest.raises(LookupError, match="not known"):
        desk.handle(merge_command(first.request_id, into=unknown, now=at(5), by=BY, nonce="f1"), snap)
    # Merging a request into a report of its own incident changes nothing.
    (same,) = desk.handle(
        merge_command(first.request_id, into=second.request_id, now=at(5), by=BY, nonce="f1"), snap
    ).requests
    assert same.incident_reports == 2 and snap.incident(first.request_id).reports == 2  # type: ignore[union-attr]


def test_unknown_operator_action_is_refused(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole outside 45 Elm Street", pid="a")
    desk.handle(first, snap)
    command = make_contact(
        "",
        provider_id="x-1",
        channel="operator",
        request_id=first.request_id,
        continues=True,
        metadata={ACTION: "teleport", "by": BY},
        received_at=at(5),
    )
    with pytest.raises(ValueError, match="teleport"):
        desk.handle(command, snap)
