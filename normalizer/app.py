"""The normalizer stage on Kafka: every raw-contact topic in, canonical requests out.

Runs as consumer group ``intake311.normalizer``: start more processes to scale out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from faststream.kafka import KafkaBroker

from intake311 import metrics as process_metrics
from intake311.bus import Outgoing
from intake311.logging import Tally, get_logger
from intake311.settings import Settings
from intake311.stage import (
    RawBatch,
    Record,
    batch_subscriber,
    handled_records,
    process_batch,
    publish_output,
)
from normalizer.incidents import IncidentDesk, Outcome
from normalizer.normalize import Locator, Normalizer
from normalizer.state import Retention, Snapshot, StateStore, merge_areas
from schemas.contact import ACTION, RawContact
from schemas.emergency import rules_for
from schemas.language import detector
from schemas.request import ServiceRequest
from schemas.status import StatusChange
from schemas.taxonomy import Taxonomy, load_taxonomy
from schemas.topics import Topics

ContactRecords = RawBatch[RawContact]  # what the AsyncAPI document shows
StatusRecords = RawBatch[StatusChange]
STAGE = "normalizer"
log = get_logger(__name__)
GROUP = "normalizer"  # consumer groups: Topics.group(GROUP) -> "intake311.normalizer"
STATUS_GROUP = "normalizer.status"


@dataclass(frozen=True)
class Prepared:
    """A contact parsed and, when it opens a request, normalized before the state lock is taken."""

    contact: RawContact
    request: ServiceRequest | None


def prepare(
    records: Sequence[Record], normalizer: Normalizer, topics: Topics
) -> tuple[dict[int, Prepared], list[Outgoing]]:
    """The stateless half of a batch (parse, classify, geocode): no lock is held for it.

    Returns the prepared contacts by record index and the dead letters of records that are not
    contacts at all.
    """
    prepared: dict[int, Prepared] = {}
    index = {id(r): i for i, r in enumerate(records)}

    def handle(record: Record) -> list[Outgoing]:
        contact = RawContact.model_validate_json(record.value)
        # Continuations need the stored request; everything else can be normalized now.
        request = None if contact.continues or contact.metadata.get(ACTION) else normalizer.normalize(contact)
        prepared[index[id(record)]] = Prepared(contact, request)
        return []

    letters, _ = process_batch(records, handle, stage=STAGE, deadletter_topic=topics.deadletter)
    return prepared, letters


def decide(
    records: Sequence[Record],
    prepared: dict[int, Prepared],
    desk: IncidentDesk,
    snap: Snapshot,
    topics: Topics,
) -> list[Outgoing]:
    """The stateful half, under the lock: follow-ups, incidents, splits; in record order."""
    areas = [(p.request, a) for p in prepared.values() if p.request and (a := desk.areas_for(p.request))]
    snap.prefetch(
        request_ids=[p.contact.request_id for p in prepared.values()],
        areas=merge_areas(a for _, a in areas),
    )
    # The first requests of the incidents each report could join: one query, not one per report.
    snap.prefetch(request_ids=[i.incident_id for r, a in areas for i in desk.near(r, snap, area=a)])
    index = {id(r): i for i, r in enumerate(records)}
    chosen = [r for i, r in enumerate(records) if i in prepared]

    def handle(record: Record) -> list[Outgoing]:
        item = prepared[index[id(record)]]
        return outgoing(desk.handle(item.contact, snap, item.request), topics, snap.json_of)

    out, _ = process_batch(chosen, handle, stage=STAGE, deadletter_topic=topics.deadletter)
    return out


def normalize_batch(
    records: Sequence[Record], desk: IncidentDesk, snap: Snapshot, topics: Topics
) -> list[Outgoing]:
    """A whole batch against one snapshot (tests and benchmarks; the stage splits it around the lock)."""
    prepared, letters = prepare(records, desk.normalizer, topics)
    return letters + decide(records, prepared, desk, snap, topics)


def status_batch(
    records: Sequence[Record], desk: IncidentDesk, snap: Snapshot, topics: Topics
) -> list[Outgoing]:
    """Status changes -> request and incident state; an incident's close closes its reports."""
    # Parsed once up front so the batch's requests, incidents and their reports are loaded in
    # a few queries, not three per change; a record that does not parse is parsed again in
    # ``handle`` and dead-lettered there, in its place, as before.
    changes: dict[int, StatusChange] = {}
    for i, record in enumerate(records):
        with contextlib.suppress(Exception):
            changes[i] = StatusChange.model_validate_json(record.value)
    ids = [c.request_id for c in changes.values()]
    snap.prefetch(request_ids=ids, incident_ids=ids)
    snap.prefetch(request_ids=[m for i in ids if (x := snap.incident(i)) is not None for m in x.members])
    index = {id(r): i for i, r in enumerate(records)}

    def handle(record: Record) -> list[Outgoing]:
        change = changes.get(index[id(record)]) or StatusChange.model_validate_json(record.value)
        return outgoing(desk.handle_status(change, snap), topics, snap.json_of)

    out, _ = process_batch(records, handle, stage=STAGE, deadletter_topic=topics.deadletter)
    return out


def outgoing(outcome: Outcome, topics: Topics, dump: Callable[[ServiceRequest], bytes]) -> list[Outgoing]:
    """Kafka records for an outcome, each keyed by its request so its versions stay in order.

    ``dump``: the snapshot's serialiser, so a request written to the store and to Kafka is
    serialised once."""
    out = [Outgoing(topics.requests, dump(r), key=r.request_id) for r in outcome.requests]
    out += [
        Outgoing(topics.outbound(m.channel), m.model_dump_json().encode(), key=m.request_id)
        for m in outcome.messages
    ]
    out += [Outgoing(topics.status, c.model_dump_json().encode(), key=c.request_id) for c in outcome.status]
    return out


