"""The TwiML a caller hears: welcome in English and Spanish, then record or gather the report.

Pure functions of the config and the callback URLs, so what the caller hears is testable.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from twilio.twiml.voice_response import VoiceResponse

from channels.voice.config import VoiceConfig
from channels.voice.parse import LOCALES
from schemas.messages import render

Urls = Callable[..., str]


def urls_under(base: str) -> Urls:
    """``urls("speech", lang="es")`` -> ``{base}/speech?lang=es`` (absolute: Twilio needs them)."""

    def url(endpoint: str, **query: str) -> str:
        return f"{base.rstrip('/')}/{endpoint}" + (f"?{urlencode(query)}" if query else "")

    return url


def spoken_ticket(ticket: str) -> str:
    """A ticket as text-to-speech should read it: one character at a time, a pause at the dash."""
    return ", ".join(" ".join(part) for part in ticket.split("-"))


def _say(target: VoiceResponse, text: str, language: str) -> None:
    target.say(text, language=LOCALES.get(language, "en-US"))


def _capture(
    response: VoiceResponse, config: VoiceConfig, urls: Urls, language: str, attempt: int, mode: str
) -> None:
    if mode == "record":
        _say(response, render("voice.prompt", language), language)
        response.record(
            max_length=config.max_recording_seconds,
            finish_on_key="#",
            play_beep=True,
            timeout=5,
            transcribe=True,
            transcribe_callback=urls("transcription", lang=language),
            action=urls("recorded", lang=language),
            method="POST",
        )
        # Reached only when nothing was recorded.
        _say(response, render("voice.not_heard", language), language)
        _say(response, render("voice.goodbye", language), language)
        response.hangup()
        return
    gather = response.gather(
        input="speech",
        language=LOCALES[language],
        speech_timeout="auto",
        timeout=6,
        action=urls("speech", lang=language, attempt=str(attempt)),
        method="POST",
        action_on_empty_result=True,
    )
    _say(gather, render("voice.prompt_gather", language), language)


def incoming(config: VoiceConfig, urls: Urls) -> str:
    """Answering the call: pressing 2 switches to Spanish; otherwise English follows at once."""
    response = VoiceResponse()
    menu = response.gather(input="dtmf", num_digits=1, timeout=3, action=urls("language"), method="POST")
    _say(menu, render("voice.welcome", "en", brand=config.brand), "en")
    _say(menu, render("voice.welcome", "es", brand=config.brand), "es")
    _capture(response, config, urls, "en", 1, config.mode)
    return str(response)


def capture(config: VoiceConfig, urls: Urls, language: str, attempt: int = 1, mode: str | None = None) -> str:
    """Ask for the report in ``language`` (``mode`` overrides the config: a speech retry)."""
    response = VoiceResponse()
    _capture(response, config, urls, language, attempt, mode or config.mode)
    return str(response)


def recorded(language: str, *, will_text: bool) -> str:
    """After ``<Record>``: the transcript comes later, so the ticket travels by SMS, not here."""
    response = VoiceResponse()
    _say(response, render("voice.thanks_recorded", language), language)
    if will_text:
        _say(response, render("voice.will_text", language), language)
    _say(response, render("voice.goodbye", language), language)
    response.hangup()
    return str(response)


def ticket(language: str, request_id: str, *, will_text: bool, warning: str | None = None) -> str:
    """After a published speech report: the caller hears the ticket (and gets it by text).

    ``warning`` (``schemas.emergency.warning(..., key="voice.call_911")``) is said first, before
    the ticket: a caller describing an emergency must hang up and call 911.
    """
    response = VoiceResponse()
    if warning:
        _say(response, warning, language)
    _say(response, render("voice.ticket", language, spoken=spoken_ticket(request_id)), language)
    if will_text:
        _say(response, render("voice.will_text", language), language)
    _say(response, render("voice.goodbye", language), language)
    response.hangup()
    return str(response)


def apology(language: str, key: str = "voice.try_later") -> str:
    response = VoiceResponse()
    _say(response, render(key, language), language)
    _say(response, render("voice.goodbye", language), language)
    response.hangup()
    return str(response)
