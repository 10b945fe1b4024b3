"""What the city says in public: fixed templates, a language guess, and a personal-data guard.

A reply on a social network is public (or, on Mastodon, at least visible to the resident's
server), so it is built only from the ticket number, at most the service name, and a fixed
template. The resident's words never flow into it; ``personal_data_in`` is a last check for
messages that other stages queue on a social channel's outbound topic.
"""

from __future__ import annotations

import re

LANGUAGES = ("en", "es")

_ACKNOWLEDGE = {
    "en": (
        "Thanks for reporting this to 311. Your ticket number is {ticket}{service}. "
        "Reply here to add details, but please don't post personal information."
    ),
    "es": (
        "Gracias por reportar esto al 311. Su número de caso es {ticket}{service}. "
        "Responda aquí para agregar detalles, pero no publique información personal."
    ),
}
_FOLLOW_UP = {
    "en": "Thanks, we added this to 311 ticket {ticket}{service}.",
    "es": "Gracias, agregamos esto al caso {ticket}{service} del 311.",
}

# Words that lean one way; "no", "a" and "en" are left out because both languages use them.
_ES_WORDS = frozenset(
    {
        "el",
        "la",
        "los",
        "las",
        "del",
        "hay",
        "calle",
        "esquina",
        "por",
        "favor",
        "gracias",
        "luz",
        "basura",
        "bache",
        "baches",
        "que",
        "una",
        "un",
        "esta",
        "está",
        "funciona",
        "frente",
        "semáforo",
        "farola",
        "poste",
        "con",
        "muy",
        "desde",
        "hace",
        "días",
        "noche",
        "ruido",
        "perro",
        "agua",
        "avenida",
        "acera",
        "roto",
        "rota",
        "tirada",
        "recogieron",
        "vecinos",
    }
)
_EN_WORDS = frozenset(
    {
        "the",
        "is",
        "at",
        "on",
        "out",
        "there",
        "street",
        "light",
        "trash",
        "please",
        "and",
        "not",
        "of",
        "to",
        "outside",
        "near",
        "broken",
        "pothole",
        "missed",
        "pickup",
        "noise",
        "dark",
        "since",
        "days",
        "night",
        "water",
        "sidewalk",
        "avenue",
        "corner",
        "hi",
        "hello",
    }
)
_WORD = re.compile(r"[a-záéíóúüñ]+")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<!\w)\+?\d(?:[\s().-]*\d){6,}(?!\w)")
# Dates and times in a status update ("due 2026-11-05", "11/05/2026") are not phone numbers.
_DATES = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b")


def detect_language(text: str, hint: str | None = None) -> str:
    """``en`` or ``es``: the provider's language tag if it is one of ours, else a word count.

    Light on purpose: a wrong guess costs a reply in the other language, never a lost report.
    """
    if hint and hint[:2].lower() in LANGUAGES:
        return hint[:2].lower()
    lowered = text.lower()
    if any(c in lowered for c in "ñ¿¡"):
        return "es"
    words = _WORD.findall(lowered)
    spanish = sum(w in _ES_WORDS or any(c in w for c in "áéíóú") for w in words)
    english = sum(w in _EN_WORDS for w in words)
    return "es" if spanish > english else "en"


def reply_text(
    ticket: str, language: str = "en", *, follow_up: bool = False, service: str | None = None
) -> str:
    """The public reply for a ticket: a fixed template, the ticket and at most the service name."""
    templates = _FOLLOW_UP if follow_up else _ACKNOWLEDGE
    template = templates.get(language, templates["en"])
    return template.format(ticket=ticket, service=f" ({service})" if service else "")


def personal_data_in(text: str) -> list[str]:
    """Kinds of personal data (``email``, ``phone``) that appear in ``text``; empty if none."""
    found = []
    if _EMAIL.search(text):
        found.append("email")
    if _PHONE.search(_DATES.sub(" ", text)):
        found.append("phone")
    return found


def strip_handle(text: str, handle: str) -> str:
    """Remove the city's own ``@handle`` (and ``@handle@instance``) from a mention's text."""
    local = handle.lstrip("@").split("@", 1)[0]
    if not local:
        return text.strip()
    pattern = re.compile(rf"(?<![\w@])@{re.escape(local)}(?:@[\w.-]*\w)?(?!\w)", re.IGNORECASE)
    stripped = pattern.sub(" ", text)
    lines = (" ".join(line.split()) for line in stripped.splitlines())
    return "\n".join(line for line in lines if line).strip()
