"""Measure the geo package on real New Haven 311 reports (SeeClickFix, 2014): accuracy and speed.

    python bench/geocode_eval.py [--data DIR] [--part heldout|tune]

Rows are split exactly as bench/classifier_eval.py splits them (sha256 of Id, 30% held out);
figures are for the held-out part. Each figure is computed twice, with two address files:

* ``full``: ../shared/data/newhaven_address_points.csv as shipped. It was derived from ALL 2014
  reports (median Lat/Lng per numbered Address), so a held-out report's own address point is in
  it: an optimistic upper bound.
* ``tune-only``: the same derivation rebuilt here from the tune rows only, so a held-out report's
  location is in the file only if another (tune) report was filed at the same address. This is
  the honest figure for "a city's file that does not know this report".

Prints figures, asserts nothing. See docs/geocoding.md.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from bench.classifier_eval import TUNE_PERCENT, split_of  # noqa: E402
from normalizer.geo import Districts, Geo, GeoResult, LocalGeocoder, haversine_m  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
NEAR_M = 100.0
# The address-point file's derivation: "<number> <street>[,] New Haven…" in the Address column.
_NUMBERED_ADDRESS = re.compile(r"^\s*(\d+[A-Za-z]?)\s+(.+?)\s*,?\s+New Haven", re.I)
_WARD = re.compile(r"Ward\s*0*(\d+)", re.I)


def load_reports(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {
                "id": r["Id"],
                "part": split_of(r["Id"]),
                "text": " ".join(f"{r['Summary']} {r['Description']}".split()),
                "address": r["Address"],
                "lat": float(r["Lat"]),
                "long": float(r["Lng"]),
                "ward": _ward(r["Export Tagged Places"]),
            }
            for r in csv.DictReader(fh)
            if r["Lat"] and r["Lng"]
        ]


def _ward(tags: str) -> str | None:
    m = _WARD.search(tags or "")
    return f"Ward {int(m.group(1))}" if m else None


def derive_points(reports: Sequence[dict[str, Any]], out: Path) -> int:
    """Write an OpenAddresses CSV: median Lat/Lng of the reports at each numbered Address.

    The same derivation as the shipped file (data README); rebuilt from all rows it reproduces
    4,945 of the shipped 4,984 points exactly, the rest differ in how odd addresses were split.
    """
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in reports:
        m = _NUMBERED_ADDRESS.match(r["address"])
        if m:
            street = " ".join(m.group(2).split()).rstrip(".")
            groups[(m.group(1).upper(), street)].append((r["lat"], r["long"]))
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["LON", "LAT", "NUMBER", "STREET", "UNIT", "CITY", "DISTRICT", "REGION", "POSTCODE", "ID", "HASH"]
        )
        for (number, street), coords in sorted(groups.items()):
            lat = statistics.median(c[0] for c in coords)
            lon = statistics.median(c[1] for c in coords)
            w.writerow([f"{lon:.6f}", f"{lat:.6f}", number, street, "", "New Haven", "", "CT", "", "", ""])
    return len(groups)


def accuracy(
    rows: Sequence[dict[str, Any]], find: Callable[[dict[str, Any]], GeoResult | None], districts: Districts
) -> dict[str, Any]:
    """Share found, median error, share within 100 m (of all rows), per precision, ward agreement."""
    per: dict[str, list[float]] = defaultdict(list)
    errors: list[float] = []
    ward_pairs = ward_agree = pin_pairs = pin_agree = 0
    for row in rows:
        found = find(row)
        if found is None:
            continue
        err = haversine_m(found.lat, found.long, row["lat"], row["long"])
        errors.append(err)
        per[found.precision.value].append(err)
        if row["ward"] is not None:
            same = districts.lookup(found.lat, found.long).get("ward") == row["ward"]
            ward_pairs += 1
            ward_agree += same
            if found.precision.pinpoints:
                pin_pairs += 1
                pin_agree += same
    n = len(rows)
    return {
        "n": n,
        "found": len(errors) / n if n else 0.0,
        "median_m": statistics.median(errors) if errors else None,
        "within": sum(e <= NEAR_M for e in errors) / n if n else 0.0,
        "within_of_found": sum(e <= NEAR_M for e in errors) / len(errors) if errors else 0.0,
        "per_precision": {
            p: {
                "n": len(v),
                "median_m": statistics.median(v),
                "within_of_found": sum(e <= NEAR_M for e in v) / len(v),
            }
            for p, v in sorted(per.items(), key=lambda kv: -len(kv[1]))
        },
        "ward_n": ward_pairs,
        "ward_agree": ward_agree / ward_pairs if ward_pairs else None,
        "pin_n": pin_pairs,
        "pin_agree": pin_agree / pin_pairs if pin_pairs else None,
    }


def print_accuracy(title: str, m: dict[str, Any]) -> None:
    med = f"{m['median_m']:.0f} m" if m["median_m"] is not None else "-"
    print(f"  {title}")
    print(
        f"    found {m['found']:.3f}   median error {med}   within {NEAR_M:.0f} m: "
        f"{m['within']:.3f} of all rows, {m['within_of_found']:.3f} of found"
    )
    for p, s in m["per_precision"].items():
        print(
            f"      {p:13s} n={s['n']:5d}  median {s['median_m']:6.0f} m  within {NEAR_M:.0f} m "
            f"{s['within_of_found']:.3f}"
        )
    if m["ward_agree"] is not None:
        print(
            f"    ward from our point = tagged ward: {m['ward_agree']:.3f} "
            f"({m['ward_n']} located, tagged rows); without street centroids: {m['pin_agree']:.3f} "
            f"({m['pin_n']})"
        )


def timing(
    geo_factory: Callable[[], Geo], rows: Sequence[dict[str, Any]], repeats: int = 3
) -> dict[str, float]:
    """µs per Geo.place call: text only and coordinates given; cold (fresh Geo) and warm (repeat).

    "cold" is a fresh ``Geo`` (empty caches) going through every row once, i.e. every text seen for
    the first time; "warm" is the same rows again (all cached). Best of ``repeats`` fresh runs, to
    keep other processes on the shared machine out of the figure.
    """
    out: dict[str, float] = {}
    texts = [r["text"] for r in rows]
    coords = [(r["lat"], r["long"]) for r in rows]
    calls: dict[str, Callable[[Geo, int], object]] = {
        "text": lambda g, i: g.place(text=texts[i], address=None, lat=None, long=None),
        "coordinates": lambda g, i: g.place(text=texts[i], address=None, lat=coords[i][0], long=coords[i][1]),
    }
    for label, call in calls.items():
        for _ in range(repeats):
            geo = geo_factory()
            for run in ("cold", "warm"):
                started = time.perf_counter()
                for i in range(len(rows)):
                    call(geo, i)
                us = (time.perf_counter() - started) / len(rows) * 1e6
                key = f"{label} {run}"
                out[key] = min(out.get(key, float("inf")), us)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--part", choices=("heldout", "tune"), default="heldout")
    args = parser.parse_args(argv)
    reports_csv = args.data / "seeclickfix_newhaven_2014.csv"
    points_csv = args.data / "newhaven_address_points.csv"
    layers = {
        "ward": args.data / "newhaven_wards_2012.geojson",
        "neighborhood": args.data / "newhaven_neighborhoods.geojson",
    }
    for path in (reports_csv, points_csv, *layers.values()):
        if not path.exists():
            print(f"dataset not found: {path}", file=sys.stderr)
            return 2
    reports = load_reports(reports_csv)
    rows = [r for r in reports if r["part"] == args.part]
    tune = [r for r in reports if r["part"] == "tune"]
    districts = Districts.from_files(layers, city_boundary="ward")
    print(f"{reports_csv.name}: {len(reports)} reports; part {args.part}: {len(rows)} rows")
    print(f"(split: sha256(Id) % 100 < {TUNE_PERCENT} -> tune, as bench/classifier_eval.py)")

    own = Counter(
        bool(r["ward"]) and districts.lookup(r["lat"], r["long"]).get("ward") == r["ward"] for r in rows
    )
    tagged = sum(1 for r in rows if r["ward"])
    print(
        f"baseline: ward of the report's own Lat/Lng = tagged ward for {own[True] / tagged:.3f} of {tagged}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tune_points = Path(tmp) / "tune_points.csv"
        n_tune_points = derive_points(tune, tune_points)
        files = {
            "full (shipped file, derived from ALL reports: optimistic)": points_csv,
            f"tune-only (rebuilt from {len(tune)} tune reports, {n_tune_points} points: honest)": tune_points,
        }
        geocoders = {title: LocalGeocoder.from_csv(path) for title, path in files.items()}
        for title, local in geocoders.items():
            print(f"\n== address file: {title}")
            print_accuracy(
                "1. free text (Summary + Description) via locate",
                accuracy(rows, lambda r, g=local: g.locate(r["text"]), districts),
            )
            print_accuracy(
                "2. Address column via geocode",
                accuracy(rows, lambda r, g=local: g.geocode(r["address"]), districts),
            )

        print(f"\n== speed: µs per Geo.place over {len(rows)} {args.part} rows (wards + neighborhoods)")
        warmup = Geo(LocalGeocoder.from_csv(points_csv), districts)  # imports, first numpy calls
        for r in tune[:300]:
            warmup.place(text=r["text"], address=None, lat=None, long=None)
        for title, path in files.items():

            def factory(path: Path = path) -> Geo:
                return Geo(LocalGeocoder.from_csv(path), Districts.from_files(layers, city_boundary="ward"))

            figures = timing(factory, rows)
            print(f"  {title.split(' (')[0]:10s} " + "   ".join(f"{k}: {v:6.1f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
