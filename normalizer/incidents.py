"""One incident per problem: which reports are the same pothole, and what each party hears.

``IncidentDesk`` is the normalizer's stateful step, a plain function of a contact (or a status
change) and a ``Snapshot`` of the shared state, so every rule is tested without Kafka or SQL:

* a new report of the same service within the service's radius and time window of an open
  incident **joins** it: the report keeps its own ticket and gets the incident's ``incident_id``;
  the incident's first request is re-emitted with the reporter count, the report's details and
  photos; the resident is told, in their language, that the problem is known;
* within the cool-off after a close, such a report **reopens** the incident; after it, the
  report opens a **new incident linked** to the closed one;
* a follow-up after a close that carries no new problem ("Thank you!") changes nothing; one that
  says it is still broken reopens the request (and its incident) with a note to the department;
* closing an incident's first request closes every report of it, so every reporter hears;
* an operator can **split** a wrongly merged report back out, **merge** a report into another
  request's incident, **re-classify** a request (another service) or **re-route** it (another
  department); see ``IncidentDesk.command``.

Every output derives from the input and the stored state, so a replayed contact re-emits the
same events with the same ids and nothing downstream happens twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import lru_cache

from intake311.logging import get_logger
from normalizer.geo.types import EARTH_RADIUS_M
from normalizer.geo.types import haversine_m as distance_m
from normalizer.normalize import Normalizer, versioned
from normalizer.priority import raise_to
from normalizer.state import Area, Incident, Snapshot, StoredRequest
from schemas.attributes import unanswered
from schemas.contact import (
    ACTION,
    ACTION_MERGE,
    ACTION_RECLASSIFY,
    ACTION_REROUTE,
    ACTION_SPLIT,
    OPERATOR_ACTIONS,
    RawContact,
    ReplyVia,
)
from schemas.ids import digest, is_slug, parse_ticket
from schemas.messages import render, resolve_language
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id
from schemas.request import MAX_INCIDENT_UPDATES, IncidentReport, Priority, ServiceRequest, Status
from schemas.status import State, StatusChange
from schemas.taxonomy import IncidentRule, Taxonomy

log = get_logger(__name__)
MAX_MEDIA = 20
RETIRED = ""  # the service of an incident record whose only report was merged elsewhere: matches none


class CommandRefused(LookupError, ValueError):
    """An operator command that can never apply (unknown ticket or service, no location).

    A ``LookupError`` like split's unknown ticket, and a ``ValueError`` so the stage logs it as
    bad input (a warning with the reason, no traceback) when it dead-letters the command.
    """


# A follow-up after a close that says the problem is back (English and Spanish).
_STILL_BROKEN = re.compile(
    r"\b(still|again|not (?:been )?(?:fixed|repaired|done|resolved)|(?:is|isn'?t|wasn'?t|never) fixed"
    r"|(?:did ?n[o']?t|didnt) (?:fix|repair)|came back|(?:it'?s|is) back|re-?open|nobody came|no one came"
    r"|sigue|todav[ií]a|otra vez|de nuevo|no (?:lo |la )?(?:arreglaron|repararon)|no est[aá] arreglad[oa]"
    r"|no se arregl[oó]|regres[oó]|volvi[oó])\b",
    re.IGNORECASE,
)


def still_broken(text: str) -> bool:
    """Whether a follow-up says the problem is not fixed (and so should reopen the request)."""
    return bool(_STILL_BROKEN.search(text or ""))


# Pole and fixture numbers residents copy from the tag: two different numbers, two problems.
_POLE_ID = re.compile(
    r"\b(?:poles?|ui|#)\W{0,3}(?:#|no\.?|number|num)?\W{0,2}([a-z]?\d{2,5})(?!\d)|\b([a-z]\d{3,4})\b", re.I
)
# Words of an address that do not name a street.
_NOT_A_NAME_TEXT = """and at between of the near corner in front opp opposite across from intersection by
    rear side new haven connecticut ct usa us city block entrance driveway"""
_NOT_A_NAME = frozenset(_NOT_A_NAME_TEXT.split())


@lru_cache(maxsize=16384)
def pole_ids(text: str) -> frozenset[str]:
    """Pole or fixture numbers in a report ("pole #1247", "UI 2701", "N468")."""
    return frozenset((a or b).lower() for a, b in _POLE_ID.findall(text or ""))


@lru_cache(maxsize=16384)
def street_words(address: str | None) -> frozenset[str]:
    """The words of an address that name its street(s): "45 Elm St" -> {"elm"}."""
    from normalizer.geo.streets import DIRECTIONALS, SUFFIXES, key_tokens, raw_tokens

    if not address:
        return frozenset()
    return frozenset(
        t
        for t in key_tokens(raw_tokens(address))
        if t.isalpha()
        and len(t) >= 3
        and t not in SUFFIXES
        and t not in DIRECTIONALS
        and t not in _NOT_A_NAME
    )


def distinct_problems(a: ServiceRequest, b: ServiceRequest) -> str | None:
    """Why two nearby reports of one service are still two problems (None: nothing says so).

    Coordinates alone merge neighbours: two street lamps on one block, or two reports an app
    placed on the same default point of different streets. What residents wrote can tell them
    apart: different pole numbers, or addresses that share no street name (typos tolerated).
    """
    poles_a, poles_b = pole_ids(a.description), pole_ids(b.description)
    if poles_a and poles_b and not poles_a & poles_b:
        return "different pole numbers"
    words_a, words_b = street_words(a.address_string), street_words(b.address_string)
    if words_a and words_b and not words_a & words_b:
        from rapidfuzz import fuzz

        if not any(fuzz.ratio(x, y) >= 80 for x in words_a for y in words_b):
            return "different streets"
    return None


def area_around(service_code: str, lat: float, long: float, radius_m: float, since: float) -> Area:
    """The lat/long box that contains the circle of ``radius_m`` around a point."""
    dlat = math.degrees(radius_m / EARTH_RADIUS_M)
    dlong = dlat / max(0.01, math.cos(math.radians(lat)))
    return Area(service_code, lat - dlat, lat + dlat, long - dlong, long + dlong, since)


def _epoch(value: datetime) -> float:
    return value.timestamp()


@dataclass(frozen=True)
class Match:
    """What a located report is to the incidents near it."""

    kind: str  # "new" | "join" | "reopen" | "linked"
    incident: Incident | None = None


def match(
    request: ServiceRequest,
    candidates: list[Incident],
    rule: IncidentRule,
    cooloff_hours: float,
) -> Match:
    """The incident a report belongs to, by the service's rule; pure.

    The nearest open incident within the radius whose latest report is inside the window wins;
    else a closed one within the radius, closed less than ``cooloff_hours`` ago, is reopened;
    else a new incident, linked to a closed one within the radius closed before that.
    """
    if request.lat is None or request.long is None:
        return Match("new")
    now = _epoch(request.requested_datetime)
    window_s, cooloff_s = rule.window_hours * 3600, cooloff_hours * 3600
    near = [
        (distance_m(request.lat, request.long, i.lat, i.long), i)
        for i in candidates
        if i.incident_id != request.request_id and i.service_code == request.service_code
    ]
    near = sorted(((d, i) for d, i in near if d <= rule.radius_m), key=lambda x: (x[0], x[1].incident_id))
    # Reports reach normalizers out of order (they travel on different partitions), so "within
    # the window" runs both ways, and a report made before a close is part of what was closed.
    for _, incident in near:
        if not incident.closed and abs(now - incident.last_report_at) <= window_s:
            return Match("join", incident)
    for _, incident in near:
        closed_at = incident.closed_at
        if not incident.closed or closed_at is None:
            continue
        if now <= closed_at and now >= incident.opened_at - window_s:
            return Match("join", incident)
        if 0 < now - closed_at <= cooloff_s:
            return Match("reopen", incident)
    for _, incident in near:
        closed_for = now - incident.closed_at if incident.closed_at is not None else -1.0
        if incident.closed and 0 < closed_for <= cooloff_s + window_s:
            return Match("linked", incident)
    return Match("new")


def matchable(request: ServiceRequest, rule: IncidentRule) -> bool:
    """Only a placed, classified report can be the same problem as another one."""
    return (
        rule.radius_m > 0
        and not request.triage
        and request.lat is not None
        and request.long is not None
        and (request.location_precision is None or request.location_precision.pinpoints)
    )


@dataclass
class Outcome:
    """What one contact or status change produces: requests, messages to residents, status changes."""

    requests: list[ServiceRequest] = field(default_factory=list)
    messages: list[OutboundMessage] = field(default_factory=list)
    status: list[StatusChange] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.requests += other.requests
        self.messages += other.messages
        self.status += other.status


class IncidentDesk:
    """The normalizer's stateful rules over a ``Snapshot``: follow-ups, incidents, splits, closes."""

    def __init__(self, normalizer: Normalizer, *, reply_channels: frozenset[str] | None = None) -> None:
        self.normalizer = normalizer
        self.taxonomy: Taxonomy = normalizer.taxonomy
        # Channels that can send (configured ones): a message for any other would sit on a
        # topic nobody reads. None: every channel (tests).
        self.reply_channels = reply_channels
        # Looked up for every request: resolved once (taxonomy lookups go through pydantic).
        self._rules = {code: self.taxonomy.incident_rule(code) for code in self.taxonomy.codes}
        self._no_rule = IncidentRule(radius_m=0)
        self._cooloff_hours = self.taxonomy.incidents.cooloff_hours
        # ``areas_for`` by request (the object: a request is immutable), asked when a batch is
        # planned and again when each report is placed; emptied when full.
        self._areas: dict[int, tuple[ServiceRequest, Area | None]] = {}

    def rule(self, service_code: str) -> IncidentRule:
        return self._rules.get(service_code, self._no_rule)

    def _prioritised(
        self, request: ServiceRequest, *, keep: bool = True, report: ServiceRequest | None = None
    ) -> ServiceRequest:
        """``request`` with the priority its text and report count give now (the count is known
        only here: an incident reaching ``escalate_after`` reports becomes at least high).

        ``keep``: never lower what it had (a join); False after a split, where the count drops.
        ``report``: a later report of the incident whose own cue raises the first request too
        (to high at most: an emergency in a later report is copied to the emergency department
        as that report). The service level follows the priority.
        """
        now = self.normalizer.priority(request)
        if keep:
            now = raise_to(now, (request.priority, request.priority_reason or now[1]))
        if (
            report is not None
            and report.request_id != request.request_id
            and report.priority in (Priority.EMERGENCY, Priority.HIGH)
        ):
            now = raise_to(now, (Priority.HIGH, f"report {report.request_id}: {report.priority_reason}"))
        priority, why = now
        if priority == request.priority and why == request.priority_reason:
            return request
        update: dict[str, object] = {"priority": priority, "priority_reason": why}
        if priority != request.priority:
            update["expected_datetime"] = self.normalizer.expected(request, priority)
        return request.model_copy(update=update)

    # -- planning: what to prefetch for a batch -----------------------------------------------
    def areas_for(self, request: ServiceRequest) -> Area | None:
        """Where incidents that ``request`` could join are (None: it cannot join any)."""
        known = self._areas.get(id(request))
        if known is not None and known[0] is request:
            return known[1]
        area = self._area_for(request)
        if len(self._areas) >= 4096:
            self._areas.clear()
        self._areas[id(request)] = (request, area)
        return area

    def _area_for(self, request: ServiceRequest) -> Area | None:
        rule = self.rule(request.service_code)
        if not matchable(request, rule):
            return None
        assert request.lat is not None and request.long is not None
        horizon = rule.window_hours * 3600 + self._cooloff_hours * 3600
        since = _epoch(request.requested_datetime) - horizon
        return area_around(request.service_code, request.lat, request.long, rule.radius_m, since)

    def near(self, request: ServiceRequest, snap: Snapshot, *, area: Area | None = None) -> list[Incident]:
        """Incidents of the request's service within its radius (any state).

        ``area``: ``areas_for(request)`` when the caller has it already."""
        area = area or self.areas_for(request)
        if area is None or request.lat is None or request.long is None:
            return []
        radius = self.rule(request.service_code).radius_m
        lat, long = request.lat, request.long
        return [i for i in snap.incidents_in(area) if distance_m(lat, long, i.lat, i.long) <= radius]

    # -- contacts -------------------------------------------------------------------------------
    def handle(self, contact: RawContact, snap: Snapshot, prepared: ServiceRequest | None = None) -> Outcome:
        """The outcome of one contact. ``prepared``: ``normalize(contact)`` done before the lock.

        A resident's request that leaves a required question of its service open also gets the
        question, on their channel (``questions``)."""
        out = self._handle(contact, snap, prepared)
        if contact.channel != "operator":
            for request in out.requests:
                if request.request_id == contact.request_id:
                    out.messages += self.questions(request)
        return out

    def questions(self, request: ServiceRequest) -> list[OutboundMessage]:
        """The first required question ``request`` leaves open, to its resident, once.

        One at a time (a text with three questions gets one answer); the id derives from the
        request and the question, so a replay or a later version asks nothing new. A later
        report of a known incident is not asked: the crew works the first report's answers.
        """
        service = self.taxonomy.get(request.service_code)
        reply = request.reply
        if service is None or reply is None or request.is_later_report:
            return []
        waiting = unanswered(service.attributes, request.attributes)
        if not waiting or (self.reply_channels is not None and reply.channel not in self.reply_channels):
            return []
        question = waiting[0]
        language = resolve_language(reply.language or request.language)
        choices = ", ".join(v.name_in(language) for v in question.values)
        values = {
            "ticket": request.request_id,
            "question": question.question_in(language),
            "choices": choices,
        }
        text_key = "question_choices" if choices else "question"
        return [_to_resident(request, reply, language, MessageKind.QUESTION, text_key, values, question.code)]

    def _handle(self, contact: RawContact, snap: Snapshot, prepared: ServiceRequest | None = None) -> Outcome:
        stored = snap.request(contact.request_id)
        if stored is not None and (
            contact.contact_id in stored.request.source_contact_ids or contact.contact_id in stored.absorbed
        ):
            return self._replay(stored, contact, snap)
        action = contact.metadata.get(ACTION)
        if action == ACTION_SPLIT:
            return self.split(contact.request_id, snap, at=contact.received_at)
        if action in (ACTION_RECLASSIFY, ACTION_REROUTE, ACTION_MERGE):
            return self.command(contact, snap)
        if action is not None and contact.channel == "operator":
            raise CommandRefused(
                f"unknown operator action {action!r} (known: {', '.join(sorted(OPERATOR_ACTIONS))})"
            )
        if stored is None:
            request = prepared or self.normalizer.normalize(contact)
            return self._place_in_incident(request, snap, contact=contact)
        if stored.closed:
            return self._after_close(stored, contact, snap)
        merged = self.normalizer.normalize(contact, stored.request)
        if snap.incident_of(merged.request_id) is None:
            # It had no point before; the follow-up may have given one ("where is it?" answered).
            return self._place_in_incident(merged, snap, contact=contact, state=stored)
        return self._emit(snap, _as(stored, versioned(merged)))

    def _replay(self, stored: StoredRequest, contact: RawContact, snap: Snapshot) -> Outcome:
        """A contact seen before: the same events again (downstream dedupes on their ids)."""
        if contact.contact_id in stored.absorbed:
            return Outcome()
        out = Outcome(requests=[stored.request])
        incident_id = stored.request.incident
        if incident_id != stored.request.request_id:
            first = snap.request(incident_id)
            incident = snap.incident(incident_id)
            if first is not None:
                out.requests.append(first.request)
            if incident is not None:
                out.messages += self._known_message(stored.request, incident, reopened=False)
        return out

    def _emit(self, snap: Snapshot, *stored: StoredRequest) -> Outcome:
        for s in stored:
            snap.put_request(s)
        return Outcome(requests=[s.request for s in stored])

    def _place_in_incident(
        self,
        request: ServiceRequest,
        snap: Snapshot,
        *,
        contact: RawContact,
        state: StoredRequest | None = None,
    ) -> Outcome:
        stored = state or StoredRequest(request)
        rule = self.rule(request.service_code)
        area = self.areas_for(request)
        if area is None:
            own = versioned(request)
            return self._emit(snap, _as(stored, own))
        # Within the radius first (``match`` looks at nothing further), so the first requests of
        # incidents in the box's corners are neither loaded nor compared.
        candidates = [
            i
            for i in self.near(request, snap, area=area)
            if (head := snap.request(i.incident_id)) is None
            or distinct_problems(request, head.request) is None
        ]
        found = match(request, candidates, rule, self._cooloff_hours)
        if found.kind in ("join", "reopen") and found.incident is not None:
            first = snap.request(found.incident.incident_id)
            if first is not None:
                return self._join(request, stored, found.incident, first, snap, reopen=found.kind == "reopen")
        related = found.incident.incident_id if found.kind == "linked" and found.incident else None
        return self._open_incident(request, stored, snap, related=related)

    def _open_incident(
        self, request: ServiceRequest, stored: StoredRequest, snap: Snapshot, *, related: str | None
    ) -> Outcome:
        assert request.lat is not None and request.long is not None
        own = versioned(
            request.model_copy(
                update={
                    "incident_id": request.request_id,
                    "incident_reports": 1,
                    "incident_updates": (),
                    "related_incident_id": related or request.related_incident_id,
                }
            )
        )
        at = _epoch(request.requested_datetime)
        snap.put_incident(
            Incident(
                request.request_id,
                request.service_code,
                request.lat,
                request.long,
                stored.state,
                at,
                _epoch(request.updated_datetime),
                at if stored.closed else None,
                (request.request_id,),
            )
        )
        return self._emit(snap, _as(stored, own))

    def _join(
        self,
        request: ServiceRequest,
        stored: StoredRequest,
        incident: Incident,
        first: StoredRequest,
        snap: Snapshot,
        *,
        reopen: bool,
    ) -> Outcome:
        members = (*incident.members, request.request_id)
        joined = replace(
            incident,
            members=members,
            last_report_at=max(incident.last_report_at, _epoch(request.requested_datetime)),
            state=State.NEW if reopen else incident.state,
            closed_at=None if reopen else incident.closed_at,
        )
        snap.put_incident(joined)
        report = versioned(
            self._prioritised(
                request.model_copy(
                    update={"incident_id": incident.incident_id, "incident_reports": len(members)}
                )
            )
        )
        head = self._prioritised(_with_report(first.request, report, len(members)), report=report)
        head_state = first
        if reopen:
            head = head.model_copy(
                update={
                    "status": Status.OPEN,
                    "status_notes": f"Reopened: reported again as {request.request_id}",
                }
            )
            head_state = replace(first, state=State.NEW, state_at=_epoch(request.updated_datetime))
        out = self._emit(snap, _as(stored, report), _as(head_state, versioned(head)))
        out.messages += self._known_message(report, joined, reopened=reopen)
        if joined.closed and joined.closed_at is not None:
            # Made before the close but decided after it: it was fixed with the rest.
            out.status.append(self._closing(request.request_id, joined, joined.closed_at))
        return out

    def _closing(self, member: str, incident: Incident, at: float, notes: str | None = None) -> StatusChange:
        return StatusChange(
            event_id=digest("incident-close", member, incident.incident_id, repr(at)).hex()[:32],
            request_id=member,
            state=State.CLOSED,
            notes=notes,
            at=datetime.fromtimestamp(at, UTC),
            source=f"incident:{incident.incident_id}",
        )

    def _after_close(self, stored: StoredRequest, contact: RawContact, snap: Snapshot) -> Outcome:
        """A follow-up to a closed request: "thanks" changes nothing; "still broken" reopens."""
        if not still_broken(contact.text):
            snap.put_request(replace(stored, absorbed=(*stored.absorbed, contact.contact_id)))
            return Outcome()
        excerpt = " ".join(contact.text.split())[:200]
        merged = self.normalizer.normalize(contact, stored.request).model_copy(
            update={"status": Status.OPEN, "status_notes": f"Reopened by the resident: {excerpt}"}
        )
        at = _epoch(contact.received_at)
        out = self._emit(snap, StoredRequest(versioned(merged), State.NEW, at, stored.absorbed))
        incident_id = snap.incident_of(merged.request_id)
        incident = snap.incident(incident_id) if incident_id else None
        if incident is not None and incident.closed:
            snap.put_incident(replace(incident, state=State.NEW, closed_at=None, last_report_at=at))
            first = snap.request(incident.incident_id)
            if first is not None and incident.incident_id != merged.request_id:
                head = first.request.model_copy(
                    update={
                        "status": Status.OPEN,
                        "status_notes": f"Reopened: {merged.request_id} says it is still broken",
                        "updated_datetime": max(first.request.updated_datetime, contact.received_at),
                    }
                )
                out.extend(self._emit(snap, StoredRequest(versioned(head), State.NEW, at, first.absorbed)))
        return out

    # -- operators ------------------------------------------------------------------------------
    def split(self, request_id: str, snap: Snapshot, *, at: datetime) -> Outcome:
        """Take a wrongly merged report out of its incident: it becomes an incident of its own.

        Both requests get a note saying so and ``at`` as their update time, so the departments
        and the case store see a newer version of each (not a replay of an older one).
        """
        stored = snap.request(request_id)
        incident_id = snap.incident_of(request_id)
        if stored is None:
            raise LookupError(f"request {request_id} is not known to the normalizer")
        if incident_id is None or incident_id == request_id:
            return Outcome(requests=[stored.request])  # nothing to split (or a replayed split)
        incident = snap.incident(incident_id)
        out = Outcome()
        if incident is not None:
            notes = f"Report {request_id} was split out of this incident"
            out.extend(self._leave(request_id, incident, snap, at=at, notes=notes))
        alone = self._prioritised(
            stored.request.model_copy(
                update={
                    "incident_id": request_id,
                    "incident_reports": 1,
                    "incident_updates": (),
                    "status_notes": f"Split out of incident {incident_id}: a problem of its own",
                    "updated_datetime": max(stored.request.updated_datetime, at),
                }
            ),
            keep=False,
        )
        if alone.lat is not None and alone.long is not None:
            snap.put_incident(
                Incident(
                    request_id,
                    alone.service_code,
                    alone.lat,
                    alone.long,
                    stored.state,
                    _epoch(alone.requested_datetime),
                    _epoch(alone.updated_datetime),
                    stored.state_at if stored.closed else None,
                    (request_id,),
                )
            )
        out.extend(self._emit(snap, replace(stored, request=versioned(alone))))
        return out

    def command(self, contact: RawContact, snap: Snapshot) -> Outcome:
        """Apply an operator's re-classify, re-route or merge command to the request it is keyed by.

        The command's contact id joins the request's ``source_contact_ids``: the new version gets
        a new event id, and a replayed command is recognised in ``handle`` and re-emits the
        request's current events (same ids) instead of applying twice. What can never apply
        (an unknown ticket or service, a merge with no location) raises ``CommandRefused``: the
        stage dead-letters the command with the reason.
        """
        stored = snap.request(contact.request_id)
        if stored is None:
            raise CommandRefused(f"request {contact.request_id} is not known to the normalizer")
        by = str(contact.metadata.get("by") or "operator")
        action = contact.metadata.get(ACTION)
        if action == ACTION_RECLASSIFY:
            return self.reclassify(stored, contact, snap, by=by)
        if action == ACTION_REROUTE:
            return self.reroute(stored, contact, snap, by=by)
        return self.merge(stored, contact, snap, by=by)

    @staticmethod
    def _decided(stored: StoredRequest, contact: RawContact, **update: object) -> ServiceRequest:
        """The stored request with an operator's ``update``, the command among its contacts."""
        request = stored.request
        return request.model_copy(
            update={
                **update,
                "updated_datetime": max(request.updated_datetime, contact.received_at),
                "source_contact_ids": (*request.source_contact_ids, contact.contact_id),
            }
        )

    def reclassify(self, stored: StoredRequest, contact: RawContact, snap: Snapshot, *, by: str) -> Outcome:
        """The request is of another service: name, certainty, priority and due date follow it.

        It leaves triage (a person classified it) and keeps the service through later follow-ups
        (``decided_by``). A request that was in no incident (it was in triage) is matched now,
        like a new report of that service; one in an incident stays in it (split it if it is
        another problem), and an incident whose first request is re-classified takes the new
        service, so later reports of that service find it.
        """
        code = str(contact.metadata.get("service_code") or "")
        service = self.taxonomy.get(code)
        if service is None:
            raise CommandRefused(f"re-classify {contact.request_id}: service {code!r} is not in the taxonomy")
        old = stored.request
        request = self._decided(
            stored,
            contact,
            service_code=service.code,
            service_name=service.name,
            confidence=1.0,
            triage=False,
            triage_reason=None,
            decided_by=by,
            status_notes=f"Re-classified by {by}: {old.service_name} ({old.service_code})"
            f" -> {service.name} ({service.code})",
        )
        # The new service's own priority and service level: nothing of the old one's holds.
        request = self._prioritised(request, keep=False)
        request = request.model_copy(
            update={"expected_datetime": self.normalizer.expected(request, request.priority)}
        )
        incident_id = snap.incident_of(request.request_id)
        if incident_id is None:
            return self._place_in_incident(request, snap, contact=contact, state=stored)
        incident = snap.incident(incident_id)
        if incident_id == request.request_id and incident is not None and incident.service_code != RETIRED:
            snap.put_incident(replace(incident, service_code=service.code))
        return self._emit(snap, replace(stored, request=versioned(request)))

    def reroute(self, stored: StoredRequest, contact: RawContact, snap: Snapshot, *, by: str) -> Outcome:
        """``department`` is responsible: the router sends it there before its own table.

        The service is not changed (and so neither the incident nor the service level); the
        request leaves triage, and later follow-ups keep the department (``decided_by``).
        """
        department = str(contact.metadata.get("department") or "")
        if not is_slug(department):
            raise CommandRefused(f"re-route {contact.request_id}: not a department: {department!r}")
        request = self._decided(
            stored,
            contact,
            assigned_department=department,
            decided_by=by,
            triage=False,
            triage_reason=None,
            status_notes=f"Re-routed to {department} by {by}",
        )
        return self._emit(snap, replace(stored, request=versioned(request)))

    def merge(self, stored: StoredRequest, contact: RawContact, snap: Snapshot, *, by: str) -> Outcome:
        """The request is the same problem as ``into``: it joins ``into``'s incident as a report.

        The operator decides, so no radius, window or service rule applies. ``into`` may be a
        later report itself: the request joins the incident that report is part of. The request
        leaves the incident it was in (that incident's first request gets a new version without
        it); if it was an incident alone, that incident record is retired (it matches nothing
        again). Its resident is told the problem is known, as for any join; merged into a closed
        incident, it is closed with it (the problem it reports was fixed).

        Refused (``CommandRefused``, dead-lettered): ``into`` unknown to the normalizer; the
        request is the first of an incident that has other reports (merge the other way, or split
        them first); neither request has coordinates and ``into`` is in no incident yet (an
        incident is a point: there is nowhere to put it). Already in that incident: nothing
        changes (a replay, or a second click with a new nonce).
        """
        ticket = stored.request.request_id
        into = parse_ticket(str(contact.metadata.get("into") or ""))
        if into is None:
            raise CommandRefused(f"merge {ticket}: not a ticket number: {contact.metadata.get('into')!r}")
        target = snap.request(into)
        if target is None:
            raise CommandRefused(f"merge {ticket} into {into}: {into} is not known to the normalizer")
        incident_id = snap.incident_of(into) or into
        current = snap.incident_of(ticket)
        if incident_id == ticket or current == incident_id:
            return Outcome(requests=[stored.request])  # already there (or into a report of its own)
        first = snap.request(incident_id)
        if first is None:
            raise CommandRefused(f"merge {ticket} into {into}: incident {incident_id} is not known")
        own = snap.incident(current) if current is not None else None
        if current == ticket and own is not None and len([m for m in own.members if m != ticket]) > 0:
            raise CommandRefused(
                f"merge {ticket} into {into}: {ticket} is the first report of an incident with"
                f" {len(own.members) - 1} other report(s); merge {into} into {ticket}, or split them first"
            )
        incident = snap.incident(incident_id)
        if incident is None:
            point = next(
                (
                    (r.lat, r.long)
                    for r in (first.request, stored.request)
                    if r.lat is not None and r.long is not None
                ),
                None,
            )
            if point is None:
                raise CommandRefused(
                    f"merge {ticket} into {into}: neither request has a location, and an incident needs one"
                )
            head = first.request
            incident = Incident(
                incident_id,
                head.service_code,
                point[0],
                point[1],
                first.state,
                _epoch(head.requested_datetime),
                _epoch(head.updated_datetime),
                first.state_at if first.closed else None,
                (incident_id,),
            )
            snap.put_incident(incident)
        at = contact.received_at
        out = Outcome()
        if current is not None and current == ticket and own is not None:
            # An incident of its own: retired, so no later report joins a ticket that is now a report.
            snap.put_incident(
                replace(own, service_code=RETIRED, members=(), state=State.CLOSED, closed_at=_epoch(at))
            )
        elif current is not None and own is not None:
            out.extend(
                self._leave(
                    ticket,
                    own,
                    snap,
                    at=at,
                    notes=f"Report {ticket} was merged into incident {incident_id} by {by}",
                )
            )
        request = self._decided(stored, contact, status_notes=f"Merged into incident {incident_id} by {by}")
        out.extend(self._join(request, stored, incident, first, snap, reopen=False))
        return out

    def _leave(
        self, request_id: str, incident: Incident, snap: Snapshot, *, at: datetime, notes: str
    ) -> Outcome:
        """``request_id`` no longer a report of ``incident``: its first request without it."""
        members = tuple(m for m in incident.members if m != request_id)
        snap.put_incident(replace(incident, members=members))
        first = snap.request(incident.incident_id)
        if first is None:
            return Outcome()
        head = first.request.model_copy(
            update={
                "incident_reports": max(1, len(members)),
                "incident_updates": tuple(
                    u for u in first.request.incident_updates if u.request_id != request_id
                ),
                "status_notes": notes,
                "updated_datetime": max(first.request.updated_datetime, at),
            }
        )
        return self._emit(snap, replace(first, request=versioned(self._prioritised(head, keep=False))))

    # -- status changes ---------------------------------------------------------------------------
    def handle_status(self, change: StatusChange, snap: Snapshot) -> Outcome:
        """Track a department's status change; closing an incident closes each of its reports."""
        at = _epoch(change.at)
        stored = snap.request(change.request_id)
        if stored is not None and at >= stored.state_at:
            snap.put_request(replace(stored, state=change.state, state_at=at))
        incident = snap.incident(change.request_id)
        out = Outcome()
        if incident is None or at < (incident.closed_at or 0.0):
            return out
        closing = change.state is State.CLOSED
        snap.put_incident(replace(incident, state=change.state, closed_at=at if closing else None))
        if not closing:
            return out
        for member in incident.members:
            if member == incident.incident_id:
                continue
            other = snap.request(member)
            if other is not None and other.closed:
                continue
            notice = self._closing(member, incident, at, change.notes)
            out.status.append(notice.model_copy(update={"department": change.department}))
        return out

    # -- residents ------------------------------------------------------------------------------
    def _known_message(
        self, report: ServiceRequest, incident: Incident, *, reopened: bool
    ) -> list[OutboundMessage]:
        """ "Already reported" to the resident of a later report, on their channel, in their language."""
        reply = report.reply
        if reply is None:
            return []
        if self.reply_channels is not None and reply.channel not in self.reply_channels:
            # A message on a topic no channel reads would never be sent: say so, keep going.
            log.info(
                "resident not told the incident is known: channel not configured",
                request_id=report.request_id,
                channel=reply.channel,
            )
            return []
        language = resolve_language(reply.language or report.language)
        values = {
            "incident": incident.incident_id,
            "ticket": report.request_id,
            "state": render(f"state.{incident.state.value}", language),
        }
        key = "incident_reopened" if reopened else "incident_known"
        kind = MessageKind.INCIDENT
        return [_to_resident(report, reply, language, kind, key, values, incident.incident_id)]


