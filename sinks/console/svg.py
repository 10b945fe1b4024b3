"""Accessible inline SVG for the operator console: bar and line charts and a district map.

Pure functions from data to an SVG string (no JavaScript, no external files), meant to be
inlined in an HTML page (mark it safe: every value in it is already escaped). Each chart has a
``<title>`` (its accessible name, via ``aria-labelledby``) and a ``<desc>`` summing it up, text
labels for its values (colour is never the only cue), and colours with at least WCAG AA
contrast (4.5:1) against white. The map's districts carry their names in ``<title>``; its
requests are links to their console page.

District boundaries are GeoJSON FeatureCollections of (Multi)Polygons in WGS84, one per layer
(``settings.geo.boundaries``: layer name -> file), read by ``load_boundaries``; the sinks do not
import the normalizer, so this reads the JSON itself.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import quote

SVG_NS = "http://www.w3.org/2000/svg"

# All at least 4.5:1 against white (checked in tests/unit/test_console_svg.py).
TEXT = "#1b1f24"
MUTED = "#545d66"  # axes, boundaries, secondary text
BAR = "#1f5f99"
LINE = "#1f5f99"
DISTRICT_FILL = "#eef2f6"  # a background tint, not information: no contrast requirement
PRIORITY_COLOURS: dict[str, str] = {
    "emergency": "#b3001b",
    "high": "#a34700",
    "normal": "#1f5f99",
    "low": "#545d66",
}
PRIORITY_RADIUS: dict[str, float] = {"emergency": 6.0, "high": 5.0, "normal": 4.0, "low": 3.5}
_DRAW_ORDER = ("low", "normal", "high", "emergency")  # the most urgent on top
FONT = "font-family:system-ui,sans-serif;font-size:13px"
REQUEST_HREF = "/console/requests/"

Ring = tuple[tuple[float, float], ...]  # (long, lat) pairs, as GeoJSON orders them


@dataclass(frozen=True)
class District:
    """One district of a boundary layer: its name and polygons (each: exterior ring, then holes)."""

    name: str
    polygons: tuple[tuple[Ring, ...], ...]

    @property
    def rings(self) -> tuple[Ring, ...]:
        """Every ring of every polygon (what the map draws as subpaths of one ``<path>``)."""
        return tuple(ring for polygon in self.polygons for ring in polygon)


@dataclass(frozen=True)
class MapPoint:
    """A request on the map. Points without coordinates or outside the boundaries are left out."""

    request_id: str
    lat: float | None
    long: float | None
    label: str = ""
    priority: str = "normal"


# -- escaping and formatting ---------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _esc(value: object) -> str:
    """Text or attribute value, escaped; characters XML cannot carry at all are dropped."""
    return html.escape(_XML_INVALID.sub("", str(value)), quote=True)


def _n(value: float) -> str:
    """A coordinate with one decimal, compact ("12" rather than "12.0")."""
    text = f"{value:.1f}"
    if text.endswith(".0"):
        text = text[:-2]
    return "0" if text == "-0" else text


def format_value(value: float, unit: str = "") -> str:
    """How a chart labels a value: whole numbers without decimals, others with one; ``unit``
    is appended as given (``" h"``, ``"%"``)."""
    if not math.isfinite(value):
        return "n/a"
    text = f"{round(value):,}" if abs(value - round(value)) < 1e-9 else f"{value:,.1f}"
    return f"{text}{unit}"


def _chart_id(kind: str, *parts: object) -> str:
    """A stable id for ``aria-labelledby`` (two different charts on a page get different ids)."""
    return f"{kind}-{hashlib.sha1(repr(parts).encode()).hexdigest()[:10]}"


def _shorten(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(1, chars - 1)].rstrip() + "…"


def _open(chart_id: str, width: float, height: float, title: str, desc: str, role: str = "img") -> list[str]:
    return [
        f'<svg xmlns="{SVG_NS}" width="{_n(width)}" height="{_n(height)}"'
        f' viewBox="0 0 {_n(width)} {_n(height)}" role="{role}"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc" style="{FONT}">',
        f'<title id="{chart_id}-title">{_esc(title)}</title>',
        f'<desc id="{chart_id}-desc">{_esc(desc)}</desc>',
    ]


def _no_data(chart_id: str, title: str, width: int, message: str = "No data") -> str:
    height = 72
    parts = _open(chart_id, width, height, title, message)
    parts.append(f'<text x="8" y="20" fill="{TEXT}" font-weight="bold">{_esc(title)}</text>')
    parts.append(
        f'<rect x="8" y="30" width="{width - 16}" height="34" fill="none" stroke="{MUTED}"'
        ' stroke-dasharray="4 3"/>'
    )
    parts.append(
        f'<text class="no-data" x="{_n(width / 2)}" y="52" text-anchor="middle" fill="{MUTED}">'
        f"{_esc(message)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


# -- bar chart -----------------------------------------------------------------------------


def bar_chart(title: str, rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 640) -> str:
    """Horizontal bars, one per ``(label, value)`` row in the given order, each labelled with its
    value (``format_value(value, unit)``). Negative values draw no bar. No rows: a "No data" chart."""
    chart_id = _chart_id("bar", title, tuple(rows), unit, width)
    if not rows:
        return _no_data(chart_id, title, width)
    pad, title_h, row_h, bar_h = 8, 30, 26, 18
    label_w = int(width * 0.32)
    value_w = 84
    bar_w = max(10, width - label_w - value_w - 2 * pad)
    values = [float(v) if math.isfinite(float(v)) else 0.0 for _, v in rows]
    top = max([v for v in values if v > 0], default=0.0) or 1.0
    height = title_h + len(rows) * row_h + pad
    texts = [f"{label}: {format_value(float(v), unit)}" for label, v in rows]
    desc = f"{len(rows)} bars. " + "; ".join(texts[:20]) + ("; …" if len(texts) > 20 else "")
    parts = _open(chart_id, width, height, title, desc)
    parts.append(f'<text x="{pad}" y="20" fill="{TEXT}" font-weight="bold">{_esc(title)}</text>')
    for i, ((label, raw), value, text) in enumerate(zip(rows, values, texts, strict=True)):
        y = title_h + i * row_h
        length = max(0.0, value) / top * bar_w
        parts.append(
            f'<g class="row"><title>{_esc(text)}</title>'
            f'<text class="label" x="{pad + label_w - 6}" y="{_n(y + bar_h - 5)}" text-anchor="end"'
            f' fill="{TEXT}">{_esc(_shorten(str(label), max(4, label_w // 7)))}</text>'
            f'<rect class="bar" x="{pad + label_w}" y="{y}" width="{_n(length)}" height="{bar_h}"'
            f' fill="{BAR}"/>'
            f'<text class="value" x="{_n(pad + label_w + length + 6)}" y="{_n(y + bar_h - 5)}"'
            f' fill="{TEXT}">{_esc(format_value(float(raw), unit))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- line chart ----------------------------------------------------------------------------


def line_chart(
    title: str,
    points: Sequence[tuple[date, float]],
    *,
    unit: str = "",
    width: int = 640,
    height: int = 200,
) -> str:
    """A line over time (e.g. the backlog per day), with a dot and a ``<title>`` per point; the
    axes are labelled with the first and last date, 0 and the highest value. No points: "No data"."""
    chart_id = _chart_id("line", title, tuple(points), unit, width, height)
    if not points:
        return _no_data(chart_id, title, width)
    ordered = sorted(points, key=lambda p: p[0])
    left, right, top_m, bottom_m = 64, 16, 30, 26
    plot_w, plot_h = max(10, width - left - right), max(10, height - top_m - bottom_m)
    first, last = ordered[0][0], ordered[-1][0]
    span = (last - first).days
    values = [float(v) if math.isfinite(float(v)) else 0.0 for _, v in ordered]
    highest = max(values)
    scale_top = highest if highest > 0 else 1.0

    def x(day: date) -> float:
        return left + (plot_w / 2 if span == 0 else (day - first).days / span * plot_w)

    def y(value: float) -> float:
        return top_m + plot_h - max(0.0, value) / scale_top * plot_h

    at_max = ordered[values.index(highest)][0]
    desc = (
        f"{len(ordered)} points from {first.isoformat()} to {last.isoformat()}; latest"
        f" {format_value(values[-1], unit)}; highest {format_value(highest, unit)} on {at_max.isoformat()}."
    )
    parts = _open(chart_id, width, height, title, desc)
    parts.append(f'<text x="8" y="20" fill="{TEXT}" font-weight="bold">{_esc(title)}</text>')
    base = top_m + plot_h
    parts.append(
        f'<path class="axis" d="M{left} {top_m}V{base}H{left + plot_w}" fill="none" stroke="{MUTED}"/>'
    )
    parts.append(
        f'<text class="y-max" x="{left - 6}" y="{top_m + 4}" text-anchor="end" fill="{TEXT}">'
        f"{_esc(format_value(highest, unit))}</text>"
        f'<text class="y-min" x="{left - 6}" y="{base + 4}" text-anchor="end" fill="{TEXT}">'
        f"{_esc(format_value(0, unit))}</text>"
        f'<text class="x-first" x="{left}" y="{base + 18}" fill="{TEXT}">{first.isoformat()}</text>'
    )
    if span:
        parts.append(
            f'<text class="x-last" x="{left + plot_w}" y="{base + 18}" text-anchor="end" fill="{TEXT}">'
            f"{last.isoformat()}</text>"
        )
    coords = " ".join(f"{_n(x(d))},{_n(y(v))}" for (d, _), v in zip(ordered, values, strict=True))
    parts.append(f'<polyline class="line" points="{coords}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    for (day, raw), value in zip(ordered, values, strict=True):
        parts.append(
            f'<circle class="point" cx="{_n(x(day))}" cy="{_n(y(value))}" r="2.5" fill="{LINE}">'
            f"<title>{day.isoformat()}: {_esc(format_value(float(raw), unit))}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


# -- district map --------------------------------------------------------------------------


def load_boundaries(path: Path, name_property: str = "name") -> list[District]:
    """The districts of a GeoJSON FeatureCollection of Polygons/MultiPolygons (WGS84).

    ``name_property`` names each district (the New Haven files: ``name``, "Ward 7"; a feature
    without it is named by its position). Other geometries are skipped. Raises ``ValueError``
    naming the file when it is missing, not JSON, or not a FeatureCollection.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the boundary file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    districts: list[District] = []
    for i, feature in enumerate(data.get("features") or ()):
        geometry = (feature or {}).get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates") or []
        if kind == "Polygon":
            polygons = [coords]
        elif kind == "MultiPolygon":
            polygons = coords
        else:
            continue
        name = ((feature or {}).get("properties") or {}).get(name_property)
        districts.append(
            District(
                name=str(name) if name not in (None, "") else f"#{i + 1}",
                polygons=tuple(
                    tuple(tuple((float(p[0]), float(p[1])) for p in ring) for ring in polygon if ring)
                    for polygon in polygons
                ),
            )
        )
    return districts


