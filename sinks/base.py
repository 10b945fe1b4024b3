"""The sink plugin contract: a config model that validates, a sink that delivers, a registry.

Modelled on Kafka Connect / Redpanda Connect: each sink type is a small module with a pydantic
config class (validated when the subscriptions file loads, so a typo fails at start, not at the
first request) and a sink built from it. Adding a type is one module plus one line in
``BUILTIN_SINKS``; third-party packages register through the ``intake311.sinks`` entry-point
group (``name = "package.module:ConfigClass"``) without touching this tree.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from intake311.logging import get_logger
from schemas.ids import is_slug
from schemas.request import ServiceRequest
from schemas.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from intake311.settings import Settings

log = get_logger(__name__)

ENTRY_POINT_GROUP = "intake311.sinks"

# type name -> "module:ConfigClass", imported lazily so an unused sink type costs nothing.
BUILTIN_SINKS: dict[str, str] = {
    "jsonl": "sinks.jsonl:JsonlSinkConfig",
    "webhook": "sinks.webhook:WebhookSinkConfig",
    "postgres": "sinks.postgres:PostgresSinkConfig",
    "slack": "sinks.slack:SlackSinkConfig",
    "email": "sinks.email:EmailSinkConfig",
    "open311": "sinks.open311:Open311SinkConfig",
}


class DeliveryError(Exception):
    """A delivery failed; ``retryable`` says whether trying the same request again can help.

    Non-retryable means the request or the configuration is the problem (a 400, a bad path):
    retrying only delays the dead letter. ``retry_after_s`` is the receiver's own hint
    (HTTP ``Retry-After``), already capped by the sink.
    """

    def __init__(self, reason: str, *, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@runtime_checkable
class Sink(Protocol):
    """Delivers service requests for one department to one destination.

    ``deliver`` must be idempotent per ``delivery_id`` as far as the destination allows: the
    pipeline is at-least-once, and the same id is passed on every retry and replay.
    """

    name: str

    async def start(self) -> None:
        """Open connections and files; called once before the first delivery."""
        ...

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        """Deliver one request or raise ``DeliveryError``."""
        ...

    async def close(self) -> None:
        """Release what ``start`` opened; safe to call more than once."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One request to deliver to one department, with its stable delivery id."""

    request: ServiceRequest
    department: str
    delivery_id: str


