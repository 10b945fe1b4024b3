"""The taxonomy loader: the packaged default is valid, and bad files fail loudly, naming the file."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.taxonomy import DEFAULT_TAXONOMY_PATH, Service, Taxonomy, load_taxonomy

DEPARTMENTS = {
    "public-works",
    "sanitation",
    "transportation",
    "parks",
    "water",
    "parking",
    "code-enforcement",
    "police-nonemergency",
    "triage",
}

MINIMAL = """\
fallback_code: other
services:
  - code: pothole
    name: Pothole
    department: public-works
    keywords: [Pothole, " Pot  Hole "]
  - code: other
    name: Other
    department: triage
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_taxonomy_loads_and_is_complete() -> None:
    taxonomy = load_taxonomy()
    assert taxonomy == load_taxonomy(DEFAULT_TAXONOMY_PATH)
    codes = taxonomy.codes
    assert len(codes) == len(set(codes))
    for code in (
        "pothole",
        "street-light",
        "graffiti",
        "illegal-dumping",
        "missed-pickup",
        "abandoned-vehicle",
        "noise",
        "tree-down",
        "tree-maintenance",
        "sidewalk",
        "traffic-signal",
        "water-leak",
        "sewer-drain",
        "parking-violation",
        "other",
    ):
        assert code in codes, code
    assert taxonomy.fallback_code == "other"
    assert taxonomy.get("other").department == "triage"
    assert 0 < taxonomy.triage_threshold < 1
    for service in taxonomy.services:
        assert service.department in DEPARTMENTS, service.code
        assert service.keywords and service.examples, service.code
        assert service.sla_hours is not None and service.sla_hours > 0, service.code
        assert all(k == k.lower() for k in service.keywords), service.code
    # Every department except triage owns at least one service besides the fallback.
    assert {s.department for s in taxonomy.services} == DEPARTMENTS


def test_get_and_codes(tmp_path: Path) -> None:
    taxonomy = load_taxonomy(write(tmp_path, MINIMAL))
    assert taxonomy.codes == ("pothole", "other")
    assert taxonomy.get("pothole").name == "Pothole"
    assert taxonomy.get("nope") is None
    assert taxonomy.triage_threshold == 0.35


def test_keywords_are_normalised(tmp_path: Path) -> None:
    taxonomy = load_taxonomy(write(tmp_path, MINIMAL))
    assert taxonomy.get("pothole").keywords == ("pothole", "pot hole")


def test_models_are_frozen_and_strict() -> None:
    service = Service(code="x", name="X", department="triage")
    with pytest.raises(ValidationError):
        service.name = "Y"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Service(code="x", name="X", department="triage", colour="red")  # type: ignore[call-arg]


def test_duplicate_code_is_rejected_naming_the_file(tmp_path: Path) -> None:
    text = MINIMAL + "  - code: pothole\n    name: Again\n    department: public-works\n"
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="duplicate service codes: pothole") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


def test_unknown_fallback_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("fallback_code: other", "fallback_code: misc"))
    with pytest.raises(ValueError, match="fallback_code 'misc'") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


def test_bad_yaml_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "services: [\n  - code: pothole\n    name: {unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="mapping") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("code: pothole", "code: Pot Hole", r"services\[0\] \(code 'Pot Hole'\)\.code"),
        ("department: public-works", "department: Public Works", "department"),
        ("fallback_code: other", "fallback_code: other\ntriage_threshold: 1.5", "triage_threshold"),
        ("fallback_code: other", "fallback_code: other\ncolour: red", "colour"),
        ("    name: Pothole\n", "", r"services\[0\].*name"),
    ],
)
def test_invalid_content_is_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(ValueError, match=message) as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


def test_empty_services_rejected() -> None:
    with pytest.raises(ValidationError):
        Taxonomy(services=())


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_taxonomy(tmp_path / "absent.yaml")
