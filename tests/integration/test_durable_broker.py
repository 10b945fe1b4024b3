"""`intake311 up` with the durable embedded broker: a crash of everything loses no accepted request.

A resident who got a ticket number must get their request to the department even if the machine
running intake311 loses power a moment later. Stand-in for the power cut: SIGKILL every process
group involved (intake311's, Tansu's and SeaweedFS's), no chance to flush or commit anything,
then a second `up` on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration

N = 200
DEPARTMENT = "public-works"


class Up:
    """One `python -m intake311.cli up` in its own session, like a service manager starts it."""

    def __init__(self, data_dir: Path, port: int, log: IO[bytes]) -> None:
        self.data_dir = data_dir
        self.base = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("INTAKE311_")},
            "INTAKE311_DATA_DIR": str(data_dir),
            "INTAKE311_WEB__PORT": str(port),
            "INTAKE311_LOG_FORMAT": "json",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "intake311.cli", "up"],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own group, so the test can kill exactly it
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"up exited: {self.process.returncode}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.3)
        pytest.fail(f"intake311 up did not serve /healthz within {timeout} s")

    def broker_pids(self) -> dict[str, int]:
        """The broker's processes, from the pid files intake311 keeps for this very case."""
        pids = {}
        for name in ("tansu", "seaweedfs"):
            file = self.data_dir / "broker" / f"{name}.pid"
            key, _, value = file.read_text().strip().partition("=")
            pids[key] = int(value)
        return pids

    def kill_everything(self) -> None:
        """SIGKILL every process group: intake311's and each broker process's own session."""
        groups = {os.getpgid(self.process.pid)}
        for pid in self.broker_pids().values():
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.kill_everything()


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "up.log"
    yield path
    if not path.exists():
        return
    # Whatever happened, no broker process of this test outlives it.
    for name in ("tansu", "seaweedfs"):
        file = tmp_path / "var" / "broker" / f"{name}.pid"
        if file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(file.read_text().strip().partition("=")[2]), signal.SIGKILL)


async def _accept(base: str, count: int) -> list[str]:
    """POST ``count`` distinct Open311 requests (8 at a time); the ticket of each 201."""
    tickets: list[str] = []
    limit = asyncio.Semaphore(8)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            response = await client.post(
                "/open311/v2/requests.json",
                data={
                    "api_key": "demo-key",
                    "service_code": "pothole",
                    # An address but no coordinates: no point, so no two are merged as one incident.
                    "address_string": f"{i + 1} Elm Street",
                    # Distinct text: the web channel treats the same content as the same report.
                    "description": f"Pothole number {i} in the right lane, cars swerving around it",
                },
            )
            assert response.status_code == 201, response.text
            tickets.append(response.json()[0]["service_request_id"])

    async with httpx.AsyncClient(base_url=base, timeout=15) as client:
        await asyncio.gather(*(one(client, i) for i in range(count)))
    return tickets


def _delivered(file: Path) -> Counter[str]:
    if not file.exists():
        return Counter()
    ids = []
    for line in file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            ids.append(row.get("service_request_id") or row["request_id"])
    return Counter(ids)


async def _sink_backlog(bootstrap: str, data_dir: Path) -> int:
    """Records on the department topic that the file sink's group has not committed yet."""
    from intake311.ops import add_backlog
    from intake311.settings import Settings
    from sinks.app import group_id

    settings = Settings(data_dir=data_dir)
    sink = {"group": group_id(settings.topics, DEPARTMENT, "file")}
    await add_backlog(
        settings, [bootstrap], [{"topic": settings.topics.department(DEPARTMENT), "sinks": [sink]}]
    )
    return int(sink["backlog"])


