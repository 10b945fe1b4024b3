"""The operator CLI fails plainly and talks to the cluster as configured.

Configuration errors (a missing CA file, a missing subscriptions file, a topic name that
cannot exist) end as one line naming what to fix and exit status 2, never a traceback or a
client that retries for ever; and every Kafka client the operator commands build gets the
configured SASL/TLS options, as the pipeline's own clients do through ``make_broker``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from intake311 import ops
from intake311.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "intake311.example.yaml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No INTAKE311_* from the developer's shell; state under this test's directory."""
    import os

    for name in list(os.environ):
        if name.startswith("INTAKE311_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INTAKE311_DATA_DIR", str(tmp_path))


def one_line_error(result: Any) -> str:
    """The error line of a command that must have failed plainly (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_channels_with_the_example_config_names_the_missing_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the Twilio token set, sms and voice are valid and their health check builds a broker,
    # which loads the (absent) CA file of the example's SASL_SSL cluster.
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "test-token")
    monkeypatch.setenv("INTAKE311_KAFKA__SASL_PASSWORD", "test-password")
    line = one_line_error(runner.invoke(app, ["channels", "-c", str(EXAMPLE)]))
    assert line == "configuration error: kafka.ssl_cafile: /etc/ssl/certs/city-ca.pem: no such file"


def test_departments_with_the_example_config_names_the_missing_subscriptions_file() -> None:
    line = one_line_error(runner.invoke(app, ["departments", "-c", str(EXAMPLE), "--no-backlog"]))
    assert line.startswith("configuration error: subscriptions_file: /etc/intake311/subscriptions.yaml:")


@pytest.mark.parametrize("command", [["asyncapi"], ["departments", "--no-backlog"]])
def test_any_command_names_the_setting_of_a_missing_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "nowhere" / "routing.yaml"
    monkeypatch.setenv("INTAKE311_ROUTING_FILE", str(missing))
    line = one_line_error(runner.invoke(app, command))
    assert line.startswith(f"configuration error: routing_file: {missing}:")


def test_an_invalid_value_is_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE311_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")  # but no username/password
    monkeypatch.setenv("INTAKE311_KAFKA__BOOTSTRAP_SERVERS", "broker.city.internal:9093")
    line = one_line_error(runner.invoke(app, ["tail", "requests"]))
    assert "kafka.sasl_username" in line


def test_a_bug_is_not_disguised_as_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(ops, "department_rows", broken)
    result = runner.invoke(app, ["departments", "--no-backlog"])
    assert isinstance(result.exception, KeyError)


@pytest.mark.parametrize("topic", ["outbound:", "outbox:sms", "not a topic", "department:Public Works"])
def test_tail_of_a_topic_that_cannot_exist_fails_at_once(
    topic: str, sasl_ssl: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At once: before any client exists (aiokafka retried an illegal name every 100 ms for ever)."""
    import aiokafka

    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    line = one_line_error(runner.invoke(app, ["tail", topic]))
    assert "topic" in line
    assert sasl_ssl == []  # no client was built


# --- Kafka security for the operator's clients -----------------------------------------------


class Captured(Exception):
    """Raised by a fake client's start: the constructor's arguments were all the test needed."""


class FakeClient:
    """Stands in for an aiokafka client class; records how each instance was built."""

    made: ClassVar[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = []
    kind = "client"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FakeClient.made.append((self.kind, args, kwargs))

    async def start(self) -> None:
        raise Captured(self.kind)

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FakeConsumer(FakeClient):
    kind = "consumer"


class FakeAdmin(FakeClient):
    kind = "admin"


@pytest.fixture
def sasl_ssl(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """A SASL_SSL cluster in the environment and fake aiokafka clients that record their options."""
    for name, value in {
        "BOOTSTRAP_SERVERS": "broker.city.internal:9093",
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_MECHANISM": "SCRAM-SHA-512",
        "SASL_USERNAME": "intake311",
        "SASL_PASSWORD": "s3cret",
        "TOPIC_PREFIX": "city",
    }.items():
        monkeypatch.setenv(f"INTAKE311_KAFKA__{name}", value)
    FakeClient.made = []
    monkeypatch.setattr(ops, "AIOKafkaConsumer", FakeConsumer)
    monkeypatch.setattr(ops, "AIOKafkaAdminClient", FakeAdmin)
    return FakeClient.made


def assert_secured(options: dict[str, Any]) -> None:
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "intake311"
    assert options["sasl_plain_password"] == "s3cret"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["bootstrap_servers"] == ["broker.city.internal:9093"]


def test_tail_resolves_outbound_topics_and_connects_securely(sasl_ssl: list[Any]) -> None:
    result = runner.invoke(app, ["tail", "outbound:sms"])
    assert isinstance(result.exception, Captured), result.output
    [(kind, args, options)] = sasl_ssl
    assert kind == "consumer" and args == ("city.outbound.sms",)
    assert_secured(options)


def test_departments_backlog_connects_securely(sasl_ssl: list[Any]) -> None:
    result = runner.invoke(app, ["departments"])
    assert isinstance(result.exception, Captured), result.output
    assert {kind for kind, _, _ in sasl_ssl} == {"admin", "consumer"}
    for _, _, options in sasl_ssl:
        assert_secured(options)


def test_replay_connects_securely(sasl_ssl: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import intake311.bus

    async def topics_exist(*_: object) -> None:
        return None

    monkeypatch.setattr(intake311.bus, "ensure_topics", topics_exist)
    result = runner.invoke(app, ["replay"])
    assert isinstance(result.exception, Captured), result.output
    [(kind, _, options)] = sasl_ssl
    assert kind == "consumer"
    assert_secured(options)
