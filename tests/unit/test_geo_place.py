"""``Geo``: built from settings (or from nothing), and the order of evidence in ``place``."""

from __future__ import annotations

from pathlib import Path

import pytest

from intake311.settings import GeoSettings
from normalizer.geo import Geo, haversine_m
from schemas.request import Precision
from tests.unit.test_geo_support import at, square, tiny_points, write_geojson, write_points_csv


@pytest.fixture
def geo(tmp_path: Path) -> Geo:
    points = write_points_csv(tmp_path / "points.csv", tiny_points())
    wards = write_geojson(
        tmp_path / "wards.geojson",
        [("Ward 1", square(-500, -500, 0, 500)), ("Ward 2", square(0, -500, 500, 500))],
    )
    return Geo.from_settings(GeoSettings(address_points=points, boundaries={"ward": wards}))


def test_nothing_configured_works_and_finds_nothing() -> None:
    geo = Geo.from_settings(GeoSettings())
    place = geo.place(text="pothole outside 5 Oak Street", address=None, lat=None, long=None)
    assert (place.lat, place.address, place.precision, place.districts, place.outside_city) == (
        None, None, None, {}, False,
    )  # fmt: skip
    given = geo.place(text="", address=None, lat=41.3, long=-72.9)
    assert given.precision is Precision.GIVEN and given.districts == {} and given.address is None


def test_channel_coordinates_win_and_reverse_fills_the_address(geo: Geo) -> None:
    lat, lon = at(50, 12)
    place = geo.place(text="pothole outside 13 Oak Street", address=None, lat=lat, long=lon)
    assert (place.lat, place.long, place.precision) == (lat, lon, Precision.GIVEN)
    assert place.address == "5 Oak St" and place.districts == {"ward": "Ward 2"} and not place.outside_city
    kept = geo.place(text="", address="behind the library", lat=lat, long=lon)
    assert kept.address == "behind the library"


def test_the_address_field_comes_before_the_free_text(geo: Geo) -> None:
    place = geo.place(
        text="pothole outside 13 Oak Street", address="5 oak st., Smallville", lat=None, long=None
    )
    assert place.address == "5 Oak St" and place.precision is Precision.ADDRESS
    lat, lon = at(50, 10)
    assert place.lat is not None and place.long is not None
    assert haversine_m(place.lat, place.long, lat, lon) < 1


def test_free_text_is_used_when_nothing_else_places_it(geo: Geo) -> None:
    place = geo.place(
        text="Streetlight dark at the corner of Oak St and Maple Ave", address=None, lat=None, long=None
    )
    assert place.precision is Precision.INTERSECTION and place.districts.get("ward") in {"Ward 1", "Ward 2"}
    unplaced = geo.place(text="noise", address="by the big tree", lat=None, long=None)
    assert unplaced.lat is None and unplaced.address == "by the big tree"


def test_outside_city_is_flagged(geo: Geo) -> None:
    place = geo.place(text="dumping on Far Lane", address=None, lat=None, long=None)
    assert place.precision is Precision.STREET and place.outside_city and place.districts == {}


def test_errors_name_the_setting_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"geo\.address_points: .*missing\.csv"):
        Geo.from_settings(GeoSettings(address_points=tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"geo\.boundaries: .*wards\.geojson"):
        Geo.from_settings(GeoSettings(boundaries={"ward": tmp_path / "wards.geojson"}))
    with pytest.raises(ValueError, match=r"geo\.city_boundary"):
        Geo.from_settings(GeoSettings(city_boundary="ward"))
