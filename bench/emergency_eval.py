"""Run the emergency detector over real New Haven 311 reports (SeeClickFix, 2014).

    python bench/emergency_eval.py [--csv PATH] [--rules PATH] [--sample N] [--seed S]

Why: the rules in schemas/emergency.yaml lean towards flagging (a false alarm costs one extra
"call 911" line, a miss can cost a life); this shows what that costs on everyday 311 text. It
prints how many reports are flagged, by kind, a seeded random sample of flagged texts for a person
to read (tune `not_emergencies:` on what you see, not on guesses), and the speed in texts/s.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # running as a script puts bench/ first, not the repo root
    sys.path.insert(0, str(ROOT))

from schemas.emergency import EmergencyMatch, EmergencyRules  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "seeclickfix_newhaven_2014.csv"


def load_texts(path: Path) -> list[str]:
    """Summary and Description of each report, as one resident text."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return [
            " ".join(part for part in (row.get("Summary") or "", row.get("Description") or "") if part)
            for row in csv.DictReader(handle)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--rules", type=Path, default=None, help="rules file (default: packaged)")
    parser.add_argument("--sample", type=int, default=30, help="flagged texts to print")
    parser.add_argument("--seed", type=int, default=311)
    parser.add_argument("--all", action="store_true", help="print every flagged text")
    args = parser.parse_args(argv)

    rules = EmergencyRules.load(args.rules)
    texts = load_texts(args.csv)
    matches: list[tuple[str, EmergencyMatch]] = []
    for text in texts:
        found = rules.detect(text)
        if found is not None:
            matches.append((text, found))

    by_kind = Counter(m.kind for _, m in matches)
    share = 100 * len(matches) / max(len(texts), 1)
    print(f"reports: {len(texts)}  flagged: {len(matches)} ({share:.2f}%)")
    for kind, count in by_kind.most_common():
        print(f"  {kind:16} {count}")

    shown = matches if args.all else random.Random(args.seed).sample(matches, min(args.sample, len(matches)))
    print(f"\n{'all' if args.all else 'sample of'} {len(shown)} flagged (seed {args.seed}):")
    for i, (text, m) in enumerate(shown, 1):
        snippet = " ".join(text.split())[:200]
        print(f"{i:3}. [{m.kind}/{m.language} {m.phrase!r}] {snippet}")

    rounds = 3
    start = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            rules.detect(text)
    elapsed = time.perf_counter() - start
    mean_len = sum(map(len, texts)) / max(len(texts), 1)
    print(f"\nspeed: {rounds * len(texts) / elapsed:,.0f} texts/s (mean {mean_len:.0f} chars/text)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
