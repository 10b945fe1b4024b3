"""`intake311 up` as a user runs it: a real process, real HTTP, the embedded broker, clean exit."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port

pytestmark = pytest.mark.integration


def test_up_serves_the_form_delivers_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INTAKE311_")},
        "INTAKE311_DATA_DIR": str(tmp_path),
        "INTAKE311_WEB__PORT": str(port),
        "INTAKE311_LOG_FORMAT": "json",
    }
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "intake311.cli", "up"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("intake311 up did not serve /healthz within 60 s")
        bootstrap = (tmp_path / "run" / "embedded.bootstrap").read_text().strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap)

        page = httpx.post(
            f"{base}/",
            data={"description": "Pothole outside the school, very deep", "address": "12 Elm Street"},
            timeout=15,
        )
        assert page.status_code == 200
        ticket = re.search(r"\b([0-9A-Z]{4}-[0-9A-Z]{4})\b", page.text)
        assert ticket
        file = tmp_path / "departments" / "public-works.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (file.exists() and ticket.group(1) in file.read_text()):
            time.sleep(0.2)
        assert file.exists() and ticket.group(1) in file.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output[-2000:]
    assert "intake311 is running" in output and "embedded broker stopped" in output
    assert not (tmp_path / "run" / "embedded.bootstrap").exists()
    port_of_broker = int(bootstrap.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port_of_broker), 1):
        pass
