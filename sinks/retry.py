"""The one retry policy of the sinks stage: retry in-process, then wait out an outage on the topic.

A delivery is tried a few times in-process (doubling, capped, jittered backoff; the receiver's
``Retry-After`` honoured). What the receiver refuses (``retryable=False``: a 4xx other than
408/425/429, Slack's permanent errors, an SMTP 5xx) is reported at once and the consumer
dead-letters it. What may pass (connection refused, a 503, a timeout) means the sink is down:
the rest of the batch is not attempted and the consumer leaves it on the topic
(``SinkUnavailable``: the batch is rewound, not committed, and redelivered after
``intake311.stage.pause_on_failure``'s capped exponential pause), as Kafka Connect does with
``errors.retry.timeout``. Each redelivery probes the sink with one try until it answers, then
the backlog goes out in order. Only a sink's ``retry_timeout_s`` (None: wait forever) turns an
outage into dead letters ("sink down for N s"). Dead-lettering everything that arrived during
an outage, as a circuit breaker did here, left 649 of 671 requests for a manual replay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from intake311.logging import get_logger
from schemas.request import ServiceRequest
from sinks.base import BatchSink, Delivery, DeliveryError, Sink

log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[object]]

MAX_BACKOFF_S = 30.0
JITTER = 0.1  # up to +10%: spreads retries of many consumers hitting one receiver


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one delivery ended. ``reason``/``error`` are set when it was not delivered.

    ``error`` is the dead letter's error code: ``DeliveryError`` or the unexpected exception's
    type name. ``retryable`` is False when the sink said retrying cannot help. ``unexpected``:
    the sink raised something other than ``DeliveryError`` (a bug, not an outage).
    """

    delivered: bool
    attempts: int
    reason: str | None = None
    error: str | None = None
    retryable: bool = True
    unexpected: bool = False

    @property
    def held(self) -> bool:
        """The sink said it may pass (it is down): the request waits on the topic for it.

        Not for an unexpected exception: a sink's bug would hold every later request forever,
        so that is dead-lettered after its tries, like a refusal, for a fix and a replay.
        """
        return not self.delivered and self.retryable and not self.unexpected


class SinkUnavailable(Exception):
    """Raised by a sink consumer to leave the rest of its batch on the topic while the sink is down.

    The batch is rewound rather than committed (``NACK_ON_ERROR``) and redelivered after a pause
    that doubles up to a cap; what was delivered before is skipped then (the seen store).
    """


@dataclass
class Outage:
    """Whether one sink consumer's destination is down, since when and why.

    One per consumer, kept across batches: while down, a redelivered batch probes with a single
    try (the pause between redeliveries is the backoff), and ``retry_timeout_s`` is measured
    from the first failure of the outage, not from the batch at hand.
    """

    name: str = ""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    since: float | None = None
    reason: str | None = None

    @property
    def down(self) -> bool:
        return self.since is not None

    def down_for(self) -> float:
        """Seconds since the outage began (0 when the sink is up)."""
        return 0.0 if self.since is None else max(0.0, self.clock() - self.since)

    def failed(self, reason: str | None) -> None:
        if self.since is None:
            self.since = self.clock()
            log.warning(
                "sink down: its requests wait on the topic", sink=self.name, reason=(reason or "")[:300]
            )
        self.reason = reason

    def answered(self) -> None:
        """The destination answered (delivered, or refused one request for good): it is up."""
        if self.since is not None:
            log.info("sink back after an outage", sink=self.name, down_s=round(self.down_for(), 1))
        self.since = self.reason = None

    def timed_out(self, retry_timeout_s: float | None) -> bool:
        """Down longer than the sink may wait: its requests are dead-lettered from now on."""
        return retry_timeout_s is not None and self.down and self.down_for() >= retry_timeout_s


DELIVERED_AT_ONCE = DeliveryOutcome(delivered=True, attempts=1)


def backoff_delay(attempt: int, backoff_s: float, *, retry_after_s: float | None = None) -> float:
    """Delay after failed try number ``attempt`` (1-based): doubling, capped, with jitter.

    A receiver's ``Retry-After`` wins when it asks for longer (the sink already capped it).
    """
    delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1))
    delay += delay * JITTER * random.random()
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


