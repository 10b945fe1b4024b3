"""Helpers shared by the channel tests, unit and end to end: local servers, fakes, pipeline settings.

Channel-specific fakes (Twilio, mail relay, X, Mastodon) stay beside their tests in the
``test_*_support`` / ``test_*_fakes`` modules; what they had in common lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from channels.plugin import ChannelPlugin
from intake311.bus import PublishError
from intake311.settings import Settings
from schemas import RawContact
from schemas.deadletter import DeadLetter
from schemas.outbound import OutboundMessage

P = TypeVar("P", bound=ChannelPlugin)

# --- local servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serving(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Run the ASGI ``app`` with uvicorn on a local port (a free one by default); yields its URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def asgi_client(app: Any, base_url: str = "http://testserver") -> httpx.AsyncClient:
    """An HTTP client calling ``app`` in process (no port)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


# --- PostgreSQL (the case store) --------------------------------------------------------------

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=3)


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """A new empty database on the local server; dropped afterwards. Yields its DSN."""
    name = f"intake311_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with postgres_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


# --- what a channel publishes to -------------------------------------------------------------------


class FakePublisher:
    """Records published contacts instead of sending them to Kafka.

    ``fail``: every publish raises it until it is set back to None. ``fail_next``: that many
    publishes raise ``PublishError`` (the broker down for a moment).
    """

    def __init__(self) -> None:
        self.contacts: list[RawContact] = []
        self.fail: Exception | None = None
        self.fail_next = 0

    async def publish(self, contact: RawContact) -> None:
        if self.fail is not None:
            raise self.fail
        if self.fail_next:
            self.fail_next -= 1
            raise PublishError("broker down (test)")
        self.contacts.append(contact)


class FakeOutbox:
    """Keeps queued messages (the channels stage would send them later) and dead letters.

    ``fail_dead_letters``: the dead-letter topic is unreachable (``dead_letter`` raises).
    """

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []
        self.dead_letters: list[DeadLetter] = []
        self.fail_dead_letters = False

    async def send(self, *messages: OutboundMessage) -> None:
        self.messages.extend(messages)

    async def dead_letter(self, letter: DeadLetter) -> None:
        if self.fail_dead_letters:
            raise PublishError("dead-letter topic down (test)")
        self.dead_letters.append(letter)


def published(plugin: ChannelPlugin) -> FakePublisher:
    """The fake publisher of a plugin built with one."""
    return plugin.context.publisher  # type: ignore[return-value]


def queued(plugin: ChannelPlugin) -> FakeOutbox:
    """The fake outbox of a plugin built with one."""
    return plugin.context.outbox  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def started(plugin: P) -> AsyncIterator[P]:
    """``plugin`` started; stopped (and its HTTP client closed) afterwards."""
    await plugin.start()
    try:
        yield plugin
    finally:
        await plugin.stop()
        await plugin.context.http.aclose()


# --- end-to-end pipelines ----------------------------------------------------------------------


def jsonl_subscriptions(data_dir: Path) -> Path:
    """A subscriptions file sending every department's requests to its JSONL file."""
    subscriptions = data_dir / "subscriptions.yaml"
    subscriptions.write_text('departments:\n  "*":\n    sinks:\n      - {name: file, type: jsonl}\n')
    return subscriptions


def pipeline_settings(data_dir: Path, kafka_bootstrap: str, topic_prefix: str, **values: Any) -> Settings:
    """Settings for a pipeline on the test broker, with topics of its own (``topic_prefix`` + random)."""
    return Settings(
        data_dir=data_dir,
        kafka={
            "bootstrap_servers": [kafka_bootstrap],
            "topic_prefix": f"{topic_prefix}{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 2000,
        },
        retry_backoff_s=0.05,
        **values,
    )


@dataclass
class DepartmentFiles:
    """Reads what the JSONL sink wrote under ``settings.data_dir``."""

    settings: Settings

    def lines(self, department: str) -> list[dict[str, Any]]:
        file = self.settings.data_dir / "departments" / f"{department}.jsonl"
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    def for_ticket(self, department: str, ticket: str) -> list[dict[str, Any]]:
        return [line for line in self.lines(department) if line["request_id"] == ticket]


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    """``../shared/data/<name>``: skip with the reason when it is absent, but fail under CI
    (CI always has the shared data, so a missing file there is a broken run, not a skip)."""
    path = SHARED_DATA / name
    if not path.exists():
        reason = f"shared dataset file not present: {path} (see ../shared/data/README.md)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so tests on the real data must run")
        pytest.skip(reason)
    return path
