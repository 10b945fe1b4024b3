"""Free-text classifier: resident text -> (service_code, confidence), driven only by the taxonomy.

Why this design: it runs on every contact and the city edits the taxonomy, so there is no trained
model to retrain. In ``__init__`` the keywords, names and examples are turned into one index of
features (stemmed words and 2-4 word phrases) with per-service weights; ``classify`` only tokenises,
looks features up and sums. Weights are IDF-style (a word several services share counts for less),
keywords count more than words that merely occur in examples, and longer phrases count more.
Confidence is a logistic function of how much evidence the winner has and how clearly it beats
the runner-up, fitted on the tune split so that e.g. 0.8 means roughly 80% correct on real reports.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from schemas.taxonomy import Taxonomy

# Weights were chosen, and the confidence curve fitted (logistic regression on log(1 + top score)
# and the relative margin over the runner-up), on the tune split of the New Haven data only;
# see bench/classifier_eval.py and docs/classifier.md.
KEYWORD_WEIGHT = 3.0
NAME_WEIGHT = 3.0
EXAMPLE_WEIGHT = 0.5
PHRASE_BONUS = 0.5  # extra weight per additional word in a phrase: "street light" beats "light"
MAX_NGRAM = 4
CONF_BIAS = -2.624
CONF_EVIDENCE = 0.792
CONF_MARGIN = 2.519

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_APOSTROPHES = str.maketrans("", "", "'\u2019`")

# Function words carry no service signal. Negations and particles ("not", "out", "down", "up") are
# kept on purpose: "light out", "limb down", "not picked up" are the phrases that matter.
_STOPWORDS_TEXT = """a an the and or but if then of to in on at by for from with about as into onto than so
    is are was were be been being am it its this that these those there here i me my mine we us our
    you your he him his she her they them their who whom which what when where how why
    have has had having do does did doing will would can could should may might must shall
    please thank thanks hi hello dear just very really also still again already even some any
    all each every such only own same too get got getting let lets im ive dont doesnt didnt isnt
    several more most many much lot lots between since because while during until need needs needed
    wasnt arent werent hasnt havent wont cant couldnt shouldnt wouldnt s t re ve ll d m"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

# Irregular forms the suffix rules below would get wrong or merge with another service's word.
_STEM_EXCEPTIONS = {
    "parking": "parking",
    "parked": "parking",
    "parks": "park",
    "leaves": "leaf",
    "lives": "live",
    "buses": "bus",
    "busses": "bus",
    "mice": "mouse",
    "children": "child",
    "people": "person",
    "trees": "tree",
    "ceiling": "ceiling",
    "building": "building",
    "buildings": "building",
}

_VOWELS = frozenset("aeiouy")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Light suffix stripping; only has to be consistent between taxonomy and text, not pretty."""
    if word in _STEM_EXCEPTIONS:
        return _STEM_EXCEPTIONS[word]
    if len(word) <= 3 or word.isdigit():
        return word
    w = word
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "xes", "ches", "shes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            base = w[: -len(suffix)]
            if suffix == "ed" and base.endswith("e"):  # speed, need, bleed: not past tenses
                break
            if _VOWELS.intersection(base) and len(base) >= 3:
                if len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                    base = base[:-1]  # trimming -> trim, dumped stays dump
                w = base
            break
    if len(w) >= 5 and w.endswith("e"):
        w = w[:-1]  # prune/pruned/pruning all end up as "prun"
    return w


@dataclass(frozen=True)
class Classification:
    """The classifier's answer. ``triage`` is set when a person should confirm the service."""

    service_code: str
    confidence: float
    triage: bool = False
    runner_up: str | None = None

    def needs_triage(self, threshold: float) -> bool:
        """Whether confidence is below ``threshold`` (the router may use its own threshold)."""
        return self.triage or self.confidence < threshold


class _Tokenizer:
    """Words -> stems, joining split compounds ("pot hole", "street light") the taxonomy knows."""

    def __init__(self, compounds: frozenset[str] = frozenset()) -> None:
        self.compounds = compounds

    def tokens(self, text: str) -> list[str]:
        words = [w for w in _TOKEN_RE.findall(text.lower().translate(_APOSTROPHES)) if not w.isdigit()]
        out: list[str] = []
        i = 0
        n = len(words)
        compounds = self.compounds
        while i < n:
            word = words[i]
            if compounds and i + 1 < n:
                joined = stem(word + words[i + 1])
                if joined in compounds:
                    out.append(joined)
                    i += 2
                    continue
            if word not in STOPWORDS:
                out.append(stem(word))
            i += 1
        return out


