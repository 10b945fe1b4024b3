"""The Kafka bus: one way to build a broker, create topics and publish many records at once."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from intake311.logging import get_logger
from intake311.settings import KafkaSettings

log = get_logger(__name__)


def security_for(kafka: KafkaSettings) -> BaseSecurity | None:
    """FastStream's security object for the configured protocol (None for plaintext)."""
    context = kafka.ssl_context()
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError("SASL needs kafka.sasl_username and kafka.sasl_password")
        cls = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}[
            kafka.sasl_mechanism
        ]
        return cls(
            kafka.sasl_username,
            kafka.sasl_password.get_secret_value(),
            ssl_context=context,
            use_ssl=kafka.security_protocol == "SASL_SSL",
        )
    if kafka.security_protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None


class KafkaBus(KafkaBroker):
    """A FastStream ``KafkaBroker`` whose subscribers join their consumer groups concurrently.

    FastStream starts subscribers one after another and each waits for its group's first
    assignment (about a second on the embedded broker, several on a cluster); a sinks process
    has one group per (department, sink), so sequential joins made start-up take many seconds.
    """

    async def start(self) -> None:
        await self.connect()
        await asyncio.gather(*(subscriber.start() for subscriber in self.subscribers))
        for publisher in self.publishers:
            await publisher.start()
        self.running = True


def make_broker(kafka: KafkaSettings, bootstrap: Sequence[str], **options: object) -> KafkaBus:
    """A FastStream Kafka broker for this cluster.

    ``acks="all"`` without idempotence: the embedded Tansu build cannot give producer ids, and
    every consumer here dedupes on stable ids anyway.
    """
    return KafkaBus(
        list(bootstrap),
        acks="all",
        enable_idempotence=False,
        linger_ms=kafka.linger_ms,
        client_id=kafka.client_id,
        security=security_for(kafka),
        # FastStream logs every message at its log_level: keep that at DEBUG, through our handler.
        logger=logging.getLogger("intake311.faststream"),
        log_level=logging.DEBUG,
        **options,  # type: ignore[arg-type]
    )


def _admin(kafka: KafkaSettings, bootstrap: Sequence[str], **options: Any) -> AIOKafkaAdminClient:
    security = security_for(kafka)
    extra: dict[str, object] = {}
    if security is not None:
        from faststream.kafka.security import parse_security

        extra = parse_security(security)
    return AIOKafkaAdminClient(
        bootstrap_servers=list(bootstrap), client_id=kafka.client_id, **extra, **options
    )


async def ensure_topics(kafka: KafkaSettings, bootstrap: Sequence[str], names: Iterable[str]) -> None:
    """Create missing topics with the configured partitions; existing ones are left alone."""
    admin = _admin(kafka, bootstrap)
    await admin.start()
    try:
        await _create_missing(admin, kafka, names)
    finally:
        await admin.close()


async def _create_missing(admin: AIOKafkaAdminClient, kafka: KafkaSettings, names: Iterable[str]) -> None:
    existing = set(await admin.list_topics())
    missing = sorted(set(names) - existing)
    if missing:
        topics = [NewTopic(n, kafka.partitions, kafka.replication_factor) for n in missing]
        with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
            await admin.create_topics(topics)
        log.info("topics created", topics=missing)


