"""The service taxonomy: which services the city offers, who owns them, and how to spot them.

The taxonomy lives in YAML (``schemas/taxonomy.yaml`` by default) so a city can edit services,
keywords and service levels without touching code; the classifier and router read it at start.
"""

from __future__ import annotations

import re
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

DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")

# Codes and department ids end up in topic names and URLs, hence the same slug rule as schemas.ids.
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _check_slug(value: str, what: str) -> str:
    if not _SLUG_RE.match(value):
        raise ValueError(f"{what} {value!r} must be a lowercase slug (a-z, 0-9, '-', '_')")
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
    after that, it opens a new incident linked to the closed one.
    """

    cooloff_hours: float = Field(default=48.0, ge=0)


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
    sla_hours: float | None = Field(default=None, gt=0)
    incident: IncidentRule | None = Field(default=None, description="None: the taxonomy's default")

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

    _by_code: dict[str, Service] = PrivateAttr(default_factory=dict)

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
