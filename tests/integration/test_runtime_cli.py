"""The embedded broker and the CLI against a real broker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from intake311.cli import app
from intake311.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_embedded_broker_starts_answers_and_stops() -> None:
    broker = EmbeddedKafka()
    broker.start()
    try:
        with socket.create_connection(("127.0.0.1", broker.port), 2):
            pass
    finally:
        broker.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass


def test_submit_publishes_and_tail_shows_it(kafka_bootstrap: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INTAKE311_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INTAKE311_KAFKA__TOPIC_PREFIX", "clitest")
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["submit", "Dead raccoon in the road at 40 Elm Street"])
    assert result.exit_code == 0, result.output
    ticket = result.stdout.strip().splitlines()[-1]
    assert len(ticket) == 9 and ticket[4] == "-"
    tailed = runner.invoke(app, ["tail", "contacts:operator", "--from-beginning", "--limit", "1"])
    assert tailed.exit_code == 0, tailed.output
    event = json.loads(tailed.stdout.strip().splitlines()[-1])
    assert event["topic"] == "clitest.contacts.operator"
    assert event["key"] == ticket
    assert event["value"]["request_id"] == ticket and event["value"]["channel"] == "operator"


def test_cli_errors_are_plain(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("INTAKE311_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    result = runner.invoke(app, ["run", "everything"])
    assert result.exit_code == 2 and "unknown stage" in result.output
    result = runner.invoke(app, ["submit", "pothole"])
    assert result.exit_code == 2 and "intake311 up" in result.output


def test_schemas_export_and_asyncapi_commands(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = subprocess.run(
        [sys.executable, "-m", "intake311.cli", "schemas", "export", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "raw-contact.schema.json").is_file()
    result = subprocess.run(
        [sys.executable, "-m", "intake311.cli", "asyncapi"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "INTAKE311_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)
    addresses = {c["address"] for c in spec["channels"].values()}
    assert "intake311.requests" in addresses and "intake311.department.public-works" in addresses


def test_asyncapi_documents_the_deadletter_status_and_outbound_topics(tmp_path: Path, monkeypatch) -> None:
    """Every topic an operator or another team consumes is in the document, with its payload."""
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INTAKE311_KAFKA__TOPIC_PREFIX", "doc")
    result = runner.invoke(app, ["asyncapi"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)
    addresses = {c["address"] for c in spec["channels"].values()}
    assert {"doc.deadletter", "doc.status", "doc.outbound.sms", "doc.outbound.email"} <= addresses
    schemas = set(spec["components"]["schemas"])
    assert {"DeadLetter", "StatusChange", "OutboundMessage"} <= schemas
