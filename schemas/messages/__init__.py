"""The words intake311 says to residents, one YAML file per language (``schemas/messages/xx.yaml``).

Why files: a city adds Vietnamese or Haitian Creole by adding ``vi.yaml`` with the same keys,
without touching code. A key a language lacks falls back to English, so a partial translation
still answers. Every stage that talks to residents renders through ``render``.

Keys are nested by who speaks: ``sms.*``, ``voice.*``, ``email.*``, ``social.*``, ``status.*``,
``web.*``; shared ones (``call_911``, ``state.*``, ``incident_*``) sit at the top. ``service.<code>``
and ``service_group.<group>`` translate the taxonomy's names; English has none and shows the
taxonomy's own ``name``.

A city does not edit these packaged files: it points the ``messages_dir`` setting at a directory
of its own ``xx.yaml`` files. A file there adds a language, or overrides single keys of a packaged
one (the two are merged key by key, the city's winning). ``use_messages_dir`` applies the setting
once per process (``intake311.pipeline.running`` does it at start).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

MESSAGES_DIR = Path(__file__).parent
DEFAULT_LANGUAGE = "en"
_extra_dir: Path | None = None


def use_messages_dir(directory: Path | None) -> None:
    """Read the city's message files from ``directory`` too (``None``: the packaged ones only)."""
    global _extra_dir
    if directory is not None and not directory.is_dir():
        raise ValueError(f"messages_dir {directory}: no such directory")
    _extra_dir = directory
    catalogue.cache_clear()


def messages_dirs() -> tuple[Path, ...]:
    """Where message files are read from, later ones overriding earlier ones."""
    return (MESSAGES_DIR,) if _extra_dir is None else (MESSAGES_DIR, _extra_dir)


def _read(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{file}: cannot read messages: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of message keys")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@cache
def catalogue(language: str) -> dict[str, Any]:
    """The messages of one language, packaged and city files merged ({} when there is none)."""
    if not language.isalpha():
        return {}
    data: dict[str, Any] = {}
    for directory in messages_dirs():
        file = directory / f"{language}.yaml"
        if file.is_file():
            data = _merge(data, _read(file))
    return data


def languages() -> list[str]:
    """Languages with a message file (packaged or the city's)."""
    return sorted({p.stem for d in messages_dirs() for p in d.glob("*.yaml") if p.stem.isalpha()})


def resolve_language(language: str | None) -> str:
    """``language`` (or its base, "es-MX" -> "es") when there is a file for it, else English."""
    base = (language or "").lower().replace("_", "-").split("-")[0]
    return base if catalogue(base) else DEFAULT_LANGUAGE


def _find(node: Any, parts: list[str]) -> Any:
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def lookup(key: str, language: str | None) -> Any:
    """A message (or a nested mapping) by dotted key, falling back to English."""
    for lang in (resolve_language(language), DEFAULT_LANGUAGE):
        node = _find(catalogue(lang), key.split("."))
        if node is not None:
            return node
    raise KeyError(f"no message {key!r} in {DEFAULT_LANGUAGE}.yaml")


def render(key: str, language: str | None, **values: object) -> str:
    """The message ``key`` in ``language`` with its placeholders filled in."""
    return str(lookup(key, language)).format(**values)


def _translated(section: str, name: str, language: str | None) -> str | None:
    # Not through lookup: a code may hold a dot, and English is the taxonomy, not a fallback.
    table = catalogue(resolve_language(language)).get(section)
    value = table.get(name) if isinstance(table, dict) else None
    return str(value) if value is not None else None


def service_name(code: str | None, language: str | None, taxonomy_name: str) -> str:
    """A service's name in the resident's language: ``service.<code>``, else the taxonomy's name."""
    return (_translated("service", code, language) if code else None) or taxonomy_name


def group_name(group: str, language: str | None) -> str:
    """A taxonomy group's label in the resident's language (``service_group.<group>``)."""
    return _translated("service_group", group, language) or group
