"""What every consuming stage shares: batches of records in, records out, failures kept.

A stage's logic is a pure function from a decoded record to zero or more ``Outgoing``
records; ``process_batch`` applies it to a Kafka batch and turns input that cannot be processed
into dead letters with their reason and original bytes, and ``publish_output`` publishes the
lot in one pipelined round trip. A batch's offsets are recorded only after its handler returns
and committed at most once an interval (``intake311.commits``), so a crash replays what was not
committed (at-least-once) and stable ids make the replay harmless.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gc
import gzip
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema

from intake311.bus import Outgoing, PublishError, publish_all
from intake311.commits import OffsetCommits, attach
from intake311.fetchwait import FetchPace
from intake311.logging import get_logger
from intake311.settings import Settings
from schemas.deadletter import DeadLetter

if TYPE_CHECKING:
    from intake311.metrics import Metrics

log = get_logger(__name__)


class Record:
    """One consumed record, detached from aiokafka so pure code and tests can build it.

    Not a dataclass: a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) and
    decoding every header up front cost ~4 µs a record, a sixth of the router's own work, and
    the headers are only read for a dead letter. ``of`` keeps aiokafka's header pairs and
    ``headers`` decodes them on first use (``text_headers``: never fails). Treat it as read-only.
    """

    __slots__ = ("_headers", "_raw_headers", "key", "offset", "partition", "topic", "value")

    def __init__(
        self,
        value: bytes,
        topic: str = "",
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.value = value
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self._headers: dict[str, str] | None = headers if headers is not None else {}
        self._raw_headers: Sequence[tuple[str, bytes | None]] | None = None

    @classmethod
    def of(cls, raw: ConsumerRecord[Any, Any]) -> Record:
        record = cls.__new__(cls)
        record.value = raw.value or b""
        record.topic = raw.topic
        record.partition = raw.partition
        record.offset = raw.offset
        record.key = raw.key
        record._headers = None  # decoded from _raw_headers on first use
        record._raw_headers = raw.headers
        return record

    @property
    def headers(self) -> dict[str, str]:
        """Header values as text (``text_headers``), decoded once, when first asked for."""
        if self._headers is None:
            self._headers = text_headers(self._raw_headers)
        return self._headers

    def __repr__(self) -> str:
        return (
            f"Record(topic={self.topic!r}, partition={self.partition!r}, offset={self.offset!r}, "
            f"key={self.key!r}, value={self.value[:60]!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.value, self.topic, self.partition, self.offset, self.key, self.headers) == (
            other.value,
            other.topic,
            other.partition,
            other.offset,
            other.key,
            other.headers,
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable in principle


def text_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Header values as text whatever bytes a producer put there: invalid UTF-8 is replaced and
    a null value is empty, so no header can make a record unprocessable."""
    return {k: v.decode(errors="replace") if v is not None else "" for k, v in (headers or ())}


class Reject(Exception):
    """Raised by stage logic for input that will never succeed: it goes to the dead-letter topic."""


def records_from(raw_message: Any) -> list[Record]:
    """Records of a FastStream Kafka message, batch or single."""
    raws = raw_message if isinstance(raw_message, tuple | list) else (raw_message,)
    return [Record.of(r) for r in raws]


def handled_records(broker: KafkaBroker) -> list[Record]:
    """The records of the message ``broker`` is handling now (call it in a handler).

    Why not a ``msg: KafkaMessage`` parameter: FastStream resolves that annotation through a
    FastDepends ``CustomField`` whose ``use`` is synchronous, and FastDepends 3.0 runs a
    synchronous ``use`` on an AnyIO worker thread, so every batch of every stage paid a thread
    hop (a submit, a wake-up, the way back) before its handler started: on the sinks stage under
    load the hop's frames were about a tenth of the event loop's samples. The message is the
    same object in the broker's context, which FastStream sets before it calls the handler.
    A handler keeps its ``records: RawBatch[Model]`` parameter (unused): that is what the
    AsyncAPI document shows for its topic.
    """
    message = broker.context.get_local("message")
    if message is None:
        raise RuntimeError("handled_records() called outside a message handler")
    return records_from(message.raw_message)


MAX_LETTER_BYTES = 900_000
"""Largest dead letter sent as is: under the producer's 1 MiB request limit with room for the key
and headers. Base64 makes a letter a third larger than its record, so a record near the limit
(accepted when it was produced) would give a letter no broker takes: its batch would fail and be
redelivered for ever, holding up every record behind it."""