async def call_with_retry(
    call: Callable[[], Awaitable[object]],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Sleep = asyncio.sleep,
    **context: object,
) -> DeliveryOutcome:
    """Await ``call()`` up to ``attempts`` times; stop early when it says retrying cannot help.

    Every sink operation (a delivery, showing a status change) goes through here, so there is
    one backoff and one idea of "retryable": ``DeliveryError`` carries ``retryable`` and the
    receiver's ``Retry-After``; an unexpected exception is a retryable failure (reason
    ``"TypeName: message"``, or an attribute ``retryable`` if it has one, and ``unexpected``);
    cancellation propagates. ``context`` goes into the log lines.
    """
    attempts = max(1, attempts)
    reason = error = None
    retryable = unexpected = True
    for attempt in range(1, attempts + 1):
        retry_after: float | None = None
        try:
            await call()
            if attempt > 1:
                log.info("delivered after retry", attempts=attempt, **context)
            return DeliveryOutcome(delivered=True, attempts=attempt)
        except DeliveryError as exc:
            reason, error, unexpected = exc.reason, "DeliveryError", False
            retryable, retry_after = exc.retryable, exc.retry_after_s
        except Exception as exc:
            reason, error, unexpected = f"{type(exc).__name__}: {exc}", type(exc).__name__, True
            retryable = bool(getattr(exc, "retryable", True))
        last = attempt == attempts or not retryable
        log.warning(
            "delivery failed" if last else "delivery failed, retrying",
            attempt=attempt,
            retryable=retryable,
            reason=(reason or "")[:300],
            **context,
        )
        if last:
            return DeliveryOutcome(False, attempt, reason, error, retryable, unexpected)
        await sleep(backoff_delay(attempt, backoff_s, retry_after_s=retry_after))
    raise AssertionError("unreachable")  # pragma: no cover


async def deliver_with_retry(
    sink: Sink,
    request: ServiceRequest,
    *,
    department: str,
    delivery_id: str,
    attempts: int,
    backoff_s: float,
    sleep: Sleep = asyncio.sleep,
) -> DeliveryOutcome:
    """One request through ``call_with_retry``; the same ``delivery_id`` goes with every try so
    receivers can dedupe."""
    return await call_with_retry(
        lambda: sink.deliver(request, department=department, delivery_id=delivery_id),
        attempts=attempts,
        backoff_s=backoff_s,
        sleep=sleep,
        sink=sink.name,
        department=department,
        delivery_id=delivery_id,
        request_id=request.request_id,
    )


def not_attempted(outage: Outage) -> DeliveryOutcome:
    """The outcome of a delivery left on the topic, untried, because the sink is down."""
    return DeliveryOutcome(
        delivered=False,
        attempts=0,
        error="SinkUnavailable",
        retryable=True,
        reason=f"not attempted: sink unavailable ({outage.reason})",
    )


async def deliver_all(
    sink: Sink,
    deliveries: Sequence[Delivery],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Sleep = asyncio.sleep,
    outage: Outage | None = None,
) -> list[DeliveryOutcome]:
    """Deliver a consumer batch in order; one outcome per delivery, same order.

    A ``BatchSink`` first gets the whole batch in one call (one fsync instead of hundreds);
    if that fails, each delivery is tried on its own so only the bad ones fail (what the failed
    call already wrote is deduped by the sink, or by the receiver on ``delivery_id``).

    When a delivery fails in a way that may pass, the sink is down: that delivery and every
    later one come back ``held`` (the later ones ``not_attempted``, so none is delivered ahead
    of an earlier one for the same key) and the caller leaves them on the topic. While
    ``outage`` says the sink is down, the first delivery is a single-try probe: the pause
    between redelivered batches, not in-process retries, paces the probes.
    """
    items = list(deliveries)
    if not items:
        return []
    outage = outage if outage is not None else Outage(sink.name)
    if isinstance(sink, BatchSink) and len(items) > 1:
        try:
            await sink.deliver_many(items)
            outage.answered()
            return [DELIVERED_AT_ONCE] * len(items)  # frozen: one instance serves the batch
        except Exception as exc:
            log.warning(
                "batch delivery failed, delivering one by one",
                sink=sink.name,
                size=len(items),
                reason=str(exc)[:300],
            )
    outcomes: list[DeliveryOutcome] = []
    for d in items:
        if outcomes and outcomes[-1].held:
            outcomes.append(not_attempted(outage))
            continue
        outcome = await deliver_with_retry(
            sink,
            d.request,
            department=d.department,
            delivery_id=d.delivery_id,
            attempts=1 if outage.down else attempts,
            backoff_s=backoff_s,
            sleep=sleep,
        )
        outcomes.append(outcome)
        if outcome.held:
            outage.failed(outcome.reason)
        elif not outcome.unexpected:
            outage.answered()
    return outcomes


__all__ = [
    "DeliveryOutcome",
    "Outage",
    "SinkUnavailable",
    "backoff_delay",
    "call_with_retry",
    "deliver_all",
    "deliver_with_retry",
    "not_attempted",
]
