"""The router stage on Kafka: canonical requests in, one copy per department topic out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

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
from router.routing import Router, RoutingFields, load_interests, load_routing
from schemas.request import ServiceRequest
from schemas.taxonomy import load_taxonomy

RequestRecords = RawBatch[ServiceRequest]  # what the AsyncAPI document shows
STAGE = "router"
log = get_logger(__name__)
debug = logging.getLogger(__name__)  # the stdlib logger behind ``log``: its level decides
GROUP = "router"  # consumer group: Topics.group(GROUP)


_HEADERS: dict[str, dict[str, str]] = {}


def _department_header(department: str) -> dict[str, str]:
    """The ``x-department`` header of a copy, one dict per department (read-only: the bus copies
    headers before sending), not a new one per record. Bounded: ``assigned_department`` can be
    any slug."""
    headers = _HEADERS.get(department)
    if headers is None:
        headers = {"x-department": department}
        if len(_HEADERS) < 1024:
            _HEADERS[department] = headers
    return headers


def route_batch(records: Sequence[Record], router: Router, deadletter_topic: str) -> list[Outgoing]:
    """One ``Outgoing`` per (request, department), keyed by request; bad records dead-lettered.

    Each request's routing fields are validated once (``RoutingFields``: the sinks validate the
    whole request) and its routed JSON made once for all its copies (``Router.route_json``).
    """

    def handle(record: Record) -> list[Outgoing]:
        request = RoutingFields.model_validate_json(record.value)
        key = request.request_id
        return [
            Outgoing(topic, value, key=key, headers=_department_header(department))
            for department, topic, value in router.route_json(record.value, request)
        ]

    out, _ = process_batch(records, handle, stage=STAGE, deadletter_topic=deadletter_topic)
    return out


def build_router(settings: Settings) -> Router:
    """The router of these settings; district conditions are checked against the boundary layers.

    Without boundary files no request carries districts, so district rules cannot match yet:
    said at start (a warning, not an error, so rules can be written before the files arrive).
    """
    router = Router(
        load_routing(settings.routing_file),
        load_taxonomy(settings.taxonomy_file),
        settings.topics,
        load_interests(settings.subscriptions_file),
        layers=tuple(settings.geo.boundaries),
    )
    if router.district_layers() and not settings.geo.boundaries:
        log.warning(
            "routing matches on districts but no boundary layers are configured (geo.boundaries)",
            layers=router.district_layers(),
        )
    return router


async def register(broker: KafkaBroker, settings: Settings, stack: contextlib.AsyncExitStack) -> None:
    """Attach the router's subscriber and one documented publisher per department topic."""
    router = build_router(settings)
    topics = settings.topics
    metrics = process_metrics.current()
    routed_count = Tally(log, "requests routed")  # an info line a minute at most, while requests flow
    stack.callback(routed_count.flush)  # after the consumers stopped: the last counts
    for department in router.all_departments():
        broker.publisher(
            topics.department(department),
            schema=ServiceRequest,
            title=f"department {department}",
            description=f"Requests routed to {department}, keyed by request_id.",
        )

    @batch_subscriber(
        broker,
        topics.requests,
        group_id=settings.topics.group(GROUP),
        settings=settings,
        title="router",
        description="Canonical requests -> the topic of each department the routing table names.",
    )
    async def route_requests(records: RequestRecords) -> None:
        batch = handled_records(broker)
        out = route_batch(batch, router, topics.deadletter)
        await publish_output(broker, out, settings, metrics)
        routed = [r for r in out if "x-department" in r.headers]
        log.debug("batch routed", deliveries=len(routed), dead_lettered=len(out) - len(routed))
        routed_count.add(requests=len(batch), deliveries=len(routed), dead_lettered=len(out) - len(routed))
        if debug.isEnabledFor(logging.DEBUG):  # checked once: a disabled line still cost 3 µs
            for record in routed:
                log.debug("request routed", request_id=record.key, department=record.headers["x-department"])
