"""Which sinks each department's requests go to, read from YAML (``sinks/subscriptions.yaml``).

Kept out of the taxonomy on purpose: the taxonomy says who owns the work, subscriptions say how
a department wants to receive it, and the two change for different reasons and people. Every
sink is validated at load time (types, URLs, secrets present), so a bad file stops the service
at start with a message naming the file, the department and the sink.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.ids import is_slug
from sinks.base import SinkConfig, parse_sink_config

DEFAULT_SUBSCRIPTIONS_PATH = Path(__file__).with_name("subscriptions.yaml")
ALL = "*"
# services/within/districts/priority say what the department subscribes to: the router reads and
# validates them (router/routing.py, ``Interest``); here they are only allowed keys.
_DEPARTMENT_KEYS = frozenset({"inherit", "sinks", "services", "within", "districts", "priority"})


@dataclass(frozen=True)
class DepartmentSubscription:
    """A department's own sinks; ``inherit: false`` opts it out of the ``"*"`` sinks."""

    sinks: tuple[SinkConfig, ...] = ()
    inherit: bool = True


@dataclass(frozen=True)
class Subscriptions:
    """Department -> sinks, with ``"*"`` applying to every department."""

    departments: Mapping[str, DepartmentSubscription] = field(default_factory=dict)
    source: str = "<memory>"

    def sinks_for(self, department: str) -> list[SinkConfig]:
        """The ``"*"`` sinks then the department's own; an own sink replaces a same-named ``"*"`` one."""
        if not is_slug(department):
            raise ValueError(f"department {department!r} must be a lowercase slug")
        own = self.departments.get(department, DepartmentSubscription())
        merged: dict[str, SinkConfig] = {}
        if own.inherit:
            for sink in self.departments.get(ALL, DepartmentSubscription()).sinks:
                merged[sink.name] = sink
        for sink in own.sinks:
            merged[sink.name] = sink  # replacing keeps the "*" position: stable, readable order
        return list(merged.values())

    def pairs(self, departments: Iterable[str]) -> list[tuple[str, SinkConfig]]:
        """Every (department, sink) to run a consumer for, in a stable order, without duplicates."""
        seen: set[str] = set()
        out: list[tuple[str, SinkConfig]] = []
        for department in departments:
            if department in seen:
                continue
            seen.add(department)
            out.extend((department, sink) for sink in self.sinks_for(department))
        return out

    def unknown_departments(self, departments: Iterable[str]) -> list[str]:
        """Departments in the file but not in ``departments``: likely typos, since nothing consumes them."""
        known = set(departments)
        return sorted(d for d in self.departments if d != ALL and d not in known)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _parse_department(department: Any, entry: Any) -> DepartmentSubscription:
    if not isinstance(department, str) or not (department == ALL or is_slug(department)):
        raise ValueError(f'department {department!r} must be a lowercase slug or "*"')
    where = f"department {department!r}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with a 'sinks' list, got {type(entry).__name__}")
    unknown = set(entry) - _DEPARTMENT_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {sorted(map(str, unknown))}"
            f" (allowed: {', '.join(sorted(_DEPARTMENT_KEYS))})"
        )
    inherit = entry.get("inherit", True)
    if not isinstance(inherit, bool) or (department == ALL and not inherit):
        raise ValueError(f"{where}: 'inherit' must be true or false (and only departments can set it)")
    raw_sinks = entry.get("sinks") or []
    if not isinstance(raw_sinks, list):
        raise ValueError(f"{where}: 'sinks' must be a list")
    sinks: list[SinkConfig] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_sinks):
        label = f"sink #{index + 1}"
        if isinstance(raw, dict):
            label = f"sink {raw.get('name')!r}" if raw.get("name") else label
            label += f" (type {raw['type']!r})" if isinstance(raw.get("type"), str) else ""
        try:
            sink = parse_sink_config(raw)
        except ValidationError as exc:
            raise ValueError(f"{where}: {label}: {_describe(exc)}") from exc
        except ValueError as exc:
            raise ValueError(f"{where}: {label}: {exc}") from exc
        if sink.name in names:
            # The name is part of the consumer group id: two sinks with one name would share offsets.
            raise ValueError(
                f"{where}: duplicate sink name {sink.name!r} (names must be unique per department)"
            )
        names.add(sink.name)
        sinks.append(sink)
    return DepartmentSubscription(sinks=tuple(sinks), inherit=inherit)


def parse_subscriptions(data: Any, source: str = "<memory>") -> Subscriptions:
    """Validate already-loaded YAML data. Raises ValueError prefixed with ``source``."""
    if not isinstance(data, dict) or not isinstance(data.get("departments"), dict):
        raise ValueError(f"{source}: expected a mapping with a 'departments' mapping at the top level")
    extra = set(data) - {"departments"}
    if extra:
        raise ValueError(f"{source}: unknown top-level keys {sorted(map(str, extra))} (allowed: departments)")
    departments: dict[str, DepartmentSubscription] = {}
    for department, entry in data["departments"].items():
        try:
            departments[department] = _parse_department(department, entry)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
    return Subscriptions(departments=departments, source=source)


def load_subscriptions(path: str | Path | None = None) -> Subscriptions:
    """Load and validate a subscriptions file; None loads the packaged default (a jsonl file per department).

    Raises ValueError naming the file (and department and sink) on bad YAML or content, and
    FileNotFoundError for a missing file.
    """
    file = Path(path) if path is not None else DEFAULT_SUBSCRIPTIONS_PATH
    text = file.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML: {exc}") from exc
    return parse_subscriptions(data, source=str(file))


__all__ = [
    "ALL",
    "DEFAULT_SUBSCRIPTIONS_PATH",
    "DepartmentSubscription",
    "Subscriptions",
    "load_subscriptions",
    "parse_subscriptions",
]
