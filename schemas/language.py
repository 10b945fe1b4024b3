"""The one language detector every channel uses: which configured language a resident wrote in.

A city configures the languages it answers in (``settings.languages``, ISO 639-1 codes). Every
channel asks ``detector(languages)`` what a text is written in, so "no hay agua" is Spanish
whether it came by SMS, email, a tweet or the web form.

The detector is lingua (https://github.com/pemistahl/lingua-py) restricted to the configured
languages, plus a function-word count. Restricting lingua matters: asked "English, Spanish or
any of 75 others?" a three-word text is often Catalan or Tagalog; asked "English or Spanish?"
it is nearly always right. The function words matter for the shortest texts: lingua alone says
"hay un bache en la calle" is English (0.63), because "hay", "un", "en" and "la" are all
common letter sequences in English too, while four words that only Spanish uses as function
words leave no doubt. ``bench/language_eval.py`` measures the combination against lingua
alone (see docs/language.md for the figures); the combination is used because it wins there.

"Don't know" is a real answer: an address ("123 Main St"), a number, or one word that both
languages share says nothing, and then the channel's hint (the tweet's ``lang``, the email's
Content-Language, the browser's Accept-Language, the conversation so far) decides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
from lingua import LanguageDetector as _Lingua

from schemas.memo import ShortTextMemo
from schemas.stopwords import stopwords

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "es")

# Each function word a text has that only language X uses counts this much (in natural-log
# odds) for X, on top of lingua's own log confidence. Tuned on a development split (English
# descriptions outside the benchmark sample, Spanish texts not in the benchmark file).
FUNCTION_WORD_WEIGHT = 1.0
# The best language must beat the next by this much (log odds, ~2:1) or the text does not say.
MARGIN = math.log(2.0)
# One word of evidence is trusted only when lingua is sure ("pothole" 0.97 English, "ratas"
# 0.93 Spanish; "bache" 0.83 English, wrongly; "Test" 0.52 Spanish): one word is often a tie.
SINGLE_WORD_CONFIDENCE = 0.9
# Lingua's confidence is floored here before its log is taken (a language it rules out outright,
# e.g. English for a text with "ñ", is not minus infinity).
_FLOOR = 1e-4
# A function-word lead this large decides against any lingua confidences (see ``_decided``).
_DECISIVE = MARGIN - math.log(_FLOOR)
# A lead larger than this leaves every other language no win (see ``_from_text``'s ``settle``).
_SETTLED = -math.log(_FLOOR) - MARGIN

_APOSTROPHES = "'\u2019"
_TOKEN = re.compile(rf"[\w{_APOSTROPHES}]+")
_NO_APOSTROPHES = str.maketrans("", "", _APOSTROPHES)
_DIGIT = re.compile(r"\d")
# Parts of a US address: a text made only of these (and numbers, and one name) is a location.
_ADDRESS_PARTS = (
    "st street ave av avenue rd road blvd boulevard dr drive ln lane ct court pl place way hwy highway "
    "pkwy parkway ter terrace sq square cir circle apt unit ste suite fl floor n s e w ne nw se sw nd th"
)
_ADDRESS_WORDS = frozenset(_ADDRESS_PARTS.split())
# Only an abbreviation (or a number) marks a text as holding an address: "Street Lamp Out" is prose.
_ABBREVIATIONS = "st ave av rd blvd dr ln ct pl hwy pkwy ter sq cir apt ste"
_ADDRESS_ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())
# Marks that only one configured language writes, counted like one function word (presence).
# Both cases spelled out rather than IGNORECASE: the same characters match (checked over every
# code point in tests/unit/test_normalizer_speed_geo.py), and the scan runs on every text.
_MARKS = {"es": re.compile(r"[ñÑ¿¡]")}
# The marks an ASCII text can have (each mark is one character): none of these so far.
_ASCII_MARKS = {code: marks for code, marks in _MARKS.items() if marks.search("".join(map(chr, range(128))))}
# ASCII bytes -> the same byte where ``_TOKEN`` matches it (letters, digits, "'": an ASCII text
# without "_"), a space elsewhere; ``_LOWER_TOKEN_BYTES`` lowercases the letters too.
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'")
_TOKEN_BYTES = bytes(b if chr(b) in _TOKEN_CHARS else 32 for b in range(256))
_LOWER_TOKEN_BYTES = bytes(ord(chr(b).lower()) if chr(b) in _TOKEN_CHARS else 32 for b in range(256))
# What lingua reads of an ASCII text, its letter runs lowercased (``lingua_key``): ASCII bytes ->
# the lowercase letter, a space for anything else.
_LINGUA_BYTES = bytes(ord(chr(b).lower()) if chr(b).isalpha() and b < 128 else 32 for b in range(256))
# Lingua's answers are kept for texts at most this long: New Haven's repeats by ``lingua_key``
# (2% of the texts lingua is asked about; "Tree Trimming ward 7", operator templates with another
# address) are all shorter than 200 characters, and a longer text only pays for its key.
LINGUA_KEPT_CHARS = 300
# Texts at least this long are read by lingua's low accuracy mode (``LanguageDetector._lingua_for``).
LOW_ACCURACY_CHARS = 60


def normalise_tag(tag: str | None) -> str | None:
    """The primary subtag of a language tag, lowercased: "es-MX" / "es_MX" / "ES" -> "es".

    Providers send "und" (undetermined) or a list ("es-MX, en"); the first tag counts.
    """
    if not tag:
        return None
    first = tag.split(",")[0].strip().replace("_", "-")
    primary = first.split("-")[0].split(";")[0].strip().lower()
    return primary or None


def check_languages(codes: Iterable[str]) -> tuple[str, ...]:
    """Configured codes, lowercased and without duplicates; a code lingua does not know is refused.

    Called when settings load, so a typo ("sp" for Spanish) stops the process at start rather
    than answering every resident in the fallback language.
    """
    out: list[str] = []
    for raw in codes:
        code = str(raw).strip().lower()
        try:
            IsoCode639_1.from_str(code)
        except ValueError:
            raise ValueError(
                f"unknown language code {raw!r}: use ISO 639-1 codes the detector knows "
                "(e.g. en, es, vi, zh, ht; see docs/language.md)"
            ) from None
        if code not in out:
            out.append(code)
    if not out:
        raise ValueError("at least one language must be configured (e.g. en)")
    return tuple(out)


def lingua_key(text: str) -> str:
    """A key that lingua's confidences for ``text`` are a function of: texts with one key get one answer.

    Lingua reads a text only as its words (lingua-rs ``split_text_into_words``: the runs of
    ``\\p{L}`` in ``text.trim().to_lowercase()``, or of a few scripts ASCII has none of) and
    computes every confidence from those words alone. For an ASCII text the runs are the
    ``[a-z]+`` of the lowered text, joined here with spaces, so "Deep pothole number 12-7" and
    "deep pothole number 13-8" are one key: numbers, punctuation and case do not reach lingua.
    Any other text is its own key (it holds a non-ASCII character, so it is no ASCII text's key).
    """
    if text.isascii():
        return " ".join(text.encode("ascii").translate(_LINGUA_BYTES).decode("ascii").split())
    return text


def _word(token: str) -> str:
    """A token as the stopword files write it: lowercased, apostrophes dropped ("don't" -> "dont")."""
    return token.translate(_NO_APOSTROPHES).lower()


def _has_digit(word: str) -> bool:
    # \w-tokens without "_" are alphanumeric: an alphabetic one (nearly all) has no digit to look for.
    return not word.isalpha() and any(c.isdigit() for c in word)


def evidence_words(text: str, function_words: frozenset[str] = frozenset()) -> list[str]:
    """The words that can say what language a text is: no numbers, no address parts.

    In a text that holds an address (a number or "St", "Ave"...), capitalised words are taken for
    names ("Oak St & 5th", "393 Temple Street") unless they are function words ("Hay un bache en
    Elm St"): a street name says nothing about the language of the person who wrote it.
    """
    if text.isascii() and "_" not in text:
        return _ascii_evidence_words(text, function_words)
    return _any_evidence_words(text, function_words)


def _any_evidence_words(text: str, function_words: frozenset[str]) -> list[str]:
    """``evidence_words`` for any text, token by token."""
    tokens = [t for t in _TOKEN.findall(text) if "_" not in t]
    words = [_word(t) if "'" in t or "\u2019" in t else t.lower() for t in tokens]
    addressy = any(_has_digit(w) or w in _ADDRESS_ABBREVIATIONS for w in words)
    if not addressy:  # the common case: only the number and address-part filters apply
        return [w for w in words if w and w not in _ADDRESS_WORDS]  # and no digits: not addressy
    return [
        w
        for t, w in zip(tokens, words, strict=True)
        if w
        and not _has_digit(w)
        and w not in _ADDRESS_WORDS
        and not (t[:1].isupper() and t[1:].islower() and w not in function_words)
    ]


def _ascii_evidence_words(text: str, function_words: frozenset[str]) -> list[str]:
    """``evidence_words`` for an ASCII text without "_" (nearly every 311 text), the same words.

    Why it is the same: on ASCII, ``lower`` keeps every character's length and class and makes
    no space, so the tokens joined, lowered once and split are the tokens lowercased, one for
    one; every digit is a word character, so a token has a digit exactly when the text has one
    (no "_" token is dropped); and the only apostrophe ASCII has is "'". It lowers once instead
    of token by token (on New Haven's reports about a third faster for texts with an address).
    """
    tokens = _TOKEN.findall(text)
    if not tokens:
        return []
    # Tokens hold no spaces: joined, lowered once and split again, they stay one for one.
    lowered = " ".join(tokens).lower()
    words = (lowered.replace("'", "") if "'" in lowered else lowered).split(" ")
    addressy = _DIGIT.search(text) is not None or not _ADDRESS_ABBREVIATIONS.isdisjoint(words)
    if not addressy:
        return [w for w in words if w and w not in _ADDRESS_WORDS]
    return [
        w
        for t, w in zip(tokens, words, strict=True)
        if w
        and (w.isalpha() or _DIGIT.search(w) is None)  # not _has_digit(w), inlined
        and w not in _ADDRESS_WORDS
        and not (t[:1].isupper() and t[1:].islower() and w not in function_words)
    ]


class LanguageDetector:
    """Which of ``languages`` a text is in. Build it with ``detector(...)``: one per process.

    Thread-safe and cheap to call (tens of µs a text, measured in bench/language_eval.py).
    """

    def __init__(self, languages: Sequence[str]) -> None:
        self.languages: tuple[str, ...] = check_languages(languages)
        lingua = [Language.from_iso_code_639_1(IsoCode639_1.from_str(c)) for c in self.languages]
        self._code = {lang: code for lang, code in zip(lingua, self.languages, strict=True)}
        # Preloaded: the first resident's text must not wait for a model to load. Two of them:
        # a text of ``LOW_ACCURACY_CHARS`` or more is read by lingua's low accuracy mode
        # (``_lingua_for``), which shares the same models' trigrams.
        builder = LanguageDetectorBuilder.from_languages(*lingua).with_preloaded_language_models()
        self._lingua: _Lingua | None = builder.build() if len(lingua) > 1 else None
        self._lingua_long: _Lingua | None = (
            builder.with_low_accuracy_mode().build() if len(lingua) > 1 else None
        )
        # Function words only one configured language uses: "a" and "he" are both languages',
        # so they count for neither.
        lists = {c: stopwords(c) for c in self.languages}
        self._own = {
            c: words - frozenset().union(*(w for o, w in lists.items() if o != c))
            for c, words in lists.items()
        }
        self._function_words = frozenset().union(*lists.values())
        # The own function words an evidence word can be (no address part, no digit): what
        # ``_ascii_reading`` counts over all of a text's words gives ``_signal``'s counts.
        self._own_evidence = {
            c: frozenset(w for w in own if w and w not in _ADDRESS_WORDS and not _has_digit(w))
            for c, own in self._own.items()
        }
        # Answers for short texts already seen: ``_from_text`` is a pure function of the text, and
        # short texts repeat ("Tree Trimming" is 8% of New Haven's reports, "stump" 2%); lingua
        # costs 30 µs on those. Long texts rarely repeat, so they are not kept.
        self._seen: ShortTextMemo[str | None] = ShortTextMemo()
        # Lingua's confidences by ``lingua_key``: texts that differ only in numbers, punctuation or
        # case (a form's "pothole number 12-7", an operator's template with another address) ask
        # lingua, most of the detector's time (~100 µs a short text), once.
        self._heard: ShortTextMemo[dict[str, float]] = ShortTextMemo(short_chars=LINGUA_KEPT_CHARS)

    def __repr__(self) -> str:
        return f"LanguageDetector({self.languages!r})"

    def scores(self, text: str) -> dict[str, float]:
        """Log-odds-like score per configured language (lingua log confidence + function words).

        Empty when the text has no evidence words. Exposed for the benchmark and for debugging.
        """
        words = evidence_words(text, self._function_words)
        if not words or self._lingua is None:
            return {}
        return self._scores(text, words, self._signal(text, words))

    def _signal(self, text: str, words: list[str]) -> dict[str, int]:
        """Per language: how many of ``words`` only it uses, plus one for a mark only it writes."""
        signal: dict[str, int] = {}
        for code in self.languages:
            count = sum(map(self._own[code].__contains__, words))
            marks = _MARKS.get(code)
            if marks is not None and marks.search(text):
                count += 1
            signal[code] = count
        return signal

    def _ascii_reading(self, text: str) -> tuple[int, dict[str, int]]:
        """``len(evidence_words(text))``, counted only up to 2 (all ``_from_text`` asks), and
        ``_signal`` for those words, for an ASCII text without "_" (nearly every 311 text).

        Why it is the same: the bytes translated and split are ``_TOKEN``'s tokens (one table
        lowercases and drops "'" too: the words, less the empty ones, which no count keeps). An
        own function word is an evidence word wherever it stands, unless it is an address part
        or has a digit (``_own_evidence`` leaves those out): the filter that drops capitalised
        names in a text with an address keeps function words. So the counts need no filter, and
        only the number of evidence words does, which stops at the second one. On New Haven's
        reports it takes about half the instructions of ``evidence_words`` and ``_signal``.
        """
        data = text.encode("ascii")
        words = data.translate(_LOWER_TOKEN_BYTES, b"'").decode("ascii").split()
        signal = {code: sum(map(own.__contains__, words)) for code, own in self._own_evidence.items()}
        for code, marks in _ASCII_MARKS.items():
            if code in signal and marks.search(text):
                signal[code] += 1
        if _DIGIT.search(text) is None and _ADDRESS_ABBREVIATIONS.isdisjoint(words):
            return len(words) - sum(map(_ADDRESS_WORDS.__contains__, words)), signal
        count = 0
        function_words = self._function_words
        for token in data.translate(_TOKEN_BYTES).decode("ascii").split():
            word = token.lower()
            if "'" in word:
                word = word.replace("'", "")
            if (
                word
                and (word.isalpha() or _DIGIT.search(word) is None)
                and word not in _ADDRESS_WORDS
                and not (token[:1].isupper() and token[1:].islower() and word not in function_words)
            ):
                count += 1
                if count == 2:
                    break
        return count, signal

    def _scores(self, text: str, words: int | list[str], signal: dict[str, int]) -> dict[str, float]:
        """``scores`` for a text with ``words`` evidence words (a count, or the words themselves)."""
        if self._heard.is_short(text):  # its key is no longer than the text
            key = lingua_key(text)
            confidence = self._heard.get(key, key, lambda: self._confidence(text, key))
        else:
            confidence = self._confidence(text, lingua_key(text))
        if not any(confidence.values()):
            return {}
        count = words if isinstance(words, int) else len(words)
        if count == 1 and max(confidence.values()) < SINGLE_WORD_CONFIDENCE and not any(signal.values()):
            return {}  # one word, lingua unsure, no function word or mark: a tie
        return {
            code: math.log(max(confidence.get(code, 0.0), _FLOOR)) + FUNCTION_WORD_WEIGHT * signal[code]
            for code in self.languages
        }

    def _confidence(self, text: str, key: str) -> dict[str, float]:
        """Lingua's confidence per configured language (shared by ``_heard``: not to be changed).

        ``key``: ``lingua_key(text)``, what lingua reads of it; it picks the mode, so texts with
        one key (one memo entry) are read in one mode."""
        values = self._lingua_for(key).compute_language_confidence_values(text)
        return {self._code[c.language]: c.value for c in values}

    def _lingua_for(self, key: str) -> _Lingua:
        """Lingua in high accuracy mode (1- to 5-grams) for a short text, low (trigrams) for a
        long one, by the length of ``key`` (``lingua_key``: the letters lingua reads).

        Why: lingua's time grows with the text and with every n-gram length it scores, and
        lingua's authors note that the low accuracy mode loses accuracy on short texts, not on
        long ones. Measured on every New Haven report's text and description and
        ``bench/data/es_reports.csv`` (36,858 ``choose`` and ``detect`` answers): from
        ``LOW_ACCURACY_CHARS`` = 60 on, every answer is the high accuracy mode's, and the
        detector takes 23% less time a report (47 -> 37 µs); from 50 on, one Spanglish SMS
        ("hielo en la esquina de State y Grove, echen sal porfa") changed answer, from 40 on
        seven; in low accuracy mode for every text, "Test Test" became Spanish.
        """
        lingua = self._lingua_long if len(key) >= LOW_ACCURACY_CHARS else self._lingua
        assert lingua is not None
        return lingua

    def _decided(self, signal: dict[str, int]) -> str | None:
        """The language the function words alone decide, whatever lingua would say, or None.

        Lingua's part of a score is a log confidence in [log _FLOOR, 0], so a language whose
        function-word lead over every other is at least ``_DECISIVE`` wins by ``MARGIN`` for any
        confidences lingua could give: ``_from_text`` answers without asking lingua (most of the
        detector's time, and the longer the text the more), and answers exactly what it would
        have answered after asking (lingua gives no confidence at all only to a text without
        letters, and these words are letters). The lead takes about ten such words: long
        reports, the texts lingua is slowest on (on New Haven's reports, 44% of them skip it).
        ``tests/unit/test_language.py`` checks the answers against ``scores``, which always asks.
        """
        ranked = sorted(signal.values(), reverse=True)
        if len(ranked) < 2 or FUNCTION_WORD_WEIGHT * (ranked[0] - ranked[1]) < _DECISIVE:
            return None
        return max(signal, key=signal.__getitem__)

    def _settled(self, signal: dict[str, int], settle: str) -> bool:
        """Whether ``settle``'s function-word lead leaves no other language a win (``_from_text``)."""
        lead = signal.get(settle)
        if lead is None:
            return False
        return all(
            FUNCTION_WORD_WEIGHT * (lead - count) > _SETTLED
            for code, count in signal.items()
            if code != settle
        )

    def _remembered(self, text: str, settle: str | None = None) -> str | None:
        """``_from_text``, answered from ``_seen`` for a short text seen before (only long texts
        settle: a settled answer is not what the text says, so it must not be remembered)."""
        if not self._seen.is_short(text):
            return self._from_text(text, settle)
        return self._seen.get(text, text, lambda: self._from_text(text))

    def _from_text(self, text: str, settle: str | None = None) -> str | None:
        """What the text says (None: nothing), or, with ``settle``, possibly ``settle`` when the
        answer can only be ``settle`` or None (the caller answers ``settle`` for None anyway).

        Why ``settle`` is exact: lingua's part of a score is a log confidence in [log _FLOOR, 0],
        so another language beats ``settle`` by at most ``-log _FLOOR`` plus its function-word
        difference; when ``settle`` leads every other by more than ``-log _FLOOR - MARGIN``, no
        other can win by ``MARGIN``, whatever lingua says. That is one function word short of
        ``_decided``'s lead, and those texts are long (lingua's slowest): 7% of the New Haven
        reports that ask lingua.
        """
        if text.isascii() and "_" not in text:
            count, signal = self._ascii_reading(text)
        else:
            words = evidence_words(text, self._function_words)
            count, signal = len(words), self._signal(text, words)
        if len(self.languages) == 1:
            return self.languages[0] if count else None
        if not count or self._lingua is None:
            return None
        decided = self._decided(signal)
        if decided is not None:
            return decided
        if settle is not None and self._settled(signal, settle):
            return settle
        scores = self._scores(text, count, signal)
        if not scores:
            return None
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        if ranked[0][1] - ranked[1][1] < MARGIN:
            return None
        return ranked[0][0]

    def detect(self, text: str, *, hint: str | None = None) -> str | None:
        """The configured language ``text`` is in, or None when the text does not say.

        ``hint`` is a provider's language tag (tweet ``lang``, Content-Language, the browser's
        choice). It decides only when the text itself is ambiguous: provider tags are set by
        a UI locale or a detector of their own (Outlook sends en-US whatever one writes, X
        tags short texts "und" or wrongly), so a text that clearly says Spanish is answered
        in Spanish whatever its tag says. A hint outside the configured languages is ignored.
        """
        return self._detect(text, hint, settle=None)

    def _detect(self, text: str, hint: str | None, settle: str | None) -> str | None:
        """``detect``; with ``settle``, possibly ``settle`` where the text says nothing
        (``_from_text``)."""
        found = self._remembered(text or "", settle)
        if found is not None:
            return found
        tag = normalise_tag(hint)
        return tag if tag in self.languages else None

    def choose(self, text: str, *, hint: str | None = None, fallback: str = "en") -> str:
        """Always a language to answer in: ``detect()``, else the hint, else ``fallback``, else
        the first configured language (each only if configured)."""
        if fallback in self.languages:  # a configured code is its own normalised tag
            default = fallback
        else:
            tag = normalise_tag(fallback)
            default = tag if tag in self.languages else self.languages[0]
        # Without a configured hint, "the text does not say" is answered with ``default`` too, so
        # the detector may settle for it as soon as no other language can win (``_from_text``).
        settle = None if normalise_tag(hint) in self.languages else default
        found = self._detect(text, hint, settle)
        return found if found is not None else default


@lru_cache(maxsize=32)
def _cached(languages: tuple[str, ...]) -> LanguageDetector:
    return LanguageDetector(languages)


def detector(languages: Sequence[str] = DEFAULT_LANGUAGES) -> LanguageDetector:
    """The detector for ``languages`` (ISO 639-1 codes), built once per process and tuple.

    Raises ValueError naming the code when one is unknown.
    """
    return _cached(check_languages(languages))


# --- Accept-Language (RFC 9110, section 12.5.4) ------------------------------------------------

_RANGE = re.compile(r"^\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([0-9.]+)\s*)?$")


def preferred_language(accept_language: str | None, supported: Sequence[str], default: str = "en") -> str:
    """The supported language the browser prefers most: "es-MX,es;q=0.9,en;q=0.8" -> "es".

    Ranges are compared by primary subtag ("es-MX" is "es"); q=0 means "not this one"; ties keep
    header order, then ``supported`` order; "*" stands for any supported language not named.
    Nothing acceptable: ``default``.
    """
    codes = [c.lower() for c in supported]
    if not accept_language:
        return default
    weights: dict[str, tuple[float, int]] = {}  # language -> (q, position) of its best range
    star: tuple[float, int] | None = None
    named: set[str] = set()
    for position, part in enumerate(accept_language.split(",")[:50]):
        match = _RANGE.match(part)
        if not match:
            continue
        try:
            q = float(match.group(2)) if match.group(2) is not None else 1.0
        except ValueError:
            continue
        if not 0 <= q <= 1:
            continue
        primary = match.group(1).lower().split("-")[0]
        if primary == "*":
            star = (q, position)
            continue
        named.add(primary)
        if primary in codes and (primary not in weights or q > weights[primary][0]):
            weights[primary] = (q, position)
    if star is not None:
        for code in codes:
            if code not in named:
                weights[code] = star
    # Highest q, then the earliest range, then the city's own order of languages.
    acceptable = [
        (q, -position, -codes.index(code), code) for code, (q, position) in weights.items() if q > 0
    ]
    return max(acceptable)[3] if acceptable else default
