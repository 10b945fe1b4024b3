"""The language detector's fast paths give the answers of the general code they stand in for.

``_ascii_reading`` (bytes translated and split) against ``evidence_words`` and ``_signal``;
``lingua_key`` against the definition it writes out (lingua's letter runs) and against lingua
itself; lingua's answers kept by key against fresh ones. Each on crafted edge cases and, when the
shared data is there, on New Haven's real reports (as ``bench.classifier_eval`` builds them).
"""

from __future__ import annotations

import csv
import re
from typing import Any

import pytest

from schemas import language
from tests.support import SHARED_DATA

EDGE_TEXTS = [
    "Hay un bache en Elm St",
    "Se vende casa en 12 Elm St",  # "se" is Spanish and an address part (southeast)
    "S St is out, s",
    "'Elm St' is 12 feet wide",
    "O'Brien's 5th Ave",
    "don't ' x",
    "' '' 12",
    "'The 5 trees",
    "The Trees",
    "A pothole at A St",
    "Ave. Rd's corner",
    "1st and 2nd",
    "St. Ronan St.",
    "Tree Trimming",
    "tree",
    "Tree 12",
    "",
    "   ",
    "12",
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f",
    "THE STREETLIGHT IS OUT AT 45 ELM ST",
    "Mc'Donald Ave potholes, Pothole",
    "la basura de la calle 5 no se recogió",
    "hay un bache en la calle Chapel y el carro de mi vecino se dañó",
    "It Is The Light On 5 Main St That Is Out",
    "De La Cruz St 4",
]


def _new_haven_texts() -> list[str]:
    path = SHARED_DATA / "seeclickfix_newhaven_2014.csv"
    if not path.exists():
        return []
    from bench.classifier_eval import resident_text

    with path.open(newline="", encoding="utf-8") as fh:
        return [resident_text(row) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return EDGE_TEXTS + _new_haven_texts()


def test_ascii_reading_is_evidence_words_and_signal(texts: list[str]) -> None:
    for languages in (("en", "es"), ("es", "en", "vi"), ("en",)):
        detector = language.LanguageDetector(languages)
        checked = 0
        for text in texts:
            if not text.isascii() or "_" in text:
                continue
            words = language.evidence_words(text, detector._function_words)
            count, signal = detector._ascii_reading(text)
            assert min(count, 2) == min(len(words), 2), text
            assert signal == detector._signal(text, words), text
            assert list(signal) == list(detector.languages)
            checked += 1
        assert checked >= len(EDGE_TEXTS) - 1


def test_no_mark_is_ascii() -> None:
    # _ascii_reading skips the marks an ASCII text cannot have: each mark is one character.
    for code, marks in language._MARKS.items():
        ascii_marks = [chr(b) for b in range(128) if marks.search(chr(b))]
        assert (code in language._ASCII_MARKS) == bool(ascii_marks)


def test_lingua_key_is_lingua_s_letter_runs(texts: list[str]) -> None:
    for text in texts:
        key = language.lingua_key(text)
        if text.isascii():
            assert key == " ".join(re.findall("[a-z]+", text.lower())), text
        else:
            assert key == text
    read = "deep pothole number web in the lane"
    assert language.lingua_key("Deep pothole number web-12 in the LANE,") == read
    assert language.lingua_key("Deep pothole number web-13 in the lane") == read
    assert language.lingua_key("don't") == "don t"  # lingua splits at the apostrophe


def test_lingua_answers_a_text_as_its_key(texts: list[str]) -> None:
    # What makes the key exact: lingua reads only the letter runs. Its own sums vary in the last
    # bits from call to call (hash-map order), so the values are compared to 1e-9.
    # In both accuracy modes (``LanguageDetector._lingua_for``).
    detector = language.detector(("en", "es"))
    sample = [t for t in texts if t.isascii()][:: max(1, len(texts) // 600)] + EDGE_TEXTS
    for lingua in (detector._lingua, detector._lingua_long):
        assert lingua is not None

        def confidences(text: str, lingua: Any = lingua) -> dict[object, float]:
            return {c.language: c.value for c in lingua.compute_language_confidence_values(text)}

        for text in sample:
            as_text, as_key = confidences(text), confidences(language.lingua_key(text))
            assert as_key == pytest.approx(as_text, abs=1e-9), text


class _CountingLingua:
    """Both of a detector's lingua instances (high and low accuracy mode), counting every question."""

    def __init__(self, detector: language.LanguageDetector) -> None:
        self.asked: list[str] = []
        detector._lingua = _Counted(detector._lingua, self.asked)  # type: ignore[assignment]
        detector._lingua_long = _Counted(detector._lingua_long, self.asked)  # type: ignore[assignment]


class _Counted:
    def __init__(self, real: object, asked: list[str]) -> None:
        self.real = real
        self.asked = asked

    def compute_language_confidence_values(self, text: str) -> object:
        self.asked.append(text)
        return self.real.compute_language_confidence_values(text)  # type: ignore[attr-defined]


def test_texts_with_one_key_ask_lingua_once() -> None:
    detector = language.LanguageDetector(("en", "es"))
    fresh = language.LanguageDetector(("en", "es"))
    spy = _CountingLingua(detector)
    forms = [f"Deep pothole number web-{i} in the right lane, cars swerve around it" for i in range(50)]
    assert [detector.choose(t) for t in forms] == [fresh.choose(t) for t in forms] == ["en"] * 50
    assert len(spy.asked) == 1
    spanish = ["hay un bache en la calle 12", "Hay un bache en la calle 14!", "HAY UN BACHE EN LA CALLE"]
    assert [detector.detect(t) for t in spanish] == [fresh.detect(t) for t in spanish] == ["es"] * 3
    assert len(spy.asked) == 2
    # Kept answers are lingua's: the scores are those of a detector that asks every time.
    for text in forms[:3] + spanish:
        assert detector.scores(text) == pytest.approx(fresh.scores(text), abs=1e-9)


def test_long_texts_are_not_kept_and_the_memo_is_bounded() -> None:
    detector = language.LanguageDetector(("en", "es"))
    spy = _CountingLingua(detector)
    long_text = "the streetlight near the corner store keeps flickering " * 6
    assert len(long_text) > language.LINGUA_KEPT_CHARS
    detector.scores(long_text)
    detector.scores(long_text)
    assert spy.asked == [long_text, long_text]
    detector._heard.max_items = 3
    for i in range(10):
        detector.scores(f"streetlight {'x' * i} out")
    assert len(detector._heard) <= 3


def test_choose_takes_any_spelling_of_the_fallback() -> None:
    detector = language.detector(("en", "es"))
    assert detector.choose("123 Main St", fallback="es") == "es"
    assert detector.choose("123 Main St", fallback="ES-mx") == "es"
    assert detector.choose("123 Main St", fallback="fr") == "en"
