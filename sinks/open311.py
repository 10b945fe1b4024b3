"""``type: open311`` — each request becomes a service request in the city's own GeoReport v2 system.

What FixMyStreet does for councils: POST the report to the city's Open311 endpoint
(``requests.{json|xml}``, form-encoded, ``api_key``), remember the remote ``service_request_id``
(or the ``token`` the spec allows when the id comes later, resolved with ``GET tokens/{token}``),
and poll ``GET requests`` for the remote status so the resident hears back on their channel
when the city's system closes the work order.

Where the remote id lives, and why a Kafka topic. Several sinks hosts may run, and a partition of
the department topic moves between them in a rebalance: the host that redelivers a request must see
that another host already created it remotely, and the poller, on whichever host holds its lease,
must know which remote ids to ask about. A host-local file cannot be that record. The case store
could, but it is optional, while Kafka is always there; so the map ``request_id -> remote id/token,
last remote status`` is a topic of its own (``Topics.open311_ids``), keyed by request id and
created compacted, so the latest record of each request is kept however old it is. Each sink reads
the whole topic at start (a few hundred bytes a request) and catches up with it again before a
delivery when its view is older than ``mapping_staleness_s``; a record written by a host that then
died is older than the group's session timeout by the time its partition is reassigned, so with the
default (1 s, below every session timeout) the new owner has seen it.

Idempotency. Open311 has no idempotency key, so a second POST is a second work order. A
request is POSTed only when the map has no record of it, whatever its event or delivery id: a
redelivery, a replay and a follow-up version of the same request all find the record and post
nothing (GeoReport v2 cannot update a request). The residual window is the time between the
remote's answer and the acknowledgement of the map record (one Kafka round trip, milliseconds):
a crash inside it leaves no record, and the redelivery posts again, one duplicate work order.
The description carries our ticket (``ticket_note``), so the city can tell the two apart. If
the map record cannot be written (Kafka down) the sink keeps it in memory, reports the sink down
(the request waits on the topic) and writes it before anything else when Kafka answers, so this
process does not post twice.

Status back: see ``StatusPoller``. Its state (the last remote status seen) is in the same map,
and each ``StatusChange`` id is derived from the request, the remote status and the remote
``updated_datetime``, so a poll repeated after a crash or a restart publishes the same ids and
the case store and the resident's channel take each once. One host polls per (department,
sink), whoever holds the lease (``KafkaPollLease``: a consumer-group assignment of a
one-partition topic); closed requests are asked about again for a while (``refs_to_poll``), so a
reopen by the city reaches the resident.

The city's id, on the request: every remote id is announced as a ``schemas.external.ExternalRef``
(``Open311Sink.announce``), which the case store records for the console and the department API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from intake311.logging import get_logger
from intake311.secrets import resolve_secret
from schemas.external import ExternalRef
from schemas.request import ServiceRequest
from schemas.status import State, StatusChange, parse_state, status_event_id
from sinks.base import DeliveryError, SinkConfig, SinkContext
from sinks.webhook import parse_retry_after

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

    from intake311.bus import Outgoing
    from intake311.settings import Settings

log = get_logger(__name__)

USER_AGENT = "intake311-open311/1"
Format = Literal["json", "xml"]
_RETRYABLE_STATUS = {408, 425, 429}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ANNOUNCE_PER_POLL = 1000  # ids a poll announces at most (the backfill of an older map, in slices)

# What an attribute mapping may take from our request: ``attributes: {THEIR_CODE: <one of these>}``,
# or ``district.<layer>``, or ``answer.<code>`` (the resident's answer to our question), or ``const:<text>``.
ATTRIBUTE_SOURCES: dict[str, Callable[[ServiceRequest], object]] = {
    "request_id": lambda r: r.request_id,
    "service_code": lambda r: r.service_code,
    "priority": lambda r: r.priority.value,
    "channel": lambda r: r.channel,
    "language": lambda r: r.language,
    "incident": lambda r: r.incident,
    "incident_reports": lambda r: r.incident_reports,
    "location_precision": lambda r: r.location_precision.value if r.location_precision else None,
    "emergency": lambda r: r.emergency,
}


# --- configuration ------------------------------------------------------------------------------


class Open311SinkConfig(SinkConfig):
    """One city GeoReport v2 endpoint. ``endpoint`` is the base URL the city publishes (the one
    ``services.json`` and ``requests.json`` hang off); give ``api_key_env`` (preferred) or
    ``api_key``.

    ``service_codes`` maps our service codes to theirs; a request whose service is not mapped
    goes to ``default_service_code`` if set, else it is dead-lettered saying so. ``attributes``
    maps their attribute codes to what we know (``ATTRIBUTE_SOURCES``, ``district.<layer>``,
    ``const:<text>``), sent as ``attribute[CODE]``. ``send_reporter`` sends the resident's email,
    phone and name when the request carries them (the city's CRM contacts them too).
    ``later_reports``: ``post`` gives every resident's report its own remote request (and its own
    status back); ``skip`` posts only an incident's first report.

    Status back: every ``poll_interval_s`` (0: never) by ids (``service_request_id=a,b,c``, up to
    ``poll_batch`` at a time) or, with ``poll_by: updated``, by an updated-since window using the
    endpoint's own parameter names (``updated_after``/``updated_before`` on SeeClickFix and
    FixMyStreet); the first poll after a start is always by ids, so nothing missed while down is
    lost. ``open_state`` is our state for a remote ``open`` (None: no message for it); a
    ``closed`` request that opens again is always ``new``. A closed request is still asked about
    for ``repoll_closed_days`` after it closed (0: never), on every ``repoll_closed_every``-th
    poll (and on the first poll after a start or a lease handover), so a reopen by the city
    reaches the resident; after that it is left alone. Only one sinks host polls per
    (department, sink): see ``KafkaPollLease``.
    """

    type: Literal["open311"] = "open311"
    endpoint: str
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    jurisdiction_id: str | None = None
    format: Format = "json"
    service_codes: dict[str, str] = Field(default_factory=dict)
    default_service_code: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    send_reporter: bool = True
    ticket_note: str | None = Field(
        default="(intake311 ticket {ticket})",
        description="appended to the description so the city can match its request to our ticket",
    )
    later_reports: Literal["post", "skip"] = "post"
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_retry_after_s: float = Field(default=60.0, ge=0)
    poll_interval_s: float = Field(default=300.0, ge=0, description="0: no status polling")
    poll_by: Literal["ids", "updated"] = "ids"
    poll_batch: int = Field(default=50, ge=1, le=1000)
    updated_after_param: str = "updated_after"
    updated_before_param: str = "updated_before"
    poll_overlap_s: float = Field(
        default=60.0, ge=0, description="updated window reaches back this much more"
    )
    open_state: State | None = Field(
        default=State.ACKNOWLEDGED, description="our state for a remote 'open'; None: no message"
    )
    mapping_staleness_s: float = Field(default=1.0, ge=0, le=30)
    repoll_closed_days: float = Field(
        default=30.0, ge=0, description="keep asking about a closed request this long (0: never)"
    )
    repoll_closed_every: int = Field(
        default=12, ge=1, description="closed requests are asked about on every Nth poll (1: every poll)"
    )

    _api_key: SecretStr = PrivateAttr()

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"endpoint is not a valid URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {value[:200]!r}")
        if url.query:
            raise ValueError("endpoint must not carry a query string (the api_key goes in api_key_env)")
        return value.rstrip("/")

    @field_validator("service_codes")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, theirs in value.items():
            if not str(theirs).strip():
                raise ValueError(f"service_codes.{ours}: the city's code must not be empty")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_sources(cls, value: dict[str, str]) -> dict[str, str]:
        for code, source in value.items():
            if not code.strip() or any(c in code for c in "[]"):
                raise ValueError(f"attributes: {code!r} is not an attribute code")
            if source in ATTRIBUTE_SOURCES or source.startswith("const:"):
                continue
            if source.startswith(("district.", "answer.")) and source not in ("district.", "answer."):
                continue
            known = ", ".join(
                [*ATTRIBUTE_SOURCES, "district.<layer>", "answer.<our question>", "const:<text>"]
            )
            raise ValueError(f"attributes.{code}: unknown source {source!r}; use one of {known}")
        return value

    @field_validator("ticket_note")
    @classmethod
    def _note(cls, value: str | None) -> str | None:
        if value is not None and "{ticket}" not in value:
            raise ValueError("ticket_note must contain {ticket}")
        return value

    @model_validator(mode="after")
    def _key(self) -> Open311SinkConfig:
        # Resolved now: a missing key must stop the stage at start, not at the first request.
        key = resolve_secret(self.api_key, self.api_key_env, "api_key")
        assert key is not None
        self._api_key = key
        if self.poll_interval_s and self.poll_interval_s < 1:
            raise ValueError("poll_interval_s must be 0 (off) or at least 1")
        return self

    @property
    def key(self) -> SecretStr:
        return self._api_key

    def url(self, path: str) -> str:
        """``<endpoint>/<path>.<format>``."""
        return f"{self.endpoint}/{path}.{self.format}"

    def build(self, ctx: SinkContext) -> Open311Sink:
        return Open311Sink(self, client=ctx.http_client)


# --- what goes out --------------------------------------------------------------------------------


def remote_service_code(config: Open311SinkConfig, service_code: str) -> str:
    """The city's code for our ``service_code``; ``DeliveryError`` (not retryable) when none."""
    code = config.service_codes.get(service_code) or config.default_service_code
    if not code:
        raise DeliveryError(
            f"open311 sink {config.name!r}: service {service_code!r} has no Open311 service code;"
            " add it to service_codes (or set default_service_code), then replay",
            retryable=False,
        )
    return code


