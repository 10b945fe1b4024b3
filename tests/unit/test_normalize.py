from datetime import UTC, datetime, timedelta

import pytest

from intake311.stage import Record
from normalizer.app import normalize_batch
from normalizer.incidents import IncidentDesk
from normalizer.location import extract_address
from normalizer.normalize import Normalizer
from normalizer.state import Snapshot, StateStore, StoredRequest
from schemas import DeadLetter, Location, Media, RawContact
from schemas.contact import ANSWERS, ANSWERS_QUESTION
from schemas.taxonomy import load_taxonomy
from schemas.topics import TOPICS
from tests.conftest import make_contact


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    return Normalizer.from_taxonomy(load_taxonomy())


def test_pothole_report_becomes_a_request(normalizer: Normalizer) -> None:
    contact = make_contact("There is a pothole outside 12 Elm Street")
    request = normalizer.normalize(contact)
    assert request.request_id == contact.request_id
    assert request.service_code == "pothole"
    assert request.address_string == "12 Elm Street"
    assert request.status == "open"
    assert request.requested_datetime == contact.received_at
    assert request.source_contact_ids == (contact.contact_id,)
    service = load_taxonomy().get("pothole")
    assert service is not None and service.sla_hours
    assert request.expected_datetime == contact.received_at + timedelta(hours=service.sla_hours)
    assert not request.triage


def test_replay_gives_the_same_event(normalizer: Normalizer) -> None:
    contact = make_contact("Graffiti on the wall at 5 Chapel Street")
    assert normalizer.normalize(contact) == normalizer.normalize(contact)


def test_resident_choice_beats_classifier(normalizer: Normalizer) -> None:
    request = normalizer.normalize(make_contact("it is broken", service_code="street-light"))
    assert request.service_code == "street-light"
    assert request.confidence == 1.0


def test_unknown_service_code_falls_back_to_classifier(normalizer: Normalizer) -> None:
    request = normalizer.normalize(make_contact("pothole on Elm Street", service_code="nope"))
    assert request.service_code == "pothole"


def test_vague_text_goes_to_triage(normalizer: Normalizer) -> None:
    request = normalizer.normalize(make_contact("hello can someone call me back"))
    assert request.triage
    assert request.confidence < load_taxonomy().triage_threshold


def test_given_location_and_media_are_kept(normalizer: Normalizer) -> None:
    contact = make_contact(
        "streetlight is out",
        location=Location(lat=41.31, long=-72.92),
        media=(Media(url="https://example.org/p.jpg", content_type="image/jpeg"),),
    )
    request = normalizer.normalize(contact)
    assert (request.lat, request.long) == (41.31, -72.92)
    assert request.media_url == "https://example.org/p.jpg"


def test_followup_adds_location_to_the_same_request(normalizer: Normalizer) -> None:
    first = make_contact("big pothole, my tire blew", provider_id="a", channel="sms")
    opened = normalizer.normalize(first)
    assert opened.address_string is None
    answer = RawContact.model_validate(
        {
            **make_contact("corner of Oak St and 5th Ave", provider_id="b", channel="sms").model_dump(),
            "request_id": first.request_id,
            "continues": True,
            "received_at": first.received_at + timedelta(minutes=2),
        }
    )
    merged = normalizer.normalize(answer, opened)
    assert merged.request_id == first.request_id
    assert merged.address_string == "Oak St and 5th Ave"
    assert merged.service_code == "pothole"
    assert merged.source_contact_ids == (first.contact_id, answer.contact_id)
    assert merged.requested_datetime == first.received_at
    assert merged.updated_datetime == answer.received_at
    assert merged.event_id != opened.event_id
    assert normalizer.normalize(answer, merged) == merged  # replay of the answer


def test_an_answer_to_the_services_question_does_not_classify_the_request_again(
    normalizer: Normalizer,
) -> None:
    """The reply to "which collection was missed?" answers it; its words ("a fallen tree limb
    and leaves") are not evidence about which problem it is, as an ordinary follow-up's are."""
    first = make_contact("missed pickup at 200 Orange St", provider_id="q1", channel="sms")
    opened = normalizer.normalize(first)

    def follow_up(metadata: dict[str, str]) -> RawContact:
        return RawContact.model_validate(
            {
                **make_contact("a fallen tree limb and leaves", provider_id="q2", channel="sms").model_dump(),
                "request_id": first.request_id,
                "continues": True,
                "received_at": first.received_at + timedelta(minutes=2),
                "metadata": metadata,
            }
        )

    answered = normalizer.normalize(follow_up({ANSWERS: ANSWERS_QUESTION}), opened)
    assert (answered.service_code, answered.confidence) == (opened.service_code, opened.confidence)
    assert answered.attributes == {"stream": "yard-waste"}
    assert "a fallen tree limb" in answered.description
    plain = normalizer.normalize(follow_up({}), opened)  # not an answer: classified again
    assert plain.confidence != opened.confidence


