"""Helpers shared by the geo tests: the real New Haven data (or why it is missing), tiny fixtures.

The shared data lives outside the repository (../shared/data). A test that needs it skips with
the reason on a developer's machine without it, but FAILS when ``CI`` is set: CI must never pass
by silently skipping the real-data checks (``tests.support.shared_file``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.support import shared_file  # the geo tests import it from here

ORIGIN = (41.30, -72.92)  # tiny fixtures are laid out in metres around this point


def at(x_m: float, y_m: float) -> tuple[float, float]:
    """(lat, lon) of a point ``x_m`` east and ``y_m`` north of ORIGIN."""
    lat0, lon0 = ORIGIN
    return lat0 + y_m / 110_574.0, lon0 + x_m / (111_320.0 * math.cos(math.radians(lat0)))


def lonlat(x_m: float, y_m: float) -> tuple[float, float]:
    lat, lon = at(x_m, y_m)
    return lon, lat


# A small grid town. Oak St runs east-west (odd numbers on the north side, even on the south),
# Maple Ave north-south crossing it at x=0, Pine Rd parallel to Oak 60 m north (never meets it),
# Far Ln 2 km away. Oak St is spelled two ways, as real files do.
def tiny_points() -> list[tuple[float, float, str, str]]:
    """(lon, lat, number, street) rows, the order ``LocalGeocoder`` takes."""
    rows: list[tuple[float, float, str, str]] = []
    for n in (1, 5, 13, 21):  # odd side: 3, 7, 9, 11 are missing on purpose
        rows.append((*lonlat(n * 10, 10), str(n), "Oak Street" if n < 10 else "Oak St"))
    for n in (2, 8, 10, 20):
        rows.append((*lonlat(n * 10, -10), str(n), "OAK ST"))
    for n in (2, 4, 6, 8, 10):
        rows.append((*lonlat(10, n * 10 + 20), str(n), "Maple Avenue"))
        rows.append((*lonlat(-10, n * 10 + 20), str(n + 1), "Maple Ave"))
    for n in (100, 110, 120, 130):
        rows.append((*lonlat(n, 70), str(n), "Pine Road"))
    for n in (1, 3, 5):
        rows.append((*lonlat(2000 + n * 10, 2000), str(n), "Far Lane"))
    return rows


def write_points_csv(path: Path, rows: list[tuple[float, float, str, str]]) -> Path:
    lines = ["LON,LAT,NUMBER,STREET,UNIT,CITY,DISTRICT,REGION,POSTCODE,ID,HASH"]
    lines += [
        f"{lon:.7f},{lat:.7f},{number},{street},,Smallville,,CT,,," for lon, lat, number, street in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    corners = [at(x0, y0), at(x1, y0), at(x1, y1), at(x0, y1), at(x0, y0)]
    return [[[lon, lat] for lat, lon in corners]]


def write_geojson(path: Path, features: list[tuple[str | None, list[list[list[float]]]]]) -> Path:
    data = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {} if name is None else {"name": name},
                "geometry": {"type": "Polygon", "coordinates": rings},
            }
            for name, rings in features
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_missing_shared_data_fails_under_ci_and_skips_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.support.SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        shared_file("newhaven_address_points.csv")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not present"):
        shared_file("newhaven_address_points.csv")