def dead_letter(
    record: Record, stage: str, topic: str, reason: str, error: str, attempts: int = 1
) -> Outgoing:
    """The dead-letter record for an input record, keyed like the original.

    A letter too big for Kafka carries its original gzipped; if even that is too big (bytes that
    do not compress), it carries none and says where the original is, rather than block the stage.
    """
    where: dict[str, Any] = {
        "stage": stage,
        "error": error,
        "source_topic": record.topic or None,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode(errors="replace") if record.key else None,
        "headers": record.headers,
        "attempts": attempts,
    }
    letter = DeadLetter.of(record.value, reason=reason, **where)
    value = letter.model_dump_json().encode()
    if len(value) > MAX_LETTER_BYTES:
        packed = base64.b64encode(gzip.compress(record.value)).decode()
        letter = letter.model_copy(update={"original_b64": packed, "original_encoding": "gzip+base64"})
        value = letter.model_dump_json().encode()
    if len(value) > MAX_LETTER_BYTES:
        log.error(
            "record too large to keep in a dead letter", stage=stage, topic=record.topic, offset=record.offset
        )
        omitted = (
            f"{reason[:1500]} [original of {len(record.value)} bytes too large to keep here: it is on "
            f"{record.topic} partition {record.partition} offset {record.offset}]"
        )
        letter = DeadLetter.of(b"", reason=omitted, **where)
        letter = letter.model_copy(update={"original_encoding": "omitted"})
        value = letter.model_dump_json().encode()
    return Outgoing(topic, value, key=letter.key, headers={"x-stage": stage})


