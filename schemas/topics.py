"""Every Kafka topic name, defined once.

Stages, the CLI and the tests ask this module for names; nobody formats a topic string by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.ids import is_slug


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix, so several cities or environments can share a cluster."""

    prefix: str = "intake311"

    def contacts(self, channel: str) -> str:
        """Raw contacts from one channel (``intake311.contacts.sms``)."""
        return f"{self.prefix}.contacts.{_slug(channel)}"

    @property
    def contacts_pattern(self) -> str:
        """Regex matching every raw-contact topic, so the normalizer picks up new channels."""
        return rf"{_escape(self.prefix)}\.contacts\..+"

    @property
    def requests(self) -> str:
        """Canonical service-request events from the normalizer."""
        return f"{self.prefix}.requests"

    def department(self, department: str) -> str:
        """Requests routed to one department (``intake311.department.public-works``)."""
        return f"{self.prefix}.department.{_slug(department)}"

    @property
    def status(self) -> str:
        """Status changes to requests (acknowledged, in progress, closed)."""
        return f"{self.prefix}.status"

    def outbound(self, channel: str) -> str:
        """Messages to residents, sent by the channel they used (``intake311.outbound.sms``)."""
        return f"{self.prefix}.outbound.{_slug(channel)}"

    def open311_ids(self, department: str, sink: str) -> str:
        """The ``open311`` sink's map of one (department, sink) pair's requests to the city's ids
        (compacted, keyed by request id): ``intake311.open311.public-works.city``."""
        return f"{self.prefix}.open311.{_slug(department)}.{_slug(sink)}"

    def open311_lease(self, department: str, sink: str) -> str:
        """The ``open311`` sink's poller lease for one (department, sink) pair: a topic of ONE
        partition that nothing writes; whichever member of ``open311_poller_group`` is assigned
        it polls the city (``intake311.open311.public-works.city.lease``)."""
        return f"{self.open311_ids(department, sink)}.lease"

    def open311_poller_group(self, department: str, sink: str) -> str:
        """The consumer group whose assignment of ``open311_lease`` is the lease
        (``intake311.open311.public-works.city.poller``)."""
        return self.group(f"open311.{_slug(department)}.{_slug(sink)}.poller")

    @property
    def external_refs(self) -> str:
        """Our requests' ids in other systems (``schemas.external.ExternalRef``: the city's
        Open311 id), keyed by request id; the case store records them."""
        return f"{self.prefix}.external-refs"

    def group(self, name: str) -> str:
        """A consumer group under the same prefix (``intake311.normalizer``): two deployments
        that share a cluster under different prefixes must never share a group."""
        return f"{self.prefix}.{name}"

    @property
    def deadletter(self) -> str:
        """Anything a stage could not process, with the reason and the original bytes."""
        return f"{self.prefix}.deadletter"


def _slug(value: str) -> str:
    if not is_slug(value):
        raise ValueError(f"not a valid topic component (lowercase slug): {value!r}")
    return value


def _escape(value: str) -> str:
    return value.replace(".", r"\.")


TOPICS = Topics()
