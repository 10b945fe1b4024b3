"""A stage started before its broker waits for it instead of exiting (compose, Kubernetes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intake311.embedded import EmbeddedKafka
from tests.support import free_port

pytestmark = pytest.mark.integration


def test_a_stage_started_before_the_broker_waits_and_then_starts(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "router.log"
    env = {
        **os.environ,
        "INTAKE311_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "INTAKE311_KAFKA__TOPIC_PREFIX": "firstcontact",
        "INTAKE311_DATA_DIR": str(tmp_path),
        "INTAKE311_LOG_LEVEL": "INFO",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "intake311.cli", "run", "router"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "broker not reachable yet" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"the stage exited without a broker: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(2)  # a few more refused tries: it must still be running
        assert proc.poll() is None, log.read_text()[-2000:]
        with EmbeddedKafka(port=port):
            deadline = time.monotonic() + 60
            while "stages started" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            proc.terminate()
            assert proc.wait(20) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
