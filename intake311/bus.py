"""The Kafka bus: one way to build a broker, create topics and publish many records at once."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
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
        linger_ms=5,  # lets pipelined sends from one batch share a produce request
        client_id=kafka.client_id,
        security=security_for(kafka),
        # FastStream logs every message at its log_level: keep that at DEBUG, through our handler.
        logger=logging.getLogger("intake311.faststream"),
        log_level=logging.DEBUG,
        **options,  # type: ignore[arg-type]
    )


async def ensure_topics(kafka: KafkaSettings, bootstrap: Sequence[str], names: Iterable[str]) -> None:
    """Create missing topics with the configured partitions; existing ones are left alone."""
    security = security_for(kafka)
    extra: dict[str, object] = {}
    if security is not None:
        from faststream.kafka.security import parse_security

        extra = parse_security(security)
    admin = AIOKafkaAdminClient(bootstrap_servers=list(bootstrap), client_id=kafka.client_id, **extra)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(set(names) - existing)
        if missing:
            topics = [NewTopic(n, kafka.partitions, kafka.replication_factor) for n in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(topics)
            log.info("topics created", topics=missing)
    finally:
        await admin.close()


@dataclass(frozen=True)
class Outgoing:
    """One record to publish: bytes in, bytes out, so every stage serialises exactly once."""

    topic: str
    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class PublishError(RuntimeError):
    """The broker did not acknowledge a record."""


async def publish_all(broker: KafkaBroker, records: Sequence[Outgoing]) -> None:
    """Send every record, then wait for all acknowledgements.

    Pipelining is what makes batches fast: one publish round trip per batch instead of per
    record. Raises ``PublishError`` if any record was not acknowledged; callers retry the whole
    batch, which is safe because every consumer dedupes on stable ids.
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
