"""The resident's answers as a department reads them (sinks/answers.py): labels from the
taxonomy, the service's order, open required questions, the taxonomy's own language."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.attributes import ServiceAttribute
from schemas.request import ServiceRequest
from schemas.taxonomy import load_taxonomy
from sinks.answers import NOT_ANSWERED, AnswerLine, answer_lines, request_answer_lines

TAXONOMY = load_taxonomy()  # the packaged one: missed-pickup asks `stream` (required), pothole `bike-lane`
MISSED_PICKUP = TAXONOMY.get("missed-pickup")
assert MISSED_PICKUP is not None


def attribute(code: str, datatype: str = "string", **extra: object) -> ServiceAttribute:
    return ServiceAttribute.model_validate(
        {"code": code, "datatype": datatype, "description": f"{code}?", **extra}
    )


ITEMS = attribute(
    "items",
    "multivaluelist",
    order=2,
    description="What was left?",
    description_by_language={"es": "¿Qué dejaron?"},
    values=[
        {"key": "couch", "name": "Couch", "name_by_language": {"es": "Sofá"}},
        {"key": "tires", "name": "Tires", "name_by_language": {"es": "Llantas"}},
        {"key": "mattress", "name": "Mattress"},
    ],
)
COUNT = attribute("count", "number", order=1, description="How many bags")
NOTES = attribute("notes", "text", order=3, required=True, description="Anything else?")
INFO = attribute("info", "text", order=0, variable=False, description="Bulk items go out on Mondays.")


def make_request(**changes: Any) -> ServiceRequest:
    values: dict[str, Any] = {
        "request_id": "K7M4-QPXA",
        "event_id": "e" * 32,
        "service_code": "missed-pickup",
        "service_name": "Missed trash or recycling pickup",
        "requested_datetime": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        "updated_datetime": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        "channel": "sms",
        "confidence": 0.9,
        "source_contact_ids": ("sms:SM1",),
    }
    values.update(changes)
    return ServiceRequest(**values)


def test_a_list_answer_shows_the_question_and_the_value_name_not_codes() -> None:
    assert MISSED_PICKUP is not None
    [line] = answer_lines(MISSED_PICKUP.attributes, {"stream": "yard-waste"})
    assert (line.code, line.question, line.answer, line.typed) == (
        "stream",
        "Which collection was missed?",
        "Yard waste",
        False,
    )
    assert line.label == "Which collection was missed?"


def test_questions_come_in_the_services_order_whatever_the_answers_order() -> None:
    # Given out of order, answered in yet another order: the service's `order` wins.
    lines = answer_lines([NOTES, ITEMS, COUNT], {"notes": "by the gate", "items": ("tires",), "count": "4"})
    assert [line.code for line in lines] == ["count", "items", "notes"]
    assert [(line.label, line.text) for line in lines] == [
        ("How many bags:", "4"),  # a question without "?" gets a colon
        ("What was left?", "Tires"),
        ("Anything else?", "by the gate"),
    ]


def test_a_multivaluelist_answer_joins_the_names() -> None:
    [line] = answer_lines([ITEMS], {"items": ("couch", "mattress")})
    assert line.answer == "Couch, Mattress"


def test_optional_unanswered_questions_are_left_out_required_ones_are_open() -> None:
    lines = answer_lines([COUNT, ITEMS, NOTES], {})
    assert lines == [AnswerLine("notes", "Anything else?", None)]
    assert lines[0].text == NOT_ANSWERED == "not answered yet"
    # An empty answer is no answer.
    assert answer_lines([COUNT, NOTES], {"count": "  ", "notes": ""}) == lines


def test_information_that_is_not_asked_is_not_a_line() -> None:
    assert answer_lines([INFO, COUNT], {"count": "2"}) == [
        AnswerLine("count", "How many bags", "2", typed=True)
    ]


def test_labels_are_the_taxonomys_own_text_unless_a_language_is_asked_for() -> None:
    answers = {"items": ("couch", "tires")}
    [default] = answer_lines([ITEMS], answers)
    [spanish] = answer_lines([ITEMS], answers, "es")
    assert (default.question, default.answer) == ("What was left?", "Couch, Tires")
    assert (spanish.question, spanish.answer) == ("¿Qué dejaron?", "Sofá, Llantas")
    [fallback] = answer_lines([ITEMS], {"items": ("mattress",)}, "es")  # no Spanish name: the default
    assert fallback.answer == "Mattress"


def test_the_residents_own_text_is_marked_typed() -> None:
    lines = answer_lines(
        [COUNT, ITEMS, NOTES], {"count": "3", "items": ("couch",), "notes": "call 203-555-0142"}
    )
    assert [line.typed for line in lines] == [True, False, True]


def test_answers_the_taxonomy_cannot_label_are_still_shown_under_their_codes() -> None:
    # A key the city's file no longer lists, and a question since removed from it.
    lines = answer_lines([ITEMS], {"legacy": "kept", "items": ("couch", "fridge")})
    assert [(line.code, line.question, line.answer, line.typed) for line in lines] == [
        ("items", "What was left?", "Couch, fridge", False),
        ("legacy", "legacy", "kept", True),
    ]


def test_a_spanish_request_is_labelled_in_the_taxonomys_language() -> None:
    request = make_request(language="es", attributes={"stream": "recycling"})
    assert request_answer_lines(request, TAXONOMY) == [
        AnswerLine("stream", "Which collection was missed?", "Recycling")
    ]


def test_request_lines_without_a_taxonomy_or_for_a_later_report() -> None:
    request = make_request(attributes={"stream": "recycling"})
    assert request_answer_lines(request, None) == [AnswerLine("stream", "stream", "recycling", typed=True)]
    open_request = make_request()
    assert request_answer_lines(open_request, TAXONOMY) == [
        AnswerLine("stream", "Which collection was missed?", None)
    ]
    assert request_answer_lines(open_request, TAXONOMY, open_questions=False) == []
    pothole = make_request(service_code="pothole", service_name="Pothole")
    assert request_answer_lines(pothole, TAXONOMY) == []  # bike-lane is optional
