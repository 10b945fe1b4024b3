"""Free-text classifier: resident text -> (service_code, confidence), driven only by the taxonomy.

Why this design: it runs on every contact and the city edits the taxonomy, so there is no trained
model to retrain (this is the cold start; ``normalizer.learned`` adds a model trained on a city's
own labelled reports and blends it with this scorer). In ``__init__`` the keywords, names and
examples are turned into one index of features (stemmed words and 2-4 word phrases) with
per-service weights; ``classify`` only tokenises, looks features up and sums. Weights are
IDF-style (a word several services share counts for less), keywords count more than words that
merely occur in examples, and longer phrases count more. Confidence is a logistic function of how
much evidence the winner has and how clearly it beats the runner-up, fitted on the tune split so
that e.g. 0.8 means roughly 80% correct on real reports.

Words are stemmed with the Snowball stemmer of the text's language (``classify(text,
language="es")``); the taxonomy is indexed once per language, so Spanish keywords listed in the
taxonomy match Spanish reports. Stopword lists live in ``schemas/stopwords/<language>.txt``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from schemas.memo import ShortTextMemo
from schemas.stopwords import stopwords as _stopword_list
from schemas.taxonomy import Service, Taxonomy

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

DEFAULT_LANGUAGE = "en"
# ISO 639-1 code -> Snowball algorithm. Any other language is stemmed as English (the taxonomy's
# keywords are English), which is also what happens to a code the channel got wrong.
SNOWBALL_LANGUAGES = {
    "en": "english",
    "es": "spanish",
    "fr": "french",
    "pt": "portuguese",
    "it": "italian",
    "de": "german",
    "nl": "dutch",
    "ca": "catalan",
}

_TOKEN_RE = re.compile(r"[^\W_]+")

# Snowball merges these with another service's word ("parking" -> "park" would tie parking
# violations to park maintenance) or leaves irregular plurals apart; checked before stemming.
_STEM_EXCEPTIONS: dict[str, dict[str, str]] = {
    "en": {
        "parking": "parking",
        "parked": "parking",
        "leaves": "leaf",
        "mice": "mous",
        "children": "child",
        "people": "person",
    },
    # Spanish stems that would collide with everyday words: "meter" (parking meter) with
    # "meten"/"metieron" (put in), "poda"/"podar" (pruning) with "podemos" (we can).
    "es": {
        "meter": "meter",
        "meters": "meter",
        "poda": "podar",
        "podar": "podar",
        "podaron": "podar",
        "podando": "podar",
    },
}


def language_key(language: str | None) -> str:
    """The supported language code for ``language`` ("es-MX" -> "es"); unknown -> "en"."""
    code = (language or DEFAULT_LANGUAGE).lower().replace("_", "-").split("-")[0]
    return code if code in SNOWBALL_LANGUAGES else DEFAULT_LANGUAGE


def stopwords(language: str = DEFAULT_LANGUAGE) -> frozenset[str]:
    """The stopword list of ``language`` (``schemas/stopwords/<code>.txt``; empty if none)."""
    return _stopword_list(language_key(language))


STOPWORDS = stopwords(DEFAULT_LANGUAGE)


@lru_cache(maxsize=16)
def _stemmer(language: str) -> snowballstemmer.Stemmer:
    stemmer = snowballstemmer.stemmer(SNOWBALL_LANGUAGES[language_key(language)])
    # PyStemmer (when installed) keeps its own cache of 10 000 words, but it only ever sees the
    # words ``stem_words``' cache has not: measured, it triples the cost of stemming a new word
    # (1.4 against 0.4 µs; a new report has about five new words and pairs). Same stems.
    if hasattr(stemmer, "maxCacheSize"):
        stemmer.maxCacheSize = 0
    return stemmer


@lru_cache(maxsize=131072)
def stem(word: str, language: str = DEFAULT_LANGUAGE) -> str:
    """Snowball stem of a lowercase word in ``language`` (plus a few exceptions, see above)."""
    return _stem(word, language_key(language))


# Languages whose residents often type without accents ("tuberia", "senal", "dueno"): their words
# are folded (accents and tilde dropped) before stemming, so both spellings share one stem.
_FOLDED_LANGUAGES = frozenset({"es", "pt", "ca"})


def _fold(word: str) -> str:
    """``word`` without combining marks: "tubería" -> "tuberia", "señal" -> "senal"."""
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


def _stem(word: str, lang: str) -> str:
    special = _STEM_EXCEPTIONS.get(lang)
    if special and word in special:
        return special[word]
    if lang in _FOLDED_LANGUAGES:
        word = _fold(word)
        if special and word in special:
            return special[word]
    if len(word) <= 2 or word.isdigit():
        return word
    return str(_stemmer(lang).stemWord(word))


_STEM_CACHE_MAX = 131072
_stem_caches: dict[str, dict[str, str]] = {}


def stem_words(ws: tuple[str, ...] | list[str], language: str = DEFAULT_LANGUAGE) -> list[str]:
    """``[stem(w, language) for w in ws]`` through a plain per-language dict (the hot path)."""
    lang = language_key(language)
    cache = _stem_caches.get(lang)
    if cache is None:
        cache = _stem_caches[lang] = {}
    out = [cache.get(w) for w in ws]
    if None in out:
        if len(cache) > _STEM_CACHE_MAX:
            cache.clear()
        for i, w in enumerate(ws):
            if out[i] is None:
                out[i] = cache[w] = _stem(w, lang)
    return out  # type: ignore[return-value]


def _stem_one(word: str, lang: str) -> str:
    """``stem(word, lang)`` for a supported ``lang`` key, through ``stem_words``' cache."""
    cache = _stem_caches.get(lang)
    found = cache.get(word) if cache is not None else None
    return found if found is not None else stem_words((word,), lang)[0]


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


