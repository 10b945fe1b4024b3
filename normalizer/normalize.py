"""``normalize(RawContact) -> ServiceRequest``: the one place a contact becomes a request.

Pure: no Kafka, no clock, no randomness. Everything in the output derives from the contact
(and, for a contact that continues a request, from that request's previous version), so a
replayed contact yields the same event with the same ``event_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from normalizer.classify import Classification, Classifier
from normalizer.geo.geo import Place
from normalizer.location import extract_address
from normalizer.priority import PriorityRules, priority_of, raise_to
from schemas.attributes import Answers, answers_from_text, unanswered
from schemas.contact import ANSWERS, ANSWERS_QUESTION, Media, RawContact
from schemas.emergency import EmergencyRules, default_rules
from schemas.ids import digest, event_id_for
from schemas.language import LanguageDetector, detector
from schemas.request import Precision, Priority, ServiceRequest, Status
from schemas.taxonomy import Service, Taxonomy

MAX_DESCRIPTION = 4000
OUTSIDE_CITY = "outside the city boundary"


class TextClassifier(Protocol):
    """``normalizer.classify.Classifier`` (taxonomy only) or ``normalizer.learned.BlendedClassifier``."""

    def classify(self, text: str, language: str = "en") -> Classification: ...


class Locator(Protocol):
    """``normalizer.geo.Geo``: the channel's coordinates, its address field, or the free text -> a place."""

    def place(self, *, text: str, address: str | None, lat: float | None, long: float | None) -> Place: ...


class TextOnly:
    """The locator without an address file: coordinates as given, an address found in the text."""

    def place(self, *, text: str, address: str | None, lat: float | None, long: float | None) -> Place:
        if lat is not None and long is not None:
            return Place(lat, long, address, Precision.GIVEN)
        return Place(None, None, address or extract_address(text), None)


def answers(service: Service, description: str, contact: RawContact, base: ServiceRequest | None) -> Answers:
    """The answers to ``service``'s questions: what the resident gave (a form's ``attribute[code]``,
    on this contact or an earlier version of the request), then what the text says unambiguously
    (schemas/attributes.py). Answers to another service's questions (a request re-classified
    since) are dropped: they answer questions this service does not ask."""
    if not service.attributes:
        return {}
    asked = {a.code for a in service.attributes}
    given: Answers = dict(base.attributes) if base is not None else {}
    given.update(contact.attributes)
    kept = {code: answer for code, answer in given.items() if code in asked}
    read = answers_from_text([a for a in service.attributes if a.code not in kept], description)
    if base is not None and base.service_code == service.code:
        # What we asked the resident (IncidentDesk.questions): this text may be the answer, and
        # in an answer a value's name counts too ("Trash", "No").
        waiting = [
            a for a in unanswered(service.attributes, base.attributes) if a.code not in {**kept, **read}
        ]
        read.update(answers_from_text(waiting, contact.text, reply=True))
    return {**kept, **read}


def versioned(request: ServiceRequest) -> ServiceRequest:
    """``request`` with the event id of exactly this version.

    The id derives from the contacts and from what incidents and departments changed (the
    incident it belongs to, its later reports, a reopening, an operator's decision), so a replay
    yields the same id and a real change a new one. A plain request keeps the id it always had.

    An operator's decision (``decided_by``: a re-classification or re-route) adds the service and
    the assigned department to the revision; only then, so every id minted before those fields
    existed is still the id a replay mints now.
    """
    decided = request.decided_by is not None or request.assigned_department is not None
    plain = (
        request.incident == request.request_id
        and not request.incident_updates
        and request.incident_reports == 1
        and request.status == Status.OPEN
        and request.status_notes is None
        and not decided
    )
    operator = (
        (request.service_code, request.assigned_department or "", request.decided_by or "") if decided else ()
    )
    revision = (
        ""
        if plain
        else digest(
            request.incident,
            str(request.incident_reports),
            *(u.request_id for u in request.incident_updates),
            request.status.value,
            request.status_notes or "",
            *operator,
        ).hex()[:16]
    )
    event_id = event_id_for(request.request_id, request.source_contact_ids, revision)
    return request if event_id == request.event_id else request.model_copy(update={"event_id": event_id})


