"""The resident's answers to a service's questions, as a department reads them.

A request carries the answers as codes (``stream: recycling``, schemas/attributes.py); a crew
reads questions and names ("Which collection was missed? Recycling"). This module turns one
into the other once, for every sink that shows a person the request (Slack, email), so they
all label, order and leave out answers the same way:

* each question the service asks, in the service's ``order``, labelled with its text and the
  chosen value's display name (a multivaluelist's names joined); the resident's own text for
  the other datatypes;
* an optional question nobody answered is left out; a **required** one shows as
  ``NOT_ANSWERED``, so the crew knows to ask (the resident may not have replied yet);
* department-facing text is in the taxonomy's own language (``language=None``), like the
  service's name on the request, whatever language the resident wrote in;
* an answer the taxonomy cannot label (a question since removed from the city's file, or no
  taxonomy at hand) is still shown, under its code: hiding it would hide what the resident said.

Formatting (escaping, length limits, redaction of contact details typed into a free-text
answer) stays with each sink: ``AnswerLine.typed`` says which answers are the resident's own
words rather than a name from the taxonomy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.attributes import Answer, ServiceAttribute
from schemas.request import ServiceRequest
from schemas.taxonomy import Taxonomy

NOT_ANSWERED = "not answered yet"


@dataclass(frozen=True)
class AnswerLine:
    """One question as a department sees it: ``answer`` None means required and still open."""

    code: str
    question: str
    answer: str | None
    typed: bool = False
    """The answer is the resident's own text (not a value's name): redact it like a description."""

    @property
    def label(self) -> str:
        """The question as a label: "Which collection was missed?", "Number of bags:"."""
        question = " ".join(self.question.split())
        return question if question.endswith(("?", ":")) else question + ":"

    @property
    def text(self) -> str:
        """The answer, or ``NOT_ANSWERED``."""
        return self.answer if self.answer is not None else NOT_ANSWERED


def _parts(answer: Answer) -> list[str]:
    """An answer's non-empty parts: one for text, one per key for a multivaluelist."""
    values = (answer,) if isinstance(answer, str) else tuple(answer)
    return [v for v in values if isinstance(v, str) and v.strip()]


def answer_lines(
    questions: Sequence[ServiceAttribute], answers: Mapping[str, Answer], language: str | None = None
) -> list[AnswerLine]:
    """The labelled answers of one request to ``questions`` (a service's ``attributes``).

    ``language``: the language of the labels; None (what department sinks pass) keeps the
    taxonomy's own text. Questions that are not ``variable`` (information, not asked) take no
    answer and are left out.
    """
    lines: list[AnswerLine] = []
    asked: set[str] = set()
    for question in sorted(questions, key=lambda q: q.order):  # stable: file order within one order
        if not question.variable:
            continue
        asked.add(question.code)
        text = question.question_in(language) if language else question.description
        parts = _parts(answers.get(question.code, ()))
        if not parts:
            if question.required:
                lines.append(AnswerLine(question.code, text, None))
            continue
        if question.datatype.is_list:
            names = {v.key: (v.name_in(language) if language else v.name) for v in question.values}
            # A key the taxonomy no longer lists is shown as it is rather than dropped.
            lines.append(AnswerLine(question.code, text, ", ".join(names.get(p, p) for p in parts)))
        else:
            lines.append(AnswerLine(question.code, text, ", ".join(parts), typed=True))
    for code, answer in answers.items():
        if code not in asked and (parts := _parts(answer)):
            lines.append(AnswerLine(code, code, ", ".join(parts), typed=True))
    return lines


def request_answer_lines(
    request: ServiceRequest, taxonomy: Taxonomy | None, *, open_questions: bool = True
) -> list[AnswerLine]:
    """What a department message shows of ``request.attributes``, labelled by its service in
    ``taxonomy`` (None, or a service the taxonomy lacks: every answer under its code).

    ``open_questions=False`` leaves out the required questions still open: a later report of a
    known incident is not asked (the crew works the first report's answers), so "not answered
    yet" under it would only send the crew to ask for nothing.
    """
    service = taxonomy.get(request.service_code) if taxonomy is not None else None
    lines = answer_lines(service.attributes if service is not None else (), request.attributes)
    return lines if open_questions else [line for line in lines if line.answer is not None]


__all__ = ["NOT_ANSWERED", "AnswerLine", "answer_lines", "request_answer_lines"]
