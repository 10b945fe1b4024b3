"""Subscriptions: the packaged default, merging "*" with a department's own sinks, and errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sinks.jsonl import JsonlSinkConfig
from sinks.subscriptions import DEFAULT_SUBSCRIPTIONS_PATH, load_subscriptions, parse_subscriptions
from sinks.webhook import WebhookSinkConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subscriptions.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_default_file_gives_every_department_a_jsonl_sink() -> None:
    subs = load_subscriptions(None)
    assert set(subs.departments) == {"*", "emergency"}  # emergency: the router's copy department
    for department in ("public-works", "parks", "emergency", "anything-new"):
        sinks = subs.sinks_for(department)
        assert [(s.name, s.type) for s in sinks] == [("file", "jsonl")]
        assert isinstance(sinks[0], JsonlSinkConfig)
        assert sinks[0].path == "departments/{department}.jsonl"
    assert subs.source == str(DEFAULT_SUBSCRIPTIONS_PATH)


def test_default_file_shows_a_commented_webhook_example() -> None:
    lines = DEFAULT_SUBSCRIPTIONS_PATH.read_text(encoding="utf-8").splitlines()
    webhook_lines = [line.strip() for line in lines if "type: webhook" in line]
    assert webhook_lines and all(line.startswith("#") for line in webhook_lines)
    assert any("secret_env:" in line for line in lines)


def test_department_sinks_merge_with_and_override_star(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW_SECRET", "s3cret")
    path = write(
        tmp_path,
        """
        departments:
          "*":
            sinks:
              - {name: file, type: jsonl}
              - {name: audit, type: jsonl, path: "audit/{department}.jsonl"}
          public-works:
            sinks:
              - name: crew-dispatch
                type: webhook
                url: https://dispatch.example.gov/hook
                secret_env: PW_SECRET
              - {name: file, type: jsonl, path: "pw/{department}.jsonl"}
          parks:
            inherit: false
            sinks:
              - {name: only, type: jsonl}
    """,
    )
    subs = load_subscriptions(path)

    pw = subs.sinks_for("public-works")
    assert [(s.name, s.type) for s in pw] == [
        ("file", "jsonl"),
        ("audit", "jsonl"),
        ("crew-dispatch", "webhook"),
    ]
    assert isinstance(pw[0], JsonlSinkConfig) and pw[0].path == "pw/{department}.jsonl"
    assert isinstance(pw[2], WebhookSinkConfig)
    assert pw[2].signing_secret.get_secret_value() == "s3cret"

    assert [s.name for s in subs.sinks_for("roads")] == ["file", "audit"]
    assert subs.sinks_for("roads")[0].path == "departments/{department}.jsonl"  # type: ignore[attr-defined]
    assert [s.name for s in subs.sinks_for("parks")] == ["only"]

    pairs = subs.pairs(["roads", "public-works", "roads", "parks"])
    assert [(d, s.name) for d, s in pairs] == [
        ("roads", "file"),
        ("roads", "audit"),
        ("public-works", "file"),
        ("public-works", "audit"),
        ("public-works", "crew-dispatch"),
        ("parks", "only"),
    ]
    assert subs.unknown_departments(["roads", "parks"]) == ["public-works"]
    with pytest.raises(ValueError, match="must be a lowercase slug"):
        subs.sinks_for("Public Works")


def test_empty_department_entry_inherits_star() -> None:
    data = {"departments": {"*": {"sinks": [{"name": "file", "type": "jsonl"}]}, "roads": None}}
    subs = parse_subscriptions(data)
    assert [s.name for s in subs.sinks_for("roads")] == ["file"]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            """
            departments:
              roads:
                sinks:
                  - {name: pager, type: carrier-pigeon}
            """,
            [
                "department 'roads'",
                "sink 'pager'",
                "unknown sink type 'carrier-pigeon'",
                "known types: email, jsonl, open311, postgres, slack, webhook",
            ],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: file, type: jsonl}
                  - {name: file, type: jsonl, path: "b/{department}.jsonl"}
            """,
            ["department 'roads'", "duplicate sink name 'file'"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: hook, type: webhook, url: "https://x.example/h"}
            """,
            ["department 'roads'", "sink 'hook' (type 'webhook')", "exactly one of 'secret_env'"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: hook, type: webhook, url: "https://x.example/h", secret_env: NOT_SET_FOR_TEST}
            """,
            ["sink 'hook'", "environment variable NOT_SET_FOR_TEST is not set"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: hook, type: webhook, url: "ftp://x.example/h", secret: s}
            """,
            ["sink 'hook'", "url: url must be an http:// or https:// URL", "ftp://x.example/h"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: hook, type: webhook, url: "https://x.example/h", secret: s, retries: 3}
            """,
            ["sink 'hook'", "retries: Extra inputs are not permitted"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: Crew Dispatch, type: jsonl}
            """,
            ["sink 'Crew Dispatch'", "must be a lowercase slug"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {type: jsonl}
            """,
            ["department 'roads'", "sink #1 (type 'jsonl')", "name: Field required"],
        ),
        (
            """
            departments:
              roads:
                sinks:
                  - {name: file}
            """,
            ["sink 'file'", "sink has no 'type'", "known types:"],
        ),
        (
            """
            departments:
              Public Works:
                sinks: []
            """,
            ["department 'Public Works' must be a lowercase slug"],
        ),
        (
            """
            departments:
              roads:
                sink: []
            """,
            ["department 'roads'", "unknown keys ['sink']"],
        ),
        (
            """
            departments:
              roads:
                sinks: {name: file, type: jsonl}
            """,
            ["department 'roads'", "'sinks' must be a list"],
        ),
        ("sinks: []\n", ["expected a mapping with a 'departments' mapping"]),
        ("departments: {}\nextra: 1\n", ["unknown top-level keys ['extra']"]),
        ("departments: [\n", ["not valid YAML"]),
    ],
)
def test_errors_name_the_file_department_sink_and_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, expected: list[str]
) -> None:
    monkeypatch.delenv("NOT_SET_FOR_TEST", raising=False)
    path = write(tmp_path, yaml_text)
    with pytest.raises(ValueError) as info:
        load_subscriptions(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_subscriptions(tmp_path / "nope.yaml")
