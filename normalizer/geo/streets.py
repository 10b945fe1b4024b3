"""Street names to matching keys: "Elm Street", "elm st." and "ELM ST" are one street.

Why keys and not strings: residents, the city's file and the apps all spell the same street
differently, and the lookups that must be fast (dict by street, gazetteer over report text) only
work when every spelling collapses to one key first. A key is the lowercase words with every
USPS street type and directional reduced to its abbreviation ("north" -> "n", "avenue"/"av" ->
"ave", "first" -> "1st") and punctuation dropped. The mapping is applied to *every* word, in the
file and in queries alike, so "Court Street" is ("ct", "st") on both sides and still matches; a
separate display form ("Elm St", "E Rock Rd", "West St") is kept for people.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# USPS Publication 28 street suffixes (the common ones, every spelling seen in resident text).
_SUFFIX_SPELLINGS = {
    "st": "street st str strt",
    "ave": "avenue ave av aven avenu avn avnue",
    "rd": "road rd",
    "blvd": "boulevard blvd boul boulv",
    "ln": "lane ln",
    "dr": "drive dr drv driv",
    "ct": "court ct crt",
    "pl": "place pl",
    "ter": "terrace ter terr",
    "pkwy": "parkway pkwy pky parkwy",
    "hwy": "highway hwy hiway",
    "sq": "square sq sqr",
    "cir": "circle cir circ crcl",
    "aly": "alley aly ally",
    "plz": "plaza plz",
    "cres": "crescent cres",
    "ext": "extension ext",
    "trl": "trail trl",
    "wy": "way wy",
    "row": "row",
    "walk": "walk",
    "path": "path",
    "xing": "crossing xing",
}
SUFFIX_DISPLAY = {
    "st": "St", "ave": "Ave", "rd": "Rd", "blvd": "Blvd", "ln": "Ln", "dr": "Dr", "ct": "Ct",
    "pl": "Pl", "ter": "Ter", "pkwy": "Pkwy", "hwy": "Hwy", "sq": "Sq", "cir": "Cir", "aly": "Aly",
    "plz": "Plz", "cres": "Cres", "ext": "Ext", "trl": "Trl", "wy": "Way", "row": "Row",
    "walk": "Walk", "path": "Path", "xing": "Xing",
}  # fmt: skip
_DIRECTIONAL_SPELLINGS = {
    "n": "north n no",
    "s": "south s so",
    "e": "east e",
    "w": "west w",
    "ne": "northeast ne",
    "nw": "northwest nw",
    "se": "southeast se",
    "sw": "southwest sw",
}
_ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
)
_ORDINAL_KEYS = ["1st", "2nd", "3rd", *[f"{i}th" for i in range(4, 13)]]

TOKEN_MAP: dict[str, str] = {}
for _key, _spellings in _SUFFIX_SPELLINGS.items():
    for _word in _spellings.split():
        TOKEN_MAP[_word] = _key
for _key, _spellings in _DIRECTIONAL_SPELLINGS.items():
    for _word in _spellings.split():
        TOKEN_MAP[_word] = _key
TOKEN_MAP.update(zip(_ORDINALS, _ORDINAL_KEYS, strict=True))
TOKEN_MAP["saint"] = "st"  # "St Ronan St": both spellings of the saint collapse too

SUFFIXES = frozenset(_SUFFIX_SPELLINGS)
DIRECTIONALS = frozenset(_DIRECTIONAL_SPELLINGS)

# Words, numbers and the connectors that matter for intersections and ranges ("&", "/", "@", "-").
_TOKEN_RE = re.compile(r"[a-z0-9]+|[&/@-]")
HOUSE_NUMBER_RE = re.compile(r"\d{1,5}[a-z]?")


def raw_tokens(text: str) -> list[str]:
    """Lowercase word tokens of ``text`` (apostrophes and dots removed, connectors kept)."""
    return _TOKEN_RE.findall(drop_marks(text.lower()))


def drop_marks(text: str) -> str:
    """``text`` without apostrophes, backticks and dots: O'Brien -> OBrien, St. -> St (not a
    token break). Four ``replace`` calls, not a translate table: several times faster on
    report-length text (~3 µs a report, and this runs on every text geocoded)."""
    return text.replace("'", "").replace("\u2019", "").replace("`", "").replace(".", "")


def key_tokens(tokens: Iterable[str]) -> list[str]:
    """Every token through :data:`TOKEN_MAP` (the one normalisation both sides share)."""
    get = TOKEN_MAP.get
    return [get(t, t) for t in tokens]


def street_key(name: str) -> str:
    """The matching key of a street name: ``"Elm Street" -> "elm st"``, ``"N. Main Rd" -> "n main rd"``."""
    return " ".join(t for t in key_tokens(raw_tokens(name)) if t not in "&/@-")


def split_suffix(key: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """``("church", "st", "s")`` -> (``("church", "s")``, ``"st"``): the name without its street type.

    The type is the last token, or the one before a trailing directional ("Church Street South").
    A name that is only a type ("Street") keeps it: there would be nothing left to match.
    """
    toks = tuple(key)
    if len(toks) >= 2 and toks[-1] in SUFFIXES:
        return toks[:-1], toks[-1]
    if len(toks) >= 3 and toks[-1] in DIRECTIONALS and toks[-2] in SUFFIXES:
        return (*toks[:-2], toks[-1]), toks[-2]
    return toks, None


def display_name(original: str) -> str:
    """A tidy display form: title case, street type and leading directional abbreviated.

    "ELM STREET" -> "Elm St", "east rock road" -> "E Rock Rd", "West Street" -> "West St" (the
    directional *is* the name there, so it stays spelled out), "1st avenue" -> "1st Ave".
    """
    words = [w for w in raw_tokens(original) if w not in "&/@-"]
    if not words:
        return original.strip()
    keys = key_tokens(words)
    out = [w if w[0].isdigit() else w.capitalize() for w in words]
    _, suffix = split_suffix(keys)
    if suffix is not None:
        i = len(keys) - 1 if keys[-1] == suffix else len(keys) - 2
        out[i] = SUFFIX_DISPLAY[suffix]
        if i == len(keys) - 2:
            out[-1] = keys[-1].upper()
    name_len = len(keys) - (1 if suffix is not None else 0) - (1 if out[-1].isupper() else 0)
    if len(keys) >= 2 and keys[0] in DIRECTIONALS and name_len >= 2:
        out[0] = keys[0].upper()
    return " ".join(out)


# --- city / state / zip trailers ----------------------------------------------------------------

_STATES = (
    "al alabama ak alaska az arizona ar arkansas ca california co colorado ct connecticut conn "
    "de delaware fl florida ga georgia hi hawaii id idaho il illinois in indiana ia iowa ks kansas "
    "ky kentucky la louisiana me maine md maryland ma massachusetts mass mi michigan mn minnesota "
    "ms mississippi mo missouri mt montana ne nebraska nv nevada nh nj nm ny nc nd oh ohio ok "
    "oklahoma or oregon pa pennsylvania ri sc sd tn tennessee tx texas ut utah vt vermont va "
    "virginia wa washington wv wi wisconsin wy wyoming dc"
)
STATE_WORDS = frozenset(_STATES.split())
_COUNTRY = frozenset({"usa", "us", "america"})
_ZIP_RE = re.compile(r"\d{5}")


def strip_trailer(tokens: list[str], cities: Sequence[tuple[str, ...]]) -> list[str]:
    """Drop a trailing ", New Haven, CT 06511, USA" (any of it, in that order) from raw tokens.

    A state is only dropped after a city or a zip, so "12 Foo Ct" keeps its court. ``cities`` are
    the token tuples of the city names the address file knows (plus the configured city).
    """
    end = len(tokens)
    while end and tokens[end - 1] in ("-", "/"):
        end -= 1
    if end > 1 and tokens[end - 1] in _COUNTRY:
        end -= 1
    zip_found = end > 1 and len(tokens[end - 1]) == 5 and bool(_ZIP_RE.fullmatch(tokens[end - 1]))
    if zip_found:
        end -= 1
    states_at = end
    while end > 1 and tokens[end - 1] in STATE_WORDS:
        end -= 1
    for city in cities:
        n = len(city)
        # "New Haven" is a city only after something else: "1551 New Haven" stays an address.
        if n and end - n >= 1 and tuple(tokens[end - n : end]) == city:
            return tokens[: end - n]
    if not zip_found:
        end = states_at  # a bare "ct" with no city or zip before it: probably a court
    return tokens[:end]