@dataclass(frozen=True)
class Normalizer:
    """Holds the taxonomy, its classifier and the locator (built once, reused for every contact)."""

    taxonomy: Taxonomy
    classifier: TextClassifier
    locator: Locator = field(default_factory=TextOnly)
    emergencies: EmergencyRules = field(default_factory=default_rules)
    priorities: PriorityRules | None = None  # None: the taxonomy's cues and escalation
    # For a contact whose channel set no language (an Open311 client, a plugin): the city's.
    languages: LanguageDetector = field(default_factory=detector)
    _services: dict[str, Service] = field(init=False, repr=False, compare=False, default_factory=dict)
    _sla: dict[tuple[str, Priority], float | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.priorities is None:
            object.__setattr__(self, "priorities", PriorityRules.from_taxonomy(self.taxonomy))
        # ``Taxonomy.get`` and ``sla_hours`` reach the services through pydantic's private
        # attribute lookup (a few µs a call, three calls a contact): the same answers, kept here.
        self._services.update((s.code, s) for s in self.taxonomy.services)

    def _service(self, code: str | None) -> Service | None:
        """``taxonomy.get(code)``."""
        return self._services.get(code) if code else None

    def priority(self, request: ServiceRequest, *, reports: int | None = None) -> tuple[Priority, str]:
        """``priority_of`` for a request as it stands (its text, service, emergency, reports)."""
        assert self.priorities is not None
        service = self._service(request.service_code) or self._service(self.taxonomy.fallback_code)
        assert service is not None
        return priority_of(
            request.description,
            service,
            emergency=request.emergency,
            incident_reports=request.incident_reports if reports is None else reports,
            rules=self.priorities,
        )

    def expected(self, request: ServiceRequest, priority: Priority) -> datetime | None:
        """When a request of this service at ``priority`` is due (None: no service level)."""
        return self._due(request.service_code, request.requested_datetime, priority)

    def _due(self, service_code: str, requested_at: datetime, priority: Priority) -> datetime | None:
        sla = self._sla
        key = (service_code, priority)
        if key not in sla:
            sla[key] = self.taxonomy.sla_hours(service_code, priority)
        hours = sla[key]
        return requested_at + timedelta(hours=hours) if hours else None

    @classmethod
    def from_taxonomy(
        cls,
        taxonomy: Taxonomy,
        locator: Locator | None = None,
        model_file: Path | None = None,
        *,
        emergencies: EmergencyRules | None = None,
        languages: LanguageDetector | None = None,
    ) -> Normalizer:
        """The taxonomy scorer alone (a city with no history), or blended with a learned model.

        ``emergencies``: the city's rules (``rules_for(settings.emergency_rules_file)``); None: packaged.
        """
        classifier: TextClassifier = Classifier(taxonomy)
        if model_file is not None:
            from normalizer.learned import BlendedClassifier, LearnedModel

            classifier = BlendedClassifier(Classifier(taxonomy), LearnedModel.load(model_file, taxonomy))
        return cls(
            taxonomy,
            classifier,
            locator or TextOnly(),
            emergencies=emergencies or default_rules(),
            languages=languages or detector(),
        )

    def language_of(self, contact: RawContact, text: str) -> str:
        """The channel's language for the contact, else the detector's reading of its text."""
        return contact.language or self.languages.choose(text)

    def classify(self, contact: RawContact, text: str, language: str | None = None) -> Classification:
        """The resident's own choice wins; otherwise the classifier decides from the text
        (read in ``language``, else in ``language_of`` the contact)."""
        if contact.service_code and self._service(contact.service_code):
            return Classification(contact.service_code, 1.0)
        return self.classifier.classify(text, language or self.language_of(contact, text))

    def normalize(self, contact: RawContact, previous: ServiceRequest | None = None) -> ServiceRequest:
        """The request this contact opens, or ``previous`` updated with what the contact adds."""
        if previous is not None and contact.contact_id in previous.source_contact_ids:
            return previous  # a replay: nothing new
        if previous is not None and previous.request_id == contact.request_id:
            return self._merge(previous, contact)
        return self._open(contact)

    def _open(self, contact: RawContact) -> ServiceRequest:
        text = contact.text.strip()
        # Detected once: the language detector was most of normalize()'s time, and it ran twice
        # (for the classifier and for the request's language) on the same text.
        language = self.language_of(contact, text)
        result = self.classify(contact, text, language)
        return self._build(
            contact,
            classification=result,
            language=language,
            description=text[:MAX_DESCRIPTION],
            place=self._place(contact, text),
            media=contact.media,
            contact_ids=(contact.contact_id,),
        )

    def _place(self, contact: RawContact, text: str, *, whole_answer: bool = False) -> Place:
        given = contact.location
        place = self.locator.place(
            text=text,
            address=given.address if given else None,
            lat=given.lat if given else None,
            long=given.long if given else None,
        )
        if whole_answer and place.address is None and place.lat is None and text:
            # A follow-up is often just the address ("45 Elm"): keep it whole for a person.
            return Place(None, None, text[:500], None)
        return place

    def _merge(self, previous: ServiceRequest, contact: RawContact) -> ServiceRequest:
        """A follow-up (an answer to "where is it?", a reply email): add, never overwrite.

        A service the resident picked, or one an operator decided (``decided_by``), is kept: the
        follow-up's words do not classify the request again. Nor do the words of an answer to
        the service's own question (``ANSWERS_QUESTION``): "Garbage" answers which collection
        was missed; it does not say the problem is another one.
        """
        text = contact.text.strip()
        description = "\n".join(p for p in (previous.description, text) if p)[:MAX_DESCRIPTION]
        answering = contact.metadata.get(ANSWERS) == ANSWERS_QUESTION
        if previous.confidence >= 1.0 or previous.decided_by is not None or answering:
            result = Classification(previous.service_code, previous.confidence)
        else:
            result = self.classify(contact, description)
        kept = Place(
            previous.lat,
            previous.long,
            previous.address_string,
            previous.location_precision,
            dict(previous.districts),
            previous.triage_reason == OUTSIDE_CITY,
        )
        if previous.lat is not None:
            place = kept
        else:
            # No point yet: the follow-up is usually the answer to "where is it?".
            found = self._place(contact, text, whole_answer=not previous.address_string)
            place = found if found.lat is not None or not previous.address_string else kept
        media = previous.media + tuple(m for m in contact.media if m not in previous.media)
        return self._build(
            contact,
            classification=result,
            description=description,
            place=place,
            media=media,
            contact_ids=(*previous.source_contact_ids, contact.contact_id),
            requested=previous.requested_datetime,
            base=previous,
        )

    def _build(
        self,
        contact: RawContact,
        *,
        classification: Classification,
        description: str,
        place: Place,
        media: tuple[Media, ...],
        contact_ids: tuple[str, ...],
        requested: datetime | None = None,
        base: ServiceRequest | None = None,
        language: str | None = None,
    ) -> ServiceRequest:
        service = self._service(classification.service_code) or self._service(self.taxonomy.fallback_code)
        assert service is not None  # the taxonomy validates that the fallback exists
        requested_at = requested or contact.received_at
        triage = classification.needs_triage(self.taxonomy.triage_threshold)
        danger = self.emergencies.detect(description)
        reports = base.incident_reports if base else 1
        assert self.priorities is not None
        priority, why = priority_of(
            description, service, emergency=danger, incident_reports=reports, rules=self.priorities
        )
        if base is not None:
            # A follow-up adds, never takes away: what raised the request (a later report's cue,
            # an escalation) still holds.
            priority, why = raise_to((priority, why), (base.priority, base.priority_reason or why))
        expected = self._due(service.code, requested_at, priority)
        reason = None
        if base is not None and base.decided_by is not None:
            triage = False  # a person already decided what it is or who handles it
        elif place.outside_city:
            triage, reason = True, OUTSIDE_CITY
        elif triage:
            reason = "service unclear" if classification.confidence > 0 else "no service recognised"
        return ServiceRequest(
            attributes=answers(service, description, contact, base),
            request_id=contact.request_id,
            event_id=event_id_for(contact.request_id, contact_ids),
            service_code=service.code,
            service_name=service.name,
            description=description,
            lat=place.lat,
            long=place.long,
            address_string=place.address,
            location_precision=place.precision,
            districts=place.districts,
            media_url=media[0].url if media else None,
            media=media,
            requested_datetime=requested_at,
            updated_datetime=contact.received_at,
            expected_datetime=expected,
            channel=base.channel if base else contact.channel,
            reporter=base.reporter if base else contact.sender,
            reply=(base.reply if base else None) or contact.reply,
            language=contact.language
            or (base.language if base else (language or self.languages.choose(description))),
            confidence=round(classification.confidence, 4),
            triage=triage,
            triage_reason=reason,
            priority=priority,
            priority_reason=why,
            emergency=danger.kind if danger else None,
            incident_id=base.incident_id if base else contact.request_id,
            incident_reports=base.incident_reports if base else 1,
            incident_updates=base.incident_updates if base else (),
            related_incident_id=base.related_incident_id if base else None,
            source_contact_ids=contact_ids,
            assigned_department=base.assigned_department if base else None,
            decided_by=base.decided_by if base else None,
        )