def load_layers(layers: Mapping[str, Path], name_property: str = "name") -> dict[str, list[District]]:
    """``load_boundaries`` for each layer of ``settings.geo.boundaries`` (layer name -> file)."""
    return {layer: load_boundaries(path, name_property) for layer, path in layers.items()}


@dataclass(frozen=True)
class _Projection:
    """Equirectangular: x east, y south (flipped), longitude shrunk by cos(mean latitude)."""

    lon0: float
    lat1: float  # the top edge
    kx: float
    scale: float
    pad: float

    def __call__(self, long: float, lat: float) -> tuple[float, float]:
        return (
            self.pad + (long - self.lon0) * self.kx * self.scale,
            self.pad + (self.lat1 - lat) * self.scale,
        )


def _ring_path(ring: Ring, project: _Projection) -> str:
    out: list[str] = []
    previous = ""
    if not ring:
        return ""
    for long, lat in ring:
        px, py = project(long, lat)
        pair = f"{_n(px)} {_n(py)}"
        if pair != previous:  # rounding merges near vertices: keep the path short
            out.append(pair)
            previous = pair
    if len(out) > 1 and out[-1] == out[0]:
        out.pop()  # Z closes it
    return f"M{out[0]}" + (f"L{' '.join(out[1:])}" if len(out) > 1 else "") + "Z"


