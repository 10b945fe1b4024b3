"""Does a text say where the problem is? Decides whether to ask "what is the address?".

The channel cannot import the normalizer (stages talk only through Kafka), and it needs less:
not the address itself, only whether asking is worthwhile. Asking when an address was there
costs the resident one text; not asking when none was costs a crew a wasted trip, so this errs
towards "no location".
"""

from __future__ import annotations

import re

_SUFFIXES = (
    r"street|st|avenue|ave|av|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|terrace"
    r"|way|parkway|pkwy|highway|hwy|square|sq|circle|cir|alley|plaza|crescent|route|rte"
)
_WORD = r"[A-Za-z0-9][\w'.-]*"
# "12 Elm Street", "1200 N. Main St"
_NUMBERED = re.compile(rf"\b\d{{1,6}}[a-z]?\s+(?:{_WORD}\s+){{0,3}}?(?:{_SUFFIXES})\b", re.IGNORECASE)
# "Oak St and 5th Ave", "Main & 3rd", "corner of Oak and Elm", "intersection of ..."
_CROSSING = re.compile(
    rf"\b(?:{_WORD}\s+){{1,3}}?(?:{_SUFFIXES})\b\.?\s+(?:and|&|at|y)\s+{_WORD}"
    rf"|\b(?:{_WORD}\s+)(?:and|&|at|y)\s+(?:{_WORD}\s+){{0,2}}?(?:{_SUFFIXES})\b",
    re.IGNORECASE,
)
_CORNER = re.compile(
    r"\b(?:corner of|intersection of|esquina de|cruce de|between|entre)\s+\S+.*?\s(?:and|&|y)\s+\S+",
    re.IGNORECASE,
)
# Spanish: "calle Juárez 45", "avenida Central"
_SPANISH = re.compile(r"\b(?:calle|avenida|av\.|carretera|camino|callejón)\s+[\w'.-]+", re.IGNORECASE)
_COORDS = re.compile(r"-?\d{1,2}\.\d{3,}\s*,\s*-?\d{1,3}\.\d{3,}")
_POSTCODE = re.compile(r"\b\d{5}(?:-\d{4})?\b")


def find_location(text: str) -> str | None:
    """The part of ``text`` that looks like an address, an intersection or coordinates."""
    if not text:
        return None
    for pattern in (_COORDS, _NUMBERED, _CORNER, _CROSSING, _SPANISH):
        match = pattern.search(text)
        if match:
            return re.sub(r"\s+", " ", match.group(0)).strip(" ,.;")
    return None


def has_location(text: str) -> bool:
    """True when a crew could find the place from ``text`` alone."""
    return find_location(text) is not None or bool(_POSTCODE.search(text or "") and _NUMBERED.search(text))
