"""The PostgreSQL case store and the ``postgres`` sink that fills it (see docs/case-store.md)."""

from sinks.postgres.migrations import ADVISORY_LOCK_KEY, Migration, MigrationError, load_migrations, migrate
from sinks.postgres.sink import PostgresSink, PostgresSinkConfig
from sinks.postgres.store import (
    EXTENDED_ATTRIBUTES,
    NO_DISTRICT,
    OPEN311_FIELDS,
    Case,
    CaseReport,
    CaseStore,
    DepartmentFigures,
    DistrictFigures,
    State,
    StatusEvent,
    parse_state,
    status_event_id,
)

__all__ = [
    "ADVISORY_LOCK_KEY",
    "EXTENDED_ATTRIBUTES",
    "NO_DISTRICT",
    "OPEN311_FIELDS",
    "Case",
    "CaseReport",
    "CaseStore",
    "DepartmentFigures",
    "DistrictFigures",
    "Migration",
    "MigrationError",
    "PostgresSink",
    "PostgresSinkConfig",
    "State",
    "StatusEvent",
    "load_migrations",
    "migrate",
    "parse_state",
    "status_event_id",
]