def district_map(
    geojson_layers: Mapping[str, Sequence[District]],
    points: Sequence[MapPoint],
    *,
    width: int = 640,
    title: str = "Open requests by district",
    href_prefix: str = REQUEST_HREF,
) -> str:
    """The districts of each layer (``load_boundaries``), then the requests as linked dots.

    The view fits the bounding box of all boundaries (of the points when there are none);
    points outside it, or without coordinates, are left out. Each district is one ``<path>``
    (every ring of every polygon a subpath, holes cut by the even-odd rule) titled with its
    name; the first layer is tinted, the others outlined dashed. A point is
    ``<a href="{href_prefix}{request_id}"><circle><title>label</title></circle></a>``, coloured
    and sized by priority (the most urgent drawn on top), with a legend counting each priority.
    The ``<svg>`` has ``role="group"`` (it holds links) named by its ``<title>``.
    """
    chart_id = _chart_id("map", title, tuple(geojson_layers), len(points), width)
    coords = [p for districts in geojson_layers.values() for d in districts for r in d.rings for p in r]
    located = [p for p in points if p.lat is not None and p.long is not None]
    if not coords:
        coords = [(float(p.long), float(p.lat)) for p in located if p.long is not None and p.lat is not None]
    if not coords:
        return _no_data(chart_id, title, width, "No districts or located requests to show")
    lon_min, lon_max = min(c[0] for c in coords), max(c[0] for c in coords)
    lat_min, lat_max = min(c[1] for c in coords), max(c[1] for c in coords)
    pad = 12.0
    kx = math.cos(math.radians((lat_min + lat_max) / 2))
    span_x, span_y = (lon_max - lon_min) * kx, lat_max - lat_min
    inner = width - 2 * pad
    scale = inner / span_x if span_x > 0 else (inner / span_y if span_y > 0 else 1.0)
    project = _Projection(lon_min, lat_max, kx, scale, pad)
    map_h = span_y * scale + 2 * pad
    legend_h = 28.0
    height = math.ceil(map_h + legend_h)

    inside = [
        p
        for p in located
        if p.lat is not None
        and p.long is not None
        and lon_min <= p.long <= lon_max
        and lat_min <= p.lat <= lat_max
    ]
    counts = {level: 0 for level in _DRAW_ORDER}
    for p in inside:
        counts[_priority(p.priority)] += 1
    names = [d.name for districts in geojson_layers.values() for d in districts]
    desc = (
        f"{len(names)} districts ({', '.join(geojson_layers) or 'no boundary layer'}); "
        f"{len(inside)} requests shown: "
        + ", ".join(f"{counts[level]} {level}" for level in reversed(_DRAW_ORDER))
        + "."
    )
    parts = _open(chart_id, width, height, title, desc, role="group")
    for n, (layer, districts) in enumerate(geojson_layers.items()):
        style = (
            f'fill="{DISTRICT_FILL}" stroke="{MUTED}" stroke-width="1"'
            if n == 0
            else f'fill="none" stroke="{MUTED}" stroke-width="1.5" stroke-dasharray="5 3"'
        )
        parts.append(f'<g class="layer" data-layer="{_esc(layer)}" {style} fill-rule="evenodd">')
        for district in districts:
            d = "".join(_ring_path(ring, project) for ring in district.rings)
            parts.append(f'<path class="district" d="{d}"><title>{_esc(district.name)}</title></path>')
        parts.append("</g>")
    parts.append('<g class="requests" stroke="#ffffff" stroke-width="1">')
    for level in _DRAW_ORDER:
        for p in inside:
            if _priority(p.priority) != level or p.lat is None or p.long is None:
                continue
            cx, cy = project(p.long, p.lat)
            label = p.label or p.request_id
            parts.append(
                f'<a href="{_esc(href_prefix + quote(p.request_id, safe=""))}">'
                f'<circle class="request {level}" cx="{_n(cx)}" cy="{_n(cy)}"'
                f' r="{_n(PRIORITY_RADIUS[level])}"'
                f' fill="{PRIORITY_COLOURS[level]}"><title>{_esc(label)}</title></circle></a>'
            )
    parts.append("</g>")
    parts.extend(_legend(counts, map_h + 18))
    parts.append("</svg>")
    return "".join(parts)


def _priority(value: object) -> str:
    text = str(getattr(value, "value", value) or "normal").lower()
    return text if text in PRIORITY_COLOURS else "normal"


def _legend(counts: Mapping[str, int], y: float) -> Iterable[str]:
    yield '<g class="legend">'
    x = 12.0
    for level in reversed(_DRAW_ORDER):
        yield (
            f'<circle cx="{_n(x + 5)}" cy="{_n(y - 4)}" r="{_n(PRIORITY_RADIUS[level])}"'
            f' fill="{PRIORITY_COLOURS[level]}"/>'
        )
        label = f"{level} ({counts.get(level, 0)})"
        yield f'<text x="{_n(x + 14)}" y="{_n(y)}" fill="{TEXT}">{label}</text>'
        x += 28 + 7.5 * len(label)
    yield "</g>"


__all__ = [
    "PRIORITY_COLOURS",
    "REQUEST_HREF",
    "District",
    "MapPoint",
    "bar_chart",
    "district_map",
    "format_value",
    "line_chart",
    "load_boundaries",
    "load_layers",
]
