"""Priorities on real New Haven 311 reports (SeeClickFix, 2014): how many become high / low / normal.

    python bench/priority_eval.py [--csv PATH] [--taxonomy PATH] [--sample N] [--seed S] [--cue PHRASE]

Why: `priority_cues` in the taxonomy raise a request to high; every cue that fires on everyday
text takes a crew's attention from the reports that need it. This prints the share per priority,
which rules decided (service default, cue, emergency), the cues that fire most, and a seeded
sample of high ones to read: tune the cues on what you read, not on guesses.

The service is the city's own category (bench/newhaven_category_map.yaml), as if the resident
had picked it, so the figures measure the priority rules rather than the classifier; reports in
categories the map does not know use the taxonomy classifier. Each report is taken alone (one
report per incident): escalation by repeated reports is not counted here (bench/incidents_eval.py
groups reports into incidents).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from normalizer.classify import Classifier  # noqa: E402
from normalizer.priority import PriorityRules, priority_of  # noqa: E402
from schemas.emergency import default_rules  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "seeclickfix_newhaven_2014.csv"
CATEGORY_MAP = ROOT / "bench" / "newhaven_category_map.yaml"


def load_reports(path: Path) -> list[tuple[str, str]]:
    """(category, Summary + Description) of each report."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return [
            (
                row.get("Category") or "",
                " ".join(part for part in (row.get("Summary") or "", row.get("Description") or "") if part),
            )
            for row in csv.DictReader(handle)
        ]


def evaluate(csv_path: Path, taxonomy_path: Path | None = None) -> list[dict[str, str]]:
    """One row per report: service, priority, reason, text."""
    taxonomy = load_taxonomy(taxonomy_path)
    rules = PriorityRules.from_taxonomy(taxonomy)
    emergencies = default_rules()
    classifier = Classifier(taxonomy)
    categories: dict[str, str] = yaml.safe_load(CATEGORY_MAP.read_text(encoding="utf-8"))
    rows = []
    for category, text in load_reports(csv_path):
        code = categories.get(category) or classifier.classify(text).service_code
        service = taxonomy.get(code) or taxonomy.get(taxonomy.fallback_code)
        assert service is not None
        priority, reason = priority_of(
            text, service, emergency=emergencies.detect(text), incident_reports=1, rules=rules
        )
        rows.append({"service": service.code, "priority": priority.value, "reason": reason, "text": text})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--taxonomy", type=Path, default=None, help="taxonomy file (default: packaged)")
    parser.add_argument("--sample", type=int, default=30, help="high texts to print")
    parser.add_argument("--seed", type=int, default=311)
    parser.add_argument("--cue", default=None, help="print only high texts whose reason has this cue")
    args = parser.parse_args(argv)

    rows = evaluate(args.csv, args.taxonomy)
    total = max(len(rows), 1)
    print(f"reports: {len(rows)}")
    for priority in ("emergency", "high", "normal", "low"):
        count = sum(r["priority"] == priority for r in rows)
        print(f"  {priority:10} {count:6}  {100 * count / total:5.1f}%")

    def rule(reason: str) -> str:
        return reason.split(":")[0] if reason.startswith(("cue", "emergency")) else reason

    print("\nwhat decided:")
    for name, count in Counter(rule(r["reason"]) for r in rows).most_common():
        print(f"  {name:18} {count:6}")
    cues = Counter(r["reason"].removeprefix("cue: ").lower() for r in rows if r["reason"].startswith("cue"))
    print("\ncues that fired most (as residents wrote them):")
    for phrase, count in cues.most_common(15):
        print(f"  {count:5}  {phrase}")
    by_service = Counter(r["service"] for r in rows if r["reason"].startswith("cue"))
    print("\nraised by a cue, by service:", ", ".join(f"{s} {n}" for s, n in by_service.most_common()))

    high = [r for r in rows if r["priority"] == "high" and r["reason"].startswith("cue")]
    if args.cue:
        high = [r for r in high if args.cue.lower() in r["reason"].lower()]
    shown = random.Random(args.seed).sample(high, min(args.sample, len(high)))
    print(f"\nsample of {len(shown)} raised to high by a cue (seed {args.seed}):")
    for i, r in enumerate(shown, 1):
        snippet = " ".join(r["text"].split())[:180]
        print(f"{i:3}. [{r['service']} | {r['reason']}] {snippet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
