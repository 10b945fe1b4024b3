"""How many of New Haven's 2014 reports the incident rules merge, and a sample to judge by reading.

    python bench/incidents_eval.py [--csv PATH] [--sample 100] [--seed 8] [--show]

Replays every 2014 SeeClickFix report in time order through the normalizer's ``IncidentDesk``:
each report at its ``Created At Local`` with its own Lat/Lng (as an app would send them) and the
city's category as the resident's chosen service (the primary code of bench/classifier_eval.py's
mapping; "Other" categories never merge), and each ``Closed At Local`` as the department's close.
The radius/window/cool-off values come from schemas/taxonomy.yaml; they were set from what each
service is (a light is a point, a pickup a block) before this script was run, not tuned on it.

Which rows: every row is replayed (an incident's first report may be in any part), and the sample
is drawn from merges whose later report is in ``--part`` of bench/classifier_eval.py's split. A
first run, read by a person (49 merges from all rows), led to four changes (staff notices left
out; trees 10 m; street lights 15 m; traffic-safety complaints never grouped); the judged sample
in docs/incidents.md is a new draw, from ``heldout`` merges.

Prints the counts, then (with ``--show``) a seeded random sample of merges: for each, the
incident's first report and the merged one (category, distance, hours apart, addresses and the
residents' words) so a person can judge whether they are the same problem.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.classifier_eval import CATEGORY_MAP, resident_text, split_of
from normalizer.incidents import IncidentDesk, distance_m
from normalizer.normalize import Normalizer
from normalizer.state import Snapshot
from schemas import Location, RawContact, make_contact_id, ticket_for
from schemas.status import State, StatusChange
from schemas.taxonomy import load_taxonomy

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "seeclickfix_newhaven_2014.csv"
EASTERN = timezone(timedelta(hours=-5))  # close enough: only differences matter here


def _when(value: str) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    return datetime.strptime(value, "%m/%d/%Y - %I:%M%p").replace(tzinfo=EASTERN)


def load(path: Path) -> tuple[list[dict], int]:
    """Rows with a point and a date; staff "Emergency Order No Parking" notices are left out
    (they are the city's own announcements, one per date, not residents' reports of a problem)."""
    rows = []
    notices = 0
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            if "emergency order no parking" in (raw["Summary"] + " " + raw["Description"]).lower():
                notices += 1
                continue
            created = _when(raw["Created At Local"])
            try:
                lat, lng = float(raw["Lat"]), float(raw["Lng"])
            except ValueError:
                continue
            if created is None:
                continue
            code = CATEGORY_MAP.get(raw["Category"], ("other",))[0]
            rows.append(
                {
                    "id": raw["Id"],
                    "category": raw["Category"],
                    "code": code,
                    "created": created,
                    "closed": _when(raw["Closed At Local"]),
                    "lat": lat,
                    "long": lng,
                    "address": raw["Address"],
                    "text": resident_text(raw),
                }
            )
    return rows, notices


def replay(rows: list[dict]) -> tuple[Counter[str], list[tuple[dict, dict]], int]:
    desk = IncidentDesk(Normalizer.from_taxonomy(load_taxonomy()), reply_channels=frozenset())
    snap = Snapshot()
    by_ticket: dict[str, dict] = {}
    events: list[tuple[datetime, int, dict]] = []
    for row in rows:
        events.append((row["created"], 0, row))
        if row["closed"] is not None and row["closed"] >= row["created"]:
            events.append((row["closed"], 1, row))
    events.sort(key=lambda e: (e[0], e[1], e[2]["id"]))
    counts: Counter[str] = Counter()
    merges: list[tuple[dict, dict]] = []
    for at, kind, row in events:
        contact_id = make_contact_id("web", f"scf-{row['id']}")
        ticket = ticket_for(contact_id)
        if kind == 1:
            out = desk.handle_status(StatusChange.new(ticket, State.CLOSED, source="city", at=at), snap)
            for change in out.status:
                desk.handle_status(change, snap)
            continue
        by_ticket[ticket] = row
        contact = RawContact(
            contact_id=contact_id,
            request_id=ticket,
            channel="web",
            received_at=at,
            text=row["text"][:20000],
            service_code=row["code"],
            # The app's pin and the address the resident saw or typed, as an Open311 app sends them.
            location=Location(lat=row["lat"], long=row["long"], address=row["address"][:500] or None),
        )
        request = desk.handle(contact, snap).requests[0]
        counts["reports"] += 1
        if request.is_later_report:
            first = by_ticket[request.incident]
            counts["merged"] += 1
            merges.append((first, row))
        elif request.related_incident_id:
            counts["new incident linked to a closed one"] += 1
    incidents = counts["reports"] - counts["merged"]
    return counts, merges, incidents


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--show", action="store_true", help="print the sampled merges for reading")
    parser.add_argument(
        "--part",
        choices=("heldout", "tune", "all"),
        default="heldout",
        help="sample merges whose later report is in this split (every row is replayed: an "
        "incident's first report may be in any part)",
    )
    args = parser.parse_args()
    if not args.csv.is_file():
        sys.exit(f"{args.csv}: not found (see ../shared/data/README.md)")
    rows, notices = load(args.csv)
    counts, merges, incidents = replay(rows)
    print(f"staff no-parking notices left out: {notices}")
    print(f"reports with a point: {counts['reports']}")
    print(f"merged into an earlier incident: {counts['merged']} ({counts['merged'] / counts['reports']:.1%})")
    print(f"incidents: {incidents}")
    for key, value in sorted(counts.items()):
        if key not in ("reports", "merged"):
            print(f"  {key}: {value}")
    by_category = Counter(row["category"] for _, row in merges)
    print("merges by category:", ", ".join(f"{c} {n}" for c, n in by_category.most_common()))
    judged = [m for m in merges if args.part == "all" or split_of(m[1]["id"]) == args.part]
    print(f"merges whose later report is in part {args.part!r}: {len(judged)}")
    if args.show:
        sample = random.Random(args.seed).sample(judged, min(args.sample, len(judged)))
        for n, (first, row) in enumerate(sample, 1):
            gap = (row["created"] - first["created"]).total_seconds() / 3600
            d = distance_m(first["lat"], first["long"], row["lat"], row["long"])
            print(f"\n#{n} {row['category']}  {d:.0f} m  {gap:.1f} h apart")
            print(f"  first: {first['address'][:60]} | {first['text'][:160]}")
            print(f"  later: {row['address'][:60]} | {row['text'][:160]}")


if __name__ == "__main__":
    main()
