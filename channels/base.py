"""What every channel adapter shares: publishing a contact and knowing it is on Kafka.

A channel's own logic is ``parse(provider payload) -> RawContact``; this module is the thin edge
that puts the contact on the channel's raw topic, keyed by ticket so every contact of one
request lands on one partition, in order.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from faststream.kafka import KafkaBroker

from intake311.bus import Outgoing, PublishError, publish_all
from schemas.contact import RawContact
from schemas.topics import Topics


class ContactPublisher(Protocol):
    """Puts a contact on the bus; returns only once the broker acknowledged it."""

    async def publish(self, contact: RawContact) -> None:
        """Raise ``PublishError`` if the broker did not take it: the caller must not confirm."""
        ...


class KafkaContactPublisher:
    """The production ``ContactPublisher``: acks=all publish to ``topics.contacts(channel)``."""

    def __init__(self, broker: KafkaBroker, topics: Topics, *, timeout_s: float = 10.0) -> None:
        self._broker = broker
        self._topics = topics
        self._timeout_s = timeout_s

    async def publish(self, contact: RawContact) -> None:
        record = Outgoing(
            self._topics.contacts(contact.channel),
            contact.model_dump_json().encode(),
            key=contact.request_id,
            headers={"x-contact-id": contact.contact_id},
        )
        # A resident is waiting on the other end: a broker outage must become a prompt "try
        # again" (PublishError -> 503), not a request that hangs for the client's full timeout.
        try:
            await asyncio.wait_for(publish_all(self._broker, [record]), self._timeout_s)
        except TimeoutError as exc:
            raise PublishError(f"broker did not acknowledge within {self._timeout_s}s") from exc


__all__ = ["ContactPublisher", "KafkaContactPublisher", "PublishError"]