def test_everything_killed_mid_flight_then_every_accepted_request_delivered_once(
    tmp_path: Path, log_file: Path
) -> None:
    data_dir = tmp_path / "var"
    sink = data_dir / "departments" / f"{DEPARTMENT}.jsonl"
    with log_file.open("ab") as log:
        first = Up(data_dir, free_port(), log)
        try:
            first.wait_ready()
            tickets = asyncio.run(_accept(first.base, N))
        except BaseException:
            first.kill_everything()
            raise
        first.kill_everything()  # at once: whatever the pipeline had not delivered yet is in flight
        at_kill = len(_delivered(sink))
        assert len(set(tickets)) == N

        credentials = data_dir / "broker" / "credentials.json"
        assert credentials.stat().st_mode & 0o777 == 0o600

        second = Up(data_dir, free_port(), log)
        try:
            second.wait_ready()
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not set(tickets) <= set(_delivered(sink)):
                time.sleep(0.3)
            bootstrap = (data_dir / "run" / "embedded.bootstrap").read_text().strip()
            # Redeliveries of records whose offsets the crash did not let the sink commit may
            # still come after the last new one: "exactly once" is judged once the sink is idle.
            while time.monotonic() < deadline and asyncio.run(_sink_backlog(bootstrap, data_dir)) > 0:
                time.sleep(0.3)
            backlog = asyncio.run(_sink_backlog(bootstrap, data_dir))
        finally:
            code = second.stop()
    delivered = _delivered(sink)
    output = log_file.read_text(errors="replace")
    missing = set(tickets) - set(delivered)
    assert not missing, f"{len(missing)} accepted requests lost ({at_kill} delivered before the kill)"
    twice = {t: n for t, n in delivered.items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"
    assert backlog == 0
    assert code == 0, output[-3000:]
    assert "embedded broker stopped" in output and "object store stopped" in output
    print(f"{at_kill} of {N} delivered before the kill; all {N} exactly once after the restart")


def test_a_second_broker_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    """Two `up`s on one data directory would run two SeaweedFS servers on the same files, and the
    second would kill the first's processes as leftovers of a crash: it must stop, saying why."""
    from intake311.embedded import EmbeddedBrokerError, EmbeddedKafka, metadata_answers

    broker_dir = tmp_path / "broker"
    with EmbeddedKafka(storage="durable", data_dir=broker_dir) as first:
        second = EmbeddedKafka(storage="durable", data_dir=broker_dir)
        with pytest.raises(EmbeddedBrokerError, match="another intake311"):
            second.start()
        assert metadata_answers(first.port)
    # Released with the first: the directory can be used again.
    with EmbeddedKafka(storage="durable", data_dir=broker_dir) as again:
        assert metadata_answers(again.port)


def test_ephemeral_flag_chooses_the_memory_engine() -> None:
    from intake311.cli import _storage
    from intake311.settings import Settings

    settings = Settings()
    assert settings.kafka.embedded_storage == "durable"
    assert _storage(settings, ephemeral=True).kafka.embedded_storage == "memory"
    assert _storage(settings, ephemeral=False).kafka.embedded_storage == "durable"


def _exited(pid: int, timeout: float = 5.0) -> bool:
    """Whether our child ``pid`` has exited (reaping it), waiting at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.05)
    return False


def test_processes_left_by_a_killed_intake311_are_replaced(tmp_path: Path) -> None:
    """SIGKILL of intake311 alone (the OOM killer's way) leaves Tansu and SeaweedFS running in
    their own sessions, holding the data directory; the next start must clear them, not fail."""
    from intake311.embedded import EmbeddedKafka, metadata_answers

    broker_dir = tmp_path / "broker"
    crashed = EmbeddedKafka(storage="durable", data_dir=broker_dir)
    crashed.start()
    assert crashed.objectstore is not None
    left = [crashed.pid, crashed.objectstore.pid]
    crashed._release()  # what the kernel does for a dead holder; its processes keep running
    try:
        with EmbeddedKafka(storage="durable", data_dir=broker_dir) as after:
            assert metadata_answers(after.port)
            for pid in left:
                assert pid is not None
                assert _exited(pid), f"process {pid} of the crashed run is still running"
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, TypeError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
