"""Spot emergency language ("I smell gas", "huele a gas", "someone is bleeding") in resident text.

Why: 311 is not 911. When a resident texts or emails an emergency, the channel's immediate reply
must tell them to call 911 instead of waiting for a service request. That reply is sent before
any classification, so this detector is pure (no I/O after loading), fast (one translate and two
regex scans per text) and driven by a city-editable file, ``schemas/emergency.yaml``: the words
people use for emergencies differ between cities and languages, and a city must be able to add
one without a release.

False alarms are cheaper than misses (an unneeded "call 911 if this is an emergency" line versus
a gas leak left in a queue), so the rules lean towards flagging and guard only the false alarms
seen in real reports (``bench/emergency_eval.py``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from schemas.messages import render

DEFAULT_EMERGENCY_PATH = Path(__file__).with_name("emergency.yaml")

MAX_GAP_WORDS = 3  # what "..." in a phrase allows between its neighbours
_GAP = "..."
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_WORD_RE = re.compile(r"\w+")
_TOKEN_RE = re.compile(r"^\W*\w[\w\W]*$")  # a token holds at least one word character
_GROUP_SEP = "__"  # named group "k<i>__l<j>__c<n>" -> (kind i, language j)
# Words too frequent in 311 text to be a good prefilter key (speed only, never what matches).
_COMMON_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "been",
        "be",
        "got",
        "get",
        "on",
        "in",
        "at",
        "into",
        "to",
        "of",
        "my",
        "our",
        "his",
        "her",
        "from",
        "with",
        "street",
        "sidewalk",
        "road",
        "down",
        "someone",
        "person",
        "pedestrian",
        "truck",
        "vehicle",
        "car",
        "building",
        "house",
        "home",
        "apartment",
        "basement",
        "coming",
        "ground",
        "line",
        "lines",
        "water",
        "serious",
        "de",
        "del",
        "el",
        "la",
        "los",
        "las",
        "en",
        "un",
        "una",
        "se",
        "esta",
        "casa",
        "calle",
        "acera",
        "agua",
    }
)


@dataclass(frozen=True)
class EmergencyMatch:
    """What made a text look like an emergency.

    ``kind`` selects the reply ("gas", "fire", "carbon-monoxide", "live-wire", "injury", "crash",
    "flooding"); ``phrase`` is the matched words as the resident wrote them (for logs and for a
    person checking the call); ``language`` is the language of the rule that matched, which the
    reply can use when the resident's language is not known yet.
    """

    kind: str
    phrase: str
    language: str


@lru_cache(maxsize=1)
def default_rules() -> EmergencyRules:
    """The packaged rules, loaded once per process (channels check every inbound text)."""
    return EmergencyRules.load()


@lru_cache(maxsize=8)
def rules_for(path: Path | None) -> EmergencyRules:
    """The rules of the ``emergency_rules_file`` setting (``None``: the packaged ones), loaded once
    per path: every channel and the normalizer of a process share one compiled copy."""
    return default_rules() if path is None else EmergencyRules.load(path)


def warning(
    text: str, language: str | None, rules: EmergencyRules | None = None, *, key: str = "call_911"
) -> str | None:
    """The "call 911" line in ``language`` when ``text`` reads like an emergency, else ``None``.

    The one check every channel's immediate reply makes; the reply puts it first. ``key`` picks
    the wording (``voice.call_911`` is written for text-to-speech). ``rules``: ``rules_for(...)``
    of the configured file; ``None``: the packaged rules.
    """
    if (rules or default_rules()).detect(text) is None:
        return None
    return render(key, language)


def with_warning(text: str, reply: str, language: str | None, rules: EmergencyRules | None = None) -> str:
    """``reply`` with the "call 911" line in front when ``text`` reads like an emergency."""
    line = warning(text, language, rules)
    return reply if line is None else f"{line} {reply}"


@lru_cache(maxsize=1)
def _fold_table() -> dict[int, str]:
    """A one-to-one character map: lowercase, accents dropped ("Á" -> "a", "ñ" -> "n").

    Why one-to-one: match positions in the folded text are then positions in the original, so the
    phrase can be reported as written, and no regex needs IGNORECASE (slower in ``re``).
    Characters whose fold is not a single character (e.g. "ß") are left as they are.
    """
    table: dict[int, str] = {}
    for code in range(0x3000):  # Latin, Greek, Cyrillic, ...: every script with case or accents
        char = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        folded = base.lower()
        if len(folded) == 1 and folded != char:
            table[code] = folded
    return table


def fold(text: str) -> str:
    """Lowercase and strip accents without changing the length of ``text`` (see ``_fold_table``)."""
    if text.isascii():  # most 311 text: str.lower is one-to-one on ASCII and much faster
        return text.lower()
    return text.translate(_fold_table())


def _token_pattern(token: str) -> str:
    """One phrase word as regex: inner punctuation optional ("can't" = "cant"), "*" = any ending."""
    wildcard = token.endswith("*")
    words = _WORD_RE.findall(token)
    body = r"\W?".join(re.escape(w) for w in words)
    return body + (r"\w*" if wildcard else r"\b")


def phrase_pattern(phrase: str) -> str:
    """Compile the file's phrase syntax to a regex (no groups), matched against folded text.

    Words are separated by any non-word characters; ``...`` allows up to ``MAX_GAP_WORDS`` other
    words in between. Raises ``ValueError`` on a phrase that cannot match anything sensible.
    """
    tokens = fold(phrase).split()
    if not tokens or tokens[0] == _GAP or tokens[-1] == _GAP:
        raise ValueError(f"phrase {phrase!r}: needs words, and '...' only between two words")
    parts: list[str] = []
    gap_before = False
    for token in tokens:
        if token == _GAP:
            if gap_before:
                raise ValueError(f"phrase {phrase!r}: two '...' in a row")
            gap_before = True
            continue
        if not _TOKEN_RE.match(token) or ("*" in token and not token.endswith("*")):
            raise ValueError(f"phrase {phrase!r}: bad word {token!r} ('*' only at a word's end)")
        if parts:
            parts.append(rf"\W+(?:\w+\W+){{0,{MAX_GAP_WORDS}}}" if gap_before else r"\W+")
        parts.append(_token_pattern(token))
        gap_before = False
    return "".join(parts)


def _key_literal(phrase: str) -> str:
    """The phrase's longest word start (letters before any inner punctuation or "*").

    Every match of the phrase has this literal at a word boundary, so a text without any of the
    phrases' key literals cannot match: the prefilter in :class:`EmergencyRules`.
    """
    firsts = [_WORD_RE.findall(t)[0] for t in fold(phrase).split() if t != _GAP]
    return max(firsts, key=lambda w: (w not in _COMMON_WORDS, len(w)))


def _trie_pattern(words: set[str]) -> str:
    """A regex matching any of ``words`` as a prefix, factored as a trie (fast in ``re``)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        if "" in node:  # a shorter key already matches: longer ones add nothing to a prefix test
            return ""
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return emit(trie)