def _attribute_value(request: ServiceRequest, source: str) -> object:
    if source.startswith("const:"):
        return source.removeprefix("const:")
    if source.startswith("district."):
        return request.districts.get(source.removeprefix("district."))
    if source.startswith("answer."):
        # The resident's answer to one of our service questions (schemas/attributes.py); several
        # keys of a multivaluelist go comma-separated.
        answer = request.attributes.get(source.removeprefix("answer."))
        return ",".join(answer) if isinstance(answer, tuple | list) else answer
    return ATTRIBUTE_SOURCES[source](request)


def _split_name(name: str) -> tuple[str, str | None]:
    first, _, last = name.strip().partition(" ")
    return first, last.strip() or None


def build_form(config: Open311SinkConfig, request: ServiceRequest) -> dict[str, str]:
    """The spec's ``POST requests`` fields for ``request``, with only what the request carries.

    Location is ``lat``/``long`` when we have both, and ``address_string`` whenever we have the
    words (the spec allows both; crews read the words). The reporter's email/phone/name go only
    with ``send_reporter``, and a phone number only when the resident reached us by phone.
    """
    form: dict[str, str] = {
        "api_key": config.key.get_secret_value(),
        "service_code": remote_service_code(config, request.service_code),
    }
    if config.jurisdiction_id:
        form["jurisdiction_id"] = config.jurisdiction_id
    if request.lat is not None and request.long is not None:
        form["lat"], form["long"] = repr(request.lat), repr(request.long)
    if request.address_string:
        form["address_string"] = request.address_string
    description = request.description.strip()
    if config.ticket_note:
        note = config.ticket_note.format(ticket=request.request_id)
        description = f"{description}\n\n{note}" if description else note
    if description:
        form["description"] = description
    media = request.media_url or (request.media[0].url if request.media else None)
    if media:
        form["media_url"] = media
    if config.send_reporter:
        reporter = request.reporter
        if reporter.address and reporter.kind == "email":
            form["email"] = reporter.address
        elif reporter.address and reporter.kind == "phone":
            form["phone"] = reporter.address
        if reporter.name:
            first, last = _split_name(reporter.name)
            form["first_name"] = first
            if last:
                form["last_name"] = last
    for code, source in config.attributes.items():
        value = _attribute_value(request, source)
        if value is not None and str(value) != "":
            form[f"attribute[{code}]"] = str(value)
    return form


