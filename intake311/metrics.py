"""Prometheus metrics of one process: what the city's intake did, in numbers an alert can use.

One ``Metrics`` object per process (per ``pipeline.running``), each with its own
``CollectorRegistry``: nothing is registered in prometheus_client's global registry, so two
pipelines in one test session never share a counter, and a test can build a ``Metrics`` of its
own and read it back. Stages get the process's object through ``current()`` while they register
(``pipeline.running`` installs it around the ``register`` calls); code that runs without one
(unit tests, ``intake311 classify``) counts into a throwaway registry nobody scrapes.

Every label has a bounded set of values: a label value comes from configuration (channel,
department, sink, district layer values, emergency rule names, service codes of the taxonomy) or
from code (exception type names), never from what a resident typed, and each label still stops
taking new values after ``MAX_LABEL_VALUES`` (further ones are counted as ``other``), so a bug
or a hostile producer cannot blow up the time series count of the city's Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from intake311.bus import BusWatch, Outgoing
    from schemas.request import ServiceRequest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "current", "installed"]

MAX_LABEL_VALUES = 100
OTHER = "other"
# Delivery latency runs from seconds (a webhook) to hours (a sink that was down): buckets for both.
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_ERROR_CLASS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,79}$")
DELIVERY_OUTCOMES = ("delivered", "refused", "held", "expired")


class BoundedLabel:
    """The values one label may take: the first ``limit`` distinct ones, then ``other``.

    Why not trust the callers: a label value that slips through from input (a service code an
    Open311 client invented, an exception class built at runtime) would add a time series per
    distinct value, forever, in every Prometheus that scrapes the process.
    """

    def __init__(self, limit: int = MAX_LABEL_VALUES, allowed: Iterable[str] | None = None) -> None:
        self.limit = limit
        self.allowed = frozenset(allowed) if allowed is not None else None
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if self.allowed is not None and value and value not in self.allowed:
            return OTHER
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


def error_class(error: str | None) -> str:
    """A dead letter's reason class: an exception type name, or ``other`` for anything else.

    Dead-letter reasons are free text (field names, URLs, receiver answers); only the error type
    is a label, the text stays in the letter itself.
    """
    if error and _ERROR_CLASS.match(error):
        return error
    return OTHER


class Metrics:
    """The process's registry and every intake311 metric in it (see docs/operations.md)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        district_layer: str | None = None,
        service_codes: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.district_layer = district_layer
        r = self.registry
        self.contacts = Counter(
            "intake311_contacts", "Contacts the normalizer took in, by channel", ["channel"], registry=r
        )
        self.requests = Counter(
            "intake311_requests",
            "Service requests opened, by service code and district (the configured layer's value; "
            "empty when no layer is configured or the request has no district)",
            ["service_code", "district"],
            registry=r,
        )
        self.triaged = Counter(
            "intake311_requests_triaged", "Requests opened for a person to classify (triage)", registry=r
        )
        self.emergencies = Counter(
            "intake311_emergencies",
            "Requests whose text describes an emergency, by rule",
            ["kind"],
            registry=r,
        )
        self.dead_letters = Counter(
            "intake311_dead_letters",
            "Records sent to the dead-letter topic, by stage and error class (exception type)",
            ["stage", "error"],
            registry=r,
        )
        self.deliveries = Counter(
            "intake311_deliveries",
            "Delivery attempts by department, sink and outcome: delivered, refused (dead-lettered), "
            "held (sink down: left on the topic; each probe counts), expired (held past retry_timeout_s)",
            ["department", "sink", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "intake311_delivery_latency_seconds",
            "From a request's requested_datetime to its delivery by a sink",
            ["department", "sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "intake311_consumer_lag",
            "Records not yet consumed by this process's consumer of a group (highwater - position, "
            "summed over its assigned partitions; sampled at scrape time)",
            ["group"],
            registry=r,
        )
        self.consumer_partitions = Gauge(
            "intake311_consumer_assigned_partitions",
            "Partitions assigned to this process's consumer of a group (sampled at scrape time)",
            ["group"],
            registry=r,
        )
        self.broker_reachable = Gauge(
            "intake311_broker_reachable",
            "1 while the broker answers and still has this process's topics (BusWatch), else 0",
            registry=r,
        )
        self.broker_recoveries = Gauge(
            "intake311_broker_recoveries",
            "Times this process recreated its topics after the broker came back empty",
            registry=r,
        )
        self._channel = BoundedLabel()
        self._service = BoundedLabel(allowed=service_codes)
        self._district = BoundedLabel()
        self._kind = BoundedLabel()
        self._stage = BoundedLabel()
        self._error = BoundedLabel()
        self._department = BoundedLabel()
        self._sink = BoundedLabel()
        self._group = BoundedLabel()
        self._groups_seen: set[str] = set()

    # --- counted by the stages --------------------------------------------------------------

    def contact(self, channel: str) -> None:
        self.contacts.labels(self._channel(channel)).inc()

    def request_opened(self, request: ServiceRequest) -> None:
        """Count a new request: by service and district, and whether it needs triage or is an emergency."""
        district = request.districts.get(self.district_layer, "") if self.district_layer else ""
        self.requests.labels(self._service(request.service_code), self._district(district)).inc()
        if request.triage:
            self.triaged.inc()
        if request.emergency:
            self.emergencies.labels(self._kind(request.emergency)).inc()

    def dead_lettered(self, records: Sequence[Outgoing], deadletter_topic: str) -> None:
        """Count the dead letters among records a stage published (``stage.dead_letter`` output).

        Read back from the letter because that is the one place stage and error type are both
        known; letters are rare, so parsing them costs nothing that matters.
        """
        for record in records:
            if record.topic != deadletter_topic:
                continue
            stage = record.headers.get("x-stage", "")
            error = None
            with contextlib.suppress(ValueError, AttributeError):
                letter = json.loads(record.value)
                stage = stage or str(letter.get("stage") or "")
                error = letter.get("error")
            self.dead_letters.labels(self._stage(stage), self._error(error_class(error))).inc()

    def delivery(
        self,
        department: str,
        sink: str,
        outcome: str,
        requested: datetime | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """Count one delivery outcome; a delivered one also observes its latency since ``requested``."""
        latencies = [requested] if outcome == "delivered" and requested is not None else []
        self.delivery_batch(department, sink, {outcome: 1}, latencies, now=now)

    def delivery_batch(
        self,
        department: str,
        sink: str,
        outcomes: Mapping[str, int],
        delivered_requested: Sequence[datetime] = (),
        *,
        now: datetime | None = None,
    ) -> None:
        """``delivery`` for a whole batch: each outcome counted at once, each delivered request's
        latency observed, the label children looked up once (per record they were ~16% of the
        sinks stage's CPU)."""
        if bad := set(outcomes) - set(DELIVERY_OUTCOMES):
            raise ValueError(f"unknown delivery outcome {sorted(bad)[0]!r}; one of {DELIVERY_OUTCOMES}")
        department, sink = self._department(department), self._sink(sink)
        for outcome, n in outcomes.items():
            if n:
                self.deliveries.labels(department, sink, outcome).inc(n)
        if delivered_requested:
            at = now or datetime.now(UTC)
            latency = self.delivery_latency.labels(department, sink)
            for requested in delivered_requested:
                latency.observe(max(0.0, (at - requested).total_seconds()))

    # --- sampled when scraped ---------------------------------------------------------------

    def sample_broker(self, watch: BusWatch | None) -> None:
        if watch is None:
            return
        self.broker_reachable.set(1 if watch.ready.is_set() else 0)
        self.broker_recoveries.set(watch.recoveries)

    async def sample_consumers(self, subscribers: Iterable[Any], timeout_s: float = 0.5) -> None:
        """Lag and assigned partitions of every running consumer, from its own assignment.

        ``highwater`` is what the last fetch response said the log end is (no broker round
        trip); ``position`` is local once the consumer has one. A partition with neither yet
        (just assigned) is left out rather than waited for: a scrape must not hang on a broker.
        """
        totals: dict[str, tuple[int, int]] = {}
        pending: list[tuple[str, Awaitable[int]]] = []
        for subscriber in subscribers:
            consumer = getattr(subscriber, "consumer", None)
            group = getattr(subscriber, "group_id", None)
            if not group:
                continue
            lag, parts = totals.get(group, (0, 0))
            if consumer is not None:
                assignment = consumer.assignment()
                parts += len(assignment)
                pending += [(group, _partition_lag(consumer, tp, timeout_s)) for tp in assignment]
            totals[group] = (lag, parts)
        # Concurrently: one scrape waits at most ``timeout_s``, however many partitions lack a position.
        lags = await asyncio.gather(*(lag for _, lag in pending))
        for (group, _), lag in zip(pending, lags, strict=True):
            totals[group] = (totals[group][0] + lag, totals[group][1])
        for group, (lag, parts) in totals.items():
            label = self._group(group)
            self._groups_seen.add(label)
            self.consumer_lag.labels(label).set(lag)
            self.consumer_partitions.labels(label).set(parts)
        for gone in self._groups_seen - {self._group(g) for g in totals}:
            self.consumer_partitions.labels(gone).set(0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


async def _partition_lag(consumer: Any, tp: Any, timeout_s: float) -> int:
    highwater = consumer.highwater(tp)
    if highwater is None:
        return 0
    try:
        position = await asyncio.wait_for(consumer.position(tp), timeout_s)
    except Exception:  # revoked meanwhile, or no position yet: not a number to report
        return 0
    return max(0, int(highwater) - int(position))


_current: ContextVar[Metrics | None] = ContextVar("intake311_metrics", default=None)


def current() -> Metrics:
    """The process's metrics while stages register; outside ``installed``, a throwaway one."""
    metrics = _current.get()
    return metrics if metrics is not None else Metrics()


@contextlib.contextmanager
def installed(metrics: Metrics) -> Iterator[Metrics]:
    """Make ``metrics`` what ``current()`` returns for the stages registering inside the block.

    A block, not a setter: the previous value comes back on exit, so a pipeline started by one
    test never hands its registry to the next.
    """
    token = _current.set(metrics)
    try:
        yield metrics
    finally:
        _current.reset(token)