def request_payload(request: ServiceRequest, *, department: str, delivery_id: str) -> dict[str, Any]:
    """What sinks send: the request's JSON plus the department and the delivery id.

    Both travel inside the payload (not only in headers or file names) so a receiver that
    stores the body keeps them, and, for webhooks, so they are covered by the signature.
    """
    payload = request.model_dump(mode="json")
    payload["department"] = department
    payload["delivery_id"] = delivery_id
    return payload


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that can take a whole consumer batch at once (one fsync, one round trip).

    Optional: ``deliver_all`` uses it when present and falls back to one-by-one delivery
    (with retries) if the batch call fails, so a batch failure can repeat some deliveries.
    """

    async def deliver_many(self, deliveries: list[Delivery]) -> None:
        """Deliver all of them or raise ``DeliveryError``."""
        ...


@dataclass(frozen=True)
class SinkContext:
    """What sinks may use from the running process, so configs stay pure data.

    ``http_client``: a shared client (one connection pool for all webhook sinks); when None,
    each HTTP sink creates and closes its own.

    ``taxonomy``: the city's services and their questions, which label the resident's answers in
    department messages (slack, email: sinks/answers.py); None: answers show under their codes.
    """

    data_dir: Path
    http_client: httpx.AsyncClient | None = None
    retry_attempts: int = 5
    retry_backoff_s: float = 0.5
    taxonomy: Taxonomy | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http_client: httpx.AsyncClient | None = None,
        taxonomy: Taxonomy | None = None,
    ) -> SinkContext:
        return cls(
            data_dir=settings.data_dir,
            http_client=http_client,
            retry_attempts=settings.retry_attempts,
            retry_backoff_s=settings.retry_backoff_s,
            taxonomy=taxonomy if taxonomy is not None else load_taxonomy(settings.taxonomy_file),
        )


class SinkConfig(BaseModel):
    """Base of every sink type's config. Subclasses narrow ``type`` to a ``Literal``.

    ``name`` is a slug unique within a department: it becomes part of the consumer group id
    and of the delivery id, so renaming a sink starts it from a fresh offset.

    ``retry_timeout_s``: how long the sink may be down before what waits for it is
    dead-lettered ("sink down for N s"). None, the default, waits on the topic however long
    the outage lasts, as a city expects of its work orders; the backlog then goes out in order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    retry_timeout_s: float | None = Field(
        default=None, gt=0, description="dead-letter after the sink is down this long; None: never"
    )

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not is_slug(value):
            raise ValueError(f"sink name {value!r} must be a lowercase slug (a-z, 0-9, '-', '_')")
        return value

    def build(self, ctx: SinkContext) -> Sink:
        """The sink this config describes (not started)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")


class _Registry:
    """Sink types by name: built-ins and entry points load on first use, then stay cached."""

    def __init__(self) -> None:
        self._types: dict[str, type[SinkConfig]] = {}
        self._failed: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def register(self, type_name: str, config_cls: type[SinkConfig]) -> None:
        if not is_slug(type_name):
            raise ValueError(f"sink type {type_name!r} must be a lowercase slug")
        if not (isinstance(config_cls, type) and issubclass(config_cls, SinkConfig)):
            raise TypeError(f"sink type {type_name!r}: {config_cls!r} is not a SinkConfig subclass")
        field = config_cls.model_fields.get("type")
        default = field.default if field is not None else None
        if default != type_name:
            # Without this, configs would parse with one name and report another.
            raise ValueError(
                f"sink type {type_name!r}: {config_cls.__name__}.type must default to {type_name!r}"
                f" (declare `type: Literal[{type_name!r}] = {type_name!r}`)"
            )
        existing = self._types.get(type_name)
        if existing is not None and existing is not config_cls:
            raise ValueError(
                f"sink type {type_name!r} is already registered by {existing.__module__}.{existing.__name__}"
            )
        self._types[type_name] = config_cls

    def _load_target(self, type_name: str, target: str, origin: str) -> None:
        try:
            module_name, _, attr = target.partition(":")
            config_cls = getattr(importlib.import_module(module_name), attr)
            self.register(type_name, config_cls)
        except Exception as exc:  # a broken plugin must not take the other sinks down
            self._failed[type_name] = f"{origin} {target}: {type(exc).__name__}: {exc}"
            log.warning("sink type failed to load", sink_type=type_name, origin=origin, error=str(exc)[:300])

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for type_name, target in BUILTIN_SINKS.items():
                if type_name not in self._types:
                    self._load_target(type_name, target, "built-in")
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in self._types:
                    self._failed[ep.name] = f"entry point {ep.value}: type name already taken"
                    continue
                self._load_target(ep.name, ep.value, "entry point")
            self._loaded = True

    def types(self) -> dict[str, type[SinkConfig]]:
        self.ensure_loaded()
        return dict(self._types)

    def failures(self) -> dict[str, str]:
        self.ensure_loaded()
        return dict(self._failed)

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._types.clear()
            self._failed.clear()
            self._loaded = False


_registry = _Registry()


def register_sink(type_name: str, config_cls: type[SinkConfig]) -> type[SinkConfig]:
    """Make ``type: <type_name>`` in subscriptions build ``config_cls``. Returns the class."""
    _registry.register(type_name, config_cls)
    return config_cls


def sink_types() -> dict[str, type[SinkConfig]]:
    """All known sink types (built-ins, entry points, explicit registrations)."""
    return _registry.types()


def parse_sink_config(data: dict[str, Any]) -> SinkConfig:
    """Validate one sink entry, choosing the config class by its ``type``.

    Raises ValueError for a missing/unknown type (listing the known ones) and pydantic's
    ValidationError (a ValueError) for invalid fields.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a sink must be a mapping with 'name' and 'type', got {type(data).__name__}")
    type_name = data.get("type")
    types = sink_types()
    known = ", ".join(sorted(types)) or "(none)"
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"sink has no 'type'; known types: {known}")
    config_cls = types.get(type_name)
    if config_cls is None:
        failed = _registry.failures().get(type_name)
        hint = f" (it failed to load: {failed})" if failed else ""
        raise ValueError(f"unknown sink type {type_name!r}{hint}; known types: {known}")
    return config_cls.model_validate(data)


__all__ = [
    "BUILTIN_SINKS",
    "ENTRY_POINT_GROUP",
    "BatchSink",
    "Delivery",
    "DeliveryError",
    "Sink",
    "SinkConfig",
    "SinkContext",
    "parse_sink_config",
    "register_sink",
    "request_payload",
    "sink_types",
]