# --- what comes back ------------------------------------------------------------------------------


class AnswerError(ValueError):
    """The endpoint answered something that is not a GeoReport v2 document."""


def parse_records(body: bytes, fmt: Format) -> list[dict[str, str | None]]:
    """The records of a GeoReport v2 answer as flat dicts of text (``None`` for empty elements).

    JSON: a list of objects (some endpoints answer one object: taken as a list of one). XML: a
    root element whose children are the records (``<service_requests><request>…``,
    ``<errors><error>…``); nested elements are left out, scalars only, which is all a client of
    requests, tokens and errors needs.
    """
    if fmt == "json":
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise AnswerError(f"not JSON: {exc}") from None
        items = data if isinstance(data, list) else [data]
        out: list[dict[str, str | None]] = []
        for item in items:
            if not isinstance(item, dict):
                raise AnswerError(f"expected objects, got {type(item).__name__}")
            out.append({k: _json_text(v) for k, v in item.items() if not isinstance(v, dict | list)})
        return out
    try:
        # The stdlib parser fetches no external entities, and expat >= 2.4 caps entity expansion.
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise AnswerError(f"not XML: {exc}") from None
    records = []
    for element in root:
        record: dict[str, str | None] = {}
        for child in element:
            if len(child) == 0:
                text = (child.text or "").strip()
                record[child.tag] = text or None
        records.append(record)
    return records


def _json_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def error_descriptions(body: bytes, fmt: Format) -> str:
    """The spec's error list as one line (``400 service_code not found; …``), or an excerpt of
    whatever else the endpoint sent (an HTML error page)."""
    for candidate in (fmt, "xml" if fmt == "json" else "json"):
        try:
            records = parse_records(body, candidate)  # a proxy may answer in the other format
        except AnswerError:
            continue
        parts = [" ".join(p for p in (r.get("code"), r.get("description")) if p) for r in records]
        text = "; ".join(p for p in parts if p)
        if text:
            return text[:500]
    return " ".join(body.decode("utf-8", "replace").split())[:200]


@dataclass(frozen=True)
class Created:
    """What ``POST requests`` answered: an id now, or a token to resolve later (or both)."""

    service_request_id: str | None
    token: str | None
    service_notice: str | None = None


def parse_created(body: bytes, fmt: Format) -> Created:
    """The first record of a ``POST requests`` answer; ``AnswerError`` if it has neither an id nor
    a token (then we cannot know what was created)."""
    records = parse_records(body, fmt)
    if not records:
        raise AnswerError("an empty list")
    first = records[0]
    created = Created(first.get("service_request_id"), first.get("token"), first.get("service_notice"))
    if not created.service_request_id and not created.token:
        raise AnswerError("neither service_request_id nor token")
    return created


@dataclass(frozen=True)
class RemoteRequest:
    """One request as ``GET requests`` shows it (the fields status back needs)."""

    service_request_id: str
    status: str  # "open" or "closed"
    status_notes: str | None
    updated: datetime | None
    requested: datetime | None


def parse_datetime(value: str | None) -> datetime | None:
    """A W3C datetime as the spec has it; naive ones are taken as UTC; junk as absent."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_requests(body: bytes, fmt: Format) -> list[RemoteRequest]:
    """The requests of a ``GET requests`` answer; records without an id or a known status are
    skipped (logged), not fatal: one odd record must not stop status for the others."""
    out = []
    for record in parse_records(body, fmt):
        rid, status = record.get("service_request_id"), (record.get("status") or "").strip().lower()
        if not rid or status not in ("open", "closed"):
            log.warning("open311 request record skipped", service_request_id=rid, status=status[:20])
            continue
        out.append(
            RemoteRequest(
                service_request_id=rid,
                status=status,
                status_notes=(record.get("status_notes") or None),
                updated=parse_datetime(record.get("updated_datetime")),
                requested=parse_datetime(record.get("requested_datetime")),
            )
        )
    return out


def parse_tokens(body: bytes, fmt: Format) -> dict[str, str]:
    """``GET tokens/{token}``: token -> service_request_id, for the records that have an id yet."""
    return {
        r["token"]: r["service_request_id"]  # type: ignore[misc]
        for r in parse_records(body, fmt)
        if r.get("token") and r.get("service_request_id")
    }


# --- the map of our requests to theirs ------------------------------------------------------------


@dataclass(frozen=True)
class RemoteRef:
    """One of our requests in the city's system: its id or pending token, and the last remote
    status the poller saw (so a restart does not tell the resident again).

    ``written_at`` (unix seconds) orders records of one request: the newest wins when a host
    reads back an older record of its own after writing a newer one. ``closed_at`` (unix
    seconds) is when the poller first saw it closed, what ``repoll_closed_days`` counts from
    (records written before it existed count from ``written_at``, the time of their last
    write). ``announced``: the case store was sent its ``ExternalRef`` (``Open311Sink.announce``).
    """

    request_id: str
    department: str
    service_request_id: str | None = None
    token: str | None = None
    posted_at: str = ""
    remote_status: str | None = None
    remote_updated: str | None = None
    remote_notes: str | None = None
    written_at: float = 0.0
    closed_at: float | None = None
    announced: bool = False

    @property
    def closed(self) -> bool:
        return self.remote_status == "closed"

    @property
    def closed_since(self) -> float:
        """When it closed (unix seconds); only meaningful when ``closed``."""
        return self.closed_at if self.closed_at is not None else self.written_at

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RemoteRef:
        values = json.loads(data)
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


class RemoteIds(Protocol):
    """Where the map lives. ``refresh`` catches up with what other hosts wrote; ``put`` returns
    once the records are durable (or raises)."""

    async def refresh(self) -> None: ...

    def get(self, request_id: str) -> RemoteRef | None: ...

    def all(self) -> list[RemoteRef]: ...

    async def put(self, refs: Sequence[RemoteRef]) -> None: ...

    async def close(self) -> None: ...


class MemoryRemoteIds:
    """The map in memory: the cache the Kafka map reads into, and a map for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._refs: dict[str, RemoteRef] = {}
        self._clock = clock

    def _merge(self, ref: RemoteRef) -> None:
        current = self._refs.get(ref.request_id)
        if current is None or ref.written_at >= current.written_at:
            self._refs[ref.request_id] = ref

    def stamp(self, ref: RemoteRef) -> RemoteRef:
        """``ref`` as of now: what makes it win over the records written before it."""
        return replace(ref, written_at=max(self._clock(), ref.written_at))

    async def refresh(self) -> None:
        return None

    def get(self, request_id: str) -> RemoteRef | None:
        return self._refs.get(request_id)

    def all(self) -> list[RemoteRef]:
        return list(self._refs.values())

    async def put(self, refs: Sequence[RemoteRef]) -> None:
        for ref in refs:
            self._merge(self.stamp(ref))

    async def close(self) -> None:
        return None


