"""Versioned schema migrations for the case store: numbered SQL files, applied once, in order.

``migrations/NNNN_name.sql`` files are applied in number order, each in its own transaction
together with its row in ``schema_migrations`` (so a failed file leaves no half-applied
version). Every process runs ``migrate`` at start under a PostgreSQL advisory lock: when
several sink processes start together, one applies the files and the others wait, then find
nothing to do. A file edited after it was applied is reported (its checksum changed) rather
than silently ignored: add a new file instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg

from intake311.logging import get_logger

log = get_logger(__name__)

# Any constant works as long as nothing else in the database uses it; derived from the name.
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"intake311.case-store.migrations").digest()[:8], "big", signed=True
)
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The database's schema history does not match the migration files."""


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The packaged migration files, in version order; refuses gaps and duplicate numbers."""
    found: dict[int, Migration] = {}
    for entry in files("sinks.postgres").joinpath("migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version:04d}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, found {versions}")
    return [found[v] for v in versions]


async def migrate(conn: psycopg.AsyncConnection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations on ``conn`` (autocommit); return the versions applied now.

    Holds a session advisory lock for the whole run, so concurrent starters serialise and
    ``CREATE TABLE`` never races; the lock is released even when a migration fails.
    """
    pending_files = load_migrations() if migrations is None else migrations
    if not conn.autocommit:
        await conn.set_autocommit(True)
    await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        await conn.execute(_BOOKKEEPING)
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
        applied = {int(version): checksum for version, checksum in await cur.fetchall()}
        known = {m.version for m in pending_files}
        if unknown := sorted(set(applied) - known):
            # A newer release migrated this database; running older code against it is unsafe.
            raise MigrationError(f"database has migrations this code does not know: {unknown}")
        done: list[int] = []
        for migration in pending_files:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name}.sql changed after it was"
                        " applied; add a new numbered file instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            log.info("case store migration applied", version=migration.version, name=migration.name)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


__all__ = ["ADVISORY_LOCK_KEY", "Migration", "MigrationError", "load_migrations", "migrate"]
