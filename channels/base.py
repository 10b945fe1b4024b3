"""What every channel adapter shares: publishing a contact and knowing it is on Kafka.

A channel's own logic is ``parse(provider payload) -> RawContact``; this module is the thin edge
that puts the contact on the channel's raw topic, keyed by ticket so every contact of one
request lands on one partition, in order.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from faststream.kafka import KafkaBroker

from intake311.bus import BusWatch, NotSent, OutcomeUnknown, Outgoing, PublishError, publish_all
from schemas.contact import RawContact
from schemas.topics import Topics


class ContactPublisher(Protocol):
    """Puts a contact on the bus; returns only once the broker acknowledged it."""

    async def publish(self, contact: RawContact) -> None:
        """Raise ``PublishError`` if the broker did not take it: the caller must not confirm.

        ``OutcomeUnknown`` (a ``PublishError``) means it may still arrive: the caller must not
        say "not created", and a retry must reuse the contact id.
        """
        ...


class KafkaContactPublisher:
    """The production ``ContactPublisher``: acks=all publish to ``topics.contacts(channel)``.

    With a ``watch`` (the process's ``BusWatch``) it also refuses to promise while the broker is
    known to be lost (``NotSent``, nothing sent) and, after the acknowledgement, checks that the
    broker which acknowledged is still the one whose topics exist: a broker that restarted
    empty auto-creates the topic on produce and acknowledges into a log no stage reads yet.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        topics: Topics,
        *,
        timeout_s: float = 10.0,
        watch: BusWatch | None = None,
        ready_wait_s: float = 1.0,
    ) -> None:
        self._broker = broker
        self._topics = topics
        self._timeout_s = timeout_s
        self._watch = watch
        self._ready_wait_s = min(ready_wait_s, timeout_s)
        self._confirms = _SharedConfirm(watch) if watch is not None else None

    async def publish(self, contact: RawContact) -> None:
        record = Outgoing(
            self._topics.contacts(contact.channel),
            contact.model_dump_json().encode(),
            key=contact.request_id,
            headers={"x-contact-id": contact.contact_id},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        watch = self._watch
        if watch is not None and not watch.ready.is_set():
            try:  # a recovery in its last second should not turn a resident away
                await asyncio.wait_for(watch.ready.wait(), self._ready_wait_s)
            except TimeoutError:
                raise NotSent("the broker is unreachable or recovering; nothing was sent") from None
        # A resident is waiting on the other end: a broker outage must become a prompt "try
        # again" (PublishError -> 503), not a request that hangs for the client's full timeout.
        # Once handed to the producer the record cannot be called back (it may be on the wire),
        # so every failure from here on is OutcomeUnknown, never "not created".
        try:
            # ``timeout_at`` rather than ``wait_for``: no task wrapped around each POST's publish.
            async with asyncio.timeout_at(deadline):
                await publish_all(self._broker, [record])
        except TimeoutError as exc:
            if watch is not None:
                watch.poke()
            raise OutcomeUnknown(f"broker did not acknowledge within {self._timeout_s}s") from exc
        except PublishError as exc:
            if watch is not None:
                watch.poke()
            raise OutcomeUnknown(str(exc)) from exc
        confirms = self._confirms
        if (
            watch is not None
            and confirms is not None
            and not await confirms.confirm(max(0.5, deadline - loop.time()))
        ):
            watch.poke()
            raise OutcomeUnknown("acknowledged by a broker that has lost the pipeline's topics")


class _SharedConfirm:
    """``BusWatch.confirm`` shared by the publishes acknowledged in the same turn of the loop.

    Why: the check is a metadata request for every topic, and one per POST was a broker round
    trip (and a metadata response to parse) for each resident. What each publish needs is a
    check that *began after its acknowledgement*. A publish joins the group of the check that
    has not begun yet (or starts one); the check begins on the loop's next turn, so every
    publish acknowledged by the same produce response shares it, and a publish acknowledged
    later gets a later check. Checks never wait for each other (one hung on a lost broker does
    not hold up the next), and there are never more than there were publishes.
    """

    def __init__(self, watch: BusWatch) -> None:
        self._watch = watch
        self._next: asyncio.Future[bool] | None = None  # the group whose check has not begun
        self._tasks: set[asyncio.Task[None]] = set()

    async def confirm(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        group = self._next
        if group is None or group.get_loop() is not loop:
            group = self._next = loop.create_future()
            loop.call_soon(self._begin, group)
        try:
            async with asyncio.timeout(timeout_s):  # no task per waiter, unlike ``wait_for``
                return await asyncio.shield(group)
        except TimeoutError:
            return False

    def _begin(self, group: asyncio.Future[bool]) -> None:
        if self._next is group:
            self._next = None  # who comes now was acknowledged after this check began
        task = group.get_loop().create_task(self._check(group), name="intake311-publish-confirm")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, group: asyncio.Future[bool]) -> None:
        try:
            ok = await self._watch.confirm(self._watch.timeout_s)
        except Exception:
            ok = False
        if not group.done():
            group.set_result(ok)


__all__ = ["ContactPublisher", "KafkaContactPublisher", "NotSent", "OutcomeUnknown", "PublishError"]
