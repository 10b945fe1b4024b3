"""Learned mode: a linear model trained on a city's own labelled reports, blended with the taxonomy.

The cold-start classifier (``normalizer.classify.Classifier``) knows only the taxonomy. Once a city
has a few thousand labelled reports, ``train`` fits TF-IDF features (stemmed words and word pairs,
plus character 2-5-grams within words, which absorb typos) and a linear model (LinearSVC by
default, or logistic regression) on them. The city's categories are mapped to taxonomy codes by a
YAML map; a category missing from the map is trained as the taxonomy's fallback and reported.

Confidence is calibrated on a held-back part of the training rows (never the rows the weights
were fitted on): the scores go through a softmax whose temperature minimises log-loss there, and
the top probability through an isotonic map, so 0.8 means about 80% right and the taxonomy's
``triage_threshold`` keeps its meaning.

``BlendedClassifier`` combines the model with the taxonomy scorer, so a service added to the
taxonomy after training (which the model has never seen) still gets its reports: when the
taxonomy scorer is confident about a code the model does not know, its answer wins; otherwise
the two are mixed with a weight chosen on the calibration rows.

At run time nothing from scikit-learn is used: the model file holds plain arrays (vocabularies,
IDF, weights, calibration), and ``classify`` computes the features itself with per-word caches
(see ``LearnedModel.decision``), which is what makes it fast enough for every contact.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from normalizer.classify import (
    DEFAULT_LANGUAGE,
    Classification,
    Classifier,
    language_key,
    stem,
    stem_words,
    words,
)
from schemas.memo import ShortTextMemo
from schemas.taxonomy import Taxonomy, load_taxonomy

FORMAT = "intake311-learned-classifier"
FORMAT_VERSION = 1
CHAR_NGRAMS = (2, 5)
CALIBRATION_SHARE = 0.2  # of the training rows, held back to calibrate confidence and the blend
# A code the model never saw wins when the taxonomy scorer is at least this sure of it. Fixed by
# design, not fitted: the calibration rows cannot contain codes the model has not seen. The cold
# scorer's answers at >= 0.8 are right ~92% of the time on held-out New Haven reports.
NEW_SERVICE_CONFIDENCE = 0.8
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
_CHAR_CACHE_MAX = 200_000


# --------------------------------------------------------------------------- features


def word_features(text: str, language: str = DEFAULT_LANGUAGE) -> list[str]:
    """Stems of all words (stopwords kept: "not picked up") and adjacent stem pairs (binary tf)."""
    stems = [stem(w, language) for w in words(text)]
    return stems + [f"{a} {b}" for a, b in itertools.pairwise(stems)]


def char_ngrams(word: str) -> list[str]:
    """Character 2-5-grams of `` word `` (padded, so prefixes and suffixes are marked)."""
    padded = f" {word} "
    lo, hi = CHAR_NGRAMS
    size = len(padded)
    return [padded[i : i + n] for n in range(lo, hi + 1) for i in range(size - n + 1)]


def char_features(text: str) -> list[str]:
    return [g for w in words(text) for g in char_ngrams(w)]


def _split_is_calibration(i: int, share: float) -> bool:
    bucket = int(hashlib.sha256(str(i).encode()).hexdigest()[:8], 16) % 1000
    return bucket < share * 1000


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = 5) -> list[dict[str, Any]]:
    """Rows of a reliability table: per confidence bin, count, mean confidence and accuracy."""
    table: list[list[float]] = [[0, 0.0, 0] for _ in range(bins)]
    for c, ok in zip(confidences, correct, strict=True):
        b = table[min(int(c * bins), bins - 1)]
        b[0] += 1
        b[1] += c
        b[2] += ok
    return [
        {
            "bin": f"{k / bins:.1f}-{(k + 1) / bins:.1f}",
            "n": int(n),
            "mean_confidence": round(s / n, 4) if n else None,
            "accuracy": round(hits / n, 4) if n else None,
        }
        for k, (n, s, hits) in enumerate(table)
    ]


class _Isotonic:
    """A monotone map fitted by isotonic regression, stored as interpolation knots."""

    def __init__(self, x: Sequence[float], y: Sequence[float]) -> None:
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self._xs = self.x.tolist()
        self._ys = self.y.tolist()

    @classmethod
    def fit(cls, scores: np.ndarray, correct: np.ndarray) -> _Isotonic:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, correct)
        return cls(iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())

    def __call__(self, value: float) -> float:
        xs, ys = self._xs, self._ys
        if not xs:
            return value
        i = bisect.bisect_right(xs, value)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (value - x0) / (x1 - x0) if x1 > x0 else ys[i]

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}


# --------------------------------------------------------------------------- the model


@dataclass
class LearnedModel:
    """A trained linear model over taxonomy codes; ``classify`` has the ``Classifier`` interface."""

    codes: tuple[str, ...]
    word_vocab: dict[str, int]
    word_idf: np.ndarray
    char_vocab: dict[str, int]
    char_idf: np.ndarray
    coef: np.ndarray  # (n_word + n_char features, n_codes)
    intercept: np.ndarray
    temperature: float
    calibration: _Isotonic
    fallback_code: str
    triage_threshold: float
    language: str = DEFAULT_LANGUAGE
    blend_weight: float = 0.0
    blend_calibration: _Isotonic = field(default_factory=lambda: _Isotonic([], []))
    new_service_confidence: float = NEW_SERVICE_CONFIDENCE
    meta: dict[str, Any] = field(default_factory=dict)
    _char_cache: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._code_index = {c: i for i, c in enumerate(self.codes)}
        self._n_word = len(self.word_vocab)
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float32)
        # One matrix to gather from: rows [0, n_word) are the word features' weights times their
        # IDF; after them come per-word character-block scores, grown on demand (row n_word: a
        # word with no known n-gram). Word rows are addressed as is, char rows by offset.
        n = self._n_word
        self._idf2 = (np.asarray(self.word_idf, dtype=float) ** 2).tolist()
        rows = np.zeros((n + 4096, len(self.codes)), dtype=np.float32)
        rows[:n] = self.coef[:n] * np.asarray(self.word_idf, dtype=np.float32)[:, None]
        self._rows = rows
        self._n_rows = n + 1

    # -- features and scores

    def _word_row(self, word: str) -> int:
        """Row of ``self._rows`` holding one word's share of the character block's scores."""
        vocab = self.char_vocab
        counts = Counter(vocab[g] for g in char_ngrams(word) if g in vocab)
        if not counts:
            row = self._n_word  # the zero row: no known n-gram
        else:
            rows = self._rows
            if self._n_rows >= len(rows):
                if len(rows) - self._n_word >= _CHAR_CACHE_MAX:  # a long-running process: start over
                    self._char_cache.clear()
                    self._n_rows = self._n_word + 1
                else:
                    grown = np.zeros((len(rows) + 4096, rows.shape[1]), dtype=np.float32)
                    grown[: len(rows)] = rows
                    self._rows = rows = grown
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            vals = (1.0 + np.log(tf)) * self.char_idf[idx]
            vals /= math.sqrt(float(vals @ vals))
            row = self._n_rows
            rows[row] = vals.astype(np.float32) @ self.coef[idx + self._n_word]
            self._n_rows += 1
        self._char_cache[word] = row
        return row

    def decision(self, text: str) -> tuple[np.ndarray, int]:
        """Linear scores per code and how many known features the text had.

        Features: binary TF-IDF (L2-normalised) of stems and stem pairs, plus a character block
        that is the sum of each word's unit TF-IDF 2-5-gram vector divided by the square root of
        the number of words. That block is a sum over words, so each word's share of the scores
        is computed once and cached; the word block's rows are pre-multiplied by their IDF. One
        gather and one dot product per call: that is what makes a call take microseconds.
        """
        ws = words(text)
        if not ws:
            return self.intercept.astype(float), 0
        cache = self._char_cache
        rows = [r if (r := cache.get(w)) is not None else self._word_row(w) for w in ws]
        stems = stem_words(ws, self.language)
        get = self.word_vocab.get
        feats = {*stems, *[f"{a} {b}" for a, b in itertools.pairwise(stems)]}
        found = [j for j in map(get, feats) if j is not None]
        n_chars = len(ws) - rows.count(self._n_word)
        if not found and not n_chars:
            return self.intercept.astype(float), 0
        idf2 = self._idf2
        norm = math.sqrt(sum(map(idf2.__getitem__, found))) if found else 1.0
        weights = np.array(
            [1.0 / math.sqrt(len(ws))] * len(rows) + [1.0 / norm] * len(found), dtype=np.float32
        )
        scores = np.dot(weights, self._rows[rows + found]) + self.intercept
        return scores, len(found) + n_chars

    def probabilities(self, text: str) -> tuple[np.ndarray, int]:
        """Softmax probabilities over ``codes`` (uncalibrated) and the number of known features."""
        scores, hits = self.decision(text)
        return _softmax(self.temperature * np.asarray(scores, dtype=float)), hits

    def top_two(self, text: str) -> tuple[int, float, int | None, int]:
        """Index and softmax probability of the best code, index of the runner-up, feature count."""
        scores, hits = self.decision(text)
        z = scores * self.temperature
        best = int(z.argmax())
        e = np.exp(z - z[best])
        top = 1.0 / float(e.sum())
        e[best] = -1.0
        second = int(e.argmax()) if len(e) > 1 else None
        return best, top, second, hits

    def classify(self, text: str, language: str = DEFAULT_LANGUAGE) -> Classification:
        """The model alone. A text with no known word or n-gram gets the fallback at 0."""
        del language  # the model knows one language; BlendedClassifier routes the others
        best, top, second, hits = self.top_two(text or "")
        if hits == 0:
            return Classification(self.fallback_code, 0.0, triage=True)
        confidence = self.calibration(top)
        code = self.codes[best]
        return Classification(
            code,
            round(confidence, 4),
            triage=confidence < self.triage_threshold or code == self.fallback_code,
            runner_up=self.codes[second] if second is not None else None,
        )

    # -- persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": self.meta,
            "codes": list(self.codes),
            "language": self.language,
            "fallback_code": self.fallback_code,
            "triage_threshold": self.triage_threshold,
            "word_vocab": self.word_vocab,
            "word_idf": self.word_idf,
            "char_vocab": self.char_vocab,
            "char_idf": self.char_idf,
            "coef": self.coef,
            "intercept": self.intercept,
            "temperature": self.temperature,
            "calibration": self.calibration.to_dict(),
            "blend_weight": self.blend_weight,
            "blend_calibration": self.blend_calibration.to_dict(),
            "new_service_confidence": self.new_service_confidence,
        }

    def save(self, path: str | Path) -> Path:
        """Write the versioned model file (joblib; plain arrays and dicts, no pickled code)."""
        import joblib

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.to_dict(), out, compress=3)
        return out

    @classmethod
    def load(cls, path: str | Path, taxonomy: Taxonomy | None = None) -> LearnedModel:
        """Read a model file; refuse another format version or codes the taxonomy lacks.

        Raises ``ValueError("<file>: ...")``; a missing file raises ``FileNotFoundError``.
        """
        import joblib

        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(f"{file}: model file not found")
        try:
            data = joblib.load(file)
        except Exception as exc:  # a truncated or foreign file: say which one
            raise ValueError(f"{file}: not a readable model file: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{file}: not an intake311 classifier model file")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{file}: model format version {version}, this intake311 reads version {FORMAT_VERSION};"
                " retrain with `intake311 classifier train`"
            )
        taxonomy = taxonomy or load_taxonomy()
        missing = [c for c in data["codes"] if taxonomy.get(c) is None]
        if missing:
            raise ValueError(
                f"{file}: the model predicts service codes that are not in the taxonomy: "
                f"{', '.join(missing)}; retrain, or restore those services"
            )
        return cls(
            codes=tuple(data["codes"]),
            word_vocab=dict(data["word_vocab"]),
            word_idf=np.asarray(data["word_idf"], dtype=float),
            char_vocab=dict(data["char_vocab"]),
            char_idf=np.asarray(data["char_idf"], dtype=float),
            coef=np.asarray(data["coef"]),
            intercept=np.asarray(data["intercept"], dtype=np.float32),
            temperature=float(data["temperature"]),
            calibration=_Isotonic(**data["calibration"]),
            fallback_code=taxonomy.fallback_code,
            triage_threshold=taxonomy.triage_threshold,
            language=data.get("language", DEFAULT_LANGUAGE),
            blend_weight=float(data["blend_weight"]),
            blend_calibration=_Isotonic(**data["blend_calibration"]),
            new_service_confidence=float(data["new_service_confidence"]),
            meta=dict(data["meta"]),
        )


# --------------------------------------------------------------------------- blending


class BlendedClassifier:
    """The learned model and the taxonomy scorer together, with ``Classifier``'s interface.

    - no known feature for the model, or a language the model was not trained in: the taxonomy
      scorer answers alone;
    - the taxonomy scorer names a code the model never saw (a service added after training) with
      confidence >= ``model.new_service_confidence``: that answer wins;
    - otherwise ``(1 - w) * model probabilities + w * taxonomy confidence on its top code``, with
      ``w = model.blend_weight`` chosen on the calibration rows, and the top value calibrated.
    """

    def __init__(self, taxonomy_classifier: Classifier, model: LearnedModel) -> None:
        self.taxonomy = taxonomy_classifier.taxonomy
        self.cold = taxonomy_classifier
        self.model = model
        self._threshold = self.taxonomy.triage_threshold
        self._fallback = self.taxonomy.fallback_code
        self._known = frozenset(model.codes)
        self._model_index = {c: i for i, c in enumerate(model.codes)}
        self._seen: ShortTextMemo[Classification] = ShortTextMemo()  # see ``classify``

    def classify(self, text: str, language: str = DEFAULT_LANGUAGE) -> Classification:
        """The blend for ``text`` (a short text seen before: the answer it got, as ``Classifier``)."""
        text = text or ""
        return self._seen.get(text, (text, language), lambda: self._classify(text, language))

    def _classify(self, text: str, language: str) -> Classification:
        cold = self.cold.classify(text, language)
        model = self.model
        if language_key(language) != model.language:
            return cold
        probs, hits = model.probabilities(text)
        if hits == 0:
            return cold
        code = cold.service_code
        if (
            code not in self._known
            and code != self._fallback
            and cold.confidence >= model.new_service_confidence
        ):
            return cold
        return self._mix(probs, cold)

    def _mix(self, probs: np.ndarray, cold: Classification) -> Classification:
        w = self.model.blend_weight
        mixed = (1.0 - w) * probs
        extra_code: str | None = None
        extra = 0.0
        if w and cold.confidence > 0:
            i = self._model_index.get(cold.service_code)
            if i is None:
                extra_code, extra = cold.service_code, w * cold.confidence
            else:
                mixed[i] += w * cold.confidence
        order = np.argsort(mixed)[::-1]
        best = int(order[0])
        top = float(mixed[best])
        codes = self.model.codes
        code, runner = codes[best], codes[int(order[1])] if len(order) > 1 else None
        if extra_code is not None and extra > top:
            code, runner, top = extra_code, code, extra
        confidence = self.model.blend_calibration(top) if w else self.model.calibration(top)
        return Classification(
            code,
            round(confidence, 4),
            triage=confidence < self._threshold or code == self._fallback,
            runner_up=runner,
        )


# --------------------------------------------------------------------------- training

Row = tuple[str | Sequence[str], str]


def load_category_map(path: str | Path, taxonomy: Taxonomy) -> dict[str, str]:
    """A YAML mapping ``city category: taxonomy code``; every code must be in the taxonomy."""
    file = Path(path)
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of city category -> service code")
    mapping = {str(k): str(v) for k, v in data.items()}
    unknown = sorted({v for v in mapping.values() if taxonomy.get(v) is None})
    if unknown:
        raise ValueError(f"{file}: codes not in the taxonomy: {', '.join(unknown)}")
    return mapping


def _variants(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def train(
    rows: Iterable[Row],
    taxonomy: Taxonomy,
    mapping: Mapping[str, str],
    *,
    estimator: str = "svm",
    c: float | None = None,
    calibration_share: float = CALIBRATION_SHARE,
    language: str = DEFAULT_LANGUAGE,
    min_df: int = 2,
) -> LearnedModel:
    """Fit the model on ``(text, city_category)`` rows.

    A row's text may be a sequence of variants of one report (e.g. with and without the app's
    default title); variants stay on the same side of the calibration split. A share of the rows
    (``calibration_share``, chosen by a hash of the row number) is held back: the weights never
    see it, and the softmax temperature, the isotonic confidence map and the blend weight are fitted
    on it. ``estimator`` is "svm" (LinearSVC) or "logreg" (multinomial logistic regression).
    Categories missing from ``mapping`` are trained as the taxonomy's fallback and counted in
    ``model.meta["unmapped"]``.
    """
    import sklearn
    from sklearn.feature_extraction.text import TfidfVectorizer

    lang = language_key(language)
    fallback = taxonomy.fallback_code
    bad = sorted({v for v in mapping.values() if taxonomy.get(v) is None})
    if bad:
        raise ValueError(f"category map names codes that are not in the taxonomy: {', '.join(bad)}")
    unmapped: Counter[str] = Counter()
    fit_texts: list[str] = []
    fit_labels: list[str] = []
    cal_texts: list[str] = []
    cal_labels: list[str] = []
    n_rows = n_empty = 0
    for i, (text, category) in enumerate(rows):
        n_rows += 1
        code = mapping.get(category)
        if code is None:
            unmapped[category] += 1
            code = fallback
        texts = [t for t in _variants(text) if words(t)]
        if not texts:
            n_empty += 1  # nothing to learn from; the fallback handles empty reports
            continue
        if _split_is_calibration(i, calibration_share):
            cal_texts += texts
            cal_labels += [code] * len(texts)
        else:
            fit_texts += texts
            fit_labels += [code] * len(texts)
    if len(set(fit_labels)) < 2:
        raise ValueError("training needs rows of at least two services")

    word_vec = TfidfVectorizer(
        analyzer=lambda t: word_features(t, lang), binary=True, min_df=min_df, dtype=np.float32
    )
    char_vec = TfidfVectorizer(analyzer=char_features, sublinear_tf=True, min_df=min_df, dtype=np.float32)
    from scipy.sparse import hstack

    x_word = word_vec.fit_transform(fit_texts)
    char_vec.fit(fit_texts)
    x_fit = hstack([x_word, _char_block(char_vec, fit_texts)]).tocsr()
    if estimator == "svm":
        from sklearn.svm import LinearSVC

        clf: Any = LinearSVC(C=0.5 if c is None else c)
    elif estimator == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=10.0 if c is None else c, max_iter=2000)
    else:
        raise ValueError(f"estimator must be 'svm' or 'logreg', not {estimator!r}")
    clf.fit(x_fit, fit_labels)
    classes = tuple(str(k) for k in clf.classes_)
    coef = np.asarray(clf.coef_, dtype=np.float32)
    intercept = np.asarray(clf.intercept_, dtype=np.float32)
    if len(classes) == 2:  # binary: sklearn keeps one row; make it a two-column softmax
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2], dtype=np.float32)

    word_vocab = {str(k): int(v) for k, v in word_vec.vocabulary_.items()}
    char_vocab = {str(k): int(v) for k, v in char_vec.vocabulary_.items()}
    model = LearnedModel(
        codes=classes,
        word_vocab=word_vocab,
        word_idf=np.asarray(word_vec.idf_, dtype=float),
        char_vocab=char_vocab,
        char_idf=np.asarray(char_vec.idf_, dtype=float),
        coef=coef.T,
        intercept=intercept,
        temperature=1.0,
        calibration=_Isotonic([], []),
        fallback_code=fallback,
        triage_threshold=taxonomy.triage_threshold,
        language=lang,
    )
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "sklearn_version": sklearn.__version__,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "estimator": type(clf).__name__,
        "language": lang,
        "taxonomy_codes": list(taxonomy.codes),
        "model_codes": list(classes),
        "rows": n_rows,
        "rows_without_text": n_empty,
        "fit_texts": len(fit_texts),
        "calibration_texts": len(cal_texts),
        "unmapped": dict(unmapped),
        "features": {"word": len(word_vocab), "char": len(char_vocab)},
    }
    if cal_texts:
        _calibrate(model, taxonomy, cal_texts, cal_labels, meta)
    model.meta = meta
    return model


def _char_block(char_vec: Any, texts: list[str]) -> Any:
    """Rows: the sum of each word's unit TF-IDF character n-gram vector / sqrt(number of words)."""
    from scipy.sparse import csr_matrix, diags

    index: dict[str, int] = {}
    data: list[float] = []
    cols: list[int] = []
    indptr = [0]
    scale = []
    for text in texts:
        ws = words(text)
        counts = Counter(index.setdefault(w, len(index)) for w in ws)
        cols += counts.keys()
        data += counts.values()
        indptr.append(len(cols))
        scale.append(1.0 / math.sqrt(len(ws)) if ws else 0.0)
    doc_words = csr_matrix((data, cols, indptr), shape=(len(texts), len(index)), dtype=np.float32)
    per_word = char_vec.transform(list(index))  # unit rows: each word's n-grams, tf-idf weighted
    return diags(np.asarray(scale, dtype=np.float32)) @ doc_words @ per_word


