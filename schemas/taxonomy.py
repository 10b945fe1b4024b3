"""The service taxonomy: which services the city offers, who owns them, and how to spot them.

The taxonomy lives in YAML (``schemas/taxonomy.yaml`` by default) so a city can edit services,
keywords and service levels without touching code; the classifier and router read it at start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.attributes import ServiceAttribute, check_attributes
from schemas.emergency import phrase_pattern
from schemas.request import Priority

DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")

# Codes and department ids end up in topic names and URLs, hence the same slug rule as schemas.ids.
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _check_slug(value: str, what: str) -> str:
    if not _SLUG_RE.match(value):
        raise ValueError(f"{what} {value!r} must be a lowercase slug (a-z, 0-9, '-', '_')")
    return value


def positive_hours(value: dict[Priority, float], what: str) -> dict[Priority, float]:
    """Hours per priority, each > 0 (a zero-hour service level is a typo, not a promise)."""
    if bad := [f"{p.value}: {h}" for p, h in value.items() if not h > 0]:
        raise ValueError(f"{what} must be greater than 0 ({', '.join(bad)})")
    return value


class IncidentRule(BaseModel):
    """When two reports of one service are one problem: within ``radius_m`` metres of each other
    and ``window_hours`` of the incident's latest report. A street light is a point (a few
    metres), a missed pickup a whole block; ``radius_m: 0`` makes every report its own incident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    radius_m: float = Field(default=40.0, ge=0, le=2000)
    window_hours: float = Field(default=720.0, gt=0)


class IncidentDefaults(IncidentRule):
    """The rule for services that set none, and how long a closed incident may be reopened.

    A report within ``cooloff_hours`` of a close reopens the incident (the fix did not hold);
    after that, it opens a new incident linked to the closed one. An incident reaching
    ``escalate_after`` reports becomes at least ``high`` priority (None: never).
    """

    cooloff_hours: float = Field(default=48.0, ge=0)
    escalate_after: int | None = Field(default=3, ge=2)


# Most urgent first: comparisons ("at least high") use the index.
PRIORITY_ORDER: tuple[Priority, ...] = (Priority.EMERGENCY, Priority.HIGH, Priority.NORMAL, Priority.LOW)


def more_urgent(a: Priority, b: Priority) -> Priority:
    """The more urgent of two priorities."""
    return a if PRIORITY_ORDER.index(a) <= PRIORITY_ORDER.index(b) else b


