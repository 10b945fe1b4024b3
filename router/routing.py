"""``route(ServiceRequest) -> [Delivery]``: which departments get a request, as a pure function.

The table is data (``routing.yaml``) so a city re-routes work without a deploy; rules match on
geography two ways: a bounding box (``within``) and the districts the normalizer found the request
in (``districts: {ward: ["Ward 7", "Ward 8"]}``), which is how a city actually draws its work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.ids import is_slug
from schemas.request import Priority, ServiceRequest
from schemas.taxonomy import Taxonomy
from schemas.topics import Topics

DEFAULT_ROUTING_PATH = Path(__file__).with_name("routing.yaml")


class RoutingFields(BaseModel):
    """The fields of a request's JSON that routing reads, validated as ``ServiceRequest`` does;
    the rest of the JSON is not looked at.

    Why the stage reads only these: the router passes every request on as the bytes it read
    (``routed_json``), so the whole model was a parse and a validation of fields nothing here
    reads: a tenth of the stage's CPU a request (10.9 against 4.5 µs for a 1.1 kB request). The
    request was validated whole when it was made (the normalizer builds it as a model), and is
    again by the sinks stage before any delivery, which dead-letters a record that is not a
    request, with the reason, as the router did before. JSON that is not an object, or lacks
    or mistypes one of these fields, is still dead-lettered here.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    request_id: str
    service_code: str
    channel: str
    lat: float | None = None
    long: float | None = None
    districts: dict[str, str] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    triage: bool = False
    assigned_department: str | None = None
    agency_responsible: str | None = None


# What a routing decision reads: a whole request (``Router.route``, the console) or only its
# routing fields (the stage). Both must have every attribute routing reads; mypy checks that.
Routable = ServiceRequest | RoutingFields


