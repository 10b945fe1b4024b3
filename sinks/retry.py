"""Retrying deliveries in-process, so one slow or flaky destination never stalls a partition for long.

Failures are reported as outcomes, never raised: the consumer dead-letters what could not be
delivered (``intake311.stage.dead_letter(record, stage, topic, outcome.reason, outcome.error,
outcome.attempts)``) and keeps consuming, so one bad request or a receiver that rejects it does
not block every request behind it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

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
    type name. ``retryable`` is False when the sink said retrying cannot help.
    """

    delivered: bool
    attempts: int
    reason: str | None = None
    error: str | None = None
    retryable: bool = True


def backoff_delay(attempt: int, backoff_s: float, *, retry_after_s: float | None = None) -> float:
    """Delay after failed try number ``attempt`` (1-based): doubling, capped, with jitter.

    A receiver's ``Retry-After`` wins when it asks for longer (the sink already capped it).
    """
    delay = min(MAX_BACKOFF_S, backoff_s * 2 ** (attempt - 1))
    delay += delay * JITTER * random.random()
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


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
    """Try up to ``attempts`` times; stop early when the sink says retrying cannot help.

    The same ``delivery_id`` goes with every try so receivers can dedupe. Unexpected
    exceptions count as retryable failures (reason ``"TypeName: message"``); cancellation
    propagates.
    """
    attempts = max(1, attempts)
    reason = error = None
    retryable = True
    for attempt in range(1, attempts + 1):
        retry_after: float | None = None
        try:
            await sink.deliver(request, department=department, delivery_id=delivery_id)
            if attempt > 1:
                log.info(
                    "delivered after retry",
                    sink=sink.name,
                    department=department,
                    delivery_id=delivery_id,
                    attempts=attempt,
                )
            return DeliveryOutcome(delivered=True, attempts=attempt)
        except DeliveryError as exc:
            reason, error = exc.reason, "DeliveryError"
            retryable, retry_after = exc.retryable, exc.retry_after_s
        except Exception as exc:
            reason, error, retryable = f"{type(exc).__name__}: {exc}", type(exc).__name__, True
        last = attempt == attempts or not retryable
        log.warning(
            "delivery failed" if last else "delivery failed, retrying",
            sink=sink.name,
            department=department,
            delivery_id=delivery_id,
            request_id=request.request_id,
            attempt=attempt,
            retryable=retryable,
            reason=(reason or "")[:300],
        )
        if last:
            return DeliveryOutcome(False, attempt, reason, error, retryable)
        await sleep(backoff_delay(attempt, backoff_s, retry_after_s=retry_after))
    raise AssertionError("unreachable")  # pragma: no cover


async def deliver_all(
    sink: Sink,
    deliveries: Sequence[Delivery],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Sleep = asyncio.sleep,
) -> list[DeliveryOutcome]:
    """Deliver a consumer batch in order; one outcome per delivery, same order.

    A ``BatchSink`` first gets the whole batch in one call (one fsync instead of hundreds);
    if that fails, each delivery is retried on its own so only the bad ones fail. Because the
    failed batch call may have delivered part of the batch, some deliveries can repeat:
    at-least-once, with ``delivery_id`` for dedupe.
    """
    items = list(deliveries)
    if not items:
        return []
    if isinstance(sink, BatchSink) and len(items) > 1:
        try:
            await sink.deliver_many(items)
            return [DeliveryOutcome(delivered=True, attempts=1) for _ in items]
        except Exception as exc:
            log.warning(
                "batch delivery failed, delivering one by one",
                sink=sink.name,
                size=len(items),
                reason=str(exc)[:300],
            )
    # A circuit breaker keeps an outage from stretching one batch past Kafka's poll interval:
    # after a delivery exhausts its retries, the next gets one probe attempt, and if that fails
    # too the rest of the batch is dead-lettered unattempted (with the reason) at once.
    outcomes: list[DeliveryOutcome] = []
    tries, down = attempts, None
    for d in items:
        if down is not None:
            outcomes.append(
                DeliveryOutcome(
                    delivered=False,
                    attempts=0,
                    error="SinkUnavailable",
                    retryable=True,
                    reason=f"not attempted: sink unavailable ({down})",
                )
            )
            continue
        outcome = await deliver_with_retry(
            sink,
            d.request,
            department=d.department,
            delivery_id=d.delivery_id,
            attempts=tries,
            backoff_s=backoff_s,
            sleep=sleep,
        )
        outcomes.append(outcome)
        if outcome.delivered or not outcome.retryable:
            tries = attempts
        elif tries == 1:
            down = outcome.reason
        else:
            tries = 1
    return outcomes


__all__ = ["DeliveryOutcome", "backoff_delay", "deliver_all", "deliver_with_retry"]