_last_words: tuple[str, tuple[str, ...]] = ("", ())


def words(text: str) -> tuple[str, ...]:
    """Lowercase words of ``text`` without apostrophes and bare numbers (shared with the model).

    The last answer is kept, because the blended classifier asks twice for the same text.
    """
    global _last_words
    last = _last_words  # one read: safe across threads
    if last[0] == text:
        return last[1]
    lowered = text.lower().replace("'", "").replace("\u2019", "").replace("`", "")
    found = tuple([w for w in _TOKEN_RE.findall(lowered) if not w.isdigit()])
    _last_words = (text, found)
    return found


class _Tokenizer:
    """Words -> stems, joining split compounds ("pot hole", "street light") the taxonomy knows."""

    def __init__(self, language: str = DEFAULT_LANGUAGE, compounds: frozenset[str] = frozenset()) -> None:
        self.language = language_key(language)
        self.compounds = compounds
        self.stopwords = stopwords(self.language)
        # Stemming only rewrites the end of a word, so a pair can only join into a compound whose
        # first letters the first word shares: a set lookup that skips most stem() calls.
        self._heads = frozenset(c[:k] for c in compounds for k in (1, 2, 3))
        # word -> its token: its stem, or "" for a stopword (dropped). One lookup a word instead of
        # a stem lookup and a stopword lookup; filled from ``stem_words``' cache, so the same stems.
        self._token_of: dict[str, str] = {}

    def tokens(self, text: str) -> list[str]:
        ws = words(text)
        token_of = self._token_of
        toks = list(map(token_of.get, ws))
        if None in toks and not self._learn(ws, toks):
            return self._reference_tokens(ws)
        heads = self._heads
        # Most texts hold no split compound: find the pairs that could join first (a set lookup
        # each), and take the per-word loop below only when one really joins.
        if heads:
            compounds = self.compounds
            lang = self.language
            cache = _stem_caches.get(lang)
            if cache is None:
                cache = _stem_caches[lang] = {}
            for joined in [ws[i] + ws[i + 1] for i in range(len(ws) - 1) if ws[i][:3] in heads]:
                found = cache.get(joined)
                if found is None:  # a pair not seen before (most pairs of a new report): as stem_words
                    if len(cache) > _STEM_CACHE_MAX:
                        cache.clear()
                    found = cache[joined] = _stem(joined, lang)
                if found in compounds:
                    return self._joined(ws, toks)  # type: ignore[arg-type]
        return [t for t in toks if t]  # type: ignore[misc]

    def _learn(self, ws: tuple[str, ...], toks: list[str | None]) -> bool:
        """Fill the words of ``ws`` that ``_token_of`` does not know yet (in ``toks`` too).

        False when a word cannot be kept there: a word whose stem is empty would read as a
        stopword (no Snowball stemmer makes one; ``_reference_tokens`` then answers instead).
        """
        token_of = self._token_of
        if len(token_of) > _STEM_CACHE_MAX:
            token_of.clear()
        skip = self.stopwords
        missing = [w for w, t in zip(ws, toks, strict=True) if t is None]
        learned: dict[str, str] = {}  # read back from here, not from the cache another thread may clear
        for w, st in zip(missing, stem_words(missing, self.language), strict=True):
            if w in skip:
                st = ""
            elif not st:
                return False
            learned[w] = token_of[w] = st
        for i, t in enumerate(toks):
            if t is None:
                toks[i] = learned[ws[i]]
        return True

    def _reference_tokens(self, ws: tuple[str, ...]) -> list[str]:
        """``tokens`` the plain way (stems, then stopwords): what the fast path must equal."""
        lang = self.language
        stems = stem_words(ws, lang)
        skip = self.stopwords
        heads = self._heads
        if heads:
            for i in range(len(ws) - 1):
                if ws[i][:3] in heads and _stem_one(ws[i] + ws[i + 1], lang) in self.compounds:
                    return self._joined(ws, stems)
        return [st for w, st in zip(ws, stems, strict=True) if w not in skip]

    def _joined(self, ws: tuple[str, ...], stems: list[str]) -> list[str]:
        """``tokens`` with compounds joined, left to right ("pot hole" -> "pothol").

        ``stems[i]`` is read only for a word that is not a stopword.
        """
        lang = self.language
        out: list[str] = []
        i = 0
        n = len(ws)
        compounds = self.compounds
        heads = self._heads
        skip = self.stopwords
        while i < n:
            word = ws[i]
            if i + 1 < n and word[:3] in heads:
                joined = _stem_one(word + ws[i + 1], lang)
                if joined in compounds:
                    out.append(joined)
                    i += 2
                    continue
            if word not in skip:
                out.append(stems[i])
            i += 1
        return out