def state_retention(settings: Settings, taxonomy: Taxonomy | None = None) -> Retention:
    """``settings.retention`` for the state store; a closed incident is also kept for its
    service's incident window plus the cool-off in the taxonomy (late reports still match it)."""
    tax = taxonomy or load_taxonomy(settings.taxonomy_file)
    cooloff_h = tax.incidents.cooloff_hours
    horizons = {code: (tax.incident_rule(code).window_hours + cooloff_h) * 3600 for code in tax.codes}
    r = settings.retention
    return Retention(
        keep_s=r.state_s,
        # A service the taxonomy does not know (renamed since) keeps the longest horizon.
        horizon_s=max([*horizons.values(), tax.incidents.window_hours * 3600 + cooloff_h * 3600]),
        every_s=r.prune_every_s,
        batch=r.prune_batch,
        service_horizon_s=horizons,
    )


def open_state(settings: Settings) -> StateStore:
    """The shared state store: PostgreSQL when a DSN is configured, else SQLite (one host)."""
    retention = state_retention(settings)
    dsn = settings.incidents.state_dsn or settings.case_store_dsn
    if dsn is not None:
        return StateStore.postgres(dsn.get_secret_value(), retention=retention)
    if not settings.kafka.embedded:
        log.warning(
            "normalizer state is in a local SQLite file: normalizers on other hosts do not see it "
            "(run them all on this host, with this data_dir), or set INTAKE311_INCIDENTS__STATE_DSN "
            "(or INTAKE311_CASE_STORE_DSN) so every host shares it"
        )
    return StateStore.sqlite(settings.data_dir / "normalizer" / "state.sqlite3", retention=retention)


def build_locator(settings: Settings) -> Locator | None:
    """The geocoder and districts from ``settings.geo`` (None: coordinates as given only)."""
    geo = settings.geo
    if geo.address_points is None and not geo.boundaries and geo.remote is None:
        return None
    from normalizer.geo import Geo

    return Geo.from_settings(geo)


def build_normalizer(settings: Settings, *, locate: bool = True) -> Normalizer:
    """The normalizer the stage runs (and ``intake311 classify`` tries): taxonomy, model, rules."""
    return Normalizer.from_taxonomy(
        load_taxonomy(settings.taxonomy_file),
        build_locator(settings) if locate else None,
        settings.classifier_model,
        emergencies=rules_for(settings.emergency_rules_file),
        languages=detector(settings.languages),
    )


def build_desk(settings: Settings) -> IncidentDesk:
    return IncidentDesk(build_normalizer(settings), reply_channels=frozenset(settings.channels))


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Attach the normalizer's subscribers and its documented publishers to ``broker``."""
    topics = settings.topics
    metrics = process_metrics.current()
    desk = build_desk(settings)
    normalized = Tally(log, "contacts normalized")  # an info line a minute at most, while contacts flow
    stack.callback(normalized.flush)  # after the consumers stopped: the last counts
    store = open_state(settings)
    stack.callback(store.close)
    broker.publisher(
        topics.requests,
        schema=ServiceRequest,
        title="requests",
        description="Canonical service requests, keyed by request_id (the ticket).",
    )

    @batch_subscriber(
        broker,
        pattern=topics.contacts_pattern,
        group_id=topics.group(GROUP),
        settings=settings,
        title="normalizer",
        description="Raw contacts from every channel (RawContact JSON) -> one ServiceRequest each, "
        "grouped into incidents; 'already reported' messages to residents.",
    )
    async def normalize_contacts(records: ContactRecords) -> None:
        batch = handled_records(broker)

        def work() -> tuple[dict[int, Prepared], list[Outgoing], list[Outgoing]]:
            prepared, letters = prepare(batch, desk.normalizer, topics)
            return prepared, letters, store.run(lambda snap: decide(batch, prepared, desk, snap, topics))

        # Both halves off the event loop, in one thread hop: normalizing a batch of real reports
        # is a few hundred ms of CPU (1 ms a report with geocoding), and on the loop it held
        # the consumer's heartbeats (a 2 s session on Tansu: a slow batch on a loaded machine
        # was a member evicted), its next fetch, and in a one-process pipeline (``intake311
        # up``) every other stage and the web stage's residents for as long.
        prepared, letters, decided = await asyncio.to_thread(work)
        out = letters + decided
        await publish_output(broker, out, settings, metrics)
        for item in prepared.values():  # counted once published (a rewound batch counts again)
            metrics.contact(item.contact.channel)
            if item.request is not None:
                metrics.request_opened(item.request)
        requests = sum(1 for o in out if o.topic == topics.requests)
        log.debug("batch normalized", contacts=len(batch), requests=requests, dead_lettered=len(letters))
        normalized.add(contacts=len(batch), requests=requests, dead_lettered=len(letters))
        for o in out:
            # The audit trail from contact to ticket, ids only (debug: one line per event).
            log.debug("event published", topic=o.topic, key=o.key)

    @batch_subscriber(
        broker,
        topics.status,
        group_id=topics.group(STATUS_GROUP),
        settings=settings,
        title="normalizer status",
        description="Status changes -> the normalizer's request and incident state; closing an "
        "incident closes each of its reports (StatusChange per report).",
    )
    async def track_status(records: StatusRecords) -> None:
        batch = handled_records(broker)
        out = await asyncio.to_thread(store.run, lambda snap: status_batch(batch, desk, snap, topics))
        await publish_output(broker, out, settings, metrics)
