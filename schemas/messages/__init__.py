"""The words intake311 says to residents, one YAML file per language (``schemas/messages/xx.yaml``).

Why files: a city adds Vietnamese or Haitian Creole by adding ``vi.yaml`` with the same keys,
without touching code. A key a language lacks falls back to English, so a partial translation
still answers. Every stage that talks to residents renders through ``render``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

MESSAGES_DIR = Path(__file__).parent
DEFAULT_LANGUAGE = "en"


@cache
def catalogue(language: str) -> dict[str, Any]:
    """The messages of one language ({} when there is no file for it)."""
    file = MESSAGES_DIR / f"{language}.yaml"
    if not language.isalpha() or not file.is_file():
        return {}
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of message keys")
    return data


def languages() -> list[str]:
    """Languages with a message file."""
    return sorted(p.stem for p in MESSAGES_DIR.glob("*.yaml"))


def resolve_language(language: str | None) -> str:
    """``language`` (or its base, "es-MX" -> "es") when there is a file for it, else English."""
    base = (language or "").lower().replace("_", "-").split("-")[0]
    return base if catalogue(base) else DEFAULT_LANGUAGE


def lookup(key: str, language: str | None) -> Any:
    """A message (or a nested mapping) by dotted key, falling back to English."""
    for lang in (resolve_language(language), DEFAULT_LANGUAGE):
        node: Any = catalogue(lang)
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    raise KeyError(f"no message {key!r} in {DEFAULT_LANGUAGE}.yaml")


def render(key: str, language: str | None, **values: object) -> str:
    """The message ``key`` in ``language`` with its placeholders filled in."""
    return str(lookup(key, language)).format(**values)
