"""``web.workers = 2`` as a user runs it: two web processes on one port, one broker, one stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie has stopped


def test_two_workers_share_the_port_deliver_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INTAKE311_")},
        "INTAKE311_DATA_DIR": str(tmp_path),
        "INTAKE311_WEB__PORT": str(port),
        "INTAKE311_WEB__WORKERS": "2",
        "INTAKE311_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "up.log"
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "intake311.cli", "up"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    worker: int | None = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()[-2000:]
            lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
            started = [x for x in lines if x.get("event") == "web workers started"]
            # Every process's uvicorn logs its own startup once its socket is bound.
            listening = [x for x in lines if x.get("event") == "Application startup complete."]
            if started and len(listening) >= 2:
                [worker] = started[0]["pids"]
                break
            time.sleep(0.3)
        else:
            pytest.fail("two web workers were not listening within 90 s:\n" + log_path.read_text()[-2000:])
        assert worker is not None and worker != process.pid and _alive(worker)

        tickets = []
        for n in range(20):  # a new connection each: the kernel spreads them over both workers
            with httpx.Client(base_url=base, timeout=15) as client:
                response = client.post(
                    "/open311/v2/requests.json",
                    data={
                        "api_key": "demo-key",
                        "service_code": "pothole",
                        "description": f"Deep pothole number {n} in the right lane",
                        "address_string": f"{n + 1} Elm Street",
                    },
                )
            assert response.status_code == 201, response.text
            tickets.append(response.json()[0]["service_request_id"])
        file = tmp_path / "departments" / "public-works.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            delivered = (
                {json.loads(x)["request_id"] for x in file.read_text().splitlines()}
                if file.exists()
                else set()
            )
            if set(tickets) <= delivered:
                break
            time.sleep(0.2)
        assert set(tickets) <= delivered and len(set(tickets)) == 20
    finally:
        process.send_signal(signal.SIGTERM)  # what an orchestrator sends: a clean stop, exit 0
        try:
            code = process.wait(40)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    output = log_path.read_text()
    assert code == 0, output[-2000:]
    assert "embedded broker stopped" in output  # the process unwound: it did not die in uvicorn
    deadline = time.monotonic() + 10
    while worker is not None and _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker is not None and not _alive(worker), "the spawned web worker outlived the process"
