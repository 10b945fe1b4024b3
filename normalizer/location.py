"""Find the place in a resident's free text: "outside 12 Elm Street", "corner of Oak and 5th".

Deliberately conservative: a wrong address sends a crew to the wrong street, so anything that
does not look like a street address or an intersection is left for a person (or the channel's
follow-up question) rather than guessed.
"""

from __future__ import annotations

import re

_SUFFIXES = (
    "street|st|avenue|ave|av|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|terrace|ter"
    "|way|parkway|pkwy|highway|hwy|square|sq|circle|cir|alley|row|plaza|crescent|close"
)
_NAME = r"(?:[A-Z0-9][\w'.-]*\s+){0,3}?"
_SFX = rf"(?i:{_SUFFIXES})"
_STREET = rf"{_NAME}[A-Z0-9][\w'.-]*\s+{_SFX}\b\.?"
_NUMBERED = re.compile(rf"\b(\d{{1,6}}[A-Za-z]?\s+{_STREET})", re.IGNORECASE)
_INTERSECTION = re.compile(
    rf"\b((?:[A-Z0-9][\w'.-]*\s+){{1,3}}?(?:{_SFX}\b\.?\s+)?(?:and|&|at)\s+"
    rf"(?:[A-Z0-9][\w'.-]*\s+){{0,2}}?[A-Z0-9][\w'.-]*(?:\s+{_SFX}\b\.?)?)",
)
_CORNER = re.compile(r"\bcorner of\s+(.+?\s+(?:and|&)\s+[\w'.-]+(?:\s+(?:" + _SUFFIXES + r")\b)?)", re.I)
_STOP = re.compile(r"\s+(?:in|near|by|on|since|for|and|is|was|has)\s*$", re.I)


def extract_address(text: str) -> str | None:
    """A street address or intersection found in ``text``, or None."""
    if not text:
        return None
    for pattern in (_NUMBERED, _CORNER):
        match = pattern.search(text)
        if match:
            return _tidy(match.group(1))
    match = _INTERSECTION.search(text)
    if match and re.search(rf"\b(?:{_SUFFIXES})\b", match.group(1), re.I):
        return _tidy(match.group(1))
    return None


def _tidy(value: str) -> str:
    value = re.sub(r"\s+", " ", value).strip(" ,.;")
    return _STOP.sub("", value)
