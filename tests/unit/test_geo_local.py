"""The local geocoder on a tiny self-made town: spellings, parity interpolation, fuzzy threshold,
intersections that do and do not exist, free text, reverse, and file errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from normalizer.geo import GeoResult, LocalGeocoder, haversine_m
from schemas.request import Precision
from tests.unit.test_geo_support import at, tiny_points, write_points_csv


@pytest.fixture(scope="module")
def town() -> LocalGeocoder:
    return LocalGeocoder(tiny_points(), cities=["Smallville"])


def metres(result: GeoResult | None, x: float, y: float) -> float:
    assert result is not None
    lat, lon = at(x, y)
    return haversine_m(result.lat, result.long, lat, lon)


@pytest.mark.parametrize(
    "typed",
    [
        "5 Oak Street",
        "5 oak st.",
        "5 OAK ST",
        "5 Oak St, Smallville, CT 06511, USA",
        "5 oak street smallville ct",
    ],
)
def test_spellings_and_trailers_find_the_same_point(town: LocalGeocoder, typed: str) -> None:
    found = town.geocode(typed)
    assert found is not None and found.precision is Precision.ADDRESS
    assert found.address == "5 Oak St"
    assert metres(found, 50, 10) < 1


def test_a_missing_number_is_interpolated_on_its_own_side_of_the_street(town: LocalGeocoder) -> None:
    found = town.geocode("9 Oak St")  # odd side has 5 and 13; the even side's 8 and 10 are across the road
    assert found is not None and found.precision is Precision.INTERPOLATED
    assert metres(found, 90, 10) < 2
    even = town.geocode("6 Oak St")  # between 2 and 8 on the even side
    assert metres(even, 60, -10) < 2


def test_one_sided_neighbour_is_used_only_when_close_in_number(town: LocalGeocoder) -> None:
    near = town.geocode("23 Oak St")  # the odd side ends at 21
    assert near is not None and near.precision is Precision.INTERPOLATED
    assert metres(near, 210, 10) < 1
    far = town.geocode("99 Oak St")
    assert far is not None and far.precision is Precision.STREET and far.address == "Oak St"


def test_ranges_take_the_middle_of_the_range_on_its_side(town: LocalGeocoder) -> None:
    found = town.geocode("1-5 Oak Street")
    assert found is not None and found.address == "1-5 Oak St"
    assert found.precision is Precision.INTERPOLATED
    assert metres(found, 30, 10) < 2


def test_a_street_alone_is_its_centroid(town: LocalGeocoder) -> None:
    found = town.geocode("Maple Avenue")
    assert found is not None and found.precision is Precision.STREET and found.address == "Maple Ave"
    assert metres(found, 0, 80) < 15


def test_fuzzy_matching_respects_the_threshold() -> None:
    lenient = LocalGeocoder(tiny_points(), fuzzy_threshold=88)
    strict = LocalGeocoder(tiny_points(), fuzzy_threshold=97)
    found = lenient.geocode("5 Oaak Street")
    assert found is not None and found.address == "5 Oak St" and 88 <= found.score < 100
    assert strict.geocode("5 Oaak Street") is None


@pytest.mark.parametrize(
    "typed", ["Oak St & Maple Ave", "corner of Oak and Maple", "oak st / maple", "Maple Av at Oak St"]
)
def test_intersections_are_where_the_streets_cross(town: LocalGeocoder, typed: str) -> None:
    found = town.geocode(typed)
    assert found is not None and found.precision is Precision.INTERSECTION, found
    assert metres(found, 0, 0) < 20
    assert set(found.address.split(" & ")) == {"Oak St", "Maple Ave"}


@pytest.mark.parametrize("typed", ["Oak St & Pine Rd", "Oak St and Far Ln"])
def test_streets_that_do_not_meet_give_no_intersection(town: LocalGeocoder, typed: str) -> None:
    found = town.geocode(typed)  # parallel 60 m apart / 2 km apart
    assert found is None or found.precision is not Precision.INTERSECTION


def test_free_text_finds_the_address_inside_a_sentence(town: LocalGeocoder) -> None:
    found = town.locate("There is a huge pothole outside 5 Oak Street since Monday, please fix")
    assert found is not None and found.address == "5 Oak St" and found.precision is Precision.ADDRESS
    corner = town.locate("Streetlight out at the corner of oak and maple")
    assert corner is not None and corner.precision is Precision.INTERSECTION
    assert metres(corner, 0, 0) < 20
    street = town.locate("Cars speed down Maple Avenue every night")
    assert street is not None and street.precision is Precision.STREET


def test_free_text_without_a_known_place_is_left_unlocated(town: LocalGeocoder) -> None:
    assert town.locate("The trash was not picked up this week") is None
    assert town.locate("") is None
    # bare lowercase names with no street type, cue, capitals or house number: too weak to trust
    assert town.locate("an oak and maple leaf in the gutter") is None


def test_reverse_gives_the_nearest_point_within_150_m(town: LocalGeocoder) -> None:
    lat, lon = at(52, 14)
    assert town.reverse(lat, lon) == "5 Oak St"
    assert town.reverse(*at(1000, 1000)) is None


def test_from_csv_reads_an_openaddresses_file(tmp_path: Path) -> None:
    geocoder = LocalGeocoder.from_csv(write_points_csv(tmp_path / "points.csv", tiny_points()))
    found = geocoder.geocode("13 Oak St Smallville")
    assert found is not None and metres(found, 130, 10) < 1


def test_bad_files_raise_errors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match=r"nope\.csv"):
        LocalGeocoder.from_csv(missing)
    columns = tmp_path / "columns.csv"
    columns.write_text("X,Y,HOUSE\n1,2,3\n")
    with pytest.raises(ValueError, match=r"columns\.csv.*missing columns LON, LAT, NUMBER, STREET"):
        LocalGeocoder.from_csv(columns)
    bad = tmp_path / "bad.csv"
    bad.write_text("LON,LAT,NUMBER,STREET\nabc,41.3,5,Oak St\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        LocalGeocoder.from_csv(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("LON,LAT,NUMBER,STREET\n")
    with pytest.raises(ValueError, match=r"empty\.csv"):
        LocalGeocoder.from_csv(empty)
