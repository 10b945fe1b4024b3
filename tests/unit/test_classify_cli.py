"""``intake311 classify``: a city tries its taxonomy, model and emergency rules before going live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intake311.cli import app
from tests.unit.test_learned import MAP, _rows

runner = CliRunner()

FIELDS = {"service_code", "service_name", "confidence", "triage", "priority", "language", "emergency"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("INTAKE311_CLASSIFIER_MODEL", raising=False)


def test_file_json_gives_one_object_per_line_in_order(tmp_path: Path) -> None:
    reports = tmp_path / "in.txt"
    reports.write_text(
        "Huge pothole in front of 45 Elm Street, it blew out my tire\n"
        "hay un bache muy grande en la calle Chapel\n"
        "I smell gas in the basement of my building\n"
        "\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["classify", "--file", str(reports), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4 and all(set(r) >= FIELDS for r in rows)
    pothole, bache, gas, empty = rows
    assert pothole["service_code"] == "pothole" and not pothole["triage"] and pothole["language"] == "en"
    assert pothole["emergency"] is None and pothole["priority"] != "emergency"
    assert bache["service_code"] == "pothole" and bache["language"] == "es"
    assert gas["emergency"] == "gas" and gas["priority"] == "emergency"
    assert empty["triage"] is True and empty["confidence"] == 0


def test_text_argument_prints_a_line() -> None:
    result = runner.invoke(app, ["classify", "graffiti sprayed all over the wall of the library"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("graffiti")


def test_text_and_file_together_is_an_error(tmp_path: Path) -> None:
    reports = tmp_path / "in.txt"
    reports.write_text("pothole\n")
    result = runner.invoke(app, ["classify", "pothole", "--file", str(reports)])
    assert result.exit_code == 2


def test_the_configured_learned_model_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from normalizer.classify import Classifier
    from normalizer.learned import BlendedClassifier, LearnedModel, train_command
    from schemas.taxonomy import load_taxonomy

    data = tmp_path / "history.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["Summary", "Description", "Category"])
        writer.writeheader()
        writer.writerows(_rows())
    mapping = tmp_path / "map.yaml"
    mapping.write_text("".join(f'"{k}": {v}\n' for k, v in MAP.items()), encoding="utf-8")
    model = tmp_path / "model.joblib"
    train_command(data, ["Summary", "Description"], "Category", mapping, model, None)
    monkeypatch.setenv("INTAKE311_CLASSIFIER_MODEL", str(model))
    text = "the lamp on Dixwell Ave is dead at night"
    result = runner.invoke(app, ["classify", "--json", text])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    taxonomy = load_taxonomy()
    blended = BlendedClassifier(Classifier(taxonomy), LearnedModel.load(model, taxonomy)).classify(text, "en")
    cold = Classifier(taxonomy).classify(text, "en")
    assert row["service_code"] == "street-light" == blended.service_code
    assert row["confidence"] == round(blended.confidence, 4) != round(cold.confidence, 4)


def test_a_broken_model_file_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "model.joblib"
    broken.write_bytes(b"not a model")
    monkeypatch.setenv("INTAKE311_CLASSIFIER_MODEL", str(broken))
    result = runner.invoke(app, ["classify", "pothole"])
    assert result.exit_code == 2
    assert "configuration error" in result.output and "model" in result.output
