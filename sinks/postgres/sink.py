"""``type: postgres`` — keep every department's requests in the case store (PostgreSQL).

The case store is the system of record the Open311 ``GET requests`` endpoints and the status
flow read, so this sink is usually subscribed under ``"*"``. Every (department, postgres sink)
pair in a process shares one connection pool per DSN: nine departments do not open nine pools.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import psycopg
from pydantic import Field, PrivateAttr, SecretStr, model_validator

from intake311.secrets import env_value
from schemas.request import ServiceRequest
from sinks.base import Delivery, DeliveryError, SinkConfig, SinkContext
from sinks.postgres.store import CaseStore


class PostgresSinkConfig(SinkConfig):
    """Give ``dsn_env`` (preferred: DSNs carry passwords) or ``dsn``, not both.

    ``pool_size`` caps the connections of the pool shared by every sink with the same DSN in
    this process; ``migrate`` applies pending schema migrations at start.
    """

    type: Literal["postgres"] = "postgres"
    dsn: SecretStr | None = None
    dsn_env: str | None = None
    pool_size: int = Field(default=4, ge=1, le=100)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    migrate: bool = True

    _dsn: str = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_dsn(self) -> PostgresSinkConfig:
        # Resolved at load time: a missing DSN must stop the service at start, not at first delivery.
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError(
                "postgres needs exactly one of 'dsn_env' (an environment variable holding the"
                " connection string, preferred) or 'dsn'" + (" - both were given" if self.dsn else "")
            )
        if self.dsn_env is not None:
            value = env_value(self.dsn_env, "dsn_env")
        else:
            assert self.dsn is not None
            value = self.dsn.get_secret_value()
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            raise ValueError("the PostgreSQL connection string is not valid (libpq syntax or URI)") from exc
        self._dsn = value
        return self

    @property
    def connection_string(self) -> str:
        """The resolved DSN (a secret: never log it)."""
        return self._dsn

    def build(self, ctx: SinkContext) -> PostgresSink:
        return PostgresSink(self)


class _SharedStores:
    """One open ``CaseStore`` per (DSN, pool size, migrate) in this process, reference-counted."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, int, bool], tuple[CaseStore, int]] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, config: PostgresSinkConfig) -> CaseStore:
        key = (config.connection_string, config.pool_size, config.migrate)
        async with self._lock:
            if key in self._stores:
                store, users = self._stores[key]
                self._stores[key] = (store, users + 1)
                return store
            store = CaseStore(
                config.connection_string,
                max_size=config.pool_size,
                migrate=config.migrate,
                connect_timeout_s=config.connect_timeout_s,
            )
            await store.open()
            self._stores[key] = (store, 1)
            return store

    async def release(self, store: CaseStore) -> None:
        async with self._lock:
            for key, (held, users) in list(self._stores.items()):
                if held is store:
                    if users > 1:
                        self._stores[key] = (held, users - 1)
                        return
                    del self._stores[key]
                    break
        await store.close()


_shared = _SharedStores()


def _delivery_error(name: str, exc: Exception) -> DeliveryError:
    """Connection trouble, timeouts, deadlocks and serialisation failures may pass; bad data won't."""
    reason = f"postgres sink {name!r}: {type(exc).__name__}: {str(exc).strip()[:300]}"
    retryable = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError | TimeoutError)
    return DeliveryError(reason, retryable=retryable)


class PostgresSink:
    """Upserts requests into the case store; a batch is one transaction."""

    def __init__(self, config: PostgresSinkConfig, store: CaseStore | None = None) -> None:
        self.name = config.name
        self.config = config
        self._store = store
        self._shared = False

    @property
    def store(self) -> CaseStore:
        """The case store this sink writes to (after ``start``)."""
        if self._store is None:
            raise RuntimeError(f"postgres sink {self.name!r} is not started")
        return self._store

    async def start(self) -> None:
        if self._store is None:
            try:
                self._store = await _shared.acquire(self.config)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                raise _delivery_error(self.name, exc) from exc
            self._shared = True

    async def deliver(self, request: ServiceRequest, *, department: str, delivery_id: str) -> None:
        await self._write([(request, department)])

    async def deliver_many(self, deliveries: list[Delivery]) -> None:
        """The whole consumer batch in one transaction (one commit, one fsync on the server)."""
        await self._write([(d.request, d.department) for d in deliveries])

    async def _write(self, items: list[tuple[ServiceRequest, str | None]]) -> None:
        if self._store is None:
            await self.start()
        try:
            await self.store.upsert_many(items)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise _delivery_error(self.name, exc) from exc

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None and self._shared:
            self._shared = False
            await _shared.release(store)


__all__ = ["PostgresSink", "PostgresSinkConfig"]
