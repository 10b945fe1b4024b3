"""The accept path's cheap parts: one broker check shared by concurrent publishes, the log line."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from channels.base import KafkaContactPublisher, OutcomeUnknown
from channels.web.accept import Outcome, accept, log
from intake311.logging import Tally, configure_logging
from schemas.topics import Topics
from tests.conftest import make_contact
from tests.support import FakePublisher


class Broker:
    """Acknowledges every publish at once (what ``publish_all`` needs of a broker)."""

    def __init__(self) -> None:
        self.published = 0
        self.log: list[str] = []

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        self.published += 1
        self.log.append("ack")


class Watch:
    """A ``BusWatch`` whose metadata check takes ``delay_s`` and answers ``ok``."""

    def __init__(self, broker: Broker, delay_s: float = 0.01) -> None:
        self.ready = asyncio.Event()
        self.ready.set()
        self.timeout_s = 5.0
        self.ok = True
        self.delay_s = delay_s
        self.checks = 0
        self.pokes = 0
        self.broker = broker

    async def confirm(self, timeout_s: float | None = None) -> bool:
        self.checks += 1
        self.broker.log.append("check")
        ok = self.ok  # what the broker has when the metadata request is made
        await asyncio.sleep(self.delay_s)
        return ok

    def poke(self) -> None:
        self.pokes += 1


def publisher(broker: Broker, watch: Watch) -> KafkaContactPublisher:
    return KafkaContactPublisher(broker, Topics(), watch=watch)  # type: ignore[arg-type]


async def test_concurrent_publishes_share_a_check_that_began_after_their_ack() -> None:
    broker = Broker()
    watch = Watch(broker)
    pub = publisher(broker, watch)
    contacts = [make_contact(provider_id=f"p{i}") for i in range(50)]
    await asyncio.gather(*(pub.publish(c) for c in contacts))
    assert broker.published == 50
    assert 1 <= watch.checks <= 3  # not one per publish
    # Every ack is followed by a check that began after it: the last event is a check.
    assert broker.log[-1] == "check"


async def test_a_publish_acknowledged_during_a_check_waits_for_the_next_one() -> None:
    broker = Broker()
    watch = Watch(broker, delay_s=0.05)
    pub = publisher(broker, watch)
    first = asyncio.create_task(pub.publish(make_contact(provider_id="a")))
    while watch.checks == 0:
        await asyncio.sleep(0.001)
    watch.ok = False  # the broker lost its topics after the first check began
    second = asyncio.create_task(pub.publish(make_contact(provider_id="b")))
    await first  # the first check (begun before the loss was known) said yes
    with pytest.raises(OutcomeUnknown):
        await second  # its own check, begun after its ack, said no
    assert watch.checks == 2 and watch.pokes == 1


class HungBroker(Broker):
    """Takes every publish and never acknowledges it."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()


async def test_a_publish_never_acknowledged_is_unknown_after_the_timeout() -> None:
    broker = HungBroker()
    watch = Watch(broker)
    pub = KafkaContactPublisher(broker, Topics(), watch=watch, timeout_s=0.2)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    with pytest.raises(OutcomeUnknown, match=r"did not acknowledge within 0\.2s"):
        await pub.publish(make_contact(provider_id="hung"))
    assert asyncio.get_running_loop().time() - started >= 0.15  # waited its timeout, not less
    assert watch.pokes == 1 and watch.checks == 0  # no check for what was never acknowledged


async def test_a_check_that_does_not_answer_in_time_is_unknown() -> None:
    broker = Broker()
    watch = Watch(broker, delay_s=5.0)  # the metadata request hangs
    pub = KafkaContactPublisher(broker, Topics(), watch=watch, timeout_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(OutcomeUnknown, match="lost the pipeline's topics"):
        await pub.publish(make_contact(provider_id="slow-check"))  # confirm waits at least 0.5 s
    assert broker.published == 1 and watch.pokes == 1


async def test_a_lone_publish_still_checks_and_a_lost_broker_is_unknown() -> None:
    broker = Broker()
    watch = Watch(broker, delay_s=0)
    watch.ok = False
    with pytest.raises(OutcomeUnknown):
        await publisher(broker, watch).publish(make_contact(provider_id="x"))
    assert watch.checks == 1


async def test_accepted_contacts_are_not_an_info_line_each_but_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = Tally(log, "contacts accepted", by="by_channel")  # its minute not yet up
    monkeypatch.setattr("channels.web.accept.ACCEPTED_LOG", fresh)
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    fake = FakePublisher()
    for i in range(3):
        assert await accept(make_contact(provider_id=f"c{i}"), fake, None, None) is Outcome.ACCEPTED  # type: ignore[arg-type]
    assert "contact accepted" not in out.getvalue()
    fake.fail_next = 1
    assert await accept(make_contact(provider_id="refused"), fake, None, None) is Outcome.REFUSED  # type: ignore[arg-type]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["publish failed; contact refused"]
    assert lines[0]["request_id"] and lines[0]["contact_id"]  # a refusal names its ticket


def test_the_count_is_logged_once_per_interval() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    now = [0.0]
    counter = Tally(log, "contacts accepted", every_s=60, by="by_channel", clock=lambda: now[0])
    for _ in range(5):
        counter.add("open311", accepted=1)
    now[0] = 61
    counter.add("web", accepted=1)
    counter.add("web", accepted=1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "contacts accepted" and lines[0]["accepted"] == 6
    assert lines[0]["by_channel"] == {"open311": 5, "web": 1}


async def test_at_debug_each_accepted_contact_is_still_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("channels.web.accept.ACCEPTED_LOG", Tally(log, "contacts accepted", by="by_channel"))
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    try:
        contact = make_contact(provider_id="seen")
        assert await accept(contact, FakePublisher(), None, None) is Outcome.ACCEPTED  # type: ignore[arg-type]
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        accepted = [line for line in lines if line["event"] == "contact accepted"]
        assert len(accepted) == 1 and accepted[0]["request_id"] == contact.request_id
    finally:
        configure_logging("INFO", "json")
