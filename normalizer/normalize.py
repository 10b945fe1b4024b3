"""``normalize(RawContact) -> ServiceRequest``: the one place a contact becomes a request.

Pure: no Kafka, no clock, no randomness. Everything in the output derives from the contact
(and, for a contact that continues a request, from that request's previous version), so a
replayed contact yields the same event with the same ``event_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from normalizer.classify import Classification, Classifier
from normalizer.location import extract_address
from schemas.contact import Location, Media, RawContact
from schemas.ids import event_id_for
from schemas.request import ServiceRequest
from schemas.taxonomy import Taxonomy

MAX_DESCRIPTION = 4000


@dataclass(frozen=True)
class Normalizer:
    """Holds the taxonomy and its classifier (built once, reused for every contact)."""

    taxonomy: Taxonomy
    classifier: Classifier

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy) -> Normalizer:
        return cls(taxonomy, Classifier(taxonomy))

    def classify(self, contact: RawContact, text: str) -> Classification:
        """The resident's own choice wins; otherwise the classifier decides from the text."""
        if contact.service_code and self.taxonomy.get(contact.service_code):
            return Classification(contact.service_code, 1.0)
        return self.classifier.classify(text)

    def normalize(self, contact: RawContact, previous: ServiceRequest | None = None) -> ServiceRequest:
        """The request this contact opens, or ``previous`` updated with what the contact adds."""
        if previous is not None and contact.contact_id in previous.source_contact_ids:
            return previous  # a replay: nothing new
        if previous is not None and previous.request_id == contact.request_id:
            return self._merge(previous, contact)
        return self._open(contact)

    def _open(self, contact: RawContact) -> ServiceRequest:
        text = contact.text.strip()
        result = self.classify(contact, text)
        location = _location(contact, text)
        return self._build(
            contact,
            classification=result,
            description=text[:MAX_DESCRIPTION],
            location=location,
            media=contact.media,
            contact_ids=(contact.contact_id,),
        )

    def _merge(self, previous: ServiceRequest, contact: RawContact) -> ServiceRequest:
        """A follow-up (an answer to "where is it?", a reply email): add, never overwrite."""
        text = contact.text.strip()
        description = "\n".join(p for p in (previous.description, text) if p)[:MAX_DESCRIPTION]
        if previous.confidence >= 1.0:
            result = Classification(previous.service_code, previous.confidence)
        else:
            result = self.classify(contact, description)
        had_location = previous.lat is not None or previous.address_string
        if had_location:
            location = Location(lat=previous.lat, long=previous.long, address=previous.address_string)
        else:
            # The follow-up is often just the address: take it whole if nothing looks like one.
            location = _location(contact, text) or (Location(address=text[:500]) if text else None)
        media = previous.media + tuple(m for m in contact.media if m not in previous.media)
        return self._build(
            contact,
            classification=result,
            description=description,
            location=location,
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
        location: Location | None,
        media: tuple[Media, ...],
        contact_ids: tuple[str, ...],
        requested: object = None,
        base: ServiceRequest | None = None,
    ) -> ServiceRequest:
        service = self.taxonomy.get(classification.service_code) or self.taxonomy.get(
            self.taxonomy.fallback_code
        )
        assert service is not None  # the taxonomy validates that the fallback exists
        requested_at = requested or contact.received_at
        expected = requested_at + timedelta(hours=service.sla_hours) if service.sla_hours else None
        return ServiceRequest(
            request_id=contact.request_id,
            event_id=event_id_for(contact.request_id, contact_ids),
            service_code=service.code,
            service_name=service.name,
            description=description,
            lat=location.lat if location else None,
            long=location.long if location else None,
            address_string=location.address if location else None,
            media_url=media[0].url if media else None,
            media=media,
            requested_datetime=requested_at,
            updated_datetime=contact.received_at,
            expected_datetime=expected,
            channel=base.channel if base else contact.channel,
            reporter=base.reporter if base else contact.sender,
            reply=(base.reply if base else None) or contact.reply,
            language=contact.language or (base.language if base else "en"),
            confidence=round(classification.confidence, 4),
            triage=classification.needs_triage(self.taxonomy.triage_threshold),
            source_contact_ids=contact_ids,
        )


def _location(contact: RawContact, text: str) -> Location | None:
    """The resident's own location if given, else an address found in the text."""
    given = contact.location
    if given is not None and not given.is_empty and (given.address or given.lat is not None):
        return given
    found = extract_address(text)
    return Location(address=found) if found else None
