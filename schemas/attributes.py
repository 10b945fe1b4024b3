"""Service questions: what a service asks besides "what and where" (Open311 service attributes).

A pothole report may say whether it is in a bike lane, a missed pickup whether it was the trash
or the recycling: the answer sends a different crew. The taxonomy gives each service its
questions in GeoReport v2's shape (``code``, ``datatype``, ``required``, ``description``,
``order``, ``values``), ``GET services/{code}`` shows them to apps, ``POST requests`` checks the
``attribute[code]`` answers against them (the spec's 400s), and the answers travel on the request
to every sink.

Residents who text or call do not fill a form, so a list question can also say which words mean
each value ("recycling", "recycle bin" -> ``recycling``); ``answers_from_text`` fills what the text
makes unambiguous and leaves the rest unanswered rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Answer = str | tuple[str, ...]
"""One answer: text (string, number, datetime, text, singlevaluelist keys) or several keys
(multivaluelist)."""

Answers = dict[str, Answer]

MAX_ANSWER_CHARS = 2000  # a "text" answer: as long as a description's notes


class Datatype(StrEnum):
    """GeoReport v2's attribute datatypes."""

    STRING = "string"
    NUMBER = "number"
    DATETIME = "datetime"
    TEXT = "text"
    SINGLEVALUELIST = "singlevaluelist"
    MULTIVALUELIST = "multivaluelist"

    @property
    def is_list(self) -> bool:
        return self in (Datatype.SINGLEVALUELIST, Datatype.MULTIVALUELIST)


_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class AttributeValue(BaseModel):
    """One choice of a list question: ``key`` is what is sent and stored, ``name`` what is shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    name_by_language: dict[str, str] = Field(default_factory=dict, description="{es: Reciclaje}")
    words: tuple[str, ...] = Field(default=(), description="what a resident writes that means this value")

    @field_validator("words")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(" ".join(w.lower().split()) for w in value if w.strip())

    def name_in(self, language: str) -> str:
        return self.name_by_language.get(language) or self.name

    @property
    def answer_words(self) -> tuple[str, ...]:
        """Its words, and its names and key: what a resident replies to the question that lists them."""
        names = (self.name, *self.name_by_language.values(), self.key.replace("-", " "))
        return tuple(dict.fromkeys((*self.words, *(" ".join(n.lower().split()) for n in names))))


def _any_of(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")


class ServiceAttribute(BaseModel):
    """One question of a service, as GeoReport v2's service definition lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    datatype: Datatype
    description: str = Field(min_length=1, description="the question, as apps show it")
    description_by_language: dict[str, str] = Field(
        default_factory=dict, description="the question in the city's other languages: {es: ...}"
    )
    required: bool = False
    variable: bool = Field(default=True, description="false: information shown to the resident, not asked")
    datatype_description: str = ""
    order: int = Field(default=0, ge=0)
    values: tuple[AttributeValue, ...] = ()

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not _CODE_RE.match(value):
            raise ValueError(f"attribute code {value!r}: letters, digits, '-' and '_' (at most 64)")
        return value

    @model_validator(mode="after")
    def _values_fit_the_type(self) -> ServiceAttribute:
        if self.datatype.is_list and not self.values:
            raise ValueError(f"attribute {self.code!r}: a {self.datatype.value} needs values")
        if not self.datatype.is_list and self.values:
            raise ValueError(f"attribute {self.code!r}: only list datatypes take values")
        keys = [v.key for v in self.values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"attribute {self.code!r}: value keys repeat")
        if self.required and not self.variable:
            raise ValueError(f"attribute {self.code!r}: an attribute nobody answers cannot be required")
        return self

    @cached_property
    def _patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        """Per value, its ``words``: what names it in any text."""
        return [(value.key, _any_of(value.words)) for value in self.values if value.words]

    @cached_property
    def _reply_patterns(self) -> list[tuple[str, re.Pattern[str]]]:
        """Per value, its words and names: what names it in a reply to the question listing them
        ("No" answers "in a bike lane?", but "no light at all" says nothing about bike lanes)."""
        return [(value.key, _any_of(value.answer_words)) for value in self.values]

    def question_in(self, language: str) -> str:
        return self.description_by_language.get(language) or self.description

    def record(self) -> dict[str, Any]:
        """The spec's attribute record (``GET services/{code}``). ``datatype_description`` is
        text even when there is none: one validator wants the field on every attribute, the
        spec's Swagger wants it a string."""
        return {
            "variable": self.variable,
            "code": self.code,
            "datatype": self.datatype.value,
            "required": self.required,
            "datatype_description": self.datatype_description,
            "order": self.order,
            "description": self.description,
            "values": [{"key": v.key, "name": v.name} for v in self.values],
        }


def check_attributes(attributes: Sequence[ServiceAttribute]) -> tuple[ServiceAttribute, ...]:
    """A service's questions in their order; codes must be unique within it."""
    codes = [a.code for a in attributes]
    if len(set(codes)) != len(codes):
        raise ValueError(
            f"attribute codes repeat: {', '.join(sorted({c for c in codes if codes.count(c) > 1}))}"
        )
    return tuple(sorted(attributes, key=lambda a: a.order))


class AnswersInvalid(ValueError):
    """Answers that do not fit the questions: one description per problem (the spec's 400 list)."""

    def __init__(self, descriptions: Sequence[str]) -> None:
        super().__init__("; ".join(descriptions))
        self.descriptions = tuple(descriptions)


_FORM_KEY = re.compile(r"^attribute\[([^\[\]]{1,64})\](\[\])?$")