class Service(BaseModel):
    """One Open311 service: its code, owning department and the words residents use for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str = Field(min_length=1)
    description: str = ""
    department: str
    group: str = ""
    keywords: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    # Sentences in other languages ({es: [...]}): the index of a language counts only its own
    # examples, so Spanish sentences teach Spanish reports without diluting English ones.
    examples_by_language: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    sla_hours: float | None = Field(default=None, gt=0, description="the target at the service's priority")
    sla_by_priority: dict[Priority, float] = Field(
        default_factory=dict, description="explicit targets per priority (sla_hours: {high: 24, ...})"
    )
    priority: Priority = Field(default=Priority.NORMAL, description="the default: high, normal or low")
    incident: IncidentRule | None = Field(default=None, description="None: the taxonomy's default")
    attributes: tuple[ServiceAttribute, ...] = Field(
        default=(), description="the service's questions (Open311 attributes), in their order"
    )

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: tuple[ServiceAttribute, ...]) -> tuple[ServiceAttribute, ...]:
        return check_attributes(value)

    @model_validator(mode="before")
    @classmethod
    def _sla_per_priority(cls, data: Any) -> Any:
        """``sla_hours: {high: 24, normal: 72}`` -> ``sla_by_priority`` plus ``sla_hours`` at the
        service's own priority (which the mapping must give), so ``sla_hours`` stays one number."""
        if not isinstance(data, Mapping) or not isinstance(data.get("sla_hours"), Mapping):
            return data
        if "sla_by_priority" in data:
            raise ValueError("give sla_hours either as a mapping or sla_by_priority, not both")
        out = dict(data)
        by_priority = dict(out.pop("sla_hours"))
        own = str(out.get("priority") or Priority.NORMAL.value)
        if own not in {str(k) for k in by_priority}:
            raise ValueError(
                f"sla_hours per priority must give the service's own priority {own!r}"
                f" (given: {', '.join(map(str, by_priority)) or 'none'})"
            )
        out["sla_hours"] = next(v for k, v in by_priority.items() if str(k) == own)
        out["sla_by_priority"] = by_priority
        return out

    @field_validator("sla_by_priority")
    @classmethod
    def _positive_hours(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        return positive_hours(value, "sla_hours")

    @field_validator("priority")
    @classmethod
    def _no_default_emergency(cls, value: Priority) -> Priority:
        if value is Priority.EMERGENCY:
            # Emergency means "the text describes a danger to life" (schemas/emergency.yaml): the
            # resident is told to call 911. A service cannot be one by default.
            raise ValueError("a service's priority is high, normal or low (emergency comes from the text)")
        return value

    @field_validator("code")
    @classmethod
    def _code_is_slug(cls, value: str) -> str:
        return _check_slug(value, "service code")

    @field_validator("department")
    @classmethod
    def _department_is_slug(cls, value: str) -> str:
        return _check_slug(value, "department")

    @field_validator("keywords")
    @classmethod
    def _normalise_keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # City editors type "Street Light "; matching is lowercase, so normalise once here.
        cleaned = tuple(" ".join(k.lower().split()) for k in value)
        if any(not k for k in cleaned):
            raise ValueError("keywords must not be empty strings")
        return cleaned


class Taxonomy(BaseModel):
    """All services plus the two knobs the classifier needs: the fallback and the triage threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: tuple[Service, ...] = Field(min_length=1)
    fallback_code: str = "other"
    triage_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    incidents: IncidentDefaults = IncidentDefaults()
    # Phrases (English and Spanish; emergency.yaml's syntax) that raise a request to high.
    priority_cues: tuple[str, ...] = ()
    # Ones that look like a cue but are not ("not dangerous"): the text they cover is ignored.
    not_priority_cues: tuple[str, ...] = ()
    # The longest a request of this priority may wait, whatever its service's sla_hours says
    # (a service's explicit per-priority hours win). Priorities not listed keep the service's.
    priority_sla_hours: dict[Priority, float] = Field(default_factory=dict)

    _by_code: dict[str, Service] = PrivateAttr(default_factory=dict)

    @field_validator("priority_cues", "not_priority_cues")
    @classmethod
    def _phrases_compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for phrase in value:
            if not phrase.strip():
                raise ValueError("phrases must not be empty strings")
            phrase_pattern(phrase)  # raises ValueError naming the phrase
        return value

    @field_validator("priority_sla_hours")
    @classmethod
    def _positive_caps(cls, value: dict[Priority, float]) -> dict[Priority, float]:
        return positive_hours(value, "hours")

    @model_validator(mode="after")
    def _check_codes(self) -> Taxonomy:
        seen: dict[str, Service] = {}
        duplicates = []
        for service in self.services:
            if service.code in seen:
                duplicates.append(service.code)
            seen[service.code] = service
        if duplicates:
            raise ValueError(f"duplicate service codes: {', '.join(sorted(set(duplicates)))}")
        if self.fallback_code not in seen:
            raise ValueError(f"fallback_code {self.fallback_code!r} is not one of the service codes")
        self._by_code = seen
        return self

    def get(self, code: str) -> Service | None:
        """The service with this code, or None."""
        return self._by_code.get(code)

    def incident_rule(self, code: str) -> IncidentRule:
        """The incident rule of a service (the fallback service never groups: it means "unknown")."""
        service = self._by_code.get(code)
        if service is None or code == self.fallback_code:
            return IncidentRule(radius_m=0)
        return service.incident or self.incidents

    def sla_hours(self, code: str, priority: Priority) -> float | None:
        """The service level of a request of service ``code`` at ``priority`` (None: none).

        A service's own hours for that priority (``sla_hours: {high: 24, normal: 72}``) win;
        otherwise its ``sla_hours``, shortened to ``priority_sla_hours[priority]`` when that is
        less. A service without a service level has none at any priority.
        """
        service = self._by_code.get(code)
        if service is None:
            return None
        if priority in service.sla_by_priority:
            return service.sla_by_priority[priority]
        if service.sla_hours is None:
            return None
        cap = self.priority_sla_hours.get(priority)
        return min(service.sla_hours, cap) if cap is not None else service.sla_hours

    def sla_table(self) -> list[tuple[str, Priority, float]]:
        """Every (service code, priority, hours) with a service level: what the case store joins on."""
        return [
            (code, priority, hours)
            for code in self.codes
            for priority in PRIORITY_ORDER
            if (hours := self.sla_hours(code, priority)) is not None
        ]

    @property
    def codes(self) -> tuple[str, ...]:
        """Service codes in file order."""
        return tuple(s.code for s in self.services)


def _describe_errors(exc: ValidationError, data: Any) -> str:
    """Turn pydantic's locations into ones a city editor can find in the file (code, not index)."""
    services = data.get("services") if isinstance(data, dict) else None
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "services" and isinstance(loc[1], int) and isinstance(services, list):
            entry = services[loc[1]] if loc[1] < len(services) else None
            code = entry.get("code") if isinstance(entry, dict) else None
            loc[1] = f"[{loc[1]}]" + (f" (code {code!r})" if code else "")
        where = ".".join(str(p) for p in loc).replace(".[", "[") or "top level"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy file; None loads the packaged default.

    Raises ValueError naming the file on bad YAML or invalid content; a missing file raises
    FileNotFoundError as usual.
    """
    file = Path(path) if path is not None else DEFAULT_TAXONOMY_PATH
    text = file.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping with a 'services' list at the top level")
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{file}: invalid taxonomy: {_describe_errors(exc, data)}") from exc
