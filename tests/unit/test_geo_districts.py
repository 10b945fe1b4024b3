"""District layers: lookup per layer, the city limit, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from normalizer.geo import Districts
from tests.unit.test_geo_support import at, square, write_geojson


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, Path]:
    wards = write_geojson(
        tmp_path / "wards.geojson",
        [("Ward 1", square(-500, -500, 0, 500)), ("Ward 2", square(0, -500, 500, 500))],
    )
    hoods = write_geojson(tmp_path / "hoods.geojson", [("Downtown", square(-100, -100, 100, 100))])
    return {"ward": wards, "neighborhood": hoods}


def test_lookup_names_the_district_of_every_layer_containing_the_point(layers: dict[str, Path]) -> None:
    districts = Districts.from_files(layers)
    assert districts.lookup(*at(-50, 0)) == {"ward": "Ward 1", "neighborhood": "Downtown"}
    assert districts.lookup(*at(250, 0)) == {"ward": "Ward 2"}
    assert districts.lookup(*at(499, 499)) == {"ward": "Ward 2"}
    assert districts.lookup(*at(2000, 2000)) == {}


def test_inside_city_is_the_union_of_the_boundary_layer(layers: dict[str, Path]) -> None:
    districts = Districts.from_files(layers)  # default: the first layer (wards)
    assert districts.inside_city(*at(250, 0)) and districts.inside_city(*at(-450, 400))
    assert not districts.inside_city(*at(2000, 2000))
    downtown_only = Districts.from_files(layers, city_boundary="neighborhood")
    assert downtown_only.inside_city(*at(0, 0)) and not downtown_only.inside_city(*at(250, 0))


def test_no_layers_find_nothing_and_everything_is_inside() -> None:
    districts = Districts.from_files({})
    assert districts.lookup(*at(0, 0)) == {} and districts.inside_city(*at(0, 0))


def test_bad_files_raise_errors_naming_the_file(tmp_path: Path, layers: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"missing\.geojson: boundary file not found"):
        Districts.from_files({"ward": tmp_path / "missing.geojson"})
    junk = tmp_path / "junk.geojson"
    junk.write_text("{not json")
    with pytest.raises(ValueError, match=r"junk\.geojson: not a GeoJSON file"):
        Districts.from_files({"ward": junk})
    unnamed = write_geojson(
        tmp_path / "unnamed.geojson", [("Ward 1", square(0, 0, 1, 1)), (None, square(1, 1, 2, 2))]
    )
    with pytest.raises(ValueError, match=r"unnamed\.geojson: feature 1 has no `name` property"):
        Districts.from_files({"ward": unnamed})
    with pytest.raises(ValueError, match=r"geo\.city_boundary: layer 'police'"):
        Districts.from_files(layers, city_boundary="police")
