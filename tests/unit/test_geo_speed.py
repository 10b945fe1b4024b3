"""The geo package's fast paths give the answers of the slow code they stand in for.

Each is checked against that code itself, on crafted edge cases and, when the shared data is
there, on every New Haven report: the district grid against one built with the STRtree's own
predicates (the way it was built before, seconds slower at start), the memoised usaddress
tagging against ``usaddress.tag``, and geocode answers shared by addresses that tokenise alike
against each address geocoded alone.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from normalizer.geo import Districts, LocalGeocoder
from normalizer.geo.districts import CELL_DEG, _grid, cell_boxes
from tests.support import SHARED_DATA
from tests.unit.test_geo_support import ORIGIN, shared_file, tiny_points


def _tree_predicate_grid(geoms: tuple[BaseGeometry, ...]) -> tuple[float, float, dict[object, object]]:
    """The grid as ``_grid`` built it before: ``STRtree.query(boxes, predicate=...)``."""
    xmin, ymin, ix, iy, boxes = cell_boxes(geoms)  # the same cells: what differs is the tests
    tree = shapely.STRtree(np.array(geoms, dtype=object))
    touching: dict[int, list[int]] = defaultdict(list)
    for cell, geom in zip(*tree.query(boxes, predicate="intersects"), strict=True):
        touching[int(cell)].append(int(geom))
    inside = dict(zip(*(a.tolist() for a in tree.query(boxes, predicate="within")), strict=False))
    cells: dict[object, object] = {}
    for cell, here in touching.items():
        cells[(int(ix[cell]), int(iy[cell]))] = inside[cell] if cell in inside else tuple(sorted(here))
    return xmin, ymin, cells


def _crafted_layers() -> list[tuple[BaseGeometry, ...]]:
    lon0, lat0 = ORIGIN[1], ORIGIN[0]
    step = CELL_DEG
    # Edges exactly on cell lines, cells touching a polygon only at an edge or a corner, a hole,
    # two districts sharing a border, a thin sliver, a multipolygon, and overlapping districts.
    left = box(lon0, lat0, lon0 + 3 * step, lat0 + 4 * step)
    right = box(lon0 + 3 * step, lat0, lon0 + 7 * step, lat0 + 4 * step)
    holed = Polygon(
        [(lon0, lat0), (lon0 + 6 * step, lat0), (lon0 + 6 * step, lat0 + 6 * step), (lon0, lat0 + 6 * step)],
        [[(lon0 + 2 * step, lat0 + 2 * step), (lon0 + 4 * step, lat0 + 2 * step),
          (lon0 + 4 * step, lat0 + 4 * step), (lon0 + 2 * step, lat0 + 4 * step)]],
    )  # fmt: skip
    sliver = box(lon0 + 0.5 * step, lat0 - 5 * step, lon0 + 0.50001 * step, lat0 + 5 * step)
    corner = box(lon0 + 7 * step, lat0 + 4 * step, lon0 + 9 * step, lat0 + 6 * step)  # `right`'s corner
    s = step
    tilted = Polygon([(lon0, lat0), (lon0 + 5.3 * s, lat0 + 1.7 * s), (lon0 + 2 * s, lat0 + 7 * s)])
    multi = MultiPolygon([box(lon0 + 10 * step, lat0, lon0 + 11 * step, lat0 + step), tilted])
    layers: list[tuple[BaseGeometry, ...]] = [
        (left, right),
        (holed,),
        (left, right, corner, sliver),
        (multi, holed, left),  # overlapping: the last polygon wholly holding a cell names it, as before
        (tilted.buffer(0.37 * step),),
    ]
    for geoms in layers:
        for g in geoms:
            shapely.prepare(g)
    return layers


def _same_grid(geoms: tuple[BaseGeometry, ...]) -> None:
    grid = _grid(geoms)
    assert (grid.lon0, grid.lat0, grid.cells) == _tree_predicate_grid(geoms)


@pytest.mark.parametrize("layer", range(len(_crafted_layers())))
def test_the_district_grid_is_the_one_the_tree_predicates_give(layer: int) -> None:
    _same_grid(_crafted_layers()[layer])


def test_the_new_haven_district_grids_are_the_ones_the_tree_predicates_give() -> None:
    wards = shared_file("newhaven_wards_2012.geojson")
    hoods = shared_file("newhaven_neighborhoods.geojson")
    districts = Districts.from_files({"ward": wards, "neighborhood": hoods})
    for layer in districts._layers:
        _same_grid(layer.geoms)
    assert districts._city is not None
    _same_grid((districts._city,))


def _new_haven_addresses() -> list[str]:
    path = SHARED_DATA / "seeclickfix_newhaven_2014.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["Address"] for r in rows if r["Address"]]


def test_addresses_that_tokenise_alike_share_one_answer() -> None:
    typed = [
        "5 Oak Street",
        "5 oak st, Smallville, CT",
        "5 OAK ST.  Smallville",
        "Oak St & Maple Ave",
        "oak st and maple ave Smallville, CT 06511, USA",
        "Oak St. & Maple Ave.",
        "Oka St & Mapel Ave",  # the fuzzy path
        "Oka St and Mapel Ave, Smallville",
        "Maple",
    ]
    shared = LocalGeocoder(tiny_points(), cities=["Smallville"])
    answers = [shared.geocode(a) for a in typed]
    assert shared._geocode_words.cache_info().currsize < len(typed)  # some were shared
    for address, answer in zip(typed, answers, strict=True):
        alone = LocalGeocoder(tiny_points(), cities=["Smallville"])
        assert alone.geocode(address) == answer, address


def test_new_haven_addresses_get_the_answer_they_get_alone() -> None:
    points = shared_file("newhaven_address_points.csv")
    shared = LocalGeocoder.from_csv(points)
    alone = LocalGeocoder.from_csv(points)
    for address in _new_haven_addresses()[:3000]:
        alone.geocode.cache_clear()  # type: ignore[attr-defined]
        alone._geocode_words.cache_clear()
        assert shared.geocode(address) == alone.geocode(address), address
    assert shared._geocode_words.cache_info().hits > 0
