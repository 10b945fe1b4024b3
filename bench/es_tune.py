"""Measure the cold-start classifier on the Spanish *tuning* set (bench/data/es_tune.csv).

    python bench/es_tune.py [--csv PATH] [--taxonomy PATH] [--errors N]

Every row is classified with language "es". Prints top-1 accuracy, the triage share (confidence
below the taxonomy's triage_threshold, or the fallback code) and the per-code confusions. This set
is for tuning the Spanish vocabulary in schemas/taxonomy.yaml; it is written separately from the
held-out Spanish evaluation set, which is never used for tuning.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from normalizer.classify import Classifier  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

DEFAULT_CSV = Path(__file__).with_name("data") / "es_tune.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--taxonomy", type=Path, default=None, help="taxonomy YAML (default: packaged)")
    parser.add_argument("--errors", type=int, default=0, help="list this many misclassified rows")
    args = parser.parse_args(argv)

    taxonomy = load_taxonomy(args.taxonomy)
    clf = Classifier(taxonomy)
    with args.csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    unknown = {r["service_code"] for r in rows} - set(taxonomy.codes)
    if unknown:
        raise SystemExit(f"unknown service codes in {args.csv}: {sorted(unknown)}")

    correct = triage = 0
    confusions: dict[str, Counter[str]] = defaultdict(Counter)
    per_code: Counter[str] = Counter()
    per_style: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors: list[tuple[str, str, str, float]] = []
    for row in rows:
        gold = row["service_code"]
        result = clf.classify(row["text"], "es")
        ok = result.service_code == gold
        correct += ok
        triage += (
            result.needs_triage(taxonomy.triage_threshold) or result.service_code == taxonomy.fallback_code
        )
        per_code[gold] += 1
        per_style[row["style"]][0] += ok
        per_style[row["style"]][1] += 1
        if not ok:
            confusions[gold][result.service_code] += 1
            errors.append((gold, result.service_code, row["text"], result.confidence))

    n = len(rows)
    print(f"== Spanish tune set: {n} rows ({args.csv.name}), language es")
    print(f"top-1 accuracy            {correct / n:.3f}")
    print(f"triage share (conf < {taxonomy.triage_threshold} or fallback)  {triage / n:.3f}")
    print("== per style (top-1 accuracy)")
    for style, (ok, total) in sorted(per_style.items()):
        print(f"  {style:6s} {ok / total:.3f}  ({total})")
    print("== per-code recall and confusions (gold -> predicted x count)")
    for code in taxonomy.codes:
        if not per_code[code]:
            continue
        wrong = confusions.get(code, Counter())
        recall = 1 - sum(wrong.values()) / per_code[code]
        detail = ", ".join(f"{p} x{c}" for p, c in wrong.most_common())
        print(f"  {code:22s} {recall:.2f}  {detail}")
    for gold, pred, text, conf in errors[: args.errors]:
        print(f"  [{gold} -> {pred} {conf:.2f}] {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
