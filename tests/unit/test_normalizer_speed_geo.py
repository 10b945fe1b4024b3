"""The normalizer's fast paths give the answers of the slow ones they stand in for (issue 12).

Each fast path is checked against the general code it shortcuts, on crafted edge cases and, when
the shared data is there, on New Haven's real reports: an ASCII tokeniser against the token-by-
token one, answers kept for short texts against fresh ones, ``replace`` against a translate table.
"""

from __future__ import annotations

import csv
import re

import pytest

from normalizer.classify import Classifier
from normalizer.geo.streets import drop_marks, raw_tokens
from schemas import language
from schemas.taxonomy import load_taxonomy
from tests.support import SHARED_DATA

EDGE_TEXTS = [
    "Hay un bache en Elm St",
    "'Elm St' is 12 feet wide",
    "O'Brien's 5th Ave",
    "don't ' x",
    "A pothole at A St",
    "Ave. Rd's corner",
    "1st and 2nd",
    "St. Ronan St.",
    "a_b c 12",  # "_": the general path
    "ÉLM St 4",  # not ASCII: the general path
    "x²",
    "Tree Trimming",
    "",
    "   ",
    "12",
    "THE STREETLIGHT IS OUT AT 45 ELM ST",
    "Mc'Donald Ave potholes, Pothole",
]


def _new_haven_texts(limit: int = 3000) -> list[str]:
    """Real reports when the shared data is there (the edge cases run without it)."""
    path = SHARED_DATA / "seeclickfix_newhaven_2014.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [" ".join((r["Summary"] + " " + r["Description"]).split()) for r in rows[:limit]]


def test_ascii_evidence_words_are_the_general_ones() -> None:
    words = language.detector()._function_words
    texts = EDGE_TEXTS + _new_haven_texts()
    ascii_texts = [t for t in texts if t.isascii() and "_" not in t]
    assert len(ascii_texts) >= len(EDGE_TEXTS) - 3
    for text in ascii_texts:
        assert language._ascii_evidence_words(text, words) == language._any_evidence_words(text, words), text
    for text in texts:
        assert language.evidence_words(text, words) == language._any_evidence_words(text, words), text


def test_remembered_languages_are_what_the_text_says(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = language.LanguageDetector(("en", "es"))
    texts = ["hay un bache en la calle", "Tree Trimming", "123 Main St", "the light is out", ""]
    fresh = [detector._from_text(t) for t in texts]
    assert [detector.detect(t) for t in texts] == fresh
    calls: list[str] = []
    real = detector._from_text
    monkeypatch.setattr(detector, "_from_text", lambda t, settle=None: calls.append(t) or real(t, settle))
    assert [detector.detect(t) for t in texts] == fresh  # answered from memory
    assert calls == []
    long_text = "the streetlight outside my house has been out " * 4  # longer than kept
    assert detector.detect(long_text) == detector.detect(long_text) == "en"
    assert calls == [long_text, long_text]


def test_remembered_languages_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = language.LanguageDetector(("en", "es"))
    detector._seen.max_items = 3
    for i in range(10):
        detector.detect(f"pothole number {i}")
    assert len(detector._seen) <= 3


def test_remembered_classifications_are_fresh_ones() -> None:
    classifier = Classifier(load_taxonomy())
    texts = ["Tree Trimming", "stump", "hay un bache enorme", "pot hole on elm", "", "streetlight out"]
    for language_code in ("en", "es"):
        first = [classifier.classify(t, language_code) for t in texts]
        assert first == [classifier._classify(t, language_code) for t in texts]
        assert [classifier.classify(t, language_code) for t in texts] == first
    # The language is part of what is remembered.
    assert classifier.classify("bache", "es") == classifier._classify("bache", "es")
    assert classifier.classify("bache", "en") == classifier._classify("bache", "en")
    assert len(classifier._seen) <= classifier._seen.max_items


def test_split_compounds_are_still_joined_for_new_pairs() -> None:
    classifier = Classifier(load_taxonomy())
    # Pairs the stem cache has not seen: the pair is stemmed and checked, as before.
    assert "pothol" in classifier.tokens("a big pot holes outside")
    assert classifier.classify("pot hole").service_code == classifier.classify("pothole").service_code


def test_drop_marks_is_the_translate_table() -> None:
    table = str.maketrans("", "", "'\u2019`.")
    for text in [*EDGE_TEXTS, "O\u2019Brien `St.` ...", "İstanbul St.", *_new_haven_texts(500)]:
        assert drop_marks(text) == text.translate(table)
        assert drop_marks(text.lower()) == text.lower().translate(table)
    assert raw_tokens("45 O'Brien St.") == ["45", "obrien", "st"]


def test_spanish_marks_match_what_ignorecase_matched() -> None:
    before = re.compile(r"[ñ¿¡]", re.IGNORECASE)
    now = language._MARKS["es"]
    for code in range(0x110000):
        char = chr(code)
        assert bool(before.search(char)) == bool(now.search(char)), hex(code)


def test_choose_settles_only_where_detect_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = language.LanguageDetector(("en", "es"))
    # Nine English-only function words, none Spanish: one short of deciding without lingua,
    # enough to settle for English; longer than the texts whose answers are remembered.
    long_english = (
        "The streetlight outside my house has been flickering for weeks and now it is out "
        "completely, please fix quickly, neighbors worried"
    )
    texts = [
        long_english,
        "hay un bache enorme en la calle frente a la escuela y los carros se dañan todos los días",
        *[t for t in _new_haven_texts(1500) if len(t) > 120],
    ]
    asked: list[str] = []
    real = detector._scores
    monkeypatch.setattr(detector, "_scores", lambda t, w, s: asked.append(t) or real(t, w, s))
    for text in texts:
        for fallback in ("en", "es"):
            expected = detector.detect(text) or fallback
            assert detector.choose(text, fallback=fallback) == expected, (text, fallback)
        assert detector.choose(text, hint="es") == (detector.detect(text) or "es")
    signal = detector._signal(long_english, language.evidence_words(long_english, detector._function_words))
    assert signal == {"en": 9, "es": 0} and detector._decided(signal) is None
    asked.clear()
    assert detector.choose(long_english) == "en"
    assert asked == []
    assert detector.detect(long_english) == "en" and asked == [long_english]
