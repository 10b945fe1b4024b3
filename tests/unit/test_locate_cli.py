"""``intake311 locate``: what a city runs to check its address file and boundaries before going live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intake311.cli import app
from tests.integration.test_incidents_e2e import ADDRESS_POINTS, DOWNTOWN

runner = CliRunner()


@pytest.fixture
def geo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "points.csv").write_text(ADDRESS_POINTS)
    (tmp_path / "wards.geojson").write_text(json.dumps(DOWNTOWN))
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE311_GEO__ADDRESS_POINTS", str(tmp_path / "points.csv"))
    monkeypatch.setenv("INTAKE311_GEO__BOUNDARIES", json.dumps({"ward": str(tmp_path / "wards.geojson")}))
    return tmp_path


def test_locate_file_json_one_object_per_line_in_order(geo_env: Path) -> None:
    lines = geo_env / "in.txt"
    lines.write_text("There is a pothole outside 45 Elm Street\nno place here at all\n133 elm st\n")
    result = runner.invoke(app, ["locate", "--file", str(lines), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert all(set(r) >= {"address", "lat", "long", "precision", "districts"} for r in rows)
    first, nowhere, third = rows
    assert first["precision"] == "interpolated" and first["districts"] == {"ward": "Ward 7"}
    assert 41.306 < first["lat"] < 41.309 and -72.925 < first["long"] < -72.920
    assert nowhere["lat"] is None and nowhere["districts"] == {}
    assert third["precision"] == "address" and third["address"].startswith("133 Elm")


def test_locate_text_prints_a_line(geo_env: Path) -> None:
    result = runner.invoke(app, ["locate", "1000 Chapel Street"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("address") and "[ward=Ward 7]" in result.stdout
    missing = runner.invoke(app, ["locate", "somewhere over the rainbow"])
    assert missing.stdout.startswith("not found")


def test_bad_boundary_file_is_named(geo_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = geo_env / "broken.geojson"
    bad.write_text("{not json")
    monkeypatch.setenv("INTAKE311_GEO__BOUNDARIES", json.dumps({"ward": str(bad)}))
    result = runner.invoke(app, ["locate", "45 Elm St"])
    assert result.exit_code == 2
    assert "broken.geojson" in result.output and "geo.boundaries" in result.output
