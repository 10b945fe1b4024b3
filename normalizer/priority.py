"""How soon a request needs a person: ``priority_of(text, service, ...) -> (Priority, reason)``.

Pure and deterministic, so the normalizer (a new request, a follow-up) and the incident desk (an
incident that reached ``incidents.escalate_after`` reports) agree on every request. The rules,
most urgent first:

1. an emergency the text describes (``schemas/emergency.py``) is ``emergency``, always;
2. a ``priority_cues`` phrase of the taxonomy ("blocking the road", "near the school",
   "peligroso") raises the request to at least ``high``;
3. an incident with ``escalate_after`` reports or more is at least ``high``;
4. otherwise the service's own ``priority`` (taxonomy; ``normal`` unless the city says).

Cues never lower a priority: a service whose default is ``high`` stays ``high``. The reason says
which rule decided, in words an operator reads ("cue: blocking the road", "3 reports of this
incident", "service default"); when several raise it, all of them, joined by "; ".

Cue matching is the emergency detector's (``EmergencyRules``): case and accents folded, whole
words, ``*`` and ``...`` in phrases, guards (``not_priority_cues``) that blank out text first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from schemas.emergency import EmergencyMatch, EmergencyRules
from schemas.request import Priority
from schemas.taxonomy import Service, Taxonomy, more_urgent

SERVICE_DEFAULT = "service default"
_CUE_KIND = "cue"
_ANY_LANGUAGE = "any"  # cues are one list, English and Spanish together


@dataclass(frozen=True)
class PriorityRules:
    """The taxonomy's priority cues, compiled once, and its escalation threshold."""

    cues: EmergencyRules | None
    escalate_after: int | None

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy) -> PriorityRules:
        """Compile ``priority_cues`` / ``not_priority_cues`` (validated when the taxonomy loaded)."""
        return _compiled(
            tuple(taxonomy.priority_cues),
            tuple(taxonomy.not_priority_cues),
            taxonomy.incidents.escalate_after,
        )

    def cue(self, text: str) -> str | None:
        """The first cue phrase in ``text``, as the resident wrote it, or None."""
        if self.cues is None:
            return None
        found = self.cues.detect(text)
        return " ".join(found.phrase.split()) if found is not None else None


@lru_cache(maxsize=8)
def _compiled(cues: tuple[str, ...], guards: tuple[str, ...], escalate_after: int | None) -> PriorityRules:
    rules = (
        EmergencyRules(
            {_CUE_KIND: {_ANY_LANGUAGE: list(cues)}}, {_ANY_LANGUAGE: list(guards)}, "priority_cues"
        )
        if cues
        else None
    )
    return PriorityRules(rules, escalate_after)


def escalated(reports: int, rules: PriorityRules) -> bool:
    """Whether an incident with ``reports`` reports is at least high."""
    return rules.escalate_after is not None and reports >= rules.escalate_after


def priority_of(
    text: str,
    service: Service,
    *,
    emergency: EmergencyMatch | str | None,
    incident_reports: int = 1,
    rules: PriorityRules,
) -> tuple[Priority, str]:
    """The request's priority and why (see the module docstring for the rules)."""
    if emergency is not None:
        kind = emergency.kind if isinstance(emergency, EmergencyMatch) else emergency
        return Priority.EMERGENCY, f"emergency: {kind}"
    priority = service.priority
    raised: list[str] = []
    if more_urgent(Priority.HIGH, priority) is not priority:
        cue = rules.cue(text)
        if cue is not None:
            raised.append(f"cue: {cue}")
        if escalated(incident_reports, rules):
            raised.append(f"{incident_reports} reports of this incident")
    if raised:
        return Priority.HIGH, "; ".join(raised)
    return priority, SERVICE_DEFAULT


def raise_to(current: tuple[Priority, str], other: tuple[Priority, str]) -> tuple[Priority, str]:
    """The more urgent of two (priority, reason) pairs; on a tie, ``current`` stays."""
    if more_urgent(other[0], current[0]) is current[0]:
        return current
    return other
