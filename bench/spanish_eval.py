"""How well Spanish reports are classified, next to English ones measured in the same run.

    python bench/spanish_eval.py [--errors N]

The Spanish set (``bench/data/es_reports.csv``, 198 rows: 8 per taxonomy service and 6 that are
no city service) was written for this measurement by a separate session that read only each
service's code, name and description, never the taxonomy's keywords or examples nor the
classifier's code, and it is not used to tune anything: keep it that way (do not add its words to
the taxonomy after reading its errors; write a new set instead). Styles: SMS, web, email and
call transcripts; regional vocabulary, missing accents, Spanglish.

The English figure beside it is the cold-start scorer on the held-out New Haven rows with the
app's default titles removed (the same split as ``bench/classifier_eval.py``), so the two can be
compared: the Spanish set has no default titles.

Each Spanish text is classified twice: with the language the channels' detector gives it
(``schemas.language``, what the pipeline does) and with ``es`` forced, so a detector miss shows as
the difference between the two.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classifier_eval import DEFAULT_CSV, load_rows  # noqa: E402  (bench/ is on sys.path)

from normalizer.classify import Classifier  # noqa: E402
from schemas.language import detector  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

SPANISH_SET = Path(__file__).with_name("data") / "es_reports.csv"


def _score(pairs: list[tuple[str, bool]]) -> tuple[float, float, float]:
    """(top-1 accuracy, triage share, accuracy of what is not triaged) of (triage?, correct?) pairs."""
    n = len(pairs)
    kept = [ok for triage, ok in pairs if not triage]
    return (
        sum(ok for _, ok in pairs) / n,
        1 - len(kept) / n,
        sum(kept) / len(kept) if kept else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--errors", type=int, default=0, help="list N Spanish errors")
    args = parser.parse_args()

    taxonomy = load_taxonomy()
    classifier = Classifier(taxonomy)
    threshold = taxonomy.triage_threshold
    languages = detector(("en", "es"))
    fallback = taxonomy.fallback_code

    rows = list(csv.DictReader(SPANISH_SET.open(encoding="utf-8")))
    detected = Counter()
    results: dict[str, list[tuple[bool, bool]]] = {"detected": [], "forced es": []}
    errors = []
    for row in rows:
        lang = languages.choose(row["text"], fallback="en")
        detected[lang] += 1
        for variant, language in (("detected", lang), ("forced es", "es")):
            got = classifier.classify(row["text"], language)
            triage = got.needs_triage(threshold) or got.service_code == fallback
            ok = got.service_code == row["service_code"]
            results[variant].append((triage, ok))
            if variant == "detected" and not ok:
                errors.append((row["service_code"], got.service_code, got.confidence, row["text"]))

    english = []
    for row in load_rows(DEFAULT_CSV, "heldout", keep_default_title=False):
        if not row["text"]:
            continue  # nothing left to classify once the default title is gone
        got = classifier.classify(row["text"], "en")
        triage = got.needs_triage(threshold) or got.service_code == fallback
        english.append((triage, got.service_code in row["accepted"]))

    print(
        f"Spanish set: {len(rows)} reports ({SPANISH_SET.relative_to(ROOT)}); detector said {dict(detected)}"
    )
    print(f"{'':34}{'top-1':>7}{'triage':>8}{'non-triaged acc':>17}")
    for variant, pairs in results.items():
        acc, share, kept = _score(pairs)
        print(f"  Spanish, cold start, {variant:<12}{acc:7.3f}{share:8.3f}{kept:17.3f}")
    acc, share, kept = _score(english)
    label = f"English New Haven held-out ({len(english)})"
    print(f"  {label:<32}{acc:7.3f}{share:8.3f}{kept:17.3f}   (cold, default titles removed)")
    by_style: dict[str, list[bool]] = {}
    for row, (_, ok) in zip(rows, results["detected"], strict=True):
        by_style.setdefault(row["style"], []).append(ok)
    print(
        "  by style: "
        + ", ".join(f"{s} {sum(v) / len(v):.3f} ({len(v)})" for s, v in sorted(by_style.items()))
    )
    for expected, got, confidence, text in errors[: args.errors]:
        print(f"  {expected} -> {got} ({confidence:.2f}): {text[:100]}")


if __name__ == "__main__":
    main()