def test_batch_dead_letters_bad_records_and_keeps_going(normalizer: Normalizer, tmp_path) -> None:
    good = make_contact("Missed trash pickup on 4 Elm Street")
    records = [
        Record(value=b"{not json", topic="intake311.contacts.web", partition=0, offset=7, key=b"x"),
        Record(value=b'{"contact_id": "web:1"}', topic="intake311.contacts.web", partition=0, offset=8),
        Record(
            value=good.model_dump_json().encode(),
            topic="intake311.contacts.web",
            offset=9,
            key=good.request_id.encode(),
        ),
    ]
    out = normalize_batch(records, IncidentDesk(normalizer), Snapshot(), TOPICS)
    assert [o.topic for o in out] == [TOPICS.deadletter, TOPICS.deadletter, TOPICS.requests]
    letter = DeadLetter.model_validate_json(out[0].value)
    assert letter.original == b"{not json" and letter.offset == 7 and letter.stage == "normalizer"
    assert "Invalid JSON" in letter.reason
    second = DeadLetter.model_validate_json(out[1].value)
    assert "request_id" in second.reason and "received_at" in second.reason
    assert out[2].key == good.request_id


def test_state_roundtrip(normalizer: Normalizer, tmp_path) -> None:
    store = StateStore.sqlite(tmp_path / "s.sqlite3")
    request = normalizer.normalize(make_contact())
    store.run(lambda snap: snap.put_request(StoredRequest(request)))
    assert store.run(lambda snap: snap.loader.requests([request.request_id, "NONE-0000"])) == {
        request.request_id: StoredRequest(request)
    }
    store.close()
    again = StateStore.sqlite(tmp_path / "s.sqlite3")
    assert again.request(request.request_id) == StoredRequest(request)
    again.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There is a pothole outside 12 Elm Street", "12 Elm Street"),
        ("Streetlight out at the corner of Oak St and 5th Ave please", "Oak St and 5th Ave"),
        ("graffiti near Chapel St and College St", "Chapel St and College St"),
        ("Trash not picked up at 45B Orange Ave. since Monday", "45B Orange Ave"),
        ("big hole in road", None),
        ("I called and nobody came", None),
    ],
)
def test_extract_address(text: str, expected: str | None) -> None:
    assert extract_address(text) == expected


def test_contact_rejects_naive_time_and_bad_ticket() -> None:
    with pytest.raises(ValueError):
        make_contact(received_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        make_contact(request_id="nope")
    assert make_contact(received_at=datetime(2026, 1, 1, tzinfo=UTC)).received_at.tzinfo


class _FixedPlace:
    """A locator that puts every contact at one place (the geocoder itself is tested apart)."""

    def __init__(self, place: object) -> None:
        self.found = place

    def place(self, **_: object) -> object:
        return self.found


def test_a_point_outside_the_city_goes_to_triage_with_the_reason() -> None:
    from normalizer.geo import Place
    from schemas.request import Precision

    outside = Place(41.2, -73.1, "12 Main St", Precision.ADDRESS, {}, True)
    normalizer = Normalizer.from_taxonomy(load_taxonomy(), _FixedPlace(outside))
    request = normalizer.normalize(make_contact("There is a pothole outside 12 Main Street"))
    assert request.service_code == "pothole" and request.triage
    assert request.triage_reason == "outside the city boundary"
    inside = Place(41.307, -72.926, "45 Elm St", Precision.INTERPOLATED, {"ward": "Ward 7"}, False)
    placed = Normalizer.from_taxonomy(load_taxonomy(), _FixedPlace(inside)).normalize(
        make_contact("There is a pothole outside 45 Elm Street")
    )
    assert not placed.triage and placed.triage_reason is None
    assert placed.districts == {"ward": "Ward 7"} and placed.location_precision is Precision.INTERPOLATED


def test_emergency_language_sets_priority(normalizer: Normalizer) -> None:
    from schemas.request import Priority

    gas = normalizer.normalize(make_contact("there is a gas leak smell and someone is bleeding"))
    assert gas.priority is Priority.EMERGENCY and gas.emergency in ("gas", "injury")
    es = normalizer.normalize(make_contact("huele a gas en el edificio", provider_id="es1"))
    assert es.priority is Priority.EMERGENCY and es.emergency == "gas"
    plain = normalizer.normalize(make_contact("the gas station on Whalley has graffiti", provider_id="p1"))
    assert plain.priority is Priority.LOW and plain.emergency is None  # graffiti's default


def test_a_contact_without_a_language_is_read_in_its_own_language(normalizer: Normalizer) -> None:
    """An Open311 client or a plugin may send no language: the normalizer's detector decides."""
    request = normalizer.normalize(make_contact("no han recogido la basura en toda la semana", language=None))
    assert request.language == "es"
    assert request.service_code == "missed-pickup"
    english = normalizer.normalize(make_contact("the trash was not picked up this week", language=None))
    assert english.language == "en" and english.service_code == "missed-pickup"


def test_the_channels_language_is_kept(normalizer: Normalizer) -> None:
    request = normalizer.normalize(make_contact("123 Elm St", language="es"))
    assert request.language == "es"