def _ngrams(tokens: list[str], max_n: int, prefixes: frozenset[str] | None = None) -> list[str]:
    """Tokens and their 2..max_n-word phrases, each once; with ``prefixes``, only phrases that
    extend one.

    In the order they occur, not a set's: ``Classifier.scores`` adds the features' weights in
    this order, and float addition is not associative, so a set's order (which follows the
    process's hash seed) made an exact tie between two services fall differently in another
    process: a replay could classify the same report as another service.
    """
    feats = dict.fromkeys(tokens)
    n_tokens = len(tokens)
    # With prefixes, a phrase can only start at a token that begins an indexed phrase.
    starts = range(n_tokens) if prefixes is None else [i for i, t in enumerate(tokens) if t in prefixes]
    for i in starts:
        phrase = tokens[i]
        for j in range(i + 1, min(n_tokens, i + max_n)):
            if prefixes is not None and phrase not in prefixes:
                break  # no indexed phrase starts this way: longer ones cannot match either
            phrase = f"{phrase} {tokens[j]}"
            feats[phrase] = None
    return list(feats)


def _examples(service: Service, language: str) -> tuple[str, ...]:
    """The example sentences an index in ``language`` learns from: that language's own
    (``examples_by_language``) where the taxonomy has them, else the English ``examples``.

    Why not both: each example word's weight is shared out over the service's examples, so
    mixing languages dilutes each; measured on the Spanish tune set, own-language only was best
    (0.973 top-1, 0.040 triage; both mixed: 0.967, 0.040; English only: 0.973, 0.060), and the
    English index, which never sees another language's examples, is unchanged.
    """
    if language == DEFAULT_LANGUAGE:
        return service.examples
    return service.examples_by_language.get(language, ()) or service.examples


