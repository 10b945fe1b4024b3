"""Very common words per language (``<code>.txt``, one or more per line, ``#`` comments).

One reader for the two uses: the classifier skips them (they say nothing about the service), and
the language detector counts the ones only one configured language has (they say a lot about the
language). Apostrophes are dropped, as both drop them from the text ("don't" -> "dont").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

STOPWORDS_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=32)
def stopwords(code: str) -> frozenset[str]:
    """The list for the ISO 639-1 ``code`` (empty when there is no file for it)."""
    path = STOPWORDS_DIR / f"{code}.txt"
    if not code.isalpha() or not path.is_file():
        return frozenset()
    words: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("#"):
            words.update(w.lower().replace("'", "").replace("\u2019", "") for w in line.split())
    return frozenset(words)
