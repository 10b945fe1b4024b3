"""Real stage processes on a real broker, and the one count that matters: submitted vs delivered.

Each stage runs as ``python -m intake311.cli run STAGE`` (what an operator runs), so a kill -9
is a real crash: no ``finally``, no flush, no commit. Contacts are produced straight to the
contacts topic with ``acks=all`` (what a channel does once it has told the resident a ticket),
and the department's JSONL file is read back at the end:

- lost: a ticket the broker took that never reached the department;
- duplicated: a ticket whose delivery is in the file more than once;
- phantom: a delivery for a ticket nobody submitted.

Every scenario must end 0 / 0 / 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from schemas import RawContact, make_contact_id, ticket_for
from schemas.topics import Topics

STAGES = ("normalizer", "router", "sinks")
DEPARTMENT = "public-works"
# One text, one service, one department: every ticket has exactly one expected delivery.
TEXT = "Deep pothole in front of {n} Elm Street, it blew out my tire"


@dataclass
class Count:
    """Submitted vs delivered, by ticket."""

    lost: set[str]
    duplicated: dict[str, int]
    phantom: set[str]
    delivered: int

    def __str__(self) -> str:
        return (
            f"delivered {self.delivered}, lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
            f"phantom {len(self.phantom)}"
        )

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.phantom)


@dataclass
class Pipeline:
    """The three consuming stages as separate processes sharing one data directory (one host)."""

    bootstrap: str
    data_dir: Path
    prefix: str = field(default_factory=lambda: f"fault{uuid.uuid4().hex[:8]}")
    max_batch: int = 100
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)
    _read_to: int = 0
    _lines: int = 0

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "INTAKE311_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "INTAKE311_KAFKA__TOPIC_PREFIX": self.prefix,
            "INTAKE311_KAFKA__SESSION_TIMEOUT_MS": "2000",
            "INTAKE311_DATA_DIR": str(self.data_dir),
            "INTAKE311_MAX_BATCH": str(self.max_batch),
            "INTAKE311_RETRY_BACKOFF_S": "0.1",
            "INTAKE311_LOG_LEVEL": "INFO",
        }

    def log(self, stage: str) -> Path:
        return self.data_dir / f"{stage}.log"

    def start(self, stage: str) -> None:
        with self.log(stage).open("ab") as out:
            self.procs[stage] = subprocess.Popen(
                [sys.executable, "-m", "intake311.cli", "run", stage],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_started(self, *stages: str, timeout: float = 60.0) -> None:
        """Until each stage's log says it started since its latest (re)start."""
        deadline = time.monotonic() + timeout
        for stage in stages or tuple(self.procs):
            want = self.restarts[stage] + 1
            while self.log(stage).read_text(errors="replace").count("stages started") < want:
                proc = self.procs[stage]
                assert proc.poll() is None, f"{stage} exited {proc.returncode}: {self.tail(stage)}"
                assert time.monotonic() < deadline, f"{stage} did not start: {self.tail(stage)}"
                await asyncio.sleep(0.2)

    def kill(self, *stages: str) -> None:
        """kill -9: the process gets no chance to flush, commit or clean up."""
        for stage in stages:
            proc = self.procs[stage]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    async def restart(self, *stages: str) -> None:
        for stage in stages:
            self.restarts[stage] += 1
            self.start(stage)
        await self.wait_started(*stages)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def tail(self, stage: str, chars: int = 3000) -> str:
        return self.log(stage).read_text(errors="replace")[-chars:]

    # -- contacts in, deliveries out

    def contacts(self, n: int, tag: str) -> list[RawContact]:
        now = datetime.now(UTC)
        out = []
        for i in range(n):
            contact_id = make_contact_id("web", f"{tag}-{i}")
            out.append(
                RawContact(
                    contact_id=contact_id,
                    request_id=ticket_for(contact_id),
                    channel="web",
                    received_at=now,
                    text=TEXT.format(n=10 + i),
                    language="en",
                )
            )
        return out

    async def submit(self, contacts: list[RawContact]) -> set[str]:
        """Produce with acks=all, as a channel does before it tells the ticket; the tickets taken."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [
                await producer.send(
                    self.topics.contacts("web"), c.model_dump_json().encode(), key=c.request_id.encode()
                )
                for c in contacts
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return {c.request_id for c in contacts}

    def deliveries(self) -> Counter[str]:
        """Ticket -> lines in the department's file (a torn last line is not a delivery)."""
        file = self.data_dir / "departments" / f"{DEPARTMENT}.jsonl"
        seen: Counter[str] = Counter()
        if not file.exists():
            return seen
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                seen[json.loads(line)["request_id"]] += 1
            except (ValueError, KeyError, TypeError):
                continue
        return seen

    def lines(self) -> int:
        """Lines in the department's file so far, cheap enough to poll every millisecond: the
        file is re-read only when its size changed, and only from where the last read stopped."""
        file = self.data_dir / "departments" / f"{DEPARTMENT}.jsonl"
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return 0
        if size < self._read_to:  # replaced or truncated (a torn line repaired): count again
            self._read_to = self._lines = 0
        if size > self._read_to:
            with file.open("rb") as fh:
                fh.seek(self._read_to)
                chunk = fh.read(size - self._read_to)
            self._lines += chunk.count(b"\n")
            self._read_to += len(chunk)
        return self._lines

    async def until_delivered(self, at_least: int, timeout: float = 90.0) -> None:
        """Until ``at_least`` lines are in the file (a crashed stage fails at once), or the timeout."""
        deadline = time.monotonic() + timeout
        while self.lines() < at_least:
            for stage, proc in self.procs.items():
                assert proc.poll() is None, f"{stage} exited {proc.returncode}: {self.tail(stage)}"
            if time.monotonic() > deadline:
                return
            # 1 ms: a kill right after a write lands between the sink's write and its mark.
            await asyncio.sleep(0.001)

    def count(self, submitted: set[str]) -> Count:
        seen = self.deliveries()
        return Count(
            lost=submitted - set(seen),
            duplicated={t: n for t, n in seen.items() if n > 1},
            phantom=set(seen) - submitted,
            delivered=sum(seen.values()),
        )
