"""The one language detector (schemas.language): real English stays English, short Spanish is
Spanish, an address is "don't know", and a channel's hint only breaks ties."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime

import pytest

from channels.email import parse_email
from channels.sms.parse import parse_sms
from intake311.settings import Settings
from schemas.language import MARGIN, LanguageDetector, detector, normalise_tag, preferred_language
from tests.support import shared_file
from tests.unit.test_email_support import make_message

SPANISH = [
    "no hay agua",
    "hay un bache en la calle",
    "la basura no se recogió",
    "el semáforo no funciona",
    "hay un bache",
    "bache en la calle",
    "se fue la luz del poste",
    "árbol caído en la acera",
    "¿cuándo van a recoger la basura?",
    "hay un carro abandonado frente a mi casa desde hace dos semanas",
    "hay ratas en el callejón",
    "Hay un bache en Elm St",
]


def test_new_haven_residents_stay_english() -> None:
    path = shared_file("seeclickfix_newhaven_2014.csv")
    with path.open(newline="", encoding="utf-8") as f:
        texts = sorted({r["Description"].strip() for r in csv.DictReader(f) if r["Description"].strip()})
    sample = random.Random(1).sample(texts, 300)
    found = [detector().detect(t) for t in sample]
    assert found.count("es") == 0, [t for t, d in zip(sample, found, strict=True) if d == "es"]
    assert found.count("en") >= 0.97 * len(sample)  # the rest are addresses, dates, "ward 24": None


@pytest.mark.parametrize("text", SPANISH)
def test_short_spanish_311_texts_are_spanish(text: str) -> None:
    assert detector().detect(text) == "es"


@pytest.mark.parametrize(
    "text", ["123 Main St", "Oak St & 5th", "12", "203-555-0100", "", "  ", "bache", "OK"]
)
def test_an_address_a_number_or_one_ambiguous_word_says_nothing(text: str) -> None:
    assert detector().detect(text) is None


def test_hint_only_breaks_ties() -> None:
    d = detector()
    assert d.detect("123 Main St", hint="es-MX") == "es"
    assert d.detect("bache", hint="es") == "es"
    assert d.detect("the trash was not picked up again", hint="es") == "en"
    assert d.detect("la basura no se recogió", hint="en-US") == "es"
    assert d.detect("123 Main St", hint="fr") is None  # not configured: ignored
    assert d.choose("123 Main St", hint="fr") == "en"
    assert d.choose("123 Main St", fallback="es") == "es"
    assert detector(("es", "en")).choose("12", fallback="fr") == "es"  # else the first configured


def test_restricted_languages() -> None:
    only_english = detector(("en",))
    assert only_english.languages == ("en",)
    assert all(only_english.choose(t) == "en" for t in [*SPANISH, "123 Main St", ""])
    three = detector(("en", "es", "vi"))
    assert three.detect("Đèn đường trước nhà tôi bị hỏng ba ngày rồi") == "vi"
    assert three.detect("Có một ổ gà lớn trên đường") == "vi"
    assert three.detect("no hay agua") == "es" and three.detect("the streetlight is out") == "en"


def test_detectors_are_cached_and_codes_checked() -> None:
    assert detector(("en", "es")) is detector(["en", "es"]) is detector()
    with pytest.raises(ValueError, match="unknown language code 'sp'"):
        detector(("en", "sp"))


def test_settings_refuse_unknown_codes_at_start() -> None:
    assert Settings().languages == ["en", "es"]
    assert Settings(languages="EN, es ,vi").languages == ["en", "es", "vi"]
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        Settings(languages=["en", "xx"])


def test_email_and_sms_agree_on_no_hay_agua() -> None:
    assert parse_email(bytes(make_message("no hay agua", subject=""))).language == "es"
    sms = {"MessageSid": "SM" + "2" * 32, "From": "+12035551234", "Body": "no hay agua"}
    assert parse_sms(sms, received_at=datetime.now(UTC)).language == "es"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("es-MX,es;q=0.9,en;q=0.8", "es"),
        ("en-US,en;q=0.9,es;q=0.8", "en"),
        ("en;q=0.5, es;q=0.8", "es"),
        ("fr-CA, es;q=0.3", "es"),  # first supported by preference
        ("fr, de", "en"),  # nothing supported: the default
        ("es;q=0, *;q=0.5", "en"),  # q=0 refuses; * is anything else
        ("*", "en"),
        ("es;q=abc, en;q=0.1", "en"),  # a malformed range is skipped
        ("", "en"),
        (None, "en"),
    ],
)
def test_accept_language(header: str | None, expected: str) -> None:
    assert preferred_language(header, ["en", "es"]) == expected


def test_accept_language_default_and_ties() -> None:
    assert preferred_language("fr", ["en", "es"], default="es") == "es"
    assert preferred_language("es, en", ["en", "es"]) == "es"  # equal q: header order


def test_normalise_tag() -> None:
    assert normalise_tag("es-MX") == normalise_tag("ES_mx") == normalise_tag("es-MX, en") == "es"
    assert normalise_tag("") is None and normalise_tag(None) is None


def _by_scores(d: LanguageDetector, text: str) -> str | None:
    """What ``detect`` answers when lingua is always asked: the best score, if it leads by MARGIN."""
    ranked = sorted(d.scores(text).items(), key=lambda item: item[1], reverse=True)
    return ranked[0][0] if ranked and ranked[0][1] - ranked[1][1] >= MARGIN else None


MIXED = [
    # Ten or more function words of one language: decided without lingua, whatever lingua says.
    "the the the the the the the the the the la basura no se recogió en la calle",
    "it was not there and they said that it is not for us to do with this at all",
    "no hay agua en la casa y el agua de la calle no se va desde el lunes de la semana pasada",
    "We called the city about it and they said they would send someone to look at it this week",
    # Fewer: lingua is asked, and can outweigh a lead of five English words.
    "the the the the the basura recogida calle semana pasada agua casa vecinos ayuntamiento alcantarilla",
    "the the the basura recogida calle semana pasada agua casa vecinos",
    "the the the the the the the the the basura",
    "de la de la de la de la de trash pickup",
]


def test_function_words_decide_only_when_lingua_could_not_change_the_answer() -> None:
    d = LanguageDetector(("en", "es"))
    path = shared_file("seeclickfix_newhaven_2014.csv")
    with path.open(newline="", encoding="utf-8") as f:
        texts = sorted({r["Description"].strip() for r in csv.DictReader(f) if r["Description"].strip()})
    sample = random.Random(7).sample(texts, 400) + SPANISH + MIXED
    assert [d.detect(t) for t in sample] == [_by_scores(d, t) for t in sample]


class _NoLingua:
    def compute_language_confidence_values(self, text: str) -> object:
        raise AssertionError(f"lingua was asked about {text!r}")


def test_a_decisive_function_word_lead_skips_lingua() -> None:
    d = LanguageDetector(("en", "es"))
    d._lingua = d._lingua_long = _NoLingua()  # type: ignore[assignment]
    assert d.detect(MIXED[1]) == "en"
    assert d.detect(MIXED[2]) == "es"
    with pytest.raises(AssertionError, match="lingua was asked"):
        d.detect("hay un bache en la calle")  # four function words: lingua still decides


class _Asked:
    """A lingua detector that remembers which texts it was asked about."""

    def __init__(self, lingua: object) -> None:
        self.lingua = lingua
        self.texts: list[str] = []

    def compute_language_confidence_values(self, text: str) -> object:
        self.texts.append(text)
        return self.lingua.compute_language_confidence_values(text)  # type: ignore[attr-defined]


def test_long_texts_are_read_in_low_accuracy_mode_with_the_same_answers() -> None:
    d = LanguageDetector(("en", "es"))
    high, low = _Asked(d._lingua), _Asked(d._lingua_long)
    d._lingua, d._lingua_long = high, low  # type: ignore[assignment]
    short = "hay un bache en la calle"
    long = "The streetlight on the corner has been flickering for two weeks now"
    d.detect(short)
    d.detect(long)
    assert high.texts == [short]
    assert low.texts == [long]
    # What the low accuracy mode answers is what the high one would have, on real reports.
    only_high = LanguageDetector(("en", "es"))
    only_high._lingua_long = only_high._lingua
    path = shared_file("seeclickfix_newhaven_2014.csv")
    with path.open(newline="", encoding="utf-8") as f:
        texts = sorted({r["Description"].strip() for r in csv.DictReader(f) if r["Description"].strip()})
    sample = [t for t in random.Random(3).sample(texts, 600) if len(t) >= 60] + SPANISH + MIXED
    assert [d.detect(t) for t in sample] == [only_high.detect(t) for t in sample]
    assert [d.choose(t) for t in sample] == [only_high.choose(t) for t in sample]
    assert len(low.texts) > 100
