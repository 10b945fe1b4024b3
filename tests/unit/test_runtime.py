"""Settings, security, logging redaction, the seen-store and topic names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from intake311.bus import security_for
from intake311.dedupe import SeenStore
from intake311.logging import configure_logging, get_logger
from intake311.settings import CONFIG_ENV, Settings, load_settings
from schemas import Sender, SenderKind, mask
from schemas.export import export_json_schemas
from schemas.topics import Topics


def test_settings_from_env_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "intake311.yaml"
    config.write_text("kafka:\n  partitions: 6\n  topic_prefix: city\ndata_dir: /srv/311\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("INTAKE311_KAFKA__BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("INTAKE311_DATA_DIR", "/env/wins")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert not settings.kafka.embedded
    assert settings.kafka.partitions == 6
    assert settings.data_dir == Path("/env/wins")
    assert settings.topics.requests == "city.requests"
    assert settings.kafka.consumer_session_timeout_ms == 10000


def test_defaults_mean_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    settings = Settings()
    assert settings.kafka.embedded
    assert settings.data_dir == Path("var")
    assert settings.kafka.consumer_session_timeout_ms == 2000


def test_bad_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match="partitions"):
        Settings(kafka={"partitions": 0})
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_settings(tmp_path / "missing.yaml")


def test_sasl_security(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    kafka = Settings(
        kafka={
            "bootstrap_servers": "k:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "intake",
            "sasl_password": "s3cret",
        }
    ).kafka
    security = security_for(kafka)
    assert type(security).__name__ == "SASLScram512"
    assert security is not None and security.use_ssl
    assert "s3cret" not in repr(kafka)
    with pytest.raises(ValueError, match="sasl_username"):
        security_for(Settings(kafka={"security_protocol": "SASL_PLAINTEXT"}).kafka)
    assert security_for(Settings().kafka) is None


def test_logs_are_json_and_redact_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    get_logger("test").info("hello", request_id="K7M4-QPXA", api_key="abc", token="t")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "hello" and line["request_id"] == "K7M4-QPXA"
    assert line["api_key"] == "***" and line["token"] == "***"
    logging.getLogger().handlers.clear()


def test_masking_personal_data() -> None:
    assert mask("+12035551234", SenderKind.PHONE) == "***34"
    assert mask("jane.doe@example.org", SenderKind.EMAIL) == "j***@example.org"
    assert Sender(kind=SenderKind.PHONE, address="+12035551234").masked() == "***34"
    assert mask(None) == "-"


def test_seen_store_survives_reopen(tmp_path: Path) -> None:
    store = SeenStore(tmp_path / "seen.sqlite3")
    assert store.unseen("a", ["1", "2"]) == {"1", "2"}
    store.mark("a", ["1"])
    assert store.unseen("a", ["1", "2"]) == {"2"}
    assert store.unseen("b", ["1"]) == {"1"}  # namespaces are independent
    store.close()
    assert SeenStore(tmp_path / "seen.sqlite3").unseen("a", ["1", "2"]) == {"2"}


def test_topic_names_are_defined_once() -> None:
    topics = Topics("city")
    assert topics.contacts("sms") == "city.contacts.sms"
    assert topics.department("public-works") == "city.department.public-works"
    assert topics.outbound("sms") == "city.outbound.sms"
    assert (topics.requests, topics.deadletter, topics.status) == (
        "city.requests",
        "city.deadletter",
        "city.status",
    )
    with pytest.raises(ValueError):
        topics.department("Public Works")


def test_schema_export(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    names = sorted(p.name for p in written)
    assert names == [
        "dead-letter.schema.json",
        "external-ref.schema.json",
        "outbound-message.schema.json",
        "raw-contact.schema.json",
        "service-request.schema.json",
        "status-change.schema.json",
    ]
    schema = json.loads((tmp_path / "service-request.schema.json").read_text())
    assert "request_id" in schema["required"] and "service_code" in schema["properties"]


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/intake311.example.yaml loads, and its channels validate (docs that stay true)."""
    from channels.plugin import configured_channels

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token-0123456789abcdef0123456789ab")
    monkeypatch.setenv("CALL_CENTRE_SECRET", "call-centre-secret-0123456789")
    example = Path(__file__).resolve().parents[2] / "deploy" / "intake311.example.yaml"
    settings = load_settings(example)
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.partitions == 6
    assert [plugin.name for plugin, _ in configured_channels(settings)] == ["sms", "voice"]
