"""The words the benchmarks' reports carry (bench/e2e_bench.py's POSTs, pipeline_bench.py's contacts)."""

from __future__ import annotations

import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS_CSV = ROOT.parent / "shared" / "data" / "seeclickfix_newhaven_2014.csv"
MAX_TEXT_CHARS = 500


@functools.lru_cache(maxsize=1)
def report_texts() -> tuple[str, ...]:
    """Residents' own words, New Haven's held-out reports: what the benchmarks' reports say.

    Why real words: the web stage and the normalizer detect each report's language, check it for
    emergencies and classify it, and what that costs depends on the words. Reports that differed
    only in a number or a street (the benchmarks' first ones: "Deep pothole number N ...", ten
    sentences around six streets) were a few texts to every memo keyed by the words, and would
    have measured a city where everyone writes the same few sentences. The
    held-out part of ``bench/classifier_eval.py``'s split (nothing is tuned on it), in file
    order, cut to ``MAX_TEXT_CHARS``, without the reports the emergency rules flag (those go to
    another department as well, and are not what the latency rows time); report *i* takes text
    *i* mod their number (2,890 texts, 2,393 distinct), so a run of a few thousand repeats only
    what residents repeated (e.g. "Tree Trimming"). Without the city's files: no texts.
    """
    if not REPORTS_CSV.is_file():
        return ()
    from bench.classifier_eval import load_rows
    from schemas.emergency import rules_for, warning

    rules = rules_for(None)
    texts = [r["text"][:MAX_TEXT_CHARS].strip() for r in load_rows(REPORTS_CSV, "heldout")]
    return tuple(t for t in texts if t and warning(t, "en", rules) is None)
