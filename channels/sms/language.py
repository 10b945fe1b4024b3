"""Which language to answer in, and the words of every reply (English and Spanish).

Residents write to 311 in their own language and should be answered in it. A full detector is
overkill for one short message and two languages: counting very common words, plus Spanish
letters and punctuation, is right for real 311 texts, and "don't know" falls back to the
conversation's language or the city's default.
"""

from __future__ import annotations

import re

SUPPORTED = ("en", "es")

_WORD = re.compile(r"[a-záéíóúüñ']+", re.IGNORECASE)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ES = _words(
    """
    el la los las un una unos unas de del que en y es está están hay por para con sin mi mis su
    muy pero como cuando donde dónde porque sí se lo le al calle avenida esquina bache baches
    basura luz semáforo árbol agua hola gracias favor ayuda necesito tengo tiene hace desde frente
    casa cerca entre roto rota rotos perro ruido vecino acera banqueta alumbrado recogida también
    """
)
_EN = _words(
    """
    the an is are there's it's i'm was were there here this that it its my our your of in on at to
    for with and but not from by near outside street avenue road corner pothole trash light broken
    please thanks hi hello have has been since again huge big just blew out missed pickup noise i we
    """
)
_ES_MARKS = re.compile(r"[ñ¿¡áéíóú]", re.IGNORECASE)


def detect_language(text: str) -> str | None:
    """ "es", "en", or None when the text does not say (an address, a number, one word)."""
    words = [w.lower() for w in _WORD.findall(text or "")]
    es = sum(w in _ES for w in words) + 2 * len(_ES_MARKS.findall(text or ""))
    en = sum(w in _EN for w in words)
    if es == en or max(es, en) < 2:
        return None
    return "es" if es > en else "en"


def choose_language(text: str, fallback: str) -> str:
    return detect_language(text) or (fallback if fallback in SUPPORTED else "en")


TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "received": "{brand}: Thanks, we got your report. Your ticket is {ticket}.",
        "received_ask": (
            "{brand}: Thanks, we got your report. Your ticket is {ticket}. "
            "What is the address or nearest intersection?"
        ),
        "location_added": "{brand}: Thanks, we added the location to ticket {ticket}.",
        "added": "{brand}: Thanks, we added that to ticket {ticket}.",
        "help": (
            "{brand}: City non-emergency services. Text what the problem is and where, and we reply "
            "with a ticket number. To reach a person, call {phone}. Reply STOP to opt out. "
            "Emergencies: call 911."
        ),
        "opt_in": "{brand}: You will get texts from us again. Reply STOP to opt out, HELP for help.",
        "new": "{brand}: OK. Text your new report (what and where) and we will open a new ticket.",
        "empty": "{brand}: Please text what the problem is and where it is. Reply HELP for help.",
        "voice_ack": "{brand}: We got your call. Your ticket is {ticket}. Reply STOP to opt out.",
        "voice_welcome": (
            "You have reached {brand}, city non-emergency services. "
            "If this is an emergency, hang up and dial 9 1 1."
        ),
        "voice_prompt": (
            "After the tone, tell us what the problem is and where it is: the address or the nearest "
            "intersection. Press the pound key or hang up when you are done."
        ),
        "voice_prompt_gather": (
            "Please tell us what the problem is and where it is: the address or the nearest intersection."
        ),
        "voice_thanks_recorded": "Thank you. Your report is recorded.",
        "voice_will_text": "We will text your ticket number to this phone.",
        "voice_ticket": "Thank you. Your ticket number is {spoken}. Again, {spoken}.",
        "voice_not_heard": "Sorry, we did not hear anything.",
        "voice_try_later": "Sorry, we could not take your report right now. Please call again later.",
        "voice_goodbye": "Goodbye.",
    },
    "es": {
        "received": "{brand}: Gracias, recibimos su reporte. Su número de caso es {ticket}.",
        "received_ask": (
            "{brand}: Gracias, recibimos su reporte. Su número de caso es {ticket}. "
            "¿Cuál es la dirección o la intersección más cercana?"
        ),
        "location_added": "{brand}: Gracias, agregamos la ubicación al caso {ticket}.",
        "added": "{brand}: Gracias, lo agregamos al caso {ticket}.",
        "help": (
            "{brand}: Servicios municipales que no son emergencias. Escriba cuál es el problema y "
            "dónde, y le respondemos con un número de caso. Para hablar con una persona, llame al "
            "{phone}. Responda STOP para no recibir mensajes. Emergencias: llame al 911."
        ),
        "opt_in": "{brand}: Volverá a recibir mensajes. Responda STOP para cancelar, AYUDA para ayuda.",
        "new": "{brand}: De acuerdo. Escriba su nuevo reporte (qué y dónde) y abriremos un caso nuevo.",
        "empty": "{brand}: Escriba cuál es el problema y dónde está. Responda AYUDA para ayuda.",
        "voice_ack": (
            "{brand}: Recibimos su llamada. Su número de caso es {ticket}. Responda STOP para cancelar."
        ),
        "voice_welcome": "Para español, oprima dos.",
        "voice_prompt": (
            "Después del tono, díganos cuál es el problema y dónde está: la dirección o la "
            "intersección más cercana. Oprima la tecla numeral o cuelgue cuando termine."
        ),
        "voice_prompt_gather": (
            "Díganos cuál es el problema y dónde está: la dirección o la intersección más cercana."
        ),
        "voice_thanks_recorded": "Gracias. Su reporte quedó grabado.",
        "voice_will_text": "Le enviaremos su número de caso por mensaje de texto.",
        "voice_ticket": "Gracias. Su número de caso es {spoken}. Repito, {spoken}.",
        "voice_not_heard": "Lo sentimos, no escuchamos nada.",
        "voice_try_later": "Lo sentimos, no pudimos recibir su reporte. Por favor llame más tarde.",
        "voice_goodbye": "Adiós.",
    },
}


def render(key: str, language: str, **values: str) -> str:
    """The reply ``key`` in ``language`` (English if the language has no templates)."""
    table = TEMPLATES.get(language) or TEMPLATES["en"]
    return (table.get(key) or TEMPLATES["en"][key]).format(**values)


def spoken_ticket(ticket: str) -> str:
    """A ticket as text-to-speech should read it: one character at a time, a pause at the dash."""
    return ", ".join(" ".join(part) for part in ticket.split("-"))
