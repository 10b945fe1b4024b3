"""The jsonl sink: one fsynced line per delivery, in the department's own file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from intake311.dedupe import SeenStore
from intake311.settings import Settings
from intake311.stage import Record
from schemas.ids import delivery_id_for, event_id_for, make_contact_id, ticket_for
from schemas.request import ServiceRequest
from sinks.app import deliver_batch
from sinks.base import Delivery, DeliveryError, SinkContext, parse_sink_config
from sinks.jsonl import JsonlSink, JsonlSinkConfig
from sinks.retry import deliver_all


def make_request(text: str = "pothole on Main St", provider_id: str = "SM1") -> ServiceRequest:
    contact_id = make_contact_id("sms", provider_id)
    ticket = ticket_for(contact_id)
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    return ServiceRequest(
        request_id=ticket,
        event_id=event_id_for(ticket, [contact_id]),
        service_code="pothole",
        service_name="Pothole",
        description=text,
        requested_datetime=now,
        updated_datetime=now,
        channel="sms",
        confidence=0.9,
        source_contact_ids=(contact_id,),
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def build(tmp_path: Path, **config: object) -> JsonlSink:
    config_ = parse_sink_config({"name": "file", "type": "jsonl", **config})
    sink = config_.build(SinkContext(data_dir=tmp_path))
    assert isinstance(sink, JsonlSink)
    return sink


async def test_one_line_per_delivery_in_the_department_file(tmp_path: Path) -> None:
    sink = build(tmp_path)
    first, second, third = make_request("a", "SM1"), make_request("b", "SM2"), make_request("ç", "SM3")
    await sink.start()
    try:
        for request, department in ((first, "roads"), (second, "roads"), (third, "parks")):
            delivery_id = delivery_id_for(request.event_id, department, "file")
            await sink.deliver(request, department=department, delivery_id=delivery_id)
    finally:
        await sink.close()

    roads = read_lines(tmp_path / "departments" / "roads.jsonl")
    parks = read_lines(tmp_path / "departments" / "parks.jsonl")
    assert [line["request_id"] for line in roads] == [first.request_id, second.request_id]
    assert [line["description"] for line in parks] == ["ç"]
    expected = first.model_dump(mode="json") | {
        "department": "roads",
        "delivery_id": delivery_id_for(first.event_id, "roads", "file"),
    }
    assert roads[0] == expected
    assert (
        ServiceRequest.model_validate(
            {k: v for k, v in roads[1].items() if k not in ("department", "delivery_id")}
        )
        == second
    )
    assert listdir(tmp_path / "departments") == ["parks.jsonl", "roads.jsonl"]


async def test_appends_across_restarts(tmp_path: Path) -> None:
    request = make_request()
    for delivery_id in ("d1", "d2"):
        sink = build(tmp_path)
        await sink.start()
        await sink.deliver(request, department="roads", delivery_id=delivery_id)
        await sink.close()
    lines = read_lines(tmp_path / "departments" / "roads.jsonl")
    assert [line["delivery_id"] for line in lines] == ["d1", "d2"]


async def test_path_template_relative_to_data_dir_and_absolute(tmp_path: Path) -> None:
    relative = build(tmp_path, path="out/{department}/requests.jsonl")
    await relative.deliver(make_request(), department="water", delivery_id="d1")
    await relative.close()
    assert len(read_lines(tmp_path / "out" / "water" / "requests.jsonl")) == 1

    absolute_dir = tmp_path / "elsewhere"
    absolute = build(tmp_path / "unused", path=str(absolute_dir / "{department}.jsonl"))
    await absolute.deliver(make_request(), department="water", delivery_id="d2")
    await absolute.close()
    assert read_lines(absolute_dir / "water.jsonl")[0]["delivery_id"] == "d2"
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("all.jsonl", "must contain {department}"),
        ("{department}-{sink}.jsonl", "found: department, sink"),
        ("{department.jsonl", "not a valid template"),
    ],
)
def test_path_must_be_a_department_template(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match="path") as info:
        JsonlSinkConfig(name="file", path=path)
    assert message in str(info.value)


async def test_department_that_is_not_a_slug_is_rejected_without_writing(tmp_path: Path) -> None:
    sink = build(tmp_path)
    with pytest.raises(DeliveryError) as info:
        await sink.deliver(make_request(), department="../etc", delivery_id="d1")
    assert info.value.retryable is False
    assert "not a slug" in str(info.value)
    assert listdir(tmp_path) == []


async def test_io_error_is_a_retryable_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    sink = build(blocker)
    with pytest.raises(DeliveryError) as info:
        await sink.deliver(make_request(), department="roads", delivery_id="d1")
    assert info.value.retryable is True
    assert "jsonl sink 'file'" in info.value.reason


async def test_batch_delivery_groups_by_file(tmp_path: Path) -> None:
    sink = build(tmp_path)
    requests = [make_request(str(i), f"SM{i}") for i in range(5)]
    deliveries = [Delivery(r, "roads" if i % 2 else "parks", f"d{i}") for i, r in enumerate(requests)]
    outcomes = await deliver_all(sink, deliveries, attempts=3, backoff_s=0)
    await sink.close()
    assert [o.delivered for o in outcomes] == [True] * 5
    assert [o.attempts for o in outcomes] == [1] * 5
    files = tmp_path / "departments"
    assert [line["delivery_id"] for line in read_lines(files / "parks.jsonl")] == ["d0", "d2", "d4"]
    assert [line["delivery_id"] for line in read_lines(files / "roads.jsonl")] == ["d1", "d3"]


async def test_batch_with_a_bad_department_falls_back_to_one_by_one(tmp_path: Path) -> None:
    sink = build(tmp_path)
    deliveries = [Delivery(make_request(), "roads", "d1"), Delivery(make_request(), "Bad Dept", "d2")]
    outcomes = await deliver_all(sink, deliveries, attempts=3, backoff_s=0)
    await sink.close()
    assert [(o.delivered, o.attempts, o.retryable) for o in outcomes] == [(True, 1, True), (False, 1, False)]
    assert [line["delivery_id"] for line in read_lines(tmp_path / "departments" / "roads.jsonl")] == ["d1"]


async def test_a_later_report_is_a_line_with_its_incident(tmp_path: Path) -> None:
    """Files get every report, the incident's later ones included, each saying which incident."""
    first = make_request("pothole", "SM1")
    later = make_request("same pothole", "SM2").model_copy(
        update={"incident_id": first.request_id, "incident_reports": 2, "districts": {"ward": "Ward 7"}}
    )
    sink = build(tmp_path)
    await sink.start()
    try:
        for request in (first, later):
            await sink.deliver(request, department="roads", delivery_id=request.request_id)
    finally:
        await sink.close()
    lines = read_lines(tmp_path / "departments" / "roads.jsonl")
    assert [(line["request_id"], line["incident_id"]) for line in lines] == [
        (first.request_id, None),
        (later.request_id, first.request_id),
    ]
    assert lines[1]["incident_reports"] == 2 and lines[1]["districts"] == {"ward": "Ward 7"}


