"""The console's inline SVG: well-formed, accessible, escaped, and drawn where the data says.

Every output is parsed with ``xml.etree.ElementTree``; the map is checked against the real New
Haven ward and neighbourhood files (``../shared/data``).
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import shape

from sinks.console import svg
from sinks.console.svg import District, MapPoint, bar_chart, district_map, line_chart, load_boundaries
from tests.support import shared_file

NS = {"s": svg.SVG_NS}
WARDS = "newhaven_wards_2012.geojson"
NEIGHBORHOODS = "newhaven_neighborhoods.geojson"


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)  # raises on anything not well-formed
    assert root.tag == f"{{{svg.SVG_NS}}}svg"
    return root


def all_of(root: ET.Element, tag: str, cls: str | None = None) -> list[ET.Element]:
    found = root.findall(f".//s:{tag}", NS)
    return [e for e in found if cls is None or cls in (e.get("class") or "").split()]


def texts(root: ET.Element, cls: str) -> list[str]:
    return [e.text or "" for e in all_of(root, "text", cls)]


def assert_accessible(root: ET.Element, title: str, role: str = "img") -> None:
    assert root.get("role") == role
    ids = (root.get("aria-labelledby") or "").split()
    assert len(ids) == 2
    named = {e.get("id"): e for e in root.iter() if e.get("id")}
    assert named[ids[0]].tag == f"{{{svg.SVG_NS}}}title" and named[ids[0]].text == title
    assert named[ids[1]].tag == f"{{{svg.SVG_NS}}}desc" and named[ids[1]].text
    assert root[0] is named[ids[0]]  # the title comes first


def numbers(d: str) -> list[float]:
    return [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", d)]


def bbox(d: str) -> tuple[float, float, float, float]:
    values = numbers(d)
    xs, ys = values[0::2], values[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def contrast_with_white(colour: str) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(int(colour[i : i + 2], 16) / 255) for i in (1, 3, 5))
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


# -- colours -------------------------------------------------------------------------------


def test_every_colour_carrying_information_meets_wcag_aa_on_white() -> None:
    for colour in (svg.TEXT, svg.MUTED, svg.BAR, svg.LINE, *svg.PRIORITY_COLOURS.values()):
        assert contrast_with_white(colour) >= 4.5, colour
    assert len(set(svg.PRIORITY_COLOURS.values())) >= 3  # emergency, high and normal differ


# -- bar chart -----------------------------------------------------------------------------


def test_bar_chart_draws_one_labelled_bar_per_row_scaled_to_the_largest() -> None:
    rows = [("public-works", 40.0), ("transportation", 20.0), ("parks", 0.0), ("triage", 12.5)]
    root = parse(bar_chart("Requests by department", rows, unit=" h"))
    assert_accessible(root, "Requests by department")
    bars = all_of(root, "rect", "bar")
    assert len(bars) == 4
    assert texts(root, "label") == ["public-works", "transportation", "parks", "triage"]
    assert texts(root, "value") == ["40 h", "20 h", "0 h", "12.5 h"]
    widths = [float(b.get("width") or "nan") for b in bars]
    assert widths[1] == pytest.approx(widths[0] / 2, abs=0.1)
    assert widths[2] == 0
    assert widths[3] == pytest.approx(widths[0] * 12.5 / 40, abs=0.1)
    assert all(b.get("fill") == svg.BAR for b in bars)
    # Each row carries its full text for assistive technology, the desc sums the chart up.
    row_titles = [g.findtext("s:title", namespaces=NS) for g in all_of(root, "g", "row")]
    assert row_titles[0] == "public-works: 40 h"
    assert "4 bars" in (root.findtext("s:desc", namespaces=NS) or "")


def test_bar_chart_escapes_titles_labels_and_drops_characters_xml_cannot_carry() -> None:
    evil = "<script>alert(\"x\")</script> & 'q'"
    text = bar_chart(evil, [(evil, 3), ("nul\x00here\x0b", 1)], unit="<%>")
    assert "<script>" not in text
    root = parse(text)
    assert root.findtext("s:title", namespaces=NS) == evil
    assert texts(root, "label")[1] == "nulhere"
    assert texts(root, "value") == ["3<%>", "1<%>"]
    assert texts(root, "label")[0].startswith("<script>")  # shortened, but the real characters


def test_bar_chart_shortens_long_labels_but_keeps_them_whole_in_the_row_title() -> None:
    label = "Abandoned vehicle on a residential street " * 3
    root = parse(bar_chart("Services", [(label, 5)]))
    shown = texts(root, "label")[0]
    assert shown.endswith("…") and len(shown) < len(label)
    assert all_of(root, "g", "row")[0].findtext("s:title", namespaces=NS) == f"{label}: 5"


def test_an_empty_bar_chart_says_no_data() -> None:
    root = parse(bar_chart("Median time to close", []))
    assert_accessible(root, "Median time to close")
    assert all_of(root, "rect", "bar") == []
    assert texts(root, "no-data") == ["No data"]
    assert root.findtext("s:desc", namespaces=NS) == "No data"


def test_two_charts_on_one_page_have_different_ids() -> None:
    a = parse(bar_chart("Volume", [("a", 1)]))
    b = parse(bar_chart("Volume", [("b", 2)]))
    assert a.get("aria-labelledby") != b.get("aria-labelledby")
    assert bar_chart("Volume", [("a", 1)]) == bar_chart("Volume", [("a", 1)])  # deterministic


# -- line chart ----------------------------------------------------------------------------


def test_line_chart_draws_the_backlog_with_labelled_axes() -> None:
    start = date(2026, 3, 1)
    points = [(start + timedelta(days=i), float(v)) for i, v in enumerate([3, 8, 5, 0, 6])]
    root = parse(line_chart("Open requests", list(reversed(points)), height=200))  # any order
    assert_accessible(root, "Open requests")
    assert texts(root, "x-first") == ["2026-03-01"]
    assert texts(root, "x-last") == ["2026-03-05"]
    assert texts(root, "y-max") == ["8"]
    assert texts(root, "y-min") == ["0"]
    line = all_of(root, "polyline", "line")[0]
    coords = [tuple(map(float, pair.split(","))) for pair in (line.get("points") or "").split()]
    assert len(coords) == 5
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    assert xs == sorted(xs)  # oldest left
    assert min(ys) == ys[1]  # the highest value (8, on Mar 2) is drawn highest
    assert max(ys) == ys[3]  # 0 on the baseline
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.2)  # evenly spaced days
    dots = all_of(root, "circle", "point")
    assert [d.findtext("s:title", namespaces=NS) for d in dots][:2] == ["2026-03-01: 3", "2026-03-02: 8"]
    desc = root.findtext("s:desc", namespaces=NS) or ""
    assert "latest 6" in desc and "highest 8 on 2026-03-02" in desc


def test_line_chart_with_one_point_or_none() -> None:
    root = parse(line_chart("Backlog", [(date(2026, 3, 1), 4.0)], unit=" open"))
    assert texts(root, "x-first") == ["2026-03-01"]
    assert texts(root, "y-max") == ["4 open"]
    assert len(all_of(root, "circle", "point")) == 1
    empty = parse(line_chart("Backlog", []))
    assert texts(empty, "no-data") == ["No data"]
    flat = parse(line_chart("Backlog", [(date(2026, 3, 1), 0.0), (date(2026, 3, 2), 0.0)]))
    assert texts(flat, "y-max") == ["0"]


# -- boundaries ----------------------------------------------------------------------------


def raw_features(name: str) -> list[dict[str, Any]]:
    features: list[dict[str, Any]] = json.loads(shared_file(name).read_text(encoding="utf-8"))["features"]
    return features


def ring_count(feature: dict[str, Any]) -> int:
    geometry = feature["geometry"]
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return sum(len(polygon) for polygon in polygons)


def test_load_boundaries_reads_the_real_ward_file() -> None:
    wards = load_boundaries(shared_file(WARDS))
    assert len(wards) == 30
    assert {w.name for w in wards} == {f"Ward {n}" for n in range(1, 31)}
    assert sum(len(w.rings) for w in wards) == sum(ring_count(f) for f in raw_features(WARDS))
    by_number = load_boundaries(shared_file(WARDS), name_property="ward")
    assert {w.name for w in by_number} == {str(n) for n in range(1, 31)}


def test_load_boundaries_refuses_what_is_not_a_feature_collection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_boundaries(tmp_path / "missing.geojson")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not JSON"):
        load_boundaries(tmp_path / "bad.json")
    (tmp_path / "point.json").write_text('{"type": "Point", "coordinates": [0, 0]}')
    with pytest.raises(ValueError, match="FeatureCollection"):
        load_boundaries(tmp_path / "point.json")


# -- district map --------------------------------------------------------------------------


def ward_paths(root: ET.Element) -> dict[str, str]:
    return {
        p.findtext("s:title", namespaces=NS) or "": p.get("d") or "" for p in all_of(root, "path", "district")
    }


def test_the_map_draws_every_ward_ring_with_its_name_and_compact_paths() -> None:
    wards = load_boundaries(shared_file(WARDS))
    root = parse(district_map({"ward": wards}, []))
    assert_accessible(root, "Open requests by district", role="group")
    paths = all_of(root, "path", "district")
    rings = sum(ring_count(f) for f in raw_features(WARDS))
    assert len(paths) == rings == 30  # one ring per ward in this file
    assert sum((p.get("d") or "").count("M") for p in paths) == rings
    assert {p.findtext("s:title", namespaces=NS) for p in paths} == {f"Ward {n}" for n in range(1, 31)}
    for p in paths:
        d = p.get("d") or ""
        assert re.fullmatch(r"(M[-\d. L]+Z)+", d), d[:80]
        assert all(len(n.split(".")[1]) == 1 for n in re.findall(r"\d+\.\d+", d))  # one decimal
    # Fitted to the boundaries: they span the width (within the padding) and stay inside.
    width, height = float(root.get("width") or 0), float(root.get("height") or 0)
    boxes = [bbox(p.get("d") or "") for p in paths]
    assert min(b[0] for b in boxes) == pytest.approx(12, abs=0.1)
    assert max(b[2] for b in boxes) == pytest.approx(width - 12, abs=0.1)
    assert min(b[1] for b in boxes) == pytest.approx(12, abs=0.1)
    assert max(b[3] for b in boxes) < height


def test_the_map_keeps_the_real_aspect_ratio_with_north_up() -> None:
    wards = load_boundaries(shared_file(WARDS))
    root = parse(district_map({"ward": wards}, [], width=640))
    lons = [x for w in wards for r in w.rings for x, _ in r]
    lats = [y for w in wards for r in w.rings for _, y in r]
    boxes = [bbox(p.get("d") or "") for p in all_of(root, "path", "district")]
    drawn_w = max(b[2] for b in boxes) - min(b[0] for b in boxes)
    drawn_h = max(b[3] for b in boxes) - min(b[1] for b in boxes)
    kx = math.cos(math.radians((min(lats) + max(lats)) / 2))
    expected = (max(lats) - min(lats)) / ((max(lons) - min(lons)) * kx)
    assert drawn_h / drawn_w == pytest.approx(expected, rel=0.01)


def test_a_request_inside_a_ward_is_drawn_inside_that_ward_as_a_link() -> None:
    wards = load_boundaries(shared_file(WARDS))
    features = {f["properties"]["name"]: shape(f["geometry"]) for f in raw_features(WARDS)}
    inside7 = features["Ward 7"].representative_point()
    inside22 = features["Ward 22"].representative_point()
    points = [
        MapPoint("K7M4-QPXA", inside7.y, inside7.x, "K7M4-QPXA Pothole (emergency)", "emergency"),
        MapPoint("AB/CD?x=1&y", inside22.y, inside22.x, 'Graffiti "tag" <b>', "low"),
        MapPoint("FAR0-AWAY", 40.0, -74.0, "outside the city", "high"),  # left out
        MapPoint("NOWH-ERE0", None, None, "no coordinates"),  # left out
    ]
    text = district_map({"ward": wards}, points)
    root = parse(text)
    links = all_of(root, "a")
    assert [a.get("href") for a in links] == [
        "/console/requests/AB%2FCD%3Fx%3D1%26y",  # low drawn first, emergency on top
        "/console/requests/K7M4-QPXA",
    ]
    circles = {a.get("href"): a.find("s:circle", NS) for a in links}
    emergency = circles["/console/requests/K7M4-QPXA"]
    assert emergency is not None
    assert emergency.get("fill") == svg.PRIORITY_COLOURS["emergency"]
    assert emergency.findtext("s:title", namespaces=NS) == "K7M4-QPXA Pothole (emergency)"
    low = circles["/console/requests/AB%2FCD%3Fx%3D1%26y"]
    assert low is not None and low.findtext("s:title", namespaces=NS) == 'Graffiti "tag" <b>'
    assert float(emergency.get("r") or 0) > float(low.get("r") or 0)

    paths = ward_paths(root)
    for circle, ward in ((emergency, "Ward 7"), (low, "Ward 22")):
        cx, cy = float(circle.get("cx") or "nan"), float(circle.get("cy") or "nan")
        x0, y0, x1, y1 = bbox(paths[ward])
        assert x0 <= cx <= x1 and y0 <= cy <= y1, ward
        # ... and really inside the drawn polygon, not only its box.
        values = numbers(paths[ward])
        drawn = shapely.Polygon(list(zip(values[0::2], values[1::2], strict=True)))
        assert drawn.buffer(0.2).contains(shapely.Point(cx, cy)), ward
    legend = [t.text for t in root.findall(".//s:g[@class='legend']/s:text", NS)]
    assert legend == ["emergency (1)", "high (0)", "normal (0)", "low (1)"]
    desc = root.findtext("s:desc", namespaces=NS) or ""
    assert "30 districts (ward)" in desc and "2 requests shown" in desc


def test_multipolygon_layers_draw_all_rings_per_district() -> None:
    neighbourhoods = load_boundaries(shared_file(NEIGHBORHOODS))
    wards = load_boundaries(shared_file(WARDS))
    root = parse(district_map({"ward": wards, "neighborhood": neighbourhoods}, []))
    layers = root.findall("s:g[@class='layer']", NS)
    assert [g.get("data-layer") for g in layers] == ["ward", "neighborhood"]
    drawn = [p for p in layers[1].findall("s:path", NS)]
    assert len(drawn) == len(raw_features(NEIGHBORHOODS)) == 20
    expected = {f["properties"]["name"]: ring_count(f) for f in raw_features(NEIGHBORHOODS)}
    assert {p.findtext("s:title", namespaces=NS): (p.get("d") or "").count("M") for p in drawn} == expected
    assert layers[0].get("fill") == svg.DISTRICT_FILL and layers[1].get("fill") == "none"


def test_holes_are_subpaths_cut_by_the_even_odd_rule_and_names_are_escaped() -> None:
    outer = ((-73.0, 41.0), (-72.0, 41.0), (-72.0, 42.0), (-73.0, 42.0), (-73.0, 41.0))
    hole = ((-72.6, 41.4), (-72.4, 41.4), (-72.4, 41.6), (-72.6, 41.6), (-72.6, 41.4))
    district = District(name="Fair <Haven> & 'East'", polygons=((outer, hole),))
    north = MapPoint("NNNN-0001", 41.9, -72.5, "north")
    south = MapPoint("SSSS-0001", 41.1, -72.5, "south")
    root = parse(district_map({"zone": [district]}, [north, south], width=200))
    (path,) = all_of(root, "path", "district")
    assert path.findtext("s:title", namespaces=NS) == "Fair <Haven> & 'East'"
    assert (path.get("d") or "").count("M") == 2
    layer = root.find("s:g[@class='layer']", NS)
    assert layer is not None and layer.get("fill-rule") == "evenodd"
    ys = {a.get("href"): float(a[0].get("cy") or "nan") for a in all_of(root, "a")}
    assert ys["/console/requests/NNNN-0001"] < ys["/console/requests/SSSS-0001"]  # y flipped
    # A degree of longitude is shorter than one of latitude at 41.5° N.
    x0, y0, x1, y1 = bbox(path.get("d") or "")
    assert (x1 - x0) / (y1 - y0) == pytest.approx(math.cos(math.radians(41.5)), rel=0.01)


def test_a_map_without_boundaries_fits_the_points_and_without_anything_says_so() -> None:
    points = [MapPoint("AAAA-0001", 41.30, -72.93), MapPoint("AAAA-0002", 41.32, -72.90, priority="high")]
    root = parse(district_map({}, points))
    assert len(all_of(root, "a")) == 2
    assert all_of(root, "path", "district") == []
    empty = parse(district_map({}, []))
    assert texts(empty, "no-data") == ["No districts or located requests to show"]
