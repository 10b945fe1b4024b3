"""The shared stage machinery: per-record dead letters and pauses between failed batches."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaAckableMessage
from faststream.kafka.parser import AioKafkaBatchParser

from intake311.bus import Outgoing
from intake311.settings import KafkaSettings, Settings
from intake311.stage import (
    MAX_LETTER_BYTES,
    Record,
    batch_subscriber,
    dead_letter,
    group_options,
    pause_on_failure,
    process_batch,
    records_from,
    tolerant_batch_parser,
)
from schemas import DeadLetter


def test_a_bug_on_one_record_dead_letters_it_and_the_batch_goes_on() -> None:
    def handle(record: Record) -> list[Outgoing]:
        if record.value == b"boom":
            raise KeyError("classifier table")  # a bug, not an input error: still not a loop
        return [Outgoing("out", record.value)]

    records = [Record(b"a", offset=1), Record(b"boom", topic="in", offset=2), Record(b"c", offset=3)]
    out, rejected = process_batch(records, handle, stage="test", deadletter_topic="dlq")
    assert rejected == 1
    assert [(o.topic, o.value) for o in out if o.topic == "out"] == [("out", b"a"), ("out", b"c")]
    [letter] = [DeadLetter.model_validate_json(o.value) for o in out if o.topic == "dlq"]
    assert letter.error == "KeyError" and letter.original == b"boom" and letter.offset == 2


async def test_failed_batches_pause_longer_each_time_and_reset_after_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    outcomes = [RuntimeError("db down"), RuntimeError("db down"), None, RuntimeError("again")]

    async def handler() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    wrapped = pause_on_failure(handler, backoff_s=0.5, max_pause_s=30)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await wrapped()
    await wrapped()
    with pytest.raises(RuntimeError):
        await wrapped()
    assert pauses == [0.5, 1.0, 0.5]
    assert wrapped.__name__ == "handler"


def consumed(
    offset: int, headers: list[tuple[str, bytes | None]], key: bytes | None = None
) -> ConsumerRecord:
    """A record as aiokafka hands it over, headers and key exactly as the producer sent them."""
    return ConsumerRecord(
        topic="intake311.contacts.web",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=b'{"x": 1}' if offset != 3 else None,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=headers,
    )


async def test_the_batch_parser_survives_headers_faststream_cannot_decode() -> None:
    parser = AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None)
    raws = (
        consumed(1, [("content-type", b"application/json")]),
        consumed(2, [("x-trace", b"\xff\xfe\xb4"), ("x-null", None)], key=b"\xff\xfe"),
        consumed(3, []),  # a tombstone
    )
    with pytest.raises(UnicodeDecodeError):  # FastStream's own parser: the whole batch fails
        await parser.parse_batch(raws)

    message = await tolerant_batch_parser(raws, parser.parse_batch)

    assert message.raw_message == raws  # the exact records consumed, for the stage and the rewind
    assert message.body == [b'{"x": 1}', b'{"x": 1}', b""]
    assert message.batch_headers[1] == {"x-trace": "\ufffd\ufffd\ufffd", "x-null": ""}
    bad = records_from(message.raw_message)[1]
    assert bad.key == b"\xff\xfe" and bad.headers == {"x-trace": "\ufffd\ufffd\ufffd", "x-null": ""}
    letter = DeadLetter.model_validate_json(dead_letter(bad, "normalizer", "dlq", "bad", "E").value)
    assert letter.offset == 2 and letter.key == "\ufffd\ufffd" and letter.original == b'{"x": 1}'


async def test_the_batch_parser_leaves_readable_records_untouched() -> None:
    parser = AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None)
    raws = (consumed(1, [("content-type", b"application/json")]),)
    message = await tolerant_batch_parser(raws, parser.parse_batch)
    assert message.raw_message[0] is raws[0]
    assert message.headers == {"content-type": "application/json"}


def test_a_record_too_large_for_its_dead_letter_is_kept_gzipped() -> None:
    huge = b"a long and rambling complaint about the potholes " * 18_400  # ~900 KB, compresses
    out = dead_letter(Record(huge, topic="in", partition=0, offset=7), "normalizer", "dlq", "too long", "E")
    assert len(out.value) <= MAX_LETTER_BYTES  # base64 alone would be ~1.2 MB: no broker takes it
    letter = DeadLetter.model_validate_json(out.value)
    assert letter.original_encoding == "gzip+base64" and letter.original == huge


def test_a_record_that_cannot_fit_even_gzipped_says_where_it_is() -> None:
    noise = random.Random(7).randbytes(900_000)  # does not compress
    out = dead_letter(Record(noise, topic="in", partition=2, offset=9), "normalizer", "dlq", "bad", "E")
    assert len(out.value) <= MAX_LETTER_BYTES
    letter = DeadLetter.model_validate_json(out.value)
    assert letter.original_encoding == "omitted" and letter.original == b""
    assert "in partition 2 offset 9" in letter.reason and letter.reason.startswith("bad")


def test_a_consumed_record_reads_its_headers_only_when_asked_and_never_fails_on_them() -> None:
    raw = consumed(2, [("x-trace", b"\xff\xfe"), ("x-null", None), ("content-type", b"application/json")])
    record = Record.of(raw)
    assert (record.value, record.topic, record.partition, record.offset) == (
        b'{"x": 1}',
        "intake311.contacts.web",
        0,
        2,
    )
    assert record.headers == {"x-trace": "\ufffd\ufffd", "x-null": "", "content-type": "application/json"}
    assert record.headers is record.headers  # decoded once
    by_hand = Record(
        b'{"x": 1}', topic="intake311.contacts.web", partition=0, offset=2, headers=dict(record.headers)
    )
    assert by_hand == record and by_hand != Record(b"other")
    assert Record.of(consumed(3, [])).value == b"" and Record.of(consumed(3, [])).headers == {}
    assert Record(b"x").headers == {}


def _kafka(**fields: object) -> Settings:
    return Settings(kafka=KafkaSettings.model_validate(fields))


@pytest.mark.parametrize(
    ("fields", "session_ms", "heartbeat_ms"),
    [
        ({}, 2000, 500),  # the embedded broker: Tansu
        ({"bootstrap_servers": "kafka:9092"}, 10000, 2500),
        # Tansu reached by address: a join or a crash costs about the session timeout there
        ({"bootstrap_servers": "127.0.0.1:9092", "group_coordinator": "tansu"}, 2000, 500),
        ({"group_coordinator": "kafka"}, 10000, 2500),
        ({"group_coordinator": "tansu", "session_timeout_ms": 1000}, 1000, 300),  # the floor
        ({"bootstrap_servers": "kafka:9092", "session_timeout_ms": 6000}, 6000, 1500),
    ],
)
def test_the_group_timing_follows_whose_coordinator_it_is(
    fields: dict[str, object], session_ms: int, heartbeat_ms: int
) -> None:
    assert group_options(_kafka(**fields)) == {
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": heartbeat_ms,
    }


def test_an_unknown_group_coordinator_is_refused() -> None:
    with pytest.raises(ValueError, match="group_coordinator"):
        KafkaSettings.model_validate({"group_coordinator": "redpanda"})


def test_every_stage_consumer_gets_the_group_timing_and_no_static_membership() -> None:
    settings = _kafka(bootstrap_servers="127.0.0.1:9092", group_coordinator="tansu")
    broker = KafkaBroker("127.0.0.1:9092")

    @batch_subscriber(broker, pattern="contacts\\..+", group_id="g", settings=settings)
    async def handle(body: list[bytes]) -> None: ...

    (subscriber,) = broker.subscribers
    consumer_args = subscriber._connection_args  # type: ignore[attr-defined]  # what aiokafka is given
    assert consumer_args["session_timeout_ms"] == 2000
    assert consumer_args["heartbeat_interval_ms"] == 500
    assert consumer_args["group_instance_id"] is None
