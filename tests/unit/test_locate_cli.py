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


def test_incidents_show_and_split_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from normalizer.incidents import IncidentDesk
    from normalizer.normalize import Normalizer
    from normalizer.state import StateStore
    from schemas import Location
    from schemas.taxonomy import load_taxonomy
    from tests.conftest import make_contact

    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("INTAKE311_CASE_STORE_DSN", raising=False)
    desk = IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()))
    store = StateStore.sqlite(tmp_path / "normalizer" / "state.sqlite3")
    first = make_contact("pothole", provider_id="a", location=Location(lat=41.30712, long=-72.92652))
    second = make_contact(
        "pothole here",
        provider_id="b",
        location=Location(lat=41.30714, long=-72.92650),
        received_at=first.received_at + timedelta(minutes=5),
    )
    for contact in (first, second):
        store.run(lambda snap, c=contact: desk.handle(c, snap))
    store.close()

    shown = runner.invoke(app, ["incidents", "show", second.request_id])
    assert shown.exit_code == 0, shown.output
    assert f"incident {first.request_id}" in shown.stdout and "2 report(s)" in shown.stdout
    assert f"{first.request_id}  (first)" in shown.stdout and second.request_id in shown.stdout
    refused = runner.invoke(app, ["incidents", "split", first.request_id])
    assert refused.exit_code == 1 and "nothing to split" in refused.output
    assert runner.invoke(app, ["incidents", "show", "nope"]).exit_code == 2