def explain(exc: BaseException) -> str:
    """A short reason an operator can act on (pydantic errors listed field by field)."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors()[:10]]
        return "invalid: " + "; ".join(parts)
    return str(exc) or type(exc).__name__


def process_batch(
    records: Sequence[Record],
    handle: Callable[[Record], Sequence[Outgoing]],
    *,
    stage: str,
    deadletter_topic: str,
) -> tuple[list[Outgoing], int]:
    """Apply ``handle`` to each record; bad records become dead letters. Returns (out, rejected).

    ``handle`` is pure (no I/O), so whatever it raises is about this record and would be raised
    again on every redelivery: the record is dead-lettered, never retried in a loop. Input
    errors (``Reject``, validation) log a warning; anything else is a bug and logs an error with
    its traceback, while the record waits in the dead-letter topic for a fix and a replay.
    """
    out: list[Outgoing] = []
    rejected = 0
    for record in records:
        try:
            out.extend(handle(record))
        except Exception as exc:
            rejected += 1
            is_input = isinstance(exc, Reject | ValidationError | ValueError | UnicodeDecodeError)
            (log.warning if is_input else log.error)(
                "record dead-lettered",
                stage=stage,
                topic=record.topic,
                offset=record.offset,
                reason=explain(exc)[:300],
                exc_info=not is_input,
            )
            out.append(dead_letter(record, stage, deadletter_topic, explain(exc), type(exc).__name__))
    return out, rejected


async def publish_with_retry(
    broker: KafkaBroker, records: Sequence[Outgoing], *, attempts: int = 5, backoff_s: float = 0.5
) -> None:
    """Publish, retrying the whole batch with exponential backoff; re-raise after the last try.

    Re-raising makes FastStream rewind the offsets (NACK), so nothing is committed that was not
    published; the backoff keeps a broker outage from becoming a tight redelivery loop. The
    records are a whole batch's output, waited for before the next batch: ``prompt``, so no
    producer linger on any hop.
    """
    for attempt in range(1, attempts + 1):
        try:
            await publish_all(broker, records, prompt=True)
            return
        except PublishError as exc:
            if attempt == attempts:
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("publish failed, retrying", attempt=attempt, delay_s=delay, error=str(exc)[:200])
            await asyncio.sleep(delay)


async def publish_output(
    broker: KafkaBroker, records: Sequence[Outgoing], settings: Settings, metrics: Metrics | None = None
) -> None:
    """A batch's output published under the settings' retry policy (``publish_with_retry``),
    then, with ``metrics``, its dead letters counted: what every stage does with its output."""
    await publish_with_retry(
        broker, records, attempts=settings.retry_attempts, backoff_s=settings.retry_backoff_s
    )
    if metrics is not None:
        metrics.dead_lettered(records, settings.topics.deadletter)


class _DocumentedAs:
    """Validate as raw bytes (passthrough), but describe the payload as ``model``.

    Stages validate each record themselves (so one bad record is dead-lettered, not the whole
    batch); this keeps the AsyncAPI document showing the real payload schema anyway.
    """

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda value: value, json_schema_input_schema=handler.generate_schema(self.model)
        )


def raw_batch(model: type[BaseModel]) -> Any:
    """The handler annotation for a batch of raw records documented as ``model``."""
    return list[Annotated[bytes, _DocumentedAs(model)]]


_M = TypeVar("_M", bound=BaseModel)

if TYPE_CHECKING:

    class RawBatch(list[bytes], Generic[_M]):
        """To mypy, ``RawBatch[Model]`` is a list of raw bytes (what the handler receives)."""

else:

    class RawBatch:
        """``RawBatch[Model]``: the handler annotation for a batch of raw records documented as
        ``Model``, i.e. ``raw_batch(Model)``, so FastStream's AsyncAPI document shows the real
        payload schema while the handler still gets the raw bytes of each record."""

        def __class_getitem__(cls, model: type[BaseModel]) -> Any:
            return raw_batch(model)


def _utf8_headers(raw: ConsumerRecord[Any, Any]) -> ConsumerRecord[Any, Any]:
    """``raw`` with header values FastStream can decode (a copy only when one could not be)."""
    headers = raw.headers
    if not headers:
        return raw
    try:
        for _, value in headers:
            value.decode()
    except (AttributeError, UnicodeDecodeError):  # a null or non-UTF-8 value
        text = text_headers(headers)
        return dataclasses.replace(raw, headers=tuple((k, v.encode()) for k, v in text.items()))
    return raw


async def tolerant_batch_parser(
    raws: tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[Any]],
) -> Any:
    """FastStream's batch parser, made unable to fail on what a producer put in headers.

    FastStream decodes every header value as strict UTF-8 before any handler runs. One
    producer's binary header (``b"\\xff\\xfe"``) then failed the whole batch there: the handler
    never ran, nothing was dead-lettered, the rewind (which needs the parsed message) failed
    too, and the next batch's commit moved the group past the lost one. FastStream is given
    copies with readable headers instead; the message keeps the original records, so stages,
    dead letters and the rewind see the exact bytes and offsets that were consumed. Keys and
    values are never decoded here: each stage does that record by record.
    """
    try:
        message = await original(tuple(_utf8_headers(r) for r in raws))
    except Exception as exc:  # anything else FastStream trips on in headers: drop them for it
        log.error("batch headers unreadable, parsed without them", error=f"{type(exc).__name__}: {exc}"[:300])
        message = await original(tuple(dataclasses.replace(r, headers=()) for r in raws))
    message.raw_message = raws
    return message


async def _raw_bodies(message: Any) -> Any:
    """Decoder that hands the handler raw bytes: each stage validates record by record, so one
    malformed record is dead-lettered instead of failing the whole batch."""
    return message.body


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700).

Why: every record of a batch leaves a dozen container objects behind (the validated model, its
dicts and tuples, the outgoing record), so with the default the collector ran every ~60 records
and its older generations every few hundred, over every object the process had built at start
(taxonomy, classifier, FastStream's schemas). In ``bench/pipeline_bench.py`` (20 000 records, a
loaded 2-core VM) the collector's pauses were about a third of the sinks stage's time and a
sixth of the router's, ~350 and ~130 collections that found about 100 objects in all: a
record's objects are freed by reference counting as soon as its batch is done."""

_gc_settled = False


def settle_gc() -> None:
    """Tune the cyclic garbage collector for a consuming process, once per process.

    What the process built so far (imports, settings, taxonomy, models: what it keeps until it
    exits) is collected once and then frozen (``gc.freeze``: never traversed again), and the
    youngest generation waits ``GC_YOUNG_THRESHOLD`` allocations instead of 700. Reference
    counting still frees everything at once; only cycles wait longer, a few thousand objects.
    Called by ``intake311.pipeline.running`` once every stage of the process has registered
    (so what each built is frozen too) and before anything is consumed.
    """
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)