def form_answers(fields: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The ``attribute[code]`` (and ``attribute[code][]``, a multivaluelist's) fields of a form,
    code -> every value sent for it, in order; other fields are not answers."""
    out: dict[str, list[str]] = {}
    for name, value in fields:
        match = _FORM_KEY.match(name)
        if match:
            out.setdefault(match.group(1), []).append(value)
    return out


def _is_datetime(value: str) -> bool:
    """ISO 8601, also when a form's ``+05:00`` arrived as `` 05:00`` (a ``+`` decodes to a space)."""
    text = value.replace("Z", "+00:00")
    candidates = [text]
    if " " in text:
        head, _, tail = text.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return True
    return False


def _one(attribute: ServiceAttribute, raw: Sequence[str]) -> tuple[Answer | None, str | None]:
    """(answer, None) or (None, what is wrong) for the values given for one question."""
    code = attribute.code
    values = [v.strip() for v in raw if v.strip()]
    if not values:
        return None, None
    if any(len(v) > MAX_ANSWER_CHARS or "\x00" in v for v in values):
        return None, f"attribute[{code}]: at most {MAX_ANSWER_CHARS} characters, no NUL"
    if attribute.datatype is Datatype.MULTIVALUELIST:
        keys = {v.key for v in attribute.values}
        chosen = tuple(dict.fromkeys(part.strip() for v in values for part in v.split(",") if part.strip()))
        if bad := [c for c in chosen if c not in keys]:
            return None, f"attribute[{code}]: {bad[0][:40]!r} is not one of {', '.join(sorted(keys))}"
        return chosen, None
    if len(values) > 1:
        return None, f"attribute[{code}]: one value, not {len(values)}"
    value = values[0]
    if attribute.datatype is Datatype.SINGLEVALUELIST:
        keys = {v.key for v in attribute.values}
        if value not in keys:
            return None, f"attribute[{code}]: {value[:40]!r} is not one of {', '.join(sorted(keys))}"
    elif attribute.datatype is Datatype.NUMBER:
        try:
            number = float(value)
        except ValueError:
            return None, f"attribute[{code}]: {value[:40]!r} is not a number"
        if number != number or number in (float("inf"), float("-inf")):
            return None, f"attribute[{code}]: {value[:40]!r} is not a number"
    elif attribute.datatype is Datatype.DATETIME:
        if not _is_datetime(value):
            return None, f"attribute[{code}]: {value[:40]!r} is not an ISO 8601 date and time"
    elif attribute.datatype is Datatype.STRING and len(value) > 200:
        return None, f"attribute[{code}]: a string of at most 200 characters (use a text attribute)"
    return value, None


def validate_answers(
    attributes: Sequence[ServiceAttribute], given: Mapping[str, Sequence[str]], *, require: bool = True
) -> Answers:
    """The answers to ``attributes`` from ``given`` (code -> the values sent for it).

    Raises ``AnswersInvalid`` listing every problem: an answer that does not fit its datatype, a
    code the service does not ask, and (``require``) a required question left unanswered.
    Questions that are not ``variable`` take no answer.
    """
    by_code = {a.code: a for a in attributes}
    problems: list[str] = []
    answers: Answers = {}
    for code in given:
        if code not in by_code or not by_code[code].variable:
            problems.append(f"attribute[{code[:40]}]: this service does not ask it")
    for attribute in attributes:
        if not attribute.variable:
            continue
        answer, problem = _one(attribute, given.get(attribute.code, ()))
        if problem:
            problems.append(problem)
        elif answer is not None:
            answers[attribute.code] = answer
        elif attribute.required and require:
            problems.append(f"attribute[{attribute.code}] is required: {attribute.description}")
    if problems:
        raise AnswersInvalid(problems)
    return answers


def _specific_matches(patterns: Sequence[tuple[str, re.Pattern[str]]], text: str) -> list[str]:
    """The values whose words appear in ``text``, leaving out a value found only inside another
    value's longer phrase ("public trash can" is the public can, not the household trash)."""
    spans = {key: [m.span() for m in pattern.finditer(text)] for key, pattern in patterns}
    found = {key: places for key, places in spans.items() if places}

    def inside(span: tuple[int, int], key: str) -> bool:
        return any(
            other != key and start <= span[0] and span[1] <= end and (end - start) > (span[1] - span[0])
            for other, places in found.items()
            for start, end in places
        )

    return [key for key, places in found.items() if not all(inside(span, key) for span in places)]


def answers_from_text(attributes: Iterable[ServiceAttribute], text: str, *, reply: bool = False) -> Answers:
    """What the text answers unambiguously: a single-value question whose words of exactly one
    value appear ("the recycling was not picked up" -> ``bin: recycling``), a multi-value
    question with every value whose words appear. Nothing is guessed from silence.

    ``reply``: the text answers these questions (we asked them): a value's name or key counts
    as well as its words ("Trash", "no")."""
    lowered = " ".join(text.lower().split())
    answers: Answers = {}
    for attribute in attributes:
        if not attribute.variable or not attribute.datatype.is_list:
            continue
        matched = _specific_matches(attribute._reply_patterns if reply else attribute._patterns, lowered)
        if attribute.datatype is Datatype.SINGLEVALUELIST and len(matched) == 1:
            answers[attribute.code] = matched[0]
        elif attribute.datatype is Datatype.MULTIVALUELIST and matched:
            answers[attribute.code] = tuple(matched)
    return answers


def unanswered(
    attributes: Iterable[ServiceAttribute], answers: Mapping[str, Answer]
) -> list[ServiceAttribute]:
    """The required questions ``answers`` leaves open, in order: what a channel still has to ask."""
    return [a for a in attributes if a.required and a.variable and a.code not in answers]