def _departments(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not is_slug(item):
            raise ValueError(f"department must be a lowercase slug: {item!r}")
    return items


Districts = dict[str, tuple[str, ...]]  # boundary layer -> accepted district names


def _districts(value: object) -> object:
    """``{layer: name | [names]}`` -> ``{layer: (names,)}``, refusing blanks.

    A single string is one name (``ward: "Ward 7"``), the way people write it by hand; an empty
    layer or name would make a rule that silently never matches, so it is an error instead.
    """
    if value is None or not isinstance(value, Mapping):
        return value  # None: no condition; anything else: pydantic reports the type
    if not value:
        raise ValueError("districts must name at least one layer (leave it out to match everywhere)")
    out: Districts = {}
    for layer, names in value.items():
        if not isinstance(layer, str) or not layer.strip():
            raise ValueError(f"district layer names must be non-empty strings, got {layer!r}")
        items = [names] if isinstance(names, str | int) and not isinstance(names, bool) else names
        if not isinstance(items, list | tuple) or not items:
            raise ValueError(f"districts.{layer}: give a district name or a non-empty list of names")
        # Numbers are names too: YAML reads `council: 3` as an int, the boundary file says "3".
        texts = [str(n) if isinstance(n, int) and not isinstance(n, bool) else n for n in items]
        if bad := [n for n in texts if not isinstance(n, str) or not n.strip()]:
            raise ValueError(f"districts.{layer}: district names must be non-empty strings, got {bad[0]!r}")
        out[layer.strip()] = tuple(n.strip() for n in texts)
    return out


def _priorities(value: object) -> object:
    """``priority: high`` or ``[emergency, high]`` -> a tuple; an empty list is an error (a rule
    that never matches), unknown values are refused by the field's type."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list | tuple) and not items:
        raise ValueError(
            "priority must name at least one of emergency, high, normal, low (leave it out to match all)"
        )
    if isinstance(items, list | tuple):
        return tuple(str(i).strip().lower() if isinstance(i, str) else i for i in items)
    return items


def in_districts(wanted: Districts | None, found: Mapping[str, str]) -> bool:
    """Every listed layer's district is one of its names (case-insensitive); None matches all.

    Case is ignored because the names are typed by hand from the boundary file's labels: "ward 7"
    in a YAML file must not quietly stop matching "Ward 7". A request without a district in a
    listed layer (outside every polygon, or not geocoded) does not match.
    """
    if wanted is None:
        return True
    for layer, names in wanted.items():
        have = found.get(layer)
        if have is None or have.casefold() not in {n.casefold() for n in names}:
            return False
    return True


class Box(BaseModel):
    """A lat/long rectangle: the simplest geography a city can draw."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_lat: float = Field(ge=-90, le=90)
    max_lat: float = Field(ge=-90, le=90)
    min_long: float = Field(ge=-180, le=180)
    max_long: float = Field(ge=-180, le=180)

    def contains(self, lat: float | None, long: float | None) -> bool:
        if lat is None or long is None:
            return False
        return self.min_lat <= lat <= self.max_lat and self.min_long <= long <= self.max_long


class Rule(BaseModel):
    """Send matching requests to ``departments``; unset conditions match everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    services: tuple[str, ...] | None = None
    channels: tuple[str, ...] | None = None
    within: Box | None = None
    districts: Districts | None = None
    priority: tuple[Priority, ...] | None = None
    departments: tuple[str, ...]
    stop: bool = False

    @field_validator("departments", mode="before")
    @classmethod
    def _slugs(cls, value: str | list[str]) -> tuple[str, ...]:
        return tuple(_departments(value))

    @field_validator("districts", mode="before")
    @classmethod
    def _district_names(cls, value: object) -> object:
        return _districts(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_names(cls, value: object) -> object:
        return _priorities(value)

    def matches(self, request: Routable) -> bool:
        return (
            (self.services is None or request.service_code in self.services)
            and (self.channels is None or request.channel in self.channels)
            and (self.within is None or self.within.contains(request.lat, request.long))
            and in_districts(self.districts, request.districts)
            and (self.priority is None or request.priority in self.priority)
        )


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    triage_department: str = "triage"
    # Gets a copy of every request whose text describes an emergency (as well as its owner, or
    # triage): a dispatcher watching one topic. None: no copy.
    emergency_department: str | None = "emergency"
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: object) -> object:
        if isinstance(value, dict):
            return {code: tuple(_departments(deps)) for code, deps in value.items()}
        return value

    @field_validator("triage_department")
    @classmethod
    def _triage(cls, value: str) -> str:
        return _departments(value)[0]

    @field_validator("emergency_department")
    @classmethod
    def _emergency(cls, value: str | None) -> str | None:
        return _departments(value)[0] if value else None

    @model_validator(mode="after")
    def _unique_rule_names(self) -> RoutingTable:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        return self


class Interest(BaseModel):
    """What a department subscribes to beyond its own services (from the subscriptions file).

    ``services: [noise]`` makes the department receive every noise request as well as whoever
    owns it; ``within`` (a box) and ``districts`` (``{ward: ["Ward 7"]}``) narrow that to an
    area, or alone subscribe to everything there (a ward office); ``priority: [emergency, high]``
    narrows to the urgent ones, or alone subscribes to every urgent request (a duty officer).
    All unset: nothing extra.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)  # the sinks stage reads the rest
    services: tuple[str, ...] | None = None
    within: Box | None = None
    districts: Districts | None = None
    priority: tuple[Priority, ...] | None = None

    @field_validator("districts", mode="before")
    @classmethod
    def _district_names(cls, value: object) -> object:
        return _districts(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_names(cls, value: object) -> object:
        return _priorities(value)

    def matches(self, request: Routable) -> bool:
        if self.services is None and self.within is None and self.districts is None and self.priority is None:
            return False
        return (
            (self.services is None or request.service_code in self.services)
            and (self.within is None or self.within.contains(request.lat, request.long))
            and in_districts(self.districts, request.districts)
            and (self.priority is None or request.priority in self.priority)
        )


def load_interests(path: str | Path | None) -> dict[str, Interest]:
    """Departments' declared interests from the subscriptions file (None: the packaged default)."""
    file = Path(path) if path else Path(__file__).resolve().parents[1] / "sinks" / "subscriptions.yaml"
    department = None
    try:
        data = yaml.safe_load(file.read_text()) or {}
        interests: dict[str, Interest] = {}
        for department, entry in (data.get("departments") or {}).items():
            if department != "*" and _departments(department):
                interests[department] = Interest.model_validate(entry or {})
        return interests
    except (OSError, yaml.YAMLError, ValidationError, ValueError, AttributeError) as exc:
        where = f" department {department!r}:" if department is not None else ""
        raise ValueError(f"subscriptions {file}:{where} {exc}") from exc


@dataclass(frozen=True)
class Delivery:
    """One request for one department's topic, keyed by request_id so its updates stay in order."""

    department: str
    topic: str
    request: ServiceRequest


class Router:
    """A routing table bound to the taxonomy that supplies each service's default department."""

    def __init__(
        self,
        table: RoutingTable,
        taxonomy: Taxonomy,
        topics: Topics,
        interests: dict[str, Interest] | None = None,
        layers: Collection[str] = (),
    ) -> None:
        self.table = table
        self.taxonomy = taxonomy
        # Each service's default owner, as a plain dict: ``Taxonomy.get`` reads a pydantic
        # private attribute, 5 µs a call, a fifth of routing a request.
        self._owner_of = {s.code: s.department for s in taxonomy.services}
        self._topics_by_department: dict[str, str] = {}
        self.topics = topics
        self.interests = interests or {}
        # What ``departments_for`` reads, when no condition looks at the point: then a request's
        # copies follow from a few fields, and ``route_json`` remembers them per combination
        # (``_copies``) instead of deciding again, a sixth of the router's own work per record.
        conditions: list[Rule | Interest] = [*table.rules, *self.interests.values()]
        self._copies_by_key: dict[tuple[object, ...], tuple[tuple[str, str], ...]] | None = (
            None if any(c.within is not None for c in conditions) else {}
        )
        self._by_district = any(c.districts is not None for c in conditions)
        unknown = sorted(set(table.routes) - set(taxonomy.codes))
        for rule in table.rules:
            unknown += sorted(set(rule.services or ()) - set(taxonomy.codes))
        for interest in self.interests.values():
            unknown += sorted(set(interest.services or ()) - set(taxonomy.codes))
        if unknown:
            raise ValueError(f"routing table names services the taxonomy does not have: {', '.join(unknown)}")
        if layers and (missing := sorted(set(self.district_layers()) - set(layers))):
            # A misspelt layer would never match: the work would silently go to the default owner.
            raise ValueError(
                f"routing rules or subscriptions name district layers the city's boundaries do not have:"
                f" {', '.join(missing)} (layers: {', '.join(sorted(layers))})"
            )

    def district_layers(self) -> list[str]:
        """Every boundary layer a rule or subscription matches on (they must exist to ever match)."""
        conditions: list[Rule | Interest] = [*self.table.rules, *self.interests.values()]
        return sorted({layer for c in conditions for layer in (c.districts or {})})

    def departments_for(self, request: Routable) -> list[str]:
        """The owner first (an operator's assignment, rules, routes, taxonomy), then every
        department subscribed to it, then the emergency copy.

        ``assigned_department`` (an operator re-routed it) outranks the table: a person decided.
        It is not checked against the table: a department the table never names is still a
        topic name (a slug), whose topic exists only if the sinks' subscriptions or Kafka's
        auto-creation made it.
        """
        if request.triage:
            chosen = [self.table.triage_department]
        else:
            owners = [request.assigned_department] if request.assigned_department else self._owners(request)
            chosen = owners + [d for d, i in self.interests.items() if d not in owners and i.matches(request)]
        emergency = self.table.emergency_department
        if request.priority == Priority.EMERGENCY and emergency and emergency not in chosen:
            chosen.append(emergency)
        return chosen

    def _owners(self, request: Routable) -> list[str]:
        chosen: list[str] = []
        for rule in self.table.rules:
            if rule.matches(request):
                chosen += [d for d in rule.departments if d not in chosen]
                if rule.stop:
                    break
        if chosen:
            return chosen
        if request.service_code in self.table.routes:
            return list(self.table.routes[request.service_code])
        return [self._owner_of.get(request.service_code, self.table.triage_department)]

    def route(self, request: ServiceRequest) -> list[Delivery]:
        """One delivery per department; the first department is the responsible agency."""
        departments = self.departments_for(request)
        routed = request.model_copy(update={"agency_responsible": departments[0]})
        return [Delivery(d, self.topics.department(d), routed) for d in departments]

    def route_json(self, raw: bytes, request: Routable) -> list[tuple[str, str, bytes]]:
        """``route`` for a request read from ``raw``: (department, topic, JSON) per department.

        Every copy is the same routed request, so its JSON is made once (``routed_json``), not
        once per department, and mostly without serialising the model again.
        """
        copies = self._copies(request)
        value = routed_json(raw, request, copies[0][0])
        return [(department, topic, value) for department, topic in copies]

    def _copies(self, request: Routable) -> tuple[tuple[str, str], ...]:
        """(department, topic) for each of ``departments_for(request)``, remembered per routing key.

        The key is every field a decision can read when no rule or subscription has a ``within``
        box (then there is no cache): triage, the operator's assignment, service, priority,
        channel, and the districts when a condition names any. Bounded like ``_topic_of``; a
        decision that raises (a department that is not a slug) is never remembered.
        """
        cache = self._copies_by_key
        if cache is None:
            return tuple((d, self._topic_of(d)) for d in self.departments_for(request))
        key: tuple[object, ...] = (
            request.triage,
            request.assigned_department,
            request.service_code,
            request.priority,
            request.channel,
        )
        if self._by_district:
            key += tuple(sorted(request.districts.items()))
        copies = cache.get(key)
        if copies is None:
            copies = tuple((d, self._topic_of(d)) for d in self.departments_for(request))
            if len(cache) < 4096:
                cache[key] = copies
        return copies

    def _topic_of(self, department: str) -> str:
        """``topics.department``, remembered: its slug check was a tenth of routing a request.

        Bounded, because an operator's ``assigned_department`` can name any slug; a name that is
        not one raises (the request is dead-lettered) and is never remembered.
        """
        topic = self._topics_by_department.get(department)
        if topic is None:
            topic = self.topics.department(department)
            if len(self._topics_by_department) < 1024:
                self._topics_by_department[department] = topic
        return topic

    def all_departments(self) -> list[str]:
        """Every department this table can route to: the topics that must exist."""
        found = {self.table.triage_department, *(s.department for s in self.taxonomy.services)}
        if self.table.emergency_department:
            found.add(self.table.emergency_department)
        for deps in self.table.routes.values():
            found.update(deps)
        for rule in self.table.rules:
            found.update(rule.departments)
        found.update(self.interests)
        return sorted(found)


_UNROUTED = b'"agency_responsible":null'
_ROUTED_AS: dict[str, bytes] = {}  # owner -> its field, made once


def routed_json(raw: bytes, request: Routable, owner: str) -> bytes:
    """The JSON of ``request`` (validated from ``raw``) with ``owner`` as its responsible agency.

    Why from the bytes: a model copy and a dump per request were a third of the router's own
    work, for a change of one field. Three cases, each giving JSON that validates to the routed
    request:

    - already routed to ``owner`` (a replay of routed events): ``raw`` itself, byte for byte;
    - the compact JSON the stages write, with ``"agency_responsible":null`` exactly once: that
      null replaced by the owner. In the JSON of a request the match can only be the top-level
      field: inside a string a quote is escaped, and no nested model has such a field or accepts
      unknown keys (``tests/unit/test_routing.py`` checks that against the schema). JSON that is
      no request (``RoutingFields`` read only a part of it) is dead-lettered by the sinks stage
      whatever was replaced;
    - anything else (other spacing, escaped key names, the field left out): the model's own dump
      (validated whole here when ``request`` is only its ``RoutingFields``).
    """
    current = request.agency_responsible
    if current == owner:
        return raw
    if current is None and raw.count(_UNROUTED) == 1:
        routed = _ROUTED_AS.get(owner)
        if routed is None:
            routed = b'"agency_responsible":' + orjson.dumps(owner)
            if len(_ROUTED_AS) < 1024:  # bounded: an operator's assignment can name any slug
                _ROUTED_AS[owner] = routed
        return raw.replace(_UNROUTED, routed)
    whole = request if isinstance(request, ServiceRequest) else ServiceRequest.model_validate_json(raw)
    return whole.model_copy(update={"agency_responsible": owner}).model_dump_json().encode()


def load_routing(path: str | Path | None = None) -> RoutingTable:
    """Read and validate a routing table; errors name the file and the problem."""
    file = Path(path) if path else DEFAULT_ROUTING_PATH
    try:
        data = yaml.safe_load(file.read_text()) or {}
        return RoutingTable.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
        raise ValueError(f"routing table {file}: {exc}") from exc