# -- a crash between writing and marking (defect 4) ------------------------------------------


def request_records(count: int) -> list[Record]:
    """Department-topic records as the sinks stage consumes them."""
    return [
        Record(
            value=make_request(f"report {i}", f"SM{i}").model_dump_json().encode(),
            topic="t.department.roads",
            partition=0,
            offset=i,
        )
        for i in range(count)
    ]


def delivery_ids(path: Path) -> list[str]:
    return [line["delivery_id"] for line in read_lines(path)]


async def test_a_kill_between_the_write_and_the_mark_does_not_write_the_batch_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is fsynced before the delivered ids are marked: a kill in between must not make
    the redelivered batch a second copy of every line (it made 1,000 duplicates)."""
    settings = Settings(data_dir=tmp_path, retry_backoff_s=0)
    records = request_records(5)
    seen = SeenStore(tmp_path / "seen.sqlite3")
    first = build(tmp_path)

    def killed(namespace: str, keys: object) -> None:
        raise SystemExit("kill -9 after the fsync, before the mark")

    monkeypatch.setattr(seen, "mark", killed)
    with pytest.raises(SystemExit):
        await deliver_batch(
            records, first, department="roads", sink_name="file", seen=seen, settings=settings
        )
    seen.close()
    file = tmp_path / "departments" / "roads.jsonl"
    assert len(delivery_ids(file)) == 5  # written and fsynced, never marked

    # The restarted process: a new sink and seen store; Kafka redelivers the same batch.
    seen_again = SeenStore(tmp_path / "seen.sqlite3")
    second = build(tmp_path)
    try:
        result = await deliver_batch(
            records, second, department="roads", sink_name="file", seen=seen_again, settings=settings
        )
    finally:
        await second.close()
        await first.close()
    assert result.letters == [] and result.held is None
    ids = delivery_ids(file)
    assert len(ids) == 5 and len(set(ids)) == 5
    # Marked now, so a third delivery does not even reach the sink.
    assert seen_again.unseen("roads/file", ids) == set()
    seen_again.close()


async def test_a_torn_last_line_is_repaired_and_its_delivery_written_once(tmp_path: Path) -> None:
    """A kill during the write leaves half a line: it is cut off, the redelivery writes it whole,
    and the lines written completely before it are not written again."""
    requests = [make_request(f"report {i}", f"SM{i}") for i in range(3)]
    deliveries = [Delivery(r, "roads", f"d{i}") for i, r in enumerate(requests)]
    sink = build(tmp_path)
    await sink.deliver_many(deliveries)
    await sink.close()
    file = tmp_path / "departments" / "roads.jsonl"
    whole = file.read_bytes()
    file.write_bytes(whole[:-40])  # the last line torn in the middle, no newline

    again = build(tmp_path)
    await again.deliver_many(deliveries)
    await again.close()
    assert file.read_bytes() == whole
    assert delivery_ids(file) == ["d0", "d1", "d2"]


async def test_a_line_torn_before_its_first_field_is_repaired_too(tmp_path: Path) -> None:
    sink = build(tmp_path)
    await sink.deliver(make_request(), department="roads", delivery_id="d0")
    await sink.close()
    file = tmp_path / "departments" / "roads.jsonl"
    with file.open("ab") as handle:
        handle.write(b'{"request_')
    again = build(tmp_path)
    await again.deliver(make_request(), department="roads", delivery_id="d1")
    await again.close()
    assert delivery_ids(file) == ["d0", "d1"]


async def test_a_second_writer_of_the_file_sees_what_the_first_wrote(tmp_path: Path) -> None:
    """After a rebalance another sink instance (another process on the host) takes the
    partition and gets the unmarked batch again: it must see the lines appended since it opened
    the file, not only those present when it opened it."""
    deliveries = [Delivery(make_request(f"r{i}", f"SM{i}"), "roads", f"d{i}") for i in range(4)]
    one, two = build(tmp_path), build(tmp_path)
    await two.deliver(make_request("earlier", "SM9"), department="roads", delivery_id="d9")  # opened
    await one.deliver_many(deliveries)
    await two.deliver_many(deliveries)
    await one.close()
    await two.close()
    assert delivery_ids(tmp_path / "departments" / "roads.jsonl") == ["d9", "d0", "d1", "d2", "d3"]


async def test_the_same_delivery_twice_in_one_process_is_one_line(tmp_path: Path) -> None:
    sink = build(tmp_path)
    for _ in range(2):
        await sink.deliver(make_request(), department="roads", delivery_id="d1")
    await sink.close()
    assert delivery_ids(tmp_path / "departments" / "roads.jsonl") == ["d1"]


@pytest.mark.parametrize(
    "text",
    [
        "pothole on Main St",
        "ç é ü 日本語 😀 \u2028\u2029",
        'a "quote", a \\ backslash, </script> & <b>',
        "control \x00\x01\x1f\x7f, tab\t, newline\n, return\r",
    ],
)
def test_a_line_is_the_request_payload_as_compact_json(text: str) -> None:
    """``line_for`` builds from the model's JSON; it must write what ``request_payload`` says."""
    from sinks.base import request_payload
    from sinks.jsonl import line_for

    request = make_request(text).model_copy(update={"lat": 41.30812, "long": -72.92816})
    payload = request_payload(request, department="roads", delivery_id="d" * 32)
    line = line_for(request, "roads", "d" * 32)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    assert json.loads(line) == payload


async def test_the_department_file_is_remembered_and_a_bad_department_still_refused(
    tmp_path: Path,
) -> None:
    sink = build(tmp_path)
    assert sink.path_for("roads") is sink.path_for("roads")
    with pytest.raises(DeliveryError):
        sink.path_for("../roads")
    with pytest.raises(DeliveryError):
        sink.path_for("../roads")  # refusals are not remembered as files
    await sink.close()
