"""The emergency detector: English and Spanish emergencies, false-alarm guards, city rules files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.emergency import DEFAULT_EMERGENCY_PATH, EmergencyMatch, EmergencyRules


@pytest.fixture(scope="module")
def rules() -> EmergencyRules:
    return EmergencyRules.load()


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("there is a gas leak smell and someone is bleeding", {"gas", "injury"}),
        ("I smell gas near 45 Elm", {"gas"}),
        ("Strong smell of natural gas in the hallway", {"gas"}),
        ("my kitchen is on fire", {"fire"}),
        ("smoke coming from the roof of 12 Oak St", {"fire"}),
        ("car on fire in the parking lot", {"fire"}),
        ("our CO alarm keeps going off", {"carbon-monoxide"}),
        ("I think there is carbon monoxide in the apartment", {"carbon-monoxide"}),
        ("car crash, the driver is unconscious", {"injury", "crash"}),
        ("a man is bleeding on the corner", {"injury"}),
        ("my neighbor is not breathing", {"injury"}),
        ("someone having a seizure at the bus stop", {"injury"}),
        ("pedestrian hit by a car at Chapel and York", {"crash"}),
        ("live wire down sparking on the sidewalk", {"live-wire"}),
        ("power lines down across the road", {"live-wire"}),
        ("tree fell on the wires in front of my house", {"live-wire"}),
        ("water is rising in my basement", {"flooding"}),
        ("the basement is filling with water", {"flooding"}),
    ],
)
def test_english_emergencies(rules: EmergencyRules, text: str, kinds: set[str]) -> None:
    match = rules.detect(text)
    assert match is not None, text
    assert match.kind in kinds
    assert match.language == "en"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("huele a gas en el edificio", "gas"),
        ("Hay una fuga de gas en la cocina", "gas"),
        ("hay un incendio en la casa de al lado", "fire"),
        ("sale humo del carro", "fire"),
        ("FUEGO en el segundo piso", "fire"),
        ("creo que hay monóxido de carbono", "carbon-monoxide"),
        ("hay cables eléctricos caídos en la calle", "live-wire"),
        ("un cable caído echando chispas", "live-wire"),
        ("hay un hombre herido", "injury"),
        ("mi vecino está sangrando", "injury"),
        ("la señora está inconsciente", "injury"),
        ("el niño no respira", "injury"),
        ("choque con heridos en la avenida", "crash"),
        ("se inunda la casa, el agua sube", "flooding"),
    ],
)
def test_spanish_emergencies(rules: EmergencyRules, text: str, kind: str) -> None:
    match = rules.detect(text)
    assert match is not None, text
    assert match.kind == kind
    assert match.language == "es"


@pytest.mark.parametrize(
    "text",
    [
        "the gas station on Whalley has graffiti",
        "fire hydrant leaking",
        "pothole, no injuries",
        "smoke shop sign knocked down",
        "tree limbs down on the sidewalk",
        "the street light is out",
        "car parked in the fire lane again",
        "this trash pile is a fire hazard",
        "exposed wires at the base of the street light",
        "street flooding at the catch basin",
        "fix this sidewalk before someone gets hurt",
        "this intersection is an accident waiting to happen",
        "the landlord is unresponsive",
        "nobody was hurt but the sign is bent",
        "hay un bache enorme en la calle",
        "la gasolinera tiene grafiti",
        "el hidrante está roto",
        "",
    ],
)
def test_not_emergencies(rules: EmergencyRules, text: str) -> None:
    assert rules.detect(text) is None


def test_phrase_is_reported_as_written(rules: EmergencyRules) -> None:
    assert rules.detect("Help! I SMELL GAS at 45 Elm") == EmergencyMatch("gas", "SMELL GAS", "en")
    match = rules.detect("Huele A Gás en el sótano")
    assert match is not None and match.phrase == "Huele A Gás"


def test_guard_does_not_hide_a_real_emergency_elsewhere(rules: EmergencyRules) -> None:
    match = rules.detect("I smell gas next to the gas station")
    assert match is not None and match.kind == "gas"
    match = rules.detect("pothole, no injuries, but the car is on fire")
    assert match is not None and match.kind == "fire"


def test_first_emergency_mentioned_wins(rules: EmergencyRules) -> None:
    match = rules.detect("someone is bleeding and I smell gas")
    assert match is not None and match.kind == "injury"


def test_gap_allows_at_most_three_words(rules: EmergencyRules) -> None:
    assert rules.detect("I smell a very strong gas odor") is not None
    assert rules.detect("smell from the dumpster near the old gas") is None


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "city_emergency.yaml"
    bad.write_text("kinds: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"city_emergency\.yaml"):
        EmergencyRules.load(bad)


@pytest.mark.parametrize(
    "content",
    [
        "just a string\n",
        "kinds: {}\n",
        "kinds:\n  Gas Leak:\n    en: [gas leak]\n",
        "kinds:\n  gas:\n    en: gas leak\n",
        "kinds:\n  gas:\n    en: ['... gas']\n",
        "kinds:\n  gas:\n    en: ['ga*s']\n",
        "kinds:\n  gas:\n    en: [gas leak]\nguards: []\n",
    ],
)
def test_bad_content_names_the_file(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad_rules.yaml"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_rules\.yaml"):
        EmergencyRules.load(bad)


def test_city_rules_file_adds_a_phrase(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_EMERGENCY_PATH.read_text(encoding="utf-8"))
    assert EmergencyRules.load().detect("the propane tank is hissing") is None
    data["kinds"]["gas"]["en"].append("propane ... hissing")
    data["kinds"]["gas"]["vi"] = ["mùi ga"]
    city = tmp_path / "emergency.yaml"
    city.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    rules = EmergencyRules.load(city)
    expected = EmergencyMatch("gas", "propane tank is hissing", "en")
    assert rules.detect("the propane tank is hissing") == expected
    assert rules.detect("có mùi ga trong bếp") == EmergencyMatch("gas", "mùi ga", "vi")
    assert rules.detect("I smell gas") is not None  # the packaged phrases are still there


def test_rules_built_in_code() -> None:
    rules = EmergencyRules({"gas": {"en": ["gas leak"]}}, {"en": ["no gas leak"]})
    assert rules.detect("there is a GAS LEAK") == EmergencyMatch("gas", "GAS LEAK", "en")
    assert rules.detect("there is no gas leak") is None
    with pytest.raises(ValueError, match="no emergency phrases"):
        EmergencyRules({}, {})


# ---- the configured rules file and the shared "call 911" line -------------------------------------


def test_rules_for_the_setting_are_loaded_once_per_path_and_reach_the_normalizer(tmp_path: Path) -> None:
    from intake311.settings import Settings
    from normalizer.app import build_normalizer
    from schemas.emergency import default_rules, rules_for, warning

    file = tmp_path / "city-emergency.yaml"
    file.write_text("kinds:\n  sinkhole:\n    en: [sinkhole swallowed]\n", encoding="utf-8")
    assert rules_for(None) is default_rules()
    assert rules_for(file) is rules_for(file)
    normalizer = build_normalizer(Settings(data_dir=tmp_path, emergency_rules_file=file), locate=False)
    assert normalizer.emergencies is rules_for(file)
    text = "a sinkhole swallowed a car"
    assert warning(text, "es", rules_for(file)) == (
        "Si alguien está en peligro, llame al 911 ahora: el 311 no puede enviar ayuda de emergencia."
    )
    assert warning(text, "en") is None  # not a packaged phrase
    assert warning("I smell gas in my kitchen", "fr") == (
        "If anyone is in danger, call 911 now: 311 cannot send emergency help."
    )