Publish = Callable[[Sequence["Outgoing"]], Awaitable[None]]


async def ensure_topic(
    name: str,
    *,
    bootstrap: Sequence[str],
    client_options: Mapping[str, Any],
    partitions: int,
    replication_factor: int,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create topic ``name`` when missing (the sink's own topics: its map, its lease), with its
    own partitions and configs, through the runtime's ``create_missing``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from intake311.bus import create_missing

    admin = AIOKafkaAdminClient(bootstrap_servers=list(bootstrap), **client_options)
    await admin.start()
    try:
        topic = NewTopic(name, partitions, replication_factor, topic_configs=dict(configs or {}))
        await create_missing(admin, [topic])
    finally:
        await admin.close()


class KafkaRemoteIds(MemoryRemoteIds):
    """The map on a compacted Kafka topic, read whole at the first refresh and then followed.

    No consumer group (nothing committed): every host reads every record. The topic is created
    here, compacted, when missing, so old records survive the topic retention.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: Sequence[str],
        client_options: Mapping[str, Any],
        publish: Publish,
        partitions: int = 3,
        replication_factor: int = 1,
        idle_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.topic = topic
        self._bootstrap = list(bootstrap)
        self._options = dict(client_options)
        self._publish = publish
        self._partitions = partitions
        self._replication = replication_factor
        self._idle_timeout_s = idle_timeout_s
        self._consumer: Any = None
        self._assigned: set[Any] = set()
        self._positions: dict[Any, int] = {}
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        await ensure_topic(
            self.topic,
            bootstrap=self._bootstrap,
            client_options=self._options,
            partitions=self._partitions,
            replication_factor=self._replication,
            configs={"cleanup.policy": "compact"},
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False, **self._options
        )
        await consumer.start()
        self._consumer = consumer

    async def refresh(self) -> None:
        """Read up to the end offsets as they are now (every record written before this call)."""
        from aiokafka import TopicPartition

        async with self._lock:
            if self._consumer is None:
                await self._start()
            consumer = self._consumer
            partitions = consumer.partitions_for_topic(self.topic)
            for _ in range(20):  # a topic created a moment ago takes a moment to show
                if partitions:
                    break
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    await asyncio.sleep(0.1)
            if not partitions:
                # Never "no partitions, so an empty map": that would post everything again.
                raise TimeoutError(f"remote-id topic {self.topic}: no partitions in the metadata")
            tps = {TopicPartition(self.topic, p) for p in partitions}
            if tps - self._assigned:
                new = tps - self._assigned
                consumer.assign(sorted(tps))
                await consumer.seek_to_beginning(*new)
                for tp in self._assigned:  # assign() forgets positions: keep what was read
                    consumer.seek(tp, self._positions[tp])
                self._assigned = tps
            ends = await consumer.end_offsets(sorted(tps))
            deadline = time.monotonic() + self._idle_timeout_s
            todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
            while todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"remote-id topic {self.topic}: could not read to its end")
                batches = await consumer.getmany(*todo, timeout_ms=200, max_records=1000)
                for records in batches.values():
                    for record in records:
                        self._read(record.value)
                todo = {tp for tp in todo if await consumer.position(tp) < ends[tp]}
            self._positions = {tp: await consumer.position(tp) for tp in tps}

    def _read(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            self._merge(RemoteRef.from_json(value))
        except (ValueError, TypeError, KeyError):
            log.warning("open311 remote-id record skipped: not a RemoteRef", topic=self.topic)

    async def put(self, refs: Sequence[RemoteRef]) -> None:
        from intake311.bus import Outgoing

        if not refs:
            return
        stamped = [self.stamp(ref) for ref in refs]
        await self._publish([Outgoing(self.topic, ref.to_json(), key=ref.request_id) for ref in stamped])
        for ref in stamped:
            self._merge(ref)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
            self._assigned = set()


# --- one poller per (department, sink): the lease -------------------------------------------------


class PollLease(Protocol):
    """Whether this process is the one that polls the city for its (department, sink) pair.

    ``run`` keeps the lease's machinery going until cancelled (``held`` may change at any time
    while it runs); ``close`` gives the lease up so another host takes it over at once.
    """

    @property
    def held(self) -> bool: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


class AlwaysHeld:
    """The lease of a sink that is alone by construction (tests, ``use`` without a lease)."""

    held = True

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to keep up; runs until cancelled

    async def close(self) -> None:
        return None


class KafkaPollLease:
    """The poller lease as a consumer-group assignment: ONE partition, so ONE holder.

    Every sinks host's ``open311`` sink of a (department, sink) pair joins the same consumer
    group (``Topics.open311_poller_group``), subscribed to a topic of exactly one partition
    that nothing ever writes (``Topics.open311_lease``). Kafka's group protocol gives that
    partition to one member at a time; that member polls, the others wait. When it stops
    (``close`` leaves the group), crashes (its session times out) or a host joins, the group
    rebalances and the partition, so the lease, goes to a member that is alive. No host-local
    file, no new infrastructure: only the coordinator every consumer already talks to.

    Why a topic of its own rather than partition 0 of the compacted map topic
    (``Topics.open311_ids``): one partition means one holder whatever the assignor and however
    many partitions the map was created with (an operator may create it with 6), and a topic
    nothing writes costs no fetches (the partition is paused at assignment anyway) and no
    offsets to reset: the map's consumers read it without a group, and they stay that way.

    How it moves without anyone calling ``getmany`` for records: aiokafka's group coordinator
    runs joins, syncs and heartbeats in a background task (``GroupCoordinator.
    _coordination_routine``) and calls the ``ConsumerRebalanceListener`` from there, so the
    assignment progresses on its own. But the coordinator leaves the group, and will not rejoin,
    once the consumer has spent ``max_poll_interval_ms`` outside ``getmany``/``getone``
    (``SubscriptionState.fetcher_idle_time``); ``run`` therefore waits in ``getmany`` on the
    paused partition, which also surfaces coordination errors (then it starts over, lease not
    held).

    Overlap, honestly: under the eager rebalance protocol every member gives its partitions up
    (``on_partitions_revoked``) before the new assignment is handed out, so two members never
    hold the partition in one generation. Two hosts may still poll at once (1) while a poll that
    began before a revocation finishes (one poll's length), and (2) when the holder is cut off
    from the coordinator while still reaching the city: it keeps polling until its heartbeats
    fail for a session timeout and it rejoins. Both are harmless, only rare: status changes
    carry derived ids (``status_change_for``), so the case store and the resident take each
    once. On the embedded broker (Tansu) a rebalance takes seconds; for a poll every few
    minutes that is nothing.
    """

    def __init__(
        self,
        topic: str,
        group: str,
        *,
        bootstrap: Sequence[str],
        client_options: Mapping[str, Any],
        session_timeout_ms: int = 10_000,
        replication_factor: int = 1,
        retry_s: float = 5.0,
        name: str = "",
    ) -> None:
        self.topic = topic
        self.group = group
        self._bootstrap = list(bootstrap)
        self._options = dict(client_options)
        self._session_ms = session_timeout_ms
        self._replication = replication_factor
        self._retry_s = retry_s
        self._name = name
        self._held = False
        self._consumer: Any = None
        self.assignments = 0  # rebalances this member completed (what tests wait for)

    @property
    def held(self) -> bool:
        return self._held

    def _listener(self) -> Any:
        from aiokafka import TopicPartition
        from aiokafka.abc import ConsumerRebalanceListener

        lease = self
        partition = TopicPartition(self.topic, 0)

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                if lease._held:
                    log.info("open311 poller lease released", sink=lease._name, group=lease.group)
                lease._held = False

            async def on_partitions_assigned(self, assigned: Any) -> None:
                consumer = lease._consumer
                if consumer is not None and assigned:
                    consumer.pause(*assigned)  # nothing is written there: fetch nothing
                lease._held = partition in assigned
                lease.assignments += 1
                if lease._held:
                    log.info("open311 poller lease taken", sink=lease._name, group=lease.group)

        return Listener()

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        await ensure_topic(
            self.topic,
            bootstrap=self._bootstrap,
            client_options=self._options,
            partitions=1,
            replication_factor=self._replication,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=self._session_ms,
            heartbeat_interval_ms=max(300, self._session_ms // 4),
            **self._options,
        )
        self._consumer = consumer
        consumer.subscribe([self.topic], listener=self._listener())
        await consumer.start()

    async def _stop(self) -> None:
        self._held = False
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()  # leaves the group: the next member takes over at once

    async def run(self) -> None:
        """Join the group and stay in it; on any error start over (lease not held meanwhile)."""
        while True:
            try:
                await self._start()
                while True:
                    await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                await self._stop()
                raise
            except Exception as exc:
                log.warning(
                    "open311 poller lease lost; joining again",
                    sink=self._name,
                    group=self.group,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                await self._stop()
                await asyncio.sleep(self._retry_s)

    async def close(self) -> None:
        await self._stop()


# --- status back ------------------------------------------------------------------------------


def status_change_for(
    ref: RemoteRef,
    remote: RemoteRequest,
    *,
    source: str,
    open_state: State | None,
    now: datetime | None = None,
) -> StatusChange | None:
    """Our ``StatusChange`` for what the city's system now says, or None when nothing changed
    that the resident should hear (the same status and notes; or an ``open`` the map mutes).

    The id is derived from the request, the state and the remote ``updated_datetime`` (the
    status notes when the endpoint gives no time), so the same remote change is the same event
    however often it is polled.
    """
    notes = (remote.status_notes or "").strip() or None
    if remote.status == ref.remote_status and notes == ref.remote_notes:
        return None
    state: State | None
    if remote.status == "closed":
        state = State.CLOSED
    elif ref.closed:
        state = parse_state("open")  # reopened by the city
    else:
        state = open_state
    if state is None:
        return None
    at_for_id = remote.updated or remote.requested or _EPOCH
    stamp = source if remote.updated else f"{source}#{notes or ''}"
    return StatusChange(
        event_id=status_event_id(ref.request_id, state, at_for_id, stamp),
        request_id=ref.request_id,
        state=state,
        notes=notes[:2000] if notes else None,
        at=remote.updated or now or datetime.now(UTC),
        source=source,
        department=ref.department,
    )


def observed(ref: RemoteRef, remote: RemoteRequest, now: float | None = None) -> RemoteRef:
    """``ref`` after the poller saw ``remote`` at ``now`` (unix seconds): what the next poll
    compares with, and since when it is closed (kept while it stays closed, cleared on a reopen)."""
    closed_at: float | None = None
    if remote.status == "closed":
        closed_at = ref.closed_since if ref.closed else now
    return replace(
        ref,
        remote_status=remote.status,
        remote_notes=(remote.status_notes or "").strip() or None,
        remote_updated=remote.updated.isoformat() if remote.updated else None,
        closed_at=closed_at,
    )


def refs_to_poll(
    refs: Iterable[RemoteRef], *, now: float, poll_number: int, repoll_days: float, every: int
) -> list[RemoteRef]:
    """The requests a poll by ids asks about: every open one with a remote id, and the closed ones
    that closed less than ``repoll_days`` ago when ``poll_number`` is a multiple of ``every``
    (poll 0, the first after a start or a lease handover, always is).

    Why closed ones at all: the city may reopen a request (the crew found the hole open again),
    and ``status_change_for`` turns closed -> open into a reopen the resident hears of. Why less
    often, and not forever: most closed requests stay closed, and each costs the city a lookup.
    """
    horizon = now - repoll_days * 86400
    closed_too = repoll_days > 0 and poll_number % every == 0
    return [
        r
        for r in refs
        if r.service_request_id and (not r.closed or (closed_too and r.closed_since >= horizon))
    ]


class StatusPoller:
    """Asks the city's system what became of our requests, and tells our status topic.

    ``poll_once`` resolves pending tokens (and announces the ids they resolve to, with any the
    case store was not sent yet: ``Open311Sink.announce``), reads the remote status of every
    request that is not closed, and of the recently closed ones every ``repoll_closed_every``-th
    poll (``refs_to_poll``; by ids, or by an updated window), publishes a ``StatusChange`` for
    each change, and only then records what it saw in the map: a crash in between repeats the
    same change ids. ``run`` calls it every ``poll_interval_s`` while this process holds the
    lease (``KafkaPollLease``: one poller per (department, sink) across hosts); a failed poll is
    logged and tried next time.
    """

    def __init__(
        self,
        sink: Open311Sink,
        publish: Publish,
        status_topic: str,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        lease: PollLease | None = None,
    ) -> None:
        self.sink = sink
        self.sleep = sleep
        self.lease: PollLease = lease if lease is not None else AlwaysHeld()
        self._publish = publish
        self._status_topic = status_topic
        self._clock = clock
        self._since: datetime | None = None  # end of the last updated window; None: poll by ids
        self._polls = 0  # polls since this process (last) took the lease: closed ones on every Nth
        self.polls_done = 0  # every poll this process made (what tests and logs look at)

    async def poll_once(self) -> list[StatusChange]:
        from intake311.bus import Outgoing

        sink, config = self.sink, self.sink.config
        ids = sink.ids
        await ids.refresh()
        started = self._clock()
        updates: list[RemoteRef] = await self._resolve_tokens(ids.all())
        await ids.put(updates)
        # Ids not told to the case store yet: resolved tokens, a failed announcement, records
        # from before announcing existed (a backfill, in slices, so a big map is no burst).
        await sink.announce(
            [r for r in ids.all() if r.service_request_id and not r.announced][:ANNOUNCE_PER_POLL]
        )
        asked = refs_to_poll(
            ids.all(),
            now=started.timestamp(),
            poll_number=self._polls,
            repoll_days=config.repoll_closed_days,
            every=config.repoll_closed_every,
        )
        self._polls += 1
        self.polls_done += 1
        if config.poll_by == "updated" and self._since is not None:
            remote = await self._by_window(self._since - timedelta(seconds=config.poll_overlap_s), started)
        else:
            remote = await self._by_ids([r.service_request_id for r in asked if r.service_request_id])
        by_remote_id = {r.service_request_id: r for r in ids.all() if r.service_request_id}
        changes: list[StatusChange] = []
        seen: list[RemoteRef] = []
        for item in remote:
            ref = by_remote_id.get(item.service_request_id)
            if ref is None:
                continue  # the window brings the city's other requests too
            change = status_change_for(
                ref, item, source=sink.source, open_state=config.open_state, now=started
            )
            if change is not None:
                changes.append(change)
            after = observed(ref, item, started.timestamp())
            if after != ref:
                seen.append(after)
        if changes:
            await self._publish(
                [
                    Outgoing(self._status_topic, c.model_dump_json().encode(), key=c.request_id)
                    for c in changes
                ]
            )
            for change in changes:
                log.info(
                    "open311 status back",
                    sink=sink.name,
                    request_id=change.request_id,
                    state=change.state.value,
                )
        await ids.put(seen)
        self._since = started
        return changes

    async def _resolve_tokens(self, refs: Iterable[RemoteRef]) -> list[RemoteRef]:
        out = []
        for ref in refs:
            if ref.service_request_id or not ref.token:
                continue
            found = await self.sink.resolve_token(ref.token)
            if found:
                out.append(replace(ref, service_request_id=found))
                log.info("open311 token resolved", sink=self.sink.name, request_id=ref.request_id)
        return out

    async def _by_ids(self, remote_ids: list[str]) -> list[RemoteRequest]:
        out: list[RemoteRequest] = []
        step = self.sink.config.poll_batch
        for start in range(0, len(remote_ids), step):
            chunk = remote_ids[start : start + step]
            out.extend(await self.sink.fetch_requests({"service_request_id": ",".join(chunk)}))
        return out

    async def _by_window(self, since: datetime, until: datetime) -> list[RemoteRequest]:
        config = self.sink.config
        return await self.sink.fetch_requests(
            {
                config.updated_after_param: since.astimezone(UTC).isoformat(timespec="seconds"),
                config.updated_before_param: until.astimezone(UTC).isoformat(timespec="seconds"),
            }
        )

    async def run(self) -> None:
        interval = self.sink.config.poll_interval_s
        holding = False
        while True:
            await self.sleep(interval)
            if not self.lease.held:
                holding = False
                continue  # another host polls
            if not holding:
                # Taken (again): the first poll is by ids with the closed ones, as after a start;
                # the other host's windows moved on without this process.
                holding, self._since, self._polls = True, None, 0
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next poll tries again; nothing is marked as seen
                log.warning("open311 status poll failed", sink=self.sink.name, error=str(exc)[:300])


# --- the sink -----------------------------------------------------------------------------------


class Open311Sink:
    """POSTs requests to one endpoint; ``bind`` gives it the bus (its map and the status topic).

    The sinks stage must call ``bind(broker, settings, department)`` before ``start``: the map,
    the status poller and its lease need Kafka, which a ``SinkContext`` does not carry. Tests
    bind a ``MemoryRemoteIds`` and a publish function with ``use``.

    Every remote id the city gives (at once, or by resolving a token) is announced to the case
    store as an ``ExternalRef`` on ``Topics.external_refs`` (``announce``), and the map records
    that it was (``RemoteRef.announced``), so an operator and a department system see
    "in the city's system: #1001". A failed announcement holds the request on the topic like any
    outage, and its redelivery (or the next poll) announces it; nothing is posted again.
    """

    def __init__(
        self,
        config: Open311SinkConfig,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self._client = client
        self._owns_client = False
        self._clock = clock
        self._ids: RemoteIds | None = None
        self._pending: dict[str, RemoteRef] = {}  # created remotely, not yet durable in the map
        self._refreshed = float("-inf")
        self.department = ""
        self.poller: StatusPoller | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._publish: Publish | None = None
        self._external_topic: str | None = None
        self._prepare_external: Callable[[], Awaitable[None]] | None = None
        self._now: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._where = str(httpx.URL(config.endpoint).copy_with(userinfo=b"", query=None, fragment=None))

    @property
    def source(self) -> str:
        """Who status changes come from: ``open311:<department>/<sink>``."""
        return f"open311:{self.department}/{self.name}"

    @property
    def ids(self) -> RemoteIds:
        if self._ids is None:
            raise RuntimeError(
                f"open311 sink {self.name!r} is not bound to the bus: the sinks stage must call"
                " sink.bind(broker, settings, department) before start()"
            )
        return self._ids

    def use(
        self,
        ids: RemoteIds,
        publish: Publish,
        *,
        department: str,
        status_topic: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        external_topic: str | None = None,
        lease: PollLease | None = None,
    ) -> None:
        """Bind to a map and a publisher (what ``bind`` does with Kafka; tests pass their own).

        ``external_topic``: where remote ids are announced (None: not announced, for tests of
        other things); ``lease``: who polls (None: this process, always).
        """
        self._ids = ids
        self.department = department
        self._publish = publish
        self._external_topic = external_topic
        self._now = now
        self.poller = StatusPoller(self, publish, status_topic, now, lease=lease)

    def bind(self, broker: KafkaBroker, settings: Settings, department: str) -> None:
        """Bind to the running bus: the map on ``Topics.open311_ids``, the status topic, the
        ``ExternalRef`` topic and the poller lease (``Topics.open311_lease``)."""
        from intake311.embedded import embedded_bootstrap_file
        from intake311.ops import client_options
        from intake311.stage import publish_output

        bootstrap = list(settings.kafka.bootstrap_servers)
        if not bootstrap:
            announced = embedded_bootstrap_file(settings)
            bootstrap = [announced.read_text().strip()] if announced.exists() else []

        async def publish(records: Sequence[Outgoing]) -> None:
            await publish_output(broker, records, settings)

        topics, options = settings.topics, client_options(settings.kafka)
        ids = KafkaRemoteIds(
            topics.open311_ids(department, self.name),
            bootstrap=bootstrap,
            client_options=options,
            publish=publish,
            partitions=settings.kafka.topic_partitions,
            replication_factor=settings.kafka.replication_factor,
        )
        lease = KafkaPollLease(
            topics.open311_lease(department, self.name),
            topics.open311_poller_group(department, self.name),
            bootstrap=bootstrap,
            client_options=options,
            session_timeout_ms=settings.kafka.consumer_session_timeout_ms,
            replication_factor=settings.kafka.replication_factor,
            name=f"{department}/{self.name}",
        )
        self.use(
            ids,
            publish,
            department=department,
            status_topic=topics.status,
            external_topic=topics.external_refs,
            lease=lease,
        )

        async def prepare_external() -> None:
            # The pipeline creates it with the other topics; this covers a sinks process whose
            # pipeline does not (a cluster without auto-creation would refuse the first record).
            await ensure_topic(
                topics.external_refs,
                bootstrap=bootstrap,
                client_options=options,
                partitions=settings.kafka.topic_partitions,
                replication_factor=settings.kafka.replication_factor,
            )

        self._prepare_external = prepare_external

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})
            self._owns_client = True
        self.ids  # noqa: B018 - fails here, at start, when the stage did not bind the sink
        if self.config.poll_interval_s and self.poller is not None and self._poll_task is None:
            self._lease_task = asyncio.create_task(self.poller.lease.run(), name=f"open311-lease-{self.name}")
            self._poll_task = asyncio.create_task(self.poller.run(), name=f"open311-poll-{self.name}")

    # -- delivery

    async def _catch_up(self) -> None:
        if self._clock() - self._refreshed < self.config.mapping_staleness_s:
            return
        try:
            await self.ids.refresh()
        except Exception as exc:
            raise DeliveryError(
                f"open311 sink {self.name!r}: cannot read its remote-id map ({type(exc).__name__}: {exc})"
            ) from exc
        self._refreshed = self._clock()

    async def _flush_pending(self) -> None:
        if not self._pending:
            return
        try:
            await self.ids.put(list(self._pending.values()))
        except Exception as exc:
            raise DeliveryError(
                f"open311 sink {self.name!r}: cannot record {len(self._pending)} remote id(s)"
                f" ({type(exc).__name__}: {exc})"
            ) from exc
        self._pending.clear()

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        """Create ``request`` remotely unless the map says it was; record what the city answered."""
        await self._catch_up()
        await self._flush_pending()
        known = self.ids.get(request.request_id)
        if known is not None:
            log.debug("open311 request already created", sink=self.name, request_id=request.request_id)
            await self._announce_or_hold([known])  # an announcement that failed before
            return
        if self.config.later_reports == "skip" and request.is_later_report:
            return
        form = build_form(self.config, request)
        answer = await self._send("POST", self.config.url("requests"), data=form)
        try:
            created = parse_created(answer.content, self.config.format)
        except AnswerError as exc:
            # Accepted but unreadable: it may exist remotely, so a retry could make a second one.
            raise DeliveryError(
                f"{self._prefix()}: HTTP {answer.status_code} but the answer is not usable ({exc});"
                " check whether the city created it before replaying",
                retryable=False,
            ) from exc
        ref = RemoteRef(
            request_id=request.request_id,
            department=department,
            service_request_id=created.service_request_id,
            token=None if created.service_request_id else created.token,
            posted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            written_at=self._clock(),
        )
        log.info(
            "open311 request created",
            sink=self.name,
            request_id=request.request_id,
            service_request_id=created.service_request_id,
            pending_token=bool(ref.token),
        )
        self._pending[ref.request_id] = ref
        await self._flush_pending()
        await self._announce_or_hold([ref])

    # -- the remote id, told to the case store

    async def announce(self, refs: Iterable[RemoteRef]) -> list[ExternalRef]:
        """Publish an ``ExternalRef`` for each of ``refs`` that has a remote id and was not
        announced yet, then mark them announced in the map; the events published.

        The event ids are derived (``schemas.external.external_ref_id``): announcing twice (a
        crash before the map records it, two hosts) is the same event, taken once.
        """
        from intake311.bus import Outgoing

        if self._external_topic is None or self._publish is None:
            return []
        todo = [r for r in refs if r.service_request_id and not r.announced]
        if not todo:
            return []
        if self._prepare_external is not None:
            await self._prepare_external()
            self._prepare_external = None
        at = self._now()
        events = []
        for r in todo:
            try:
                events.append(
                    ExternalRef.new(
                        r.request_id,
                        system=self.source,
                        external_id=r.service_request_id or "",
                        token=r.token,
                        at=at,
                    )
                )
            except ValueError as exc:  # not a ticket, an id too long: say so once, never hold for it
                log.warning(
                    "open311 remote id not announced",
                    sink=self.name,
                    request_id=r.request_id,
                    reason=str(exc)[:200],
                )
        if events:
            await self._publish(
                [
                    Outgoing(self._external_topic, e.model_dump_json().encode(), key=e.request_id)
                    for e in events
                ]
            )
        # The map's current record (the poller may have written a newer status meanwhile).
        await self.ids.put([replace(self.ids.get(r.request_id) or r, announced=True) for r in todo])
        for event in events:
            log.info(
                "open311 remote id announced",
                sink=self.name,
                request_id=event.request_id,
                service_request_id=event.external_id,
            )
        return events

    async def _announce_or_hold(self, refs: Sequence[RemoteRef]) -> None:
        try:
            await self.announce(refs)
        except Exception as exc:
            # Created and recorded: the redelivery finds the record, posts nothing, announces.
            raise DeliveryError(
                f"open311 sink {self.name!r}: cannot announce the remote id to the case store"
                f" ({type(exc).__name__}: {exc})"
            ) from exc

    # -- HTTP

    def _prefix(self) -> str:
        return f"open311 sink {self.name!r} ({self._where})"

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One call; the answer when 2xx, else ``DeliveryError`` with the spec's error list."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        prefix = self._prefix()
        try:
            response = await self._client.request(
                method,
                url,
                timeout=self.config.timeout_s,
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT, "Accept": f"application/{self.config.format}"},
                **kwargs,
            )
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"{prefix}: timed out after {self.config.timeout_s:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            # The message may quote the URL: ours carries no key (it is in the form body).
            raise DeliveryError(f"{prefix}: {type(exc).__name__}: {exc or 'request failed'}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return response
        detail = error_descriptions(response.content, self.config.format)
        reason = f"{prefix}: HTTP {status}" + (f": {detail}" if detail else "")
        if status in _RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, self.config.max_retry_after_s)
            raise DeliveryError(reason, retryable=True, retry_after_s=retry_after)
        if 300 <= status < 400:
            reason = f"{prefix}: HTTP {status} redirect; configure the final endpoint URL"
        raise DeliveryError(reason, retryable=False)

    def _query(self, params: Mapping[str, str]) -> dict[str, str]:
        query = dict(params)
        if self.config.jurisdiction_id:
            query["jurisdiction_id"] = self.config.jurisdiction_id
        return query

    async def fetch_requests(self, params: Mapping[str, str]) -> list[RemoteRequest]:
        """``GET requests.{fmt}`` with ``params`` (and the jurisdiction)."""
        answer = await self._send("GET", self.config.url("requests"), params=self._query(params))
        return parse_requests(answer.content, self.config.format)

    async def resolve_token(self, token: str) -> str | None:
        """The id behind a token, or None while the city has not made one (or does not know it)."""
        try:
            answer = await self._send("GET", self.config.url(f"tokens/{token}"), params=self._query({}))
        except DeliveryError as exc:
            if not exc.retryable:  # a 404: not (yet) known; asked again at the next poll
                log.info("open311 token not resolved", sink=self.name, reason=exc.reason[:200])
                return None
            raise
        return parse_tokens(answer.content, self.config.format).get(token)

    async def close(self) -> None:
        for task in (self._poll_task, self._lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poll_task = self._lease_task = None
        if self.poller is not None:
            await self.poller.lease.close()  # leaves the group: another host polls at once
        if self._ids is not None:
            await self._ids.close()
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None
            self._owns_client = False


__all__ = [
    "ATTRIBUTE_SOURCES",
    "AlwaysHeld",
    "Created",
    "KafkaPollLease",
    "KafkaRemoteIds",
    "MemoryRemoteIds",
    "Open311Sink",
    "Open311SinkConfig",
    "PollLease",
    "RemoteIds",
    "RemoteRef",
    "RemoteRequest",
    "StatusPoller",
    "build_form",
    "error_descriptions",
    "parse_created",
    "parse_records",
    "parse_requests",
    "parse_tokens",
    "refs_to_poll",
    "status_change_for",
]