def _ngrams(tokens: list[str], max_n: int) -> set[str]:
    feats = set(tokens)
    for n in range(2, max_n + 1):
        for i in range(len(tokens) - n + 1):
            feats.add(" ".join(tokens[i : i + n]))
    return feats


class Classifier:
    """Scores text against every service in a taxonomy; build once, call ``classify`` per contact."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self._codes = taxonomy.codes
        self._fallback = taxonomy.fallback_code
        self._threshold = taxonomy.triage_threshold
        n_services = len(self._codes)

        # Single-word stems seen anywhere in the taxonomy; "street light" in text is joined into
        # "streetlight" only when the taxonomy spells it that way somewhere.
        plain = _Tokenizer()
        compounds: set[str] = set()
        for service in taxonomy.services:
            for phrase in (service.name, *service.keywords):
                toks = plain.tokens(phrase)
                if len(toks) == 1:
                    compounds.add(toks[0])
        self._tokenizer = _Tokenizer(frozenset(compounds))
        tok = self._tokenizer.tokens

        keyword_weights: list[dict[str, float]] = []
        example_counts: list[Counter[str]] = []
        longest = 1
        for service in taxonomy.services:
            kw: dict[str, float] = {}
            phrases = [(service.name, NAME_WEIGHT)] + [(k, KEYWORD_WEIGHT) for k in service.keywords]
            for phrase, weight in phrases:
                toks = tok(phrase)[:MAX_NGRAM]
                if not toks:
                    continue
                longest = max(longest, len(toks))
                feat = " ".join(toks)
                kw[feat] = max(kw.get(feat, 0.0), weight * (1 + PHRASE_BONUS * (len(toks) - 1)))
            keyword_weights.append(kw)
            counts: Counter[str] = Counter()
            for sentence in (*service.examples, service.description):
                counts.update(_ngrams(tok(sentence), 2))
            example_counts.append(counts)
        self._max_n = min(longest, MAX_NGRAM)

        # IDF over services: a feature that k of N services use anywhere (keywords or examples) is
        # worth log(1 + N/k). Counting examples too is what damps place words: "sidewalk" is a
        # keyword of one service but the setting of many ("couch left on the sidewalk").
        df: Counter[str] = Counter()
        for kw, counts in zip(keyword_weights, example_counts, strict=True):
            df.update(set(kw) | set(counts))
        index: dict[str, dict[int, float]] = defaultdict(dict)
        for si, (kw, counts) in enumerate(zip(keyword_weights, example_counts, strict=True)):
            for feat, weight in kw.items():
                index[feat][si] = weight * math.log(1 + n_services / df[feat])
            n_examples = max(1, len(self.taxonomy.services[si].examples))
            for feat, count in counts.items():
                # Words that recur across a service's examples are more typical of it.
                share = min(1.0, count / n_examples) ** 0.5
                weight = EXAMPLE_WEIGHT * share * math.log(1 + n_services / df[feat])
                index[feat][si] = index[feat].get(si, 0.0) + weight
        self._index: dict[str, tuple[tuple[int, float], ...]] = {
            feat: tuple(per_service.items()) for feat, per_service in index.items()
        }

    def scores(self, text: str) -> list[float]:
        """Raw per-service scores in taxonomy order (for evaluation and debugging)."""
        scores = [0.0] * len(self._codes)
        index = self._index
        for feat in _ngrams(self._tokenizer.tokens(text), self._max_n):
            hits = index.get(feat)
            if hits:
                for si, weight in hits:
                    scores[si] += weight
        return scores

    def classify(self, text: str) -> Classification:
        """Best service for ``text``; no evidence at all gives the fallback with confidence 0."""
        scores = self.scores(text or "")
        best = second = -1
        for i, score in enumerate(scores):  # ties keep file order
            if best < 0 or score > scores[best]:
                best, second = i, best
            elif second < 0 or score > scores[second]:
                second = i
        top = scores[best]
        if top <= 0.0:
            return Classification(self._fallback, 0.0, triage=True)
        runner = scores[second] if second >= 0 else 0.0
        z = CONF_BIAS + CONF_EVIDENCE * math.log1p(top) + CONF_MARGIN * (top - runner) / top
        confidence = 1.0 / (1.0 + math.exp(-z))
        code = self._codes[best]
        return Classification(
            service_code=code,
            confidence=round(confidence, 4),
            triage=confidence < self._threshold or code == self._fallback,
            runner_up=self._codes[second] if second >= 0 and runner > 0 else None,
        )