class _Index:
    """The taxonomy's features and weights, with every phrase stemmed in one language."""

    def __init__(self, taxonomy: Taxonomy, language: str) -> None:
        n_services = len(taxonomy.services)
        # Single-word stems seen anywhere in the taxonomy; "street light" in text is joined into
        # "streetlight" only when the taxonomy spells it that way somewhere.
        plain = _Tokenizer(language)
        compounds: set[str] = set()
        for service in taxonomy.services:
            for phrase in (service.name, *service.keywords):
                toks = plain.tokens(phrase)
                if len(toks) == 1:
                    compounds.add(toks[0])
        self.tokenizer = _Tokenizer(language, frozenset(compounds))
        tok = self.tokenizer.tokens

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
            for sentence in (*_examples(service, language), service.description):
                counts.update(_ngrams(tok(sentence), 2))
            example_counts.append(counts)
        self.max_n = min(longest, MAX_NGRAM)

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
            n_examples = max(1, len(_examples(taxonomy.services[si], language)))
            for feat, count in counts.items():
                # Words that recur across a service's examples are more typical of it.
                share = min(1.0, count / n_examples) ** 0.5
                weight = EXAMPLE_WEIGHT * share * math.log(1 + n_services / df[feat])
                index[feat][si] = index[feat].get(si, 0.0) + weight
        self.weights: dict[str, tuple[tuple[int, float], ...]] = {
            feat: tuple(per_service.items()) for feat, per_service in index.items()
        }
        # Every proper word-prefix of an indexed phrase ("hole in the" of "hole in the road").
        prefixes: set[str] = set()
        for feat in self.weights:
            parts = feat.split(" ")
            prefixes.update(" ".join(parts[:k]) for k in range(1, len(parts)))
        self.prefixes = frozenset(prefixes)
        self.n_services = n_services

    def score(self, tokens: list[str]) -> list[float]:
        """Per-service sums of the weights of ``_ngrams(tokens, self.max_n, self.prefixes)``.

        The features are not listed first: the tokens, each once, then each phrase the first
        time it occurs, as ``_ngrams`` orders them, so every service's score is the same sum,
        added in the same order, to the last bit (see ``_ngrams``). Only phrases that have
        weights are remembered, because only they add anything.
        """
        scores = [0.0] * self.n_services
        weights = self.weights
        for hits in map(weights.get, dict.fromkeys(tokens)):
            if hits:
                for si, weight in hits:
                    scores[si] += weight
        prefixes = self.prefixes
        starts = [i for i, t in enumerate(tokens) if t in prefixes]
        if starts:
            n_tokens = len(tokens)
            max_n = self.max_n
            seen: set[str] = set()
            for i in starts:
                phrase = tokens[i]
                for j in range(i + 1, min(n_tokens, i + max_n)):
                    phrase = f"{phrase} {tokens[j]}"
                    hits = weights.get(phrase)
                    if hits and phrase not in seen:
                        seen.add(phrase)
                        for si, weight in hits:
                            scores[si] += weight
                    if phrase not in prefixes:
                        break  # no indexed phrase starts this way: longer ones cannot match either
        return scores


_MAX_LANGUAGE_SPELLINGS = 64  # language codes remembered as given: bounded, whatever channels send


class Classifier:
    """Scores text against every service in a taxonomy; build once, call ``classify`` per contact."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self._codes = taxonomy.codes
        self._fallback = taxonomy.fallback_code
        self._threshold = taxonomy.triage_threshold
        # English is indexed now; another language the first time a text in it arrives.
        self._indexes: dict[str, _Index] = {DEFAULT_LANGUAGE: _Index(taxonomy, DEFAULT_LANGUAGE)}
        self._seen: ShortTextMemo[Classification] = ShortTextMemo()  # see ``classify``

    def _index(self, language: str) -> _Index:
        index = self._indexes.get(language)  # the code as the channel spelled it, most often "en"
        if index is None:
            lang = language_key(language)
            index = self._indexes.get(lang)
            if index is None:
                index = self._indexes[lang] = _Index(self.taxonomy, lang)
            if len(self._indexes) < _MAX_LANGUAGE_SPELLINGS:
                self._indexes[language] = index  # "es-MX" -> the "es" index, without language_key
        return index

    def tokens(self, text: str, language: str = DEFAULT_LANGUAGE) -> list[str]:
        """The stems ``classify`` looks at (for debugging and for the learned model's features)."""
        return self._index(language).tokenizer.tokens(text)

    def scores(self, text: str, language: str = DEFAULT_LANGUAGE) -> list[float]:
        """Raw per-service scores in taxonomy order (for evaluation and debugging)."""
        idx = self._index(language)
        return idx.score(idx.tokenizer.tokens(text))

    def classify(self, text: str, language: str = DEFAULT_LANGUAGE) -> Classification:
        """Best service for ``text``; no evidence at all gives the fallback with confidence 0.

        A short text seen before in the same language gets the answer it got then (the answer
        is a pure function of the two, and short texts repeat: "Tree Trimming", "stump").
        """
        text = text or ""
        return self._seen.get(text, (text, language), lambda: self._classify(text, language))

    def _classify(self, text: str, language: str) -> Classification:
        scores = self.scores(text, language)
        # Ties keep file order: the first service with the top score wins, and the runner-up is
        # the first of the others with their top score (``list.index`` finds the first).
        top = max(scores)
        best = scores.index(top)
        second = -1
        if len(scores) > 1:
            others = scores.copy()
            others[best] = -math.inf
            second = others.index(max(others))
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