_SUBJECTS = {MessageKind.INCIDENT: "incident_subject", MessageKind.QUESTION: "question_subject"}


def _as(stored: StoredRequest, request: ServiceRequest) -> StoredRequest:
    """``replace(stored, request=request)`` without ``dataclasses.replace``'s walk over the
    fields (about three times the cost of the constructor); the fields are checked below."""
    return StoredRequest(request, stored.state, stored.state_at, stored.absorbed)


assert [f.name for f in fields(StoredRequest)] == ["request", "state", "state_at", "absorbed"]


def _to_resident(
    request: ServiceRequest,
    reply: ReplyVia,
    language: str,
    kind: MessageKind,
    text_key: str,
    values: dict[str, str],
    about: str,
) -> OutboundMessage:
    """A message to the resident of ``request`` on the channel and thread they wrote from. The
    id derives from the request, the kind and what it is ``about`` (the incident, the
    question), so a replay or a later version of the request sends nothing new."""
    return OutboundMessage(
        message_id=outbound_message_id(reply.channel, reply.address, kind.value, request.request_id, about),
        request_id=request.request_id,
        channel=reply.channel,
        to=reply.address,
        thread=reply.thread,
        language=language,
        kind=kind,
        subject=render(_SUBJECTS[kind], language, **values),
        text=render(text_key, language, **values),
        created_at=request.updated_datetime.astimezone(UTC),
    )


def _with_report(head: ServiceRequest, report: ServiceRequest, reports: int) -> ServiceRequest:
    """The incident's first request with one more report: count, details, photos."""
    entry = IncidentReport(
        request_id=report.request_id,
        channel=report.channel,
        reported_at=report.requested_datetime,
        description=report.description[:500],
        media=report.media[:5],
    )
    updates = (*(u for u in head.incident_updates if u.request_id != report.request_id), entry)
    media = head.media + tuple(m for m in report.media if m not in head.media)
    return head.model_copy(
        update={
            "incident_reports": reports,
            "incident_updates": updates[-MAX_INCIDENT_UPDATES:],
            "media": media[:MAX_MEDIA],
            "media_url": head.media_url or (media[0].url if media else None),
            "updated_datetime": max(head.updated_datetime, report.updated_datetime),
        }
    )
