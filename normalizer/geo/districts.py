"""Which wards, neighbourhoods, police districts… a point lies in: GeoJSON layers, shapely underneath.

Why this shape: routing rules and department reports are by district, so every located request
needs its districts, and the lookup must cost a few microseconds, where a shapely call costs
one or two and an STRtree query with a Point about ten. So at load each layer is rasterised
into a grid of ~100 m cells (vectorised shapely calls on all cells at once, using an STRtree):
a cell wholly inside one district stores that district's name, a cell on a border stores the
few polygons it touches, a cell outside stores nothing. A lookup is a dict probe, and only on a
border one or two prepared ``shapely.contains_xy`` tests. The city limit is gridded the same
way. A layer's districts are assumed not to overlap (wards do not); the first that contains the
point names it. Building the grids takes a fraction of a second (the polygons are prepared,
not the cells: see ``_grid``), so a stage restart does not wait for them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

CACHE_SIZE = 20_000


CELL_DEG = 0.001  # ~110 m north-south, ~85 m east-west at 41° N


@dataclass(frozen=True)
class _Grid:
    """Cells of one polygon set: cell -> district index (inside) or tuple of candidates (border)."""

    lon0: float
    lat0: float
    cells: dict[tuple[int, int], int | tuple[int, ...]]


def cell_boxes(geoms: tuple[BaseGeometry, ...]) -> tuple[float, float, Any, Any, Any]:
    """The cells over ``geoms``' bounds: (xmin, ymin, column of each cell, row of each cell, the
    cells as shapely boxes), one array entry a cell."""
    xmin, ymin, xmax, ymax = (float(v) for v in shapely.total_bounds(np.array(geoms, dtype=object)))
    nx = int((xmax - xmin) / CELL_DEG) + 1
    ny = int((ymax - ymin) / CELL_DEG) + 1
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    ix, iy = gx.ravel(), gy.ravel()
    boxes = shapely.box(
        xmin + ix * CELL_DEG, ymin + iy * CELL_DEG, xmin + (ix + 1) * CELL_DEG, ymin + (iy + 1) * CELL_DEG
    )
    return xmin, ymin, ix, iy, boxes


def _grid(geoms: tuple[BaseGeometry, ...]) -> _Grid:
    """Rasterise ``geoms``: which cells each touches (intersects), and which it wholly holds.

    The STRtree only pairs cells with the polygons whose bounding boxes they overlap; the exact
    tests then run with the *polygon* prepared (``shapely.intersects``/``contains`` prepare their
    first argument), one vectorised call per test. Asking the tree for ``predicate=...`` instead
    prepares each small box and tests it against the whole unprepared polygon, which costs time
    in the polygon's vertex count per cell: seconds for the city limit at start. Same cells, same
    answers: ``box within polygon`` is ``polygon contains box``, and only a cell that intersects a
    polygon can lie within it.
    """
    xmin, ymin, ix, iy, boxes = cell_boxes(geoms)
    polygons = np.array(geoms, dtype=object)
    shapely.prepare(polygons)  # a no-op for the ones already prepared
    cell_ids, geom_ids = shapely.STRtree(polygons).query(boxes)  # bounding boxes overlap
    hit = shapely.intersects(polygons[geom_ids], boxes[cell_ids])
    cell_ids, geom_ids = cell_ids[hit], geom_ids[hit]
    held = shapely.contains(polygons[geom_ids], boxes[cell_ids])
    touching: dict[int, list[int]] = defaultdict(list)
    for cell, geom in zip(cell_ids.tolist(), geom_ids.tolist(), strict=True):
        touching[cell].append(geom)
    inside = dict(zip(cell_ids[held].tolist(), geom_ids[held].tolist(), strict=True))
    cells: dict[tuple[int, int], int | tuple[int, ...]] = {}
    for cell, geoms_here in touching.items():
        key = (int(ix[cell]), int(iy[cell]))
        cells[key] = inside[cell] if cell in inside else tuple(sorted(geoms_here))
    return _Grid(float(xmin), float(ymin), cells)


@dataclass(frozen=True)
class _Layer:
    name: str
    grid: _Grid
    geoms: tuple[BaseGeometry, ...]
    names: tuple[str, ...]


class Districts:
    """Boundary layers: ``lookup`` -> {layer: district}, ``inside_city`` for the city limit."""

    def __init__(
        self, layers: Mapping[str, list[tuple[str, BaseGeometry]]], *, city_boundary: str | None = None
    ) -> None:
        """``layers``: layer name -> [(district name, polygon)]. See :meth:`from_files`."""
        self._layers: list[_Layer] = []
        for layer, features in layers.items():
            geoms = tuple(g for _, g in features)
            for g in geoms:
                shapely.prepare(g)
            self._layers.append(_Layer(layer, _grid(geoms), geoms, tuple(n for n, _ in features)))
        if city_boundary is not None and city_boundary not in layers:
            raise ValueError(
                f"geo.city_boundary: layer {city_boundary!r} is not one of the boundary layers "
                f"({', '.join(layers) or 'none configured'})"
            )
        limit_layer = city_boundary or next(iter(layers), None)
        self._city: BaseGeometry | None = None
        self._city_grid = _Grid(0.0, 0.0, {})
        if limit_layer is not None:
            # A small buffer (~1 m in degrees) closes the slivers that simplified ward edges leave.
            self._city = shapely.union_all([g for _, g in layers[limit_layer]]).buffer(1e-5)
            shapely.prepare(self._city)
            self._city_grid = _grid((self._city,))
        self.lookup = lru_cache(maxsize=CACHE_SIZE)(self._lookup)  # type: ignore[method-assign]

    @classmethod
    def from_files(cls, layers: Mapping[str, Path], *, city_boundary: str | None = None) -> Districts:
        """Read each layer's GeoJSON FeatureCollection; every feature needs a ``name`` property.

        Raises ValueError naming the file: missing, not JSON, not a FeatureCollection of
        (multi)polygons, or a feature without ``name`` (for the wards file that is "Ward 7").
        """
        loaded = {layer: _read_layer(Path(path)) for layer, path in layers.items()}
        return cls(loaded, city_boundary=city_boundary)

    @property
    def layers(self) -> list[str]:
        return [layer.name for layer in self._layers]

    def lookup(self, lat: float, long: float) -> dict[str, str]:  # replaced by an LRU-cached copy
        """{layer: district name} for every layer with a district containing the point.

        The returned dict is shared by the cache: copy it before changing it.
        """
        return self._lookup(lat, long)

    def _lookup(self, lat: float, long: float) -> dict[str, str]:
        found: dict[str, str] = {}
        for layer in self._layers:
            i = _find(layer.grid, layer.geoms, lat, long)
            if i is not None:
                found[layer.name] = layer.names[i]
        return found

    def inside_city(self, lat: float, long: float) -> bool:
        """Inside the union of the city-boundary layer; True when no layers are configured."""
        if self._city is None:
            return True
        return _find(self._city_grid, (self._city,), lat, long) is not None


def _find(grid: _Grid, geoms: tuple[BaseGeometry, ...], lat: float, long: float) -> int | None:
    """Index of the polygon containing the point: the cell answers, or decides who to test."""
    cell = grid.cells.get((int((long - grid.lon0) // CELL_DEG), int((lat - grid.lat0) // CELL_DEG)))
    if cell is None:
        return None
    if isinstance(cell, int):
        return cell
    for i in cell:
        if shapely.contains_xy(geoms[i], long, lat):
            return i
    return None


def _read_layer(path: Path) -> list[tuple[str, BaseGeometry]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: boundary file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a GeoJSON file ({exc})") from None
    if (
        not isinstance(data, dict)
        or data.get("type") != "FeatureCollection"
        or not isinstance(data.get("features"), list)
    ):
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    out: list[tuple[str, BaseGeometry]] = []
    for n, feature in enumerate(data["features"]):
        props = (feature or {}).get("properties") or {}
        name = props.get("name")
        if not isinstance(name, str | int) or not str(name).strip():
            raise ValueError(f'{path}: feature {n} has no `name` property (e.g. "Ward 7")')
        try:
            geom = shape(feature["geometry"])
        except Exception as exc:  # shapely raises several types for malformed geometry
            raise ValueError(f"{path}: feature {n} ({name}) has no valid geometry ({exc})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"{path}: feature {n} ({name}) is a {geom.geom_type}, not a polygon")
        if not geom.is_valid:
            geom = geom.buffer(0)  # self-touching rings from simplification: repair, do not reject
        out.append((str(name).strip(), geom))
    if not out:
        raise ValueError(f"{path}: no features")
    return out
