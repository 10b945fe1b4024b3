"""Incident rules as pure functions: one pothole reported three ways is one incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from normalizer.incidents import IncidentDesk, distance_m, distinct_problems, match, pole_ids, still_broken
from normalizer.normalize import Normalizer
from normalizer.state import Incident, Snapshot, StateStore
from schemas import Location, Media, RawContact
from schemas.contact import ReplyVia
from schemas.request import Precision, Status
from schemas.status import State, StatusChange
from schemas.taxonomy import IncidentRule, load_taxonomy
from tests.conftest import make_contact

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ELM = (41.30712, -72.92652)  # in front of 45 Elm Street, New Haven
NEAR = (41.30722, -72.92660)  # ~13 m away
FAR = (41.30900, -72.92652)  # ~210 m away


@pytest.fixture(scope="module")
def desk() -> IncidentDesk:
    return IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()))


def report(
    text: str,
    at: tuple[float, float] = ELM,
    *,
    pid: str,
    channel: str = "web",
    minutes: float = 0,
    reply: ReplyVia | None = None,
    **fields: object,
) -> RawContact:
    return make_contact(
        text,
        provider_id=pid,
        channel=channel,
        location=Location(lat=at[0], long=at[1]),
        received_at=T0 + timedelta(minutes=minutes),
        reply=reply,
        **fields,
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


def test_distance_is_metres() -> None:
    assert 10 < distance_m(*ELM, *NEAR) < 16
    assert 190 < distance_m(*ELM, *FAR) < 230


def test_three_channels_one_incident(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("Huge pothole outside 45 Elm Street", pid="w1")
    sms = report(
        "pothole on elm st by the church, blew my tire",
        NEAR,
        pid="s1",
        channel="sms",
        minutes=30,
        reply=ReplyVia(channel="sms", address="+12035550101", language="es"),
        media=(Media(url="https://example.org/hole.jpg"),),
    )
    mail = report(
        "The pothole in front of 45 Elm is getting deeper",
        pid="e1",
        channel="email",
        minutes=90,
        reply=ReplyVia(channel="email", address="ann@example.org"),
    )
    a = desk.handle(first, snap)
    assert [r.request_id for r in a.requests] == [first.request_id]
    assert a.requests[0].incident_id == first.request_id and a.requests[0].incident_reports == 1
    assert a.requests[0].location_precision is Precision.GIVEN

    b = desk.handle(sms, snap)
    later, head = b.requests
    assert later.request_id == sms.request_id and later.incident_id == first.request_id
    assert later.is_later_report and not head.is_later_report
    assert head.request_id == first.request_id and head.incident_reports == 2
    assert [u.request_id for u in head.incident_updates] == [sms.request_id]
    assert head.media[0].url == "https://example.org/hole.jpg"
    assert head.event_id != a.requests[0].event_id
    (msg,) = b.messages
    assert msg.channel == "sms" and msg.to == "+12035550101" and msg.language == "es"
    assert first.request_id in msg.text and sms.request_id in msg.text and "ya fue reportado" in msg.text

    c = desk.handle(mail, snap)
    assert c.requests[1].incident_reports == 3
    assert c.messages[0].language == "en" and "already reported" in c.messages[0].text
    incident = snap.incident(first.request_id)
    assert incident is not None and incident.members == (first.request_id, sms.request_id, mail.request_id)


def test_replay_re_emits_the_same_events(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole", pid="w1")
    second = report("pothole here", NEAR, pid="w2", minutes=5, reply=ReplyVia(channel="sms", address="+1203"))
    desk.handle(first, snap)
    once = desk.handle(second, snap)
    again = desk.handle(second, snap)
    assert [r.event_id for r in again.requests] == [r.event_id for r in once.requests]
    assert [m.message_id for m in again.messages] == [m.message_id for m in once.messages]
    assert snap.incident(first.request_id).reports == 2  # type: ignore[union-attr]


def test_other_service_distance_and_window_keep_reports_apart(desk: IncidentDesk) -> None:
    snap = Snapshot()
    desk.handle(report("pothole", pid="a"), snap)
    light = desk.handle(report("the street light is out", NEAR, pid="b", minutes=1), snap)
    far = desk.handle(report("pothole", FAR, pid="c", minutes=2), snap)
    late = desk.handle(report("pothole", NEAR, pid="d", minutes=60 * 24 * 31), snap)
    for outcome in (light, far, late):
        (only,) = outcome.requests
        assert only.incident_id == only.request_id and not outcome.messages


def test_text_without_a_point_or_in_triage_is_never_merged(desk: IncidentDesk) -> None:
    snap = Snapshot()
    desk.handle(report("pothole", pid="a"), snap)
    vague = desk.handle(report("hello can someone call me", NEAR, pid="b"), snap)
    assert vague.requests[0].triage and vague.requests[0].incident_id == vague.requests[0].request_id
    unplaced = desk.handle(make_contact("pothole", provider_id="c"), snap)
    assert unplaced.requests[0].lat is None and unplaced.requests[0].incident_reports == 1


def test_match_rules() -> None:
    rule = IncidentRule(radius_m=30, window_hours=24)
    request = Normalizer.from_taxonomy(load_taxonomy()).normalize(report("pothole", pid="x", minutes=60))
    t = T0.timestamp()
    open_near = Incident("AAAA-AAAA", "pothole", *NEAR, State.NEW, t, t)
    closed_near = Incident("BBBB-BBBB", "pothole", *NEAR, State.CLOSED, t, t, closed_at=t)
    assert match(request, [open_near], rule, 48).kind == "join"
    assert match(request, [closed_near], rule, 48).kind == "reopen"
    assert match(request, [closed_near], rule, 0.5).kind == "linked"
    assert match(request, [closed_near], IncidentRule(radius_m=30, window_hours=0.1), 0.1).kind == "new"
    other = Incident("CCCC-CCCC", "graffiti", *NEAR, State.NEW, t, t)
    assert match(request, [other], rule, 48).kind == "new"


def close(desk: IncidentDesk, snap: Snapshot, request_id: str, minutes: float) -> list[StatusChange]:
    change = StatusChange.new(
        request_id, State.CLOSED, source="api:public-works", at=T0 + timedelta(minutes=minutes)
    )
    return desk.handle_status(change, snap).status


def test_closing_the_incident_closes_every_report(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first, second, third = (report("pothole", pid=p, minutes=i) for i, p in enumerate(("a", "b", "c")))
    for contact in (first, second, third):
        desk.handle(contact, snap)
    closes = close(desk, snap, first.request_id, 600)
    assert sorted(c.request_id for c in closes) == sorted([second.request_id, third.request_id])
    assert all(c.state is State.CLOSED and c.source == f"incident:{first.request_id}" for c in closes)
    # The propagated closes come back on the status topic: they close the reports, nothing more.
    for change in closes:
        assert desk.handle_status(change, snap).status == []
    assert snap.request(second.request_id).closed  # type: ignore[union-attr]
    assert close(desk, snap, first.request_id, 600) == []  # a replayed close: reports already closed


def test_thanks_after_close_changes_nothing_still_broken_reopens(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole", pid="a", channel="sms")
    second = report("pothole", pid="b", channel="sms", minutes=5)
    desk.handle(first, snap)
    desk.handle(second, snap)
    for change in close(desk, snap, first.request_id, 600):
        desk.handle_status(change, snap)
    thanks = followup(second, "Thank you!", pid="b2", minutes=700)
    assert desk.handle(thanks, snap).requests == []
    assert desk.handle(thanks, snap).requests == []  # replay: still nothing
    assert snap.request(second.request_id).closed  # type: ignore[union-attr]

    broken = followup(second, "It is still broken, nobody came", pid="b3", minutes=800)
    out = desk.handle(broken, snap)
    mine, head = out.requests
    assert mine.request_id == second.request_id and mine.status == Status.OPEN
    assert "still broken" in (mine.status_notes or "")
    assert head.request_id == first.request_id and head.status == Status.OPEN
    assert not snap.incident(first.request_id).closed  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thank you!", False),
        ("gracias", False),
        ("ok great thanks for fixing it", False),
        ("still broken", True),
        ("it's back again", True),
        ("the light was not fixed", True),
        ("sigue roto", True),
        ("todavía no lo arreglaron", True),
    ],
)
def test_still_broken(text: str, expected: bool) -> None:
    assert still_broken(text) is expected


def test_new_report_within_cooloff_reopens_after_it_links(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole", pid="a")
    desk.handle(first, snap)
    close(desk, snap, first.request_id, 60)
    reply = ReplyVia(channel="sms", address="+12035550102")
    soon = desk.handle(report("pothole again here", NEAR, pid="b", minutes=60 * 24, reply=reply), snap)
    assert soon.requests[0].incident_id == first.request_id
    assert soon.requests[1].status == Status.OPEN and "Reopened" in (soon.requests[1].status_notes or "")
    assert "has reopened it" in soon.messages[0].text
    close(desk, snap, first.request_id, 60 * 25)
    later = desk.handle(report("pothole", NEAR, pid="c", minutes=60 * 24 * 5), snap)
    (own,) = later.requests
    assert own.incident_id == own.request_id and own.related_incident_id == first.request_id


def test_split_takes_a_report_back_out(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole", pid="a")
    wrong = report("pothole", NEAR, pid="b", minutes=3)
    desk.handle(first, snap)
    desk.handle(wrong, snap)
    command = make_contact(
        "split",
        provider_id="split-1",
        channel="operator",
        request_id=wrong.request_id,
        continues=True,
        metadata={"action": "split"},
        received_at=T0 + timedelta(minutes=10),
    )
    out = desk.handle(command, snap)
    head, alone = out.requests
    assert head.request_id == first.request_id and head.incident_reports == 1 and not head.incident_updates
    assert head.event_id != desk.handle(first, Snapshot()).requests[0].event_id  # a new version
    assert head.updated_datetime == command.received_at and "split out" in (head.status_notes or "")
    assert alone.request_id == wrong.request_id and alone.incident_id == wrong.request_id
    assert snap.incident_of(wrong.request_id) == wrong.request_id
    again = desk.handle(command, snap)  # replayed command: no change
    assert [r.event_id for r in again.requests] == [alone.event_id]


def test_sqlite_store_keeps_incidents_across_processes(desk: IncidentDesk, tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    one, two = StateStore.sqlite(path), StateStore.sqlite(path)
    first = report("pothole", pid="a")
    second = report("pothole", NEAR, pid="b", minutes=1)

    def run(store: StateStore, contact: RawContact) -> list[str | None]:
        def work(snap: Snapshot) -> list[str | None]:
            request = desk.normalizer.normalize(contact)
            area = desk.areas_for(request)
            snap.prefetch([contact.request_id], [area] if area else [])
            return [r.incident_id for r in desk.handle(contact, snap, request).requests]

        return store.run(work)

    assert run(one, first) == [first.request_id]
    assert run(two, second) == [first.request_id, first.request_id]
    incident = one.incident(first.request_id)
    assert incident is not None and incident.members == (first.request_id, second.request_id)
    one.close()
    two.close()


def test_reports_out_of_order_still_join(desk: IncidentDesk) -> None:
    # Different tickets travel on different partitions: the later report may be decided first.
    snap = Snapshot()
    late = desk.handle(report("pothole", pid="late", minutes=10), snap)
    early = desk.handle(report("pothole", NEAR, pid="early", minutes=5), snap)
    assert early.requests[0].incident_id == late.requests[0].request_id


def test_report_made_before_the_close_joins_closed(desk: IncidentDesk) -> None:
    snap = Snapshot()
    first = report("pothole", pid="a")
    desk.handle(first, snap)
    close(desk, snap, first.request_id, 60)
    before = desk.handle(report("pothole", NEAR, pid="b", minutes=30), snap)
    assert before.requests[0].incident_id == first.request_id
    assert before.requests[1].status == Status.OPEN and before.requests[1].status_notes is None
    (closing,) = before.status
    assert closing.request_id == before.requests[0].request_id and closing.state is State.CLOSED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Street lamp out just left of 242 Hallock AVENUE, pole # 607_ (one of two)", {"607"}),
        ("Light pole 1126 is out pole number 1126", {"1126"}),
        ("Replace street lamp bulb on UI 790", {"790"}),
        ("NOT WORKING UI-2534 HIGH STREET", {"2534"}),
        ("Replace street lamp bulb on N468", {"n468"}),
        ("the light at 45 Elm Street is out", set()),
    ],
)
def test_pole_ids(text: str, expected: set[str]) -> None:
    assert pole_ids(text) == expected


def test_nearby_reports_with_other_poles_or_streets_stay_apart(desk: IncidentDesk) -> None:
    snap = Snapshot()
    desk.handle(report("Street lamp out on pole 4782", pid="a"), snap)
    other_pole = desk.handle(report("Street light out, pole 4790", NEAR, pid="b", minutes=1), snap)
    assert not other_pole.requests[0].is_later_report
    same_pole = desk.handle(report("streetlight 4782 still dark", NEAR, pid="c", minutes=2), snap)
    assert same_pole.requests[0].is_later_report

    def placed(pid: str, address: str, minutes: float) -> RawContact:
        return make_contact(
            "pothole",
            provider_id=pid,
            location=Location(lat=ELM[0], long=ELM[1], address=address),
            received_at=T0 + timedelta(minutes=minutes),
        )

    desk.handle(placed("d", "45 Elm St", 10), snap)
    assert not desk.handle(placed("e", "131 Columbus Ave", 11), snap).requests[0].is_later_report
    assert desk.handle(placed("f", "Elm Street at College", 12), snap).requests[0].is_later_report
    assert distinct_problems_for("23 Pendleton St", "23 Pendelton Street") is None  # a typo is no reason


def distinct_problems_for(a: str, b: str) -> str | None:
    normalizer = Normalizer.from_taxonomy(load_taxonomy())
    first, second = (
        normalizer.normalize(make_contact("pothole", provider_id=p, location=Location(address=x)))
        for p, x in (("x1", a), ("x2", b))
    )
    return distinct_problems(first, second)


# -- service questions: asked once, answered by the reply ------------------------------------------


def test_a_required_question_left_open_is_asked_once_and_the_reply_answers_it(desk: IncidentDesk) -> None:
    snap = Snapshot()
    sms = ReplyVia(channel="sms", address="+12035550142", language="es")
    first = report(
        "No recogieron en la calle Elm", pid="q1", channel="sms", reply=sms, service_code="missed-pickup"
    )
    out = desk.handle(first, snap)
    [request] = out.requests
    assert request.service_code == "missed-pickup" and request.attributes == {}
    [question] = [m for m in out.messages if m.kind.value == "question"]
    assert question.channel == "sms" and question.to == "+12035550142" and question.language == "es"
    assert "¿Qué recolección no pasó?" in question.text and "Reciclaje" in question.text
    # A replay asks the same question (same id: the channel sends it once).
    again = desk.handle(first, snap)
    assert [m.message_id for m in again.messages if m.kind.value == "question"] == [question.message_id]
    # The reply: a value's name is an answer now ("Basura"); no further question.
    answer = followup(first, "Basura", pid="q2", minutes=3)
    answered = desk.handle(answer, snap)
    assert answered.requests[-1].attributes == {"stream": "trash"}
    assert not [m for m in answered.messages if m.kind.value == "question"]


def test_no_question_when_the_text_answers_or_nobody_can_be_asked(desk: IncidentDesk) -> None:
    snap = Snapshot()
    sms = ReplyVia(channel="sms", address="+12035550143")
    told = desk.handle(
        report("The recycling was not picked up", pid="q3", reply=sms, service_code="missed-pickup"), snap
    )
    assert told.requests[0].attributes == {"stream": "recycling"} and not told.messages
    silent = desk.handle(report("Nothing was collected", pid="q4", service_code="missed-pickup"), snap)
    assert silent.requests[0].attributes == {} and not silent.messages  # no reply address
    # "No" answers only a question we asked: in a report's own words it says nothing.
    pothole = desk.handle(report("No way to drive around this pothole", FAR, pid="q5", reply=sms), snap)
    assert pothole.requests[0].service_code == "pothole" and pothole.requests[0].attributes == {}
    assert not pothole.messages  # the bike lane question is not required