def group_options(settings: Settings) -> dict[str, Any]:
    """Consumer-group timing for every stage's consumer: what a member joining or crashing costs.

    The session timeout is the whole of it (``kafka.session_timeout_ms``, ``kafka.group_coordinator``:
    2 s on Tansu, 10 s on Kafka). Measured on Tansu 0.6.0 (one normalizer at 100/s, a second
    joining, then one of the two SIGKILLed; docs/operations.md) and left as they are:

    * The heartbeat, a quarter of the session (at least 300 ms): a member already in the group
      learns of a rebalance only from a heartbeat's answer, but 150 ms instead of 500 (2 s
      session) or 1 s instead of 2.5 s (10 s) moved no stall beyond the runs' noise; Tansu's waits
      (half a session in each JoinGroup, a whole one before an eviction) are the rest.
    * No ``group_instance_id`` (static membership): Tansu then pauses every JoinGroup and
      SyncGroup 3 s and never evicts a dead member on a static member's request; a join stalled
      contacts 23 s, a SIGKILL 14 s, and 613 were published twice.
    * FastStream's round-robin assignor: aiokafka has no cooperative protocol, so every member
      gives up all its partitions at each rebalance whatever the assignor.
    * aiokafka's ``rebalance_timeout_ms`` (the session timeout; Tansu ignores it) and
      ``max_poll_interval_ms`` (5 min) are not in play, nor is ``metadata_max_age_ms`` for the
      pattern subscription (aiokafka refreshes the metadata before every join).

    A member stopped with SIGTERM sends LeaveGroup (aiokafka, on stop), so the others need not
    wait for its eviction: 1.6 s of stall with a 2 s session (8.8 s with 10 s).
    """
    session_ms = settings.kafka.consumer_session_timeout_ms
    return {"session_timeout_ms": session_ms, "heartbeat_interval_ms": max(300, session_ms // 4)}


def batch_subscriber(
    broker: KafkaBroker,
    *topics: str,
    group_id: str,
    settings: Settings,
    pattern: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> Any:
    """The one way stages consume: batches, a consumer group, offsets committed after success
    (``intake311.commits``: at most once every ``kafka.commit_interval_ms``).

    ``NACK_ON_ERROR`` rewinds the batch when the handler raises (an outage), so nothing is
    skipped; handlers dead-letter bad input themselves, so a poison record cannot loop, and
    ``pause_on_failure`` keeps an outage's redeliveries from becoming a tight loop.
    ``tolerant_batch_parser`` makes sure FastStream itself can always parse the batch: a batch
    it cannot parse is neither handled nor rewound, and the next commit would skip it.
    """
    from faststream import AckPolicy

    commits = OffsetCommits(settings.kafka.commit_interval_ms / 1000, group=group_id)

    async def parser(
        raws: tuple[ConsumerRecord[Any, Any], ...],
        original: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[Any]],
    ) -> Any:
        message = await tolerant_batch_parser(raws, original)
        # FastStream's ack commits through message.consumer: this one records the batch's own
        # offsets and commits them once an interval (intake311/commits.py says why and how).
        message.consumer = commits.batch(message.consumer, raws)
        return message

    subscriber = broker.subscriber(
        *topics,
        pattern=pattern,
        batch=True,
        group_id=group_id,
        max_records=settings.max_batch,
        batch_timeout_ms=50,
        # The embedded broker spends the whole wait on every empty fetch, so it is each hop's
        # latency: the consumer starts with the idle wait and FetchPace shortens it while
        # records flow (intake311/fetchwait.py says why; on a cluster too: kafka.fetch_max_wait_ms).
        fetch_max_wait_ms=settings.kafka.consumer_idle_fetch_max_wait_ms,
        **group_options(settings),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=parser,
        decoder=_raw_bodies,
        listener=commits,  # commits what is pending before its partitions are revoked
        title=title,
        description=description,
    )
    attach(subscriber, commits)

    pace = FetchPace(
        subscriber,
        busy_ms=settings.kafka.consumer_fetch_max_wait_ms,
        idle_ms=settings.kafka.consumer_idle_fetch_max_wait_ms,
        idle_after_s=settings.kafka.idle_after_s,
    )

    def register(handler: Callable[..., Awaitable[None]]) -> Any:
        paused = pause_on_failure(handler, settings.retry_backoff_s)

        @functools.wraps(handler)
        async def paced(*args: Any, **kwargs: Any) -> None:
            pace.busy()
            await paused(*args, **kwargs)

        return subscriber(paced)

    return register


def pause_on_failure(
    handler: Callable[..., Awaitable[None]], backoff_s: float, max_pause_s: float = 30.0
) -> Callable[..., Awaitable[None]]:
    """Wait before letting a failed batch be rewound, longer after each failure in a row.

    A handler fails only when something it depends on is down (the broker, the case store);
    an immediate redelivery would fail the same way thousands of times a second.
    """
    failures = 0

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        try:
            await handler(*args, **kwargs)
        except Exception as exc:
            failures += 1
            pause = min(max_pause_s, backoff_s * 2 ** (failures - 1))
            log.warning(
                "batch failed, will be redelivered",
                handler=handler.__name__,
                failures_in_a_row=failures,
                pause_s=pause,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            await asyncio.sleep(pause)
            raise
        failures = 0

    return wrapped
