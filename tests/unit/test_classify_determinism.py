"""The classifier's scores do not depend on the process's hash seed.

A replay of a contact in another process (another host, a restart) must give the same request:
the ids are derived, so a second version with another service would be a silent change. The
scores are float sums, and float addition is not associative: summed in a set's order, which
follows ``PYTHONHASHSEED``, their last bits (and so an exact tie between two services) changed
from process to process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TEXTS = [
    "There is a big pothole in the road on Elm Street near the school, cars swerve around the hole",
    "Streetlight out on the corner and the traffic signal is flashing, also a car abandoned there",
    "Hay un bache muy grande en la calle y la luz de la calle no funciona desde hace una semana",
    "garbage bags piled on the sidewalk, recycling not picked up, overflowing public trash can",
]

SCRIPT = """
import json, sys
from normalizer.classify import Classifier
from schemas.taxonomy import load_taxonomy
classifier = Classifier(load_taxonomy())
texts = json.loads(sys.argv[1])
print(json.dumps([[repr(s) for s in classifier.scores(t, lang)] for t in texts for lang in ("en", "es")]))
"""


def scores_with_seed(seed: int) -> list[list[str]]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(TEXTS)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_scores_are_the_same_bits_under_every_hash_seed() -> None:
    first = scores_with_seed(1)
    for seed in (2, 3, 4, 5):
        assert scores_with_seed(seed) == first, f"PYTHONHASHSEED={seed} changed a score"