class BusWatch:
    """Notices that the broker lost its topics (a restarted in-memory broker) and recovers.

    Why: aiokafka clients reconnect to a restarted broker by themselves, but a broker that came
    back *empty* has no topics, no consumer groups and logs that restart at offset 0. Consumers
    keep fetching at their old positions and never see new records, and a produce silently
    auto-creates a one-partition topic nobody consumes yet, so a ticket could be promised for a
    record no stage will read. Connection state cannot tell a lost broker from a restarted one,
    so the watch uses the broker's own content: an *epoch marker* topic
    (``<prefix>.epoch.<random>``) that only ``ensure_topics`` creates, after every other topic.
    Nothing produces to it or subscribes to it, so it is never auto-created: while the marker
    this process adopted exists, the topics it was created with exist too. When it disappears
    the watch refuses new promises (``ready`` cleared), recreates the topics, adopts the new
    epoch and calls ``rejoin`` (fresh consumers: no committed offsets, so they read the new logs
    from the start), then sets ``ready`` again. Several processes share one epoch: each adopts
    the oldest-named marker present, so whoever recreates the topics first, all of them notice.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap: Sequence[str],
        names: Iterable[str],
        *,
        prefix: str,
        rejoin: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.kafka = kafka
        self.bootstrap = list(bootstrap)
        self.names = sorted(set(names))
        self.marker_prefix = f"{prefix}.epoch."
        self.rejoin = rejoin
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.epoch: str | None = None
        self.ready = asyncio.Event()
        self.recoveries = 0
        self._poke = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def establish(self) -> None:
        """Create the topics and adopt (or create) the epoch; raises if the broker is unreachable."""
        admin = await self._client()
        await asyncio.wait_for(_create_missing(admin, self.kafka, self.names), self.timeout_s * 2)
        markers = await self._markers()
        if not markers:
            # Created last: a marker means every topic of the list before it exists.
            marker = f"{self.marker_prefix}{uuid.uuid4().hex[:12]}"
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics([NewTopic(marker, 1, 1)]), self.timeout_s)
            markers = await self._markers()
        if not markers:
            raise PublishError("the epoch marker topic was not created")
        self.epoch = markers[0]
        self.ready.set()

    async def establish_patiently(self, *, first_wait_s: float = 1.0, max_wait_s: float = 30.0) -> None:
        """``establish``, retried with capped exponential backoff until the broker answers.

        Why: under compose or Kubernetes the stages and the broker start together, and a stage
        that exited on its first refused connection would run only thanks to a restart policy
        (and flap until the broker is up). Only "cannot reach it" is retried; anything else (a
        refused login, a bad setting) is raised at once, because waiting will not fix it.
        """
        wait = first_wait_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.establish()
            except (KafkaConnectionError, TimeoutError, OSError) as exc:
                await self._reset_client()
                log.warning(
                    "broker not reachable yet, retrying",
                    attempt=attempt,
                    retry_in_s=round(wait, 1),
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                await asyncio.sleep(wait)
                wait = min(max_wait_s, wait * 2)
                continue
            if attempt > 1:
                log.info("broker reachable", attempts=attempt)
            return

    async def start(self) -> None:
        """``establish`` then ``watch``."""
        await self.establish()
        await self.watch()

    async def watch(self) -> None:
        """Check the broker in the background until ``stop`` (after ``establish``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="intake311-bus-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    def poke(self) -> None:
        """Check now instead of at the next interval (a publisher saw something wrong)."""
        self._poke.set()

    async def confirm(self, timeout_s: float | None = None) -> bool:
        """True if the epoch this process works in still exists on the broker right now."""
        try:
            markers = await asyncio.wait_for(self._markers(), timeout_s or self.timeout_s)
        except Exception:
            return False
        return self.epoch is not None and self.epoch in markers

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = _admin(self.kafka, self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
            try:
                await asyncio.wait_for(admin.start(), self.timeout_s)
            except BaseException:
                with contextlib.suppress(Exception):  # a half-started client holds sockets and tasks
                    await admin.close()
                raise
            self._admin = admin
        return self._admin

    async def _markers(self) -> list[str]:
        admin = await self._client()
        # Metadata for *all* topics: asking for the marker by name could auto-create it.
        topics = await asyncio.wait_for(admin.list_topics(), self.timeout_s)
        return sorted(t for t in topics if t.startswith(self.marker_prefix))

    async def _reset_client(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval_s)
            self._poke.clear()
            try:
                markers = await self._markers()
            except Exception as exc:
                # Unreachable or frozen: nothing can be promised until it answers again.
                if self.ready.is_set():
                    log.warning("broker not answering; refusing new contacts", error=type(exc).__name__)
                self.ready.clear()
                await self._reset_client()
                continue
            if self.epoch in markers:
                if not self.ready.is_set():
                    log.info("broker answering again", epoch=self.epoch)
                self.ready.set()
                continue
            self.ready.clear()
            log.warning(
                "broker lost its topics (restarted empty?); recreating and rejoining", epoch=self.epoch
            )
            try:
                await self.establish()
                self.ready.clear()  # not until the consumers are back
                if self.rejoin is not None:
                    await self.rejoin()
            except Exception as exc:
                log.warning("recovery failed; will retry", error=f"{type(exc).__name__}: {exc}"[:300])
                await self._reset_client()
                continue
            self.recoveries += 1
            self.ready.set()
            log.info("recovered from a lost broker", epoch=self.epoch, recoveries=self.recoveries)


@dataclass(frozen=True)
class Outgoing:
    """One record to publish: bytes in, bytes out, so every stage serialises exactly once."""

    topic: str
    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class PublishError(RuntimeError):
    """The broker did not acknowledge a record."""


class NotSent(PublishError):
    """Nothing was handed to the producer: the record is certainly not on the bus."""


class OutcomeUnknown(PublishError):
    """The record was handed to the producer but not acknowledged in time.

    Why a type of its own: aiokafka cannot take back a record once it is buffered or on the
    wire (a produce request already in the broker's socket buffer is processed whenever the
    broker resumes), so "not created" would be a lie. Callers must say "may still be created"
    and make a retry land on the same stable id.
    """


async def publish_all(broker: KafkaBroker, records: Sequence[Outgoing]) -> None:
    """Send every record, then wait for all acknowledgements.

    Pipelining is what makes batches fast: one publish round trip per batch instead of per
    record. Raises ``PublishError`` if any record was not acknowledged; callers retry the whole
    batch, which is safe because every consumer dedupes on stable ids.

    Tracing needs nothing here: ``broker.publish`` runs the broker's middlewares, and the telemetry
    one (intake311/tracing.py) adds the current span's ``traceparent`` to each record's headers.
    """
    if not records:
        return
    try:
        futures = [
            await broker.publish(
                r.value,
                r.topic,
                key=r.key.encode() if r.key is not None else None,
                headers={"content-type": "application/json", **r.headers},
                no_confirm=True,
            )
            for r in records
        ]
        # FastStream's in-memory test broker delivers inline and returns no future.
        await asyncio.gather(*(f for f in futures if inspect.isawaitable(f)))
    except Exception as exc:
        raise PublishError(f"broker did not acknowledge {len(records)} record(s): {exc}") from exc
