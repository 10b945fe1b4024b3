"""The classifier's fast paths give what the plain computations give, to the last bit.

``_Tokenizer.tokens`` keeps one token per word (stem, or "" for a stopword) instead of looking up
the stem and the stopword list; ``_Index.score`` sums weights while it walks the phrases instead
of listing ``_ngrams`` first; ``Classifier._classify`` takes the winner and the runner-up with
``max``/``list.index`` instead of a loop. Each is checked here against the plain way on real
reports (when the data is there) and on texts made to hit the edge cases.
"""

from __future__ import annotations

import csv
import random

import pytest

from normalizer.classify import Classifier, _ngrams, words
from schemas.taxonomy import Service, Taxonomy, load_taxonomy
from tests.support import shared_file

EDGE_TEXTS = [
    "",
    "the a of",  # stopwords only
    "123 456 7",  # numbers only
    "pot hole pot hole pothole on the the street light street lamp",  # compounds, repeats
    "a street light out, street light street light",  # a repeated phrase counts once
    "Hay un bache en la calle y la luz de la calle no funciona",
    "tree trimming tree trimming tree",
    "² ³ 12abc abc12 a_b_c don't \u2019tis can`t",
    "hole in the road hole in the road hole in",
]


def _texts() -> list[str]:
    texts = list(EDGE_TEXTS)
    with shared_file("seeclickfix_newhaven_2014.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    texts += [r["Description"] or r["Summary"] for r in rows[::7]]
    return texts


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_taxonomy())


def _plain_scores(classifier: Classifier, text: str, language: str) -> list[float]:
    """``Classifier.scores`` as it was: list the features, then add their weights in that order."""
    idx = classifier._index(language)
    scores = [0.0] * len(classifier._codes)
    for feat in _ngrams(idx.tokenizer._reference_tokens(words(text)), idx.max_n, idx.prefixes):
        for si, weight in idx.weights.get(feat, ()):
            scores[si] += weight
    return scores


@pytest.mark.parametrize("language", ["en", "es"])
def test_tokens_and_scores_are_the_plain_ones(classifier: Classifier, language: str) -> None:
    tokenizer = classifier._index(language).tokenizer
    for text in _texts():
        assert classifier.tokens(text, language) == tokenizer._reference_tokens(words(text)), text
        # Twice: the second call reads only the word cache the first one filled.
        assert classifier.tokens(text, language) == tokenizer._reference_tokens(words(text)), text
        fast = classifier.scores(text, language)
        assert [s.hex() for s in fast] == [s.hex() for s in _plain_scores(classifier, text, language)], text


def test_a_repeated_phrase_adds_its_weight_once(classifier: Classifier) -> None:
    once = classifier.scores("street light out", "en")
    assert classifier.scores("street light out street light street light", "en") == once


def _loop_winners(scores: list[float]) -> tuple[int, int]:
    """The loop ``_classify`` used: the first top score wins, the runner-up the first of the rest."""
    best = second = -1
    for i, score in enumerate(scores):
        if best < 0 or score > scores[best]:
            best, second = i, best
        elif second < 0 or score > scores[second]:
            second = i
    return best, second


def _tie_taxonomy() -> Taxonomy:
    kinds = ["lamp", "lamp", "hole", "lamp", "hole"]  # services 0, 1 and 3 tie on "lamp"
    services = [
        Service(code=f"s{i}", name=f"Service {i}", department="d", keywords=(w,)) for i, w in enumerate(kinds)
    ]
    services.append(Service(code="other", name="Other", department="triage"))
    return Taxonomy(services=tuple(services), fallback_code="other")


def test_ties_keep_file_order_for_winner_and_runner_up(monkeypatch: pytest.MonkeyPatch) -> None:
    classifier = Classifier(_tie_taxonomy())
    result = classifier.classify("the lamp")
    assert (result.service_code, result.runner_up) == ("s0", "s1")
    codes = classifier._codes
    rng = random.Random(7)
    for _ in range(3000):
        scores = [float(rng.choice([0, 1, 2, 2.5])) for _ in codes]
        monkeypatch.setattr(classifier, "scores", lambda text, language, s=scores: list(s))
        got = classifier._classify("x", "en")
        best, second = _loop_winners(scores)
        if scores[best] <= 0:
            assert got.service_code == "other" and got.confidence == 0.0
            continue
        assert got.service_code == codes[best], scores
        assert got.runner_up == (codes[second] if scores[second] > 0 else None), scores