def _alternation(phrases: list[str]) -> str:
    """Longer phrases first, so where two phrases start at one spot the more specific one wins."""
    ordered = sorted({phrase_pattern(p) for p in phrases}, key=lambda p: (-len(p), p))
    return "|".join(ordered)


def _phrase_lists(value: Any, where: str) -> dict[str, list[str]]:
    """Check one ``language -> [phrases]`` mapping from the file."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of language code -> list of phrases")
    out: dict[str, list[str]] = {}
    for language, phrases in value.items():
        if not isinstance(language, str) or not _SLUG_RE.match(language):
            raise ValueError(f"{where}: language {language!r} must be a code like 'en' or 'es'")
        if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ValueError(f"{where}.{language}: expected a list of non-empty phrases")
        out[language] = phrases
    return out


def _blank(match: re.Match[str]) -> str:
    """Spaces as long as a guard's match: positions stay those of the original text."""
    return " " * (match.end() - match.start())


class EmergencyRules:
    """The compiled emergency rules: one guard regex and one detection regex for all kinds.

    Build with :meth:`load`; then :meth:`detect` is a pure function of the text, safe to share
    between threads and tasks.
    """

    def __init__(
        self,
        kinds: dict[str, dict[str, list[str]]],
        guards: dict[str, list[str]],
        source: str = "<rules>",
    ) -> None:
        """Compile ``kinds`` (kind -> language -> phrases) and ``guards`` (language -> phrases).

        ``source`` names the rules in error messages. Raises ``ValueError`` on a bad phrase.
        """
        self.source = source
        self.kinds: tuple[str, ...] = tuple(kinds)
        self._groups: dict[str, tuple[str, str]] = {}
        # Branches grouped by the phrase's first character: at each word start ``re`` then compares
        # one character per group instead of trying every phrase (the bulk of the speed).
        by_first: dict[str, list[str]] = {}
        try:
            for i, (kind, by_language) in enumerate(kinds.items()):
                for j, (language, phrases) in enumerate(by_language.items()):
                    patterns: dict[str, list[str]] = {}
                    for pattern in sorted({phrase_pattern(p) for p in phrases}, key=lambda p: (-len(p), p)):
                        patterns.setdefault(pattern[0], []).append(pattern[1:])
                    for first, rests in patterns.items():
                        name = f"k{i}{_GROUP_SEP}l{j}{_GROUP_SEP}c{ord(first)}"
                        self._groups[name] = (kind, language)
                        by_first.setdefault(first, []).append(f"(?P<{name}>{'|'.join(rests)})")
            guard_phrases = [p for phrases in guards.values() for p in phrases]
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
        if not by_first:
            raise ValueError(f"{source}: no emergency phrases")
        branches = [re.escape(first) + "(?:" + "|".join(alts) + ")" for first, alts in by_first.items()]
        # Why guards blank out text instead of vetoing the whole text: "gas station" must not count
        # as gas, but "I smell gas near the gas station" still must.
        self._guard = re.compile(r"\b(?:" + _alternation(guard_phrases) + ")") if guard_phrases else None
        # One leading \b for all phrases: each branch then starts with a literal, which ``re``
        # rejects with a single character compare (most of the speed).
        self._detect = re.compile(r"\b(?:" + "|".join(branches) + ")")
        # Why a prefilter: ~98% of 311 texts have no emergency, and a trie of one key word per
        # phrase rejects them several times faster than the full alternation.
        keys = {_key_literal(p) for by_language in kinds.values() for ps in by_language.values() for p in ps}
        self._prefilter = re.compile(r"\b(?:" + _trie_pattern(keys) + ")")

    @classmethod
    def load(cls, path: Path | None = None) -> EmergencyRules:
        """Read and compile a rules file; ``None`` reads the packaged ``schemas/emergency.yaml``.

        Raises ``ValueError`` naming the file when it is not valid YAML or not the expected shape,
        so a city's typo fails at start-up with a message saying where, not at the first text.
        """
        file = path or DEFAULT_EMERGENCY_PATH
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"{file}: cannot read emergency rules: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("kinds"), dict) or not data["kinds"]:
            raise ValueError(f"{file}: expected a 'kinds:' mapping of kind -> language -> phrases")
        unknown = set(data) - {"kinds", "not_emergencies"}
        if unknown:
            raise ValueError(f"{file}: unknown top-level keys {sorted(unknown)}")
        kinds: dict[str, dict[str, list[str]]] = {}
        for kind, value in data["kinds"].items():
            if not isinstance(kind, str) or not _SLUG_RE.match(kind):
                raise ValueError(f"{file}: kind {kind!r} must be a lowercase slug (a-z, 0-9, '-', '_')")
            kinds[kind] = _phrase_lists(value, f"{file}: kinds.{kind}")
        guards = _phrase_lists(data.get("not_emergencies") or {}, f"{file}: not_emergencies")
        return cls(kinds, guards, source=str(file))

    def detect(self, text: str) -> EmergencyMatch | None:
        """The first emergency phrase in ``text`` (what the resident led with), or ``None``.

        At one position the longest phrase wins. Text covered by a ``not_emergencies`` guard is
        ignored. Cost: an NFC normalisation, a translate and two regex scans.
        """
        if not text:
            return None
        original = unicodedata.normalize("NFC", text)  # "e" + combining accent -> "é", one char
        folded = fold(original)
        if self._prefilter.search(folded) is None:
            return None
        match = self._detect.search(folded)
        if match is not None and self._guard is not None:
            # Guards only ever remove matches, so they run only when there is one to remove.
            masked = self._guard.sub(_blank, folded)
            if masked != folded:
                match = self._detect.search(masked)
        if match is None or match.lastgroup is None:
            return None
        kind, language = self._groups[match.lastgroup]
        return EmergencyMatch(kind=kind, phrase=original[match.start() : match.end()], language=language)