def _calibrate(
    model: LearnedModel, taxonomy: Taxonomy, texts: list[str], labels: list[str], meta: dict[str, Any]
) -> None:
    """Temperature, isotonic confidence map and blend weight, all from the held-back rows."""
    scores = np.vstack([model.decision(t)[0] for t in texts]).astype(float)
    label_idx = np.array([model._code_index.get(lab, -1) for lab in labels])
    seen = label_idx >= 0
    best_t, best_nll = 1.0, math.inf
    for t in np.geomspace(0.25, 64, 50):
        p = _softmax(t * scores[seen])
        nll = -float(np.mean(np.log(p[np.arange(seen.sum()), label_idx[seen]] + 1e-12)))
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    model.temperature = best_t
    probs = _softmax(best_t * scores)
    top = probs.max(axis=1)
    correct = np.array(
        [model.codes[int(i)] == lab for i, lab in zip(probs.argmax(axis=1), labels, strict=True)]
    )
    model.calibration = _Isotonic.fit(top, correct.astype(float))
    calibrated = [model.calibration(float(v)) for v in top]
    meta["temperature"] = best_t
    meta["calibration_accuracy"] = round(float(correct.mean()), 4)
    meta["reliability_raw"] = reliability(top.tolist(), correct.tolist())
    meta["reliability"] = reliability(calibrated, correct.tolist())
    meta["triage_share"] = round(float(np.mean([c < model.triage_threshold for c in calibrated])), 4)

    # The blend weight: the best accuracy on the held-back rows (ties keep the smaller weight).
    cold = Classifier(taxonomy)
    colds = [cold.classify(t) for t in texts]
    best_w, best_acc, best_top = 0.0, -1.0, np.zeros(0)
    for w in BLEND_WEIGHTS:
        model.blend_weight = w
        blend = BlendedClassifier(cold, model)
        tops, oks = [], []
        for p, c, lab in zip(probs, colds, labels, strict=True):
            if (
                c.service_code not in blend._known
                and c.service_code != taxonomy.fallback_code
                and c.confidence >= model.new_service_confidence
            ):
                tops.append(c.confidence)
                oks.append(c.service_code == lab)
                continue
            mixed = (1.0 - w) * p
            i = blend._model_index.get(c.service_code)
            if i is not None:
                mixed[i] += w * c.confidence
            j = int(mixed.argmax())
            tops.append(float(mixed[j]))
            oks.append(model.codes[j] == lab)
        acc = float(np.mean(oks))
        if acc > best_acc + 1e-9:
            best_w, best_acc, best_top = w, acc, np.array([tops, oks], dtype=float)
        meta.setdefault("blend_search", {})[str(w)] = round(acc, 4)
    model.blend_weight = best_w
    model.blend_calibration = _Isotonic.fit(best_top[0], best_top[1])
    meta["blend_weight"] = best_w
    meta["blend_calibration_accuracy"] = round(best_acc, 4)


