"""Two normalizer processes, separate data directories, one topic: one incident, not two.

Contacts for one spot arrive on different tickets, so they land on different partitions and
so at both processes; the shared state (PostgreSQL, one advisory lock) must still put every
one of them in the same incident. Nothing host-local decides it: each process has its own
data directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas import Location, RawContact, make_contact_id, ticket_for
from schemas.request import ServiceRequest
from schemas.topics import Topics
from tests.support import throwaway_database

pytestmark = pytest.mark.integration
SPOT = (41.30712, -72.92652)


def _contact(i: int, channel: str, t0: datetime) -> RawContact:
    contact_id = make_contact_id(channel, f"scale-{uuid.uuid4().hex[:8]}-{i}")
    # A few metres apart, as phones place the same pothole.
    lat, long = SPOT[0] + (i % 3) * 0.00002, SPOT[1] - (i % 2) * 0.00002
    return RawContact(
        contact_id=contact_id,
        request_id=ticket_for(contact_id),
        channel=channel,
        received_at=t0 + timedelta(seconds=i),
        text="There is a deep pothole here",
        location=Location(lat=lat, long=long),
    )


@pytest.fixture
def normalizers(postgres: None, kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    prefix = f"scale{uuid.uuid4().hex[:8]}"
    logs: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    with throwaway_database() as dsn:
        try:
            for n in (1, 2):
                data_dir = tmp_path / f"host{n}"
                data_dir.mkdir()
                log = tmp_path / f"normalizer{n}.log"
                env = {
                    **os.environ,
                    "INTAKE311_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                    "INTAKE311_KAFKA__TOPIC_PREFIX": prefix,
                    "INTAKE311_KAFKA__SESSION_TIMEOUT_MS": "2000",
                    "INTAKE311_DATA_DIR": str(data_dir),
                    "INTAKE311_INCIDENTS__STATE_DSN": dsn,
                    "INTAKE311_LOG_LEVEL": "DEBUG",  # each batch's "batch normalized" line (debug)
                }
                with log.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "intake311.cli", "run", "normalizer"],
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
                logs.append(log)
            yield prefix, logs
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _batches(log: Path) -> int:
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if "batch normalized" in line:
            try:
                count += int(json.loads(line).get("requests", 0))
            except ValueError:
                count += 1
    return count


async def test_two_normalizers_make_one_incident(
    normalizers: tuple[str, list[Path]], kafka_bootstrap: str
) -> None:
    prefix, logs = normalizers
    topics = Topics(prefix)
    deadline = time.monotonic() + 60
    while not all("stages started" in log.read_text(errors="replace") for log in logs):
        assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
        await asyncio.sleep(0.2)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    sent: list[RawContact] = []
    t0 = datetime.now(UTC).replace(microsecond=0)
    try:
        # Waves until both processes have normalized some: both then own partitions.
        for wave in range(30):
            for i in range(6):
                contact = _contact(len(sent), ("web", "sms", "email")[i % 3], t0)
                await producer.send_and_wait(
                    topics.contacts(contact.channel),
                    contact.model_dump_json().encode(),
                    key=contact.request_id.encode(),
                )
                sent.append(contact)
            await asyncio.sleep(1.0)
            if wave >= 2 and all(_batches(log) > 0 for log in logs):
                break
    finally:
        await producer.stop()
    assert all(_batches(log) > 0 for log in logs), "one normalizer never got a partition"

    tickets = {c.request_id for c in sent}
    latest: dict[str, ServiceRequest] = {}
    consumer = AIOKafkaConsumer(
        topics.requests, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    request = ServiceRequest.model_validate_json(record.value)
                    if request.request_id in tickets:
                        latest[request.request_id] = request
            heads = [
                r for r in latest.values() if r.incident_reports == len(tickets) and not r.is_later_report
            ]
            if set(latest) == tickets and heads:
                break
    finally:
        await consumer.stop()
    assert set(latest) == tickets
    incidents = {r.incident for r in latest.values()}
    assert len(incidents) == 1, f"{len(incidents)} incidents for one pothole"
    (head,) = [r for r in latest.values() if not r.is_later_report]
    assert head.incident_reports == len(tickets)
