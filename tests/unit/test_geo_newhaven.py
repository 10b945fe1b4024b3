"""The geo package on real New Haven data: resident spellings, typos, intersections, missing
numbers, ranges and free-text reports, checked by distance (haversine metres) against the city's
address points or the report's own Lat/Lng. The report strings come from the tune split only.
"""

from __future__ import annotations

import pytest

from normalizer.geo import Districts, GeoResult, LocalGeocoder, haversine_m
from schemas.request import Precision
from tests.unit.test_geo_support import shared_file

ELM_43 = (41.307674, -72.922278)  # 43 Elm Street in the address file
CHAPEL_1022 = (41.307357, -72.929430)
CHAPEL_COLLEGE = (41.3072866, -72.9286877)  # reports filed at "College St & Chapel St"


@pytest.fixture(scope="module")
def newhaven() -> LocalGeocoder:
    return LocalGeocoder.from_csv(shared_file("newhaven_address_points.csv"))


@pytest.fixture(scope="module")
def districts() -> Districts:
    return Districts.from_files(
        {
            "ward": shared_file("newhaven_wards_2012.geojson"),
            "neighborhood": shared_file("newhaven_neighborhoods.geojson"),
        }
    )


def metres(found: GeoResult | None, point: tuple[float, float]) -> float:
    assert found is not None
    return haversine_m(found.lat, found.long, *point)


@pytest.mark.parametrize(
    "typed",
    [
        "43 Elm St",
        "43 Elm Street",
        "43 elm st.",
        "43 ELM STREET New Haven, CT 06511, USA",
        "43 Elm St New Haven , CT",
    ],
)
def test_spelling_variants_hit_the_address_point(newhaven: LocalGeocoder, typed: str) -> None:
    found = newhaven.geocode(typed)
    assert found is not None and found.precision is Precision.ADDRESS and found.address == "43 Elm St"
    assert metres(found, ELM_43) < 1


@pytest.mark.parametrize(
    ("typed", "point", "within_m"),
    [
        ("135 Alston Avenue new haven, ct", (41.320346, -72.967769), 5),
        ("56 Hurlbert Street New Haven, Connecticut", None, 5),
        ("1022 Chaple Street", CHAPEL_1022, 1),  # typo
        ("1022 Chapel Av", CHAPEL_1022, 1),  # wrong street type, only Chapel St exists
        ("507 Whitney New Haven, Connecticut", None, 5),  # no street type at all
    ],
)
def test_real_address_strings(
    newhaven: LocalGeocoder, typed: str, point: tuple[float, float] | None, within_m: float
) -> None:
    found = newhaven.geocode(typed)
    assert found is not None and found.precision is Precision.ADDRESS, found
    if point is not None:
        assert metres(found, point) < within_m


def test_a_number_not_in_the_file_is_interpolated_nearby(newhaven: LocalGeocoder) -> None:
    found = newhaven.geocode("45 Elm Street")
    assert found is not None and found.precision is Precision.INTERPOLATED and found.address == "45 Elm St"
    assert metres(found, ELM_43) < 60


def test_a_range_is_placed_inside_it(newhaven: LocalGeocoder) -> None:
    found = newhaven.geocode("165-179 York Street")
    assert found is not None and found.address == "165-179 York St"
    assert found.precision in (Precision.ADDRESS, Precision.INTERPOLATED)
    assert metres(found, (41.3083417, -72.9315410)) < 100  # the report filed at that range


@pytest.mark.parametrize(
    "typed",
    ["Chapel St & College St", "corner of Chapel and College", "College St. & Chapel St. New Haven, CT"],
)
def test_intersections(newhaven: LocalGeocoder, typed: str) -> None:
    found = newhaven.geocode(typed)
    assert found is not None and found.precision is Precision.INTERSECTION
    assert metres(found, CHAPEL_COLLEGE) < 60


def test_intersection_with_a_misspelt_street(newhaven: LocalGeocoder) -> None:
    found = newhaven.geocode("Trumbul And Whitney  New Haven, Connecticut")
    assert found is not None and found.precision is Precision.INTERSECTION
    assert found.address == "Trumbull St & Whitney Ave"
    assert metres(found, (41.3130702, -72.9217879)) < 60


def test_intersections_of_streets_that_do_not_meet_are_rejected(newhaven: LocalGeocoder) -> None:
    # Chapel St and Edgewood Ave run parallel one block apart
    found = newhaven.geocode("Chapel St & Edgewood Ave")
    assert found is None or found.precision is not Precision.INTERSECTION


def test_a_street_alone_is_a_street(newhaven: LocalGeocoder) -> None:
    found = newhaven.geocode("Linden Street New Haven, CT")
    assert found is not None and found.precision is Precision.STREET and found.address == "Linden St"
    assert metres(found, (41.3223234, -72.9146296)) < 600  # a street centroid, not a point


@pytest.mark.parametrize(
    ("text", "point", "within_m"),
    [
        ("There is a huge pothole outside 45 Elm Street since Monday", ELM_43, 60),
        (
            "Sinkhole Resident reports diagonally across from 30 Beers Street that a sinkhole is starting",
            (41.311833, -72.942616),
            50,
        ),
        (
            "Street Lamp Broken / Hazard Corner of Church/Chapel. Green street light pole fixture broken",
            (41.3063, -72.9259),
            100,
        ),
        ("Leaf bags Resident reports leaf bags were not removed at 109 Ellsworth Ave.", None, 0),
        ("Repairs Trip and fall in the vicinity of 1022 Chapel Street.", CHAPEL_1022, 1),
        ("huge pothole in front of 1022 chaple street", CHAPEL_1022, 1),
    ],
)
def test_free_text_reports(
    newhaven: LocalGeocoder, text: str, point: tuple[float, float] | None, within_m: float
) -> None:
    found = newhaven.locate(text)
    assert found is not None and found.precision.pinpoints, found
    if point is not None:
        assert metres(found, point) < within_m


@pytest.mark.parametrize(
    "text",
    [
        "Stolen roof rack fairing My roof rack fairing was stolen off of my car on 12/31.",
        "Street Lamp street lamp out",
        "I saw 2 orange cones near the school",
    ],
)
def test_free_text_without_a_place_is_not_guessed(newhaven: LocalGeocoder, text: str) -> None:
    assert newhaven.locate(text) is None


def test_reverse(newhaven: LocalGeocoder) -> None:
    assert newhaven.reverse(41.3076745, -72.9222785) == "43 Elm St"
    assert newhaven.reverse(41.5, -72.5) is None


def test_districts_of_real_reports(districts: Districts) -> None:
    # "135 Alston Avenue", tagged "City of New Haven,PD 02,Ward 25"
    assert districts.lookup(41.320346, -72.967769)["ward"] == "Ward 25"
    assert districts.lookup(*CHAPEL_COLLEGE)["ward"] == "Ward 1"
    assert districts.inside_city(*ELM_43) and not districts.inside_city(41.5, -72.5)
