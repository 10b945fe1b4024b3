"""The normalizer stage on Kafka: every raw-contact topic in, canonical requests out.

Runs as consumer group ``intake311.normalizer``: start more processes to scale out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from intake311.bus import Outgoing
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import (
    Record,
    batch_subscriber,
    process_batch,
    publish_with_retry,
    raw_batch,
    records_from,
)
from normalizer.normalize import Normalizer
from normalizer.state import RequestState
from schemas.contact import RawContact
from schemas.request import ServiceRequest
from schemas.taxonomy import load_taxonomy
from schemas.topics import Topics

ContactRecords = raw_batch(RawContact)  # what the AsyncAPI document shows
STAGE = "normalizer"
log = get_logger(__name__)
GROUP_ID = "intake311.normalizer"


def normalize_batch(
    records: Sequence[Record], normalizer: Normalizer, state: RequestState, topics: Topics
) -> tuple[list[Outgoing], list[ServiceRequest]]:
    """Normalize a batch in order; a follow-up later in the batch sees the earlier contact."""
    known = state.get_many({_ticket_hint(r) for r in records} - {None})  # type: ignore[arg-type]
    emitted: list[ServiceRequest] = []

    def handle(record: Record) -> list[Outgoing]:
        contact = RawContact.model_validate_json(record.value)
        request = normalizer.normalize(contact, known.get(contact.request_id))
        known[request.request_id] = request
        emitted.append(request)
        return [Outgoing(topics.requests, request.model_dump_json().encode(), key=request.request_id)]

    out, _ = process_batch(records, handle, stage=STAGE, deadletter_topic=topics.deadletter)
    return out, emitted


def _ticket_hint(record: Record) -> str | None:
    # Contacts are keyed by ticket, so the state lookup for a batch is one query.
    return record.key.decode(errors="replace") if record.key else None


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Attach the normalizer's subscriber and its documented publishers to ``broker``."""
    topics = settings.topics
    normalizer = Normalizer.from_taxonomy(load_taxonomy(settings.taxonomy_file))
    state = RequestState(settings.data_dir / "normalizer" / "requests.sqlite3")
    stack.callback(state.close)
    broker.publisher(
        topics.requests,
        schema=ServiceRequest,
        title="requests",
        description="Canonical service requests, keyed by request_id (the ticket).",
    )

    @batch_subscriber(
        broker,
        pattern=topics.contacts_pattern,
        group_id=GROUP_ID,
        settings=settings,
        title="normalizer",
        description="Raw contacts from every channel (RawContact JSON) -> one ServiceRequest each.",
    )
    async def normalize_contacts(records: ContactRecords, msg: KafkaMessage) -> None:
        out, emitted = normalize_batch(records_from(msg.raw_message), normalizer, state, topics)
        await publish_with_retry(
            broker, out, attempts=settings.retry_attempts, backoff_s=settings.retry_backoff_s
        )
        await asyncio.to_thread(state.put_many, emitted)
        log.info("batch normalized", requests=len(emitted), dead_lettered=len(out) - len(emitted))
        for request in emitted:
            # The audit trail from contact to ticket, ids only (debug: one line per request).
            log.debug(
                "request normalized",
                request_id=request.request_id,
                contact_id=request.source_contact_ids[-1],
                service_code=request.service_code,
                confidence=request.confidence,
                triage=request.triage,
            )