# --------------------------------------------------------------------------- CLI entry point


def read_training_csv(
    csv_path: str | Path, text_columns: Sequence[str], label_column: str, *, titles: str = "both"
) -> list[Row]:
    """Rows of a labelled CSV export as ``(text variants, category)``.

    A text column whose value is exactly a category name is the app's default title (the label
    echoed back). ``titles``: "keep" it, "drop" it, or "both" (train on each report with and without).
    """
    if titles not in {"keep", "drop", "both"}:
        raise ValueError(f"titles must be keep, drop or both, not {titles!r}")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in (*text_columns, label_column) if c not in header]
        if missing:
            raise ValueError(
                f"{csv_path}: no column(s) {', '.join(missing)}; columns are {', '.join(header)}"
            )
        raw = list(reader)
    categories = {r[label_column].strip().lower() for r in raw if r[label_column].strip()}
    rows: list[Row] = []
    for r in raw:
        label = r[label_column].strip()
        if not label:
            continue
        values = [" ".join((r.get(c) or "").split()) for c in text_columns]
        kept = " ".join(v for v in values if v)
        bare = " ".join(v for v in values if v and v.lower() not in categories)
        if titles == "keep":
            rows.append((kept, label))
        elif titles == "drop":
            rows.append((bare, label))
        else:
            rows.append(((kept, bare) if bare != kept else kept, label))
    return rows


def train_command(
    csv_path: Path,
    text_columns: list[str],
    label_column: str,
    map_path: Path | None,
    out: Path,
    taxonomy_path: Path | None,
    *,
    estimator: str = "svm",
    titles: str = "both",
) -> dict[str, Any]:
    """Train from a CSV export and write the model file; returns the model's metadata (a report).

    Without ``map_path`` a category counts as mapped when it is a taxonomy code or a service name
    (case-insensitive); the rest go to the fallback and are listed under ``unmapped``.
    """
    taxonomy = load_taxonomy(taxonomy_path)
    rows = read_training_csv(csv_path, text_columns, label_column, titles=titles)
    if map_path is not None:
        mapping = load_category_map(map_path, taxonomy)
    else:
        by_name = {s.name.lower(): s.code for s in taxonomy.services} | {c: c for c in taxonomy.codes}
        mapping = {cat: by_name[cat.lower()] for _, cat in rows if cat.lower() in by_name}
    model = train(rows, taxonomy, mapping, estimator=estimator)
    model.meta["source"] = str(csv_path)
    model.meta["text_columns"] = list(text_columns)
    model.meta["label_column"] = label_column
    model.meta["titles"] = titles
    path = model.save(out)
    return {"model": str(path), **model.meta}
