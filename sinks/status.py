"""Status changes on the department side: recorded in the case store, told to the resident.

One consumer group (``intake311.casestore.status``) records every ``StatusChange`` in the case
store and, for each change that is the request's current state, queues one message to the
resident on the channel they used (``intake311.outbound.<channel>``). The message id is derived
from the request and the state, so a replay (or a double click) re-queues the same message and
the channel sends it once. Each queued message is also recorded in the request's history (a
``message`` event, ``CaseStore.record_message``, once per message id), so an operator sees what
the resident was told.

A second consumer group (``intake311.casestore.external``) records where a request is known in
the city's own systems (``ExternalRef`` on ``intake311.external-refs``, from the ``open311``
sink): ``CaseStore.record_external``, once per event id, and nothing to the resident. A group of
its own, not a second topic of the status group: the AsyncAPI document then shows each topic's
own payload, and neither kind of record waits behind a batch of the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from faststream.kafka import KafkaBroker

from intake311 import metrics as process_metrics
from intake311.bus import Outgoing
from intake311.logging import get_logger
from intake311.settings import Settings
from intake311.stage import (
    RawBatch,
    Record,
    batch_subscriber,
    dead_letter,
    explain,
    handled_records,
    publish_output,
)
from schemas.external import ExternalRef
from schemas.messages import render, resolve_language, service_name
from schemas.outbound import MessageKind, OutboundMessage, outbound_message_id
from schemas.status import StatusChange
from schemas.topics import Topics
from sinks.postgres.store import Case, CaseStore

StatusRecords = RawBatch[StatusChange]  # what the AsyncAPI document shows
ExternalRecords = RawBatch[ExternalRef]
STAGE = "status"
GROUP = "casestore.status"  # consumer group: Topics.group(GROUP)
EXTERNAL_GROUP = "casestore.external"
log = get_logger(__name__)

# Public channels get no staff notes: a note may name a person or a place.
PUBLIC_CHANNELS = frozenset({"x", "mastodon"})


def notification_for(case: Case, change: StatusChange) -> OutboundMessage | None:
    """The message telling the resident about ``change``, or None when we cannot reach them."""
    reply = case.reply or {}
    channel, address = reply.get("channel"), reply.get("address")
    if not channel or not address:
        return None
    language = resolve_language(str(reply.get("language") or case.language or ""))
    notes = ""
    if change.notes and channel not in PUBLIC_CHANNELS:
        notes = render("status.note", language, note=change.notes.strip()[:300])
    service = service_name(case.service_code, language, case.service_name)
    text = render(
        f"status.{change.state.value}",
        language,
        ticket=case.request_id,
        service=service.lower() if language == "en" else service,  # "your pothole report"
        agency=(case.agency_responsible or render("status.the_city", language)).replace("-", " "),
        notes=notes,
    )
    return OutboundMessage(
        # Keyed by state, not by event: a double click on "Close" tells the resident once.
        message_id=outbound_message_id(channel, address, "status", case.request_id, change.state.value),
        request_id=case.request_id,
        channel=channel,
        to=address,
        thread=reply.get("thread"),
        language=language,
        kind=MessageKind.STATUS,
        subject=render("status.subject", language, ticket=case.request_id),
        text=text,
        created_at=change.at,
    )


async def apply_status_batch(records: Sequence[Record], store: CaseStore, topics: Topics) -> list[Outgoing]:
    """Record each change; queue the resident's message for changes that are now current."""
    out: list[Outgoing] = []
    for record in records:
        try:
            change = StatusChange.model_validate_json(record.value)
            changed = await store.record_status(
                change.request_id, change.state, change.notes, change.at, change.source, change.event_id
            )
        except (ValueError, LookupError) as exc:
            out.append(dead_letter(record, STAGE, topics.deadletter, explain(exc), type(exc).__name__))
            continue
        case = await store.get_case(change.request_id)
        # A replay finds the change already recorded (changed is False) but still current: queue
        # the same message again, in case the first attempt died before publishing it.
        if case is None or (not changed and case.state != change.state):
            continue
        message = notification_for(case, change)
        if message is not None:
            # Before publishing: if the publish fails the batch is retried and this is a duplicate.
            await store.record_message(message, source=f"outbound:{message.channel}")
            log.info(
                "resident notified",
                request_id=case.request_id,
                channel=message.channel,
                state=change.state.value,
            )
            out.append(
                Outgoing(
                    topics.outbound(message.channel),
                    message.model_dump_json().encode(),
                    key=message.request_id,
                )
            )
    return out


async def apply_external_batch(records: Sequence[Record], store: CaseStore, topics: Topics) -> list[Outgoing]:
    """Record each ``ExternalRef`` on its request; the dead letters of what is not one."""
    out: list[Outgoing] = []
    for record in records:
        try:
            ref = ExternalRef.model_validate_json(record.value)
        except ValueError as exc:
            out.append(dead_letter(record, STAGE, topics.deadletter, explain(exc), type(exc).__name__))
            continue
        if await store.record_external(ref):
            log.info(
                "external id recorded",
                request_id=ref.request_id,
                system=ref.system,
                external_id=ref.external_id,
            )
    return out


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Attach the status consumer (needs ``settings.case_store_dsn``)."""
    if settings.case_store_dsn is None:
        return
    store = await stack.enter_async_context(CaseStore(settings.case_store_dsn.get_secret_value()))
    topics = settings.topics
    metrics = process_metrics.current()

    @batch_subscriber(
        broker,
        topics.status,
        group_id=topics.group(GROUP),
        settings=settings,
        title="case store status",
        description="Status changes -> case store history -> one message to the resident per change.",
    )
    async def record_changes(records: StatusRecords) -> None:
        out = await apply_status_batch(handled_records(broker), store, topics)
        await publish_output(broker, out, settings, metrics)

    @batch_subscriber(
        broker,
        topics.external_refs,
        group_id=topics.group(EXTERNAL_GROUP),
        settings=settings,
        title="case store external ids",
        description="Ids the city's own systems gave our requests -> case store; nothing to the resident.",
    )
    async def record_external_ids(records: ExternalRecords) -> None:
        out = await apply_external_batch(handled_records(broker), store, topics)
        await publish_output(broker, out, settings, metrics)
