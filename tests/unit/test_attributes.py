"""Service questions (schemas/attributes.py): the taxonomy's shape, answers checked, answers read
from free text, and the answers travelling on contacts and requests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.attributes import (
    AnswersInvalid,
    Datatype,
    ServiceAttribute,
    answers_from_text,
    check_attributes,
    form_answers,
    unanswered,
    validate_answers,
)
from schemas.contact import RawContact
from schemas.request import ServiceRequest
from schemas.taxonomy import Service, load_taxonomy


def attribute(code: str, datatype: str = "string", **extra: object) -> ServiceAttribute:
    return ServiceAttribute.model_validate(
        {"code": code, "datatype": datatype, "description": f"{code}?", **extra}
    )


STREAM = attribute(
    "stream",
    "singlevaluelist",
    required=True,
    values=[
        {"key": "trash", "name": "Trash", "words": ["trash", "garbage"]},
        {"key": "recycling", "name": "Recycling", "words": ["Recycling ", "recycle"]},
        {"key": "public-can", "name": "Public can", "words": ["public trash can"]},
    ],
)
ITEMS = attribute(
    "items",
    "multivaluelist",
    values=[
        {"key": "couch", "name": "Couch", "words": ["couch", "sofa"]},
        {"key": "tires", "name": "Tires", "words": ["tires", "tyres"]},
        {"key": "mattress", "name": "Mattress"},
    ],
)
QUESTIONS = (
    STREAM,
    ITEMS,
    attribute("count", "number"),
    attribute("seen_at", "datetime"),
    attribute("plate", "string"),
    attribute("notes", "text"),
    attribute("info", "text", variable=False),
)


def test_the_spec_record_of_an_attribute() -> None:
    assert STREAM.record() == {
        "variable": True,
        "code": "stream",
        "datatype": "singlevaluelist",
        "required": True,
        "datatype_description": "",
        "order": 0,
        "description": "stream?",
        "values": [
            {"key": "trash", "name": "Trash"},
            {"key": "recycling", "name": "Recycling"},
            {"key": "public-can", "name": "Public can"},
        ],
    }
    assert STREAM.values[1].words == ("recycling", "recycle")  # lowercased, spaces folded


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"code": "x", "datatype": "singlevaluelist"}, "needs values"),
        ({"code": "x", "datatype": "string", "values": [{"key": "a", "name": "A"}]}, "only list"),
        ({"code": "x", "datatype": "singlevaluelist", "values": [{"key": "a", "name": "A"}] * 2}, "repeat"),
        ({"code": "x y", "datatype": "string"}, "letters, digits"),
        ({"code": "x", "datatype": "colour"}, "datatype"),
        ({"code": "x", "datatype": "text", "required": True, "variable": False}, "cannot be required"),
    ],
)
def test_a_question_that_cannot_be_answered_is_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ServiceAttribute.model_validate({"description": "?", **fields})


def test_codes_are_unique_and_questions_sorted_by_order() -> None:
    with pytest.raises(ValueError, match="repeat: a"):
        check_attributes([attribute("a"), attribute("a")])
    assert [a.code for a in check_attributes([attribute("b", order=2), attribute("a", order=1)])] == [
        "a",
        "b",
    ]
    with pytest.raises(ValidationError, match="repeat"):
        Service(code="s", name="S", department="d", attributes=(attribute("a"), attribute("a")))


def test_valid_answers_of_every_datatype() -> None:
    answers = validate_answers(
        QUESTIONS,
        {
            "stream": ["recycling"],
            "items": ["couch", "tires,couch"],
            "count": [" 3 "],
            "seen_at": ["2026-03-01T08:00:00 05:00"],  # a form's "+05:00" after URL decoding
            "plate": ["AB 123"],
            "notes": ["left by the hydrant"],
        },
    )
    assert answers == {
        "stream": "recycling",
        "items": ("couch", "tires"),
        "count": "3",
        "seen_at": "2026-03-01T08:00:00 05:00",
        "plate": "AB 123",
        "notes": "left by the hydrant",
    }


def test_every_problem_is_listed() -> None:
    with pytest.raises(AnswersInvalid) as caught:
        validate_answers(
            QUESTIONS,
            {
                "items": ["couch,piano"],
                "count": ["lots"],
                "seen_at": ["yesterday"],
                "plate": ["x" * 201],
                "notes": ["a", "b"],
                "info": ["answered anyway"],
                "colour": ["red"],
            },
        )
    problems = caught.value.descriptions
    assert any("attribute[stream] is required" in p for p in problems)
    assert any("'piano' is not one of couch, mattress, tires" in p for p in problems)
    assert any("attribute[count]" in p and "not a number" in p for p in problems)
    assert any("attribute[seen_at]" in p and "ISO 8601" in p for p in problems)
    assert any("attribute[plate]" in p and "200" in p for p in problems)
    assert any("attribute[notes]: one value" in p for p in problems)
    assert any("attribute[info]: this service does not ask it" in p for p in problems)
    assert any("attribute[colour]: this service does not ask it" in p for p in problems)
    assert len(problems) == 8
    for bad in ("nan", "inf"):
        with pytest.raises(AnswersInvalid, match="not a number"):
            validate_answers(QUESTIONS, {"stream": ["trash"], "count": [bad]})
    with pytest.raises(AnswersInvalid, match="NUL"):
        validate_answers(QUESTIONS, {"stream": ["trash"], "notes": ["a\x00b"]})


def test_required_can_wait_for_a_channel_that_asks() -> None:
    assert validate_answers(QUESTIONS, {}, require=False) == {}
    assert [a.code for a in unanswered(QUESTIONS, {})] == ["stream"]
    assert unanswered(QUESTIONS, {"stream": "trash"}) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The recycling was not picked up on Elm Street", {"stream": "recycling"}),
        ("GARBAGE   not collected", {"stream": "trash"}),
        ("Public trash can on the corner is overflowing", {"stream": "public-can"}),
        ("trash and recycling both missed", {}),  # ambiguous: not guessed
        ("nothing was collected this week", {}),
        ("the recycler skipped us", {}),  # whole words only
        ("a couch, old tyres and a sofa on the curb", {"items": ("couch", "tires")}),
    ],
)
def test_answers_from_text(text: str, expected: dict[str, object]) -> None:
    assert answers_from_text(QUESTIONS, text) == expected


def test_the_packaged_taxonomy_asks_what_a_crew_needs() -> None:
    taxonomy = load_taxonomy()
    pickup = taxonomy.get("missed-pickup")
    assert pickup is not None and [a.code for a in unanswered(pickup.attributes, {})] == ["stream"]
    assert answers_from_text(pickup.attributes, "No recogieron el reciclaje") == {"stream": "recycling"}
    pothole = taxonomy.get("pothole")
    assert pothole is not None and pothole.attributes[0].datatype is Datatype.SINGLEVALUELIST
    assert answers_from_text(pothole.attributes, "pothole in the bike lane on Chapel") == {"bike-lane": "yes"}


def test_answers_travel_on_the_contact_and_the_request_json() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    contact = RawContact(
        contact_id="web:abc",
        request_id="K7M4-QPXA",
        channel="web",
        received_at=now,
        attributes={"stream": "trash", "items": ("couch", "tires")},
    )
    again = RawContact.model_validate_json(contact.model_dump_json())
    assert again.attributes == {"stream": "trash", "items": ("couch", "tires")}
    request = ServiceRequest(
        request_id="K7M4-QPXA",
        event_id="e",
        service_code="missed-pickup",
        service_name="Missed pickup",
        requested_datetime=now,
        updated_datetime=now,
        channel="web",
        confidence=1.0,
        source_contact_ids=("web:abc",),
        attributes=again.attributes,
    )
    assert ServiceRequest.model_validate_json(request.model_dump_json()).attributes == again.attributes
    with pytest.raises(ValidationError):
        RawContact(
            contact_id="web:abc",
            request_id="K7M4-QPXA",
            channel="web",
            received_at=now,
            attributes={f"a{i}": "x" for i in range(51)},
        )


# -- the normalizer fills and keeps answers ---------------------------------------------------------


def _contact(text: str, *, contact_id: str = "sms:SM1", **extra: object) -> RawContact:
    return RawContact.model_validate(
        {
            "contact_id": contact_id,
            "request_id": "K7M4-QPXA",
            "channel": "sms",
            "received_at": datetime(2026, 3, 1, 9, tzinfo=UTC),
            "text": text,
            **extra,
        }
    )


def test_the_normalizer_reads_answers_from_the_text_and_keeps_given_ones() -> None:
    from normalizer.normalize import Normalizer

    normalizer = Normalizer.from_taxonomy(load_taxonomy())
    first = normalizer.normalize(_contact("The recycling was not picked up at 12 Elm Street"))
    assert first.service_code == "missed-pickup" and first.attributes == {"stream": "recycling"}
    # An app's answer wins over the words; an answer to a question the service does not ask goes.
    given = normalizer.normalize(
        _contact(
            "Recycling not picked up at 12 Elm Street",
            service_code="missed-pickup",
            attributes={"stream": "yard-waste", "colour": "blue"},
        )
    )
    assert given.attributes == {"stream": "yard-waste"}
    # Left open by the first text, answered by the next one.
    open_ = normalizer.normalize(
        _contact("Nothing was collected on Elm Street this week", service_code="missed-pickup")
    )
    assert open_.attributes == {}
    later = normalizer.normalize(
        _contact("it was the garbage", contact_id="sms:SM2", continues=True, service_code="missed-pickup"),
        previous=open_,
    )
    assert later.attributes == {"stream": "trash"}
    # A service that asks nothing carries no answers.
    assert normalizer.normalize(_contact("Loud music from 5 Oak Street all night")).attributes == {}


def test_form_answers_read_the_specs_field_names() -> None:
    fields = [
        ("api_key", "k"),
        ("attribute[stream]", "trash"),
        ("attribute[items][]", "couch"),
        ("attribute[items][]", "tires"),
        ("attribute[]", "nameless"),
        ("attribute[a][b]", "nested"),
        ("attributes[stream]", "typo"),
    ]
    assert form_answers(fields) == {"stream": ["trash"], "items": ["couch", "tires"]}
    assert validate_answers(QUESTIONS, form_answers(fields)) == {
        "stream": "trash",
        "items": ("couch", "tires"),
    }
