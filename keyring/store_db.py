"""DEK store in the backend database (asyncpg), the default.

``keys init`` creates::

    CREATE SCHEMA tenantgate;
    CREATE TABLE tenantgate.keys (
        tenant       text        NOT NULL,
        version      int         NOT NULL CHECK (version > 0),
        wrapped      bytea,                      -- NULL once destroyed
        kek_id       text        NOT NULL,       -- which KEK wrapped it
        created_at   timestamptz NOT NULL DEFAULT now(),
        destroyed_at timestamptz,                -- tombstone of a crypto-shred
        PRIMARY KEY (tenant, version),
        CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)));

Only wrapped DEKs are stored here; the KEK lives elsewhere (file, env, HSM, KMS).
Tenants never reach this schema: the rewriter refuses tables it does not know.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from .errors import KeyStoreError
from .quoting import quote_ident
from .store import KeyRecord

_COLUMNS = "tenant, version, wrapped, kek_id, created_at, destroyed_at"


class DatabaseKeyStore:
    """``tenantgate.keys`` over asyncpg (``connect_kwargs`` go to ``asyncpg.connect``)."""

    def __init__(self, dsn: str, *, schema: str = "tenantgate", **connect_kwargs: Any) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self.schema = schema
        self._table = f"{quote_ident(schema)}.keys"

    def __repr__(self) -> str:
        return f"DatabaseKeyStore(table={self.schema}.keys)"

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        # One short connection per operation: key operations are rare (a load per tenant per
        # cache_ttl), and nothing stays bound to one event loop.
        conn = None
        try:
            conn = await asyncpg.connect(self._dsn, **self._connect_kwargs)
            yield conn
        except asyncpg.UndefinedTableError:
            raise KeyStoreError(f"table {self.schema}.keys does not exist; run `tenantgate keys init`") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise KeyStoreError(f"key store {self.schema}.keys: {type(exc).__name__}: {exc}") from None
        finally:
            if conn is not None:
                await conn.close()

    async def initialize(self) -> None:
        async with self._conn() as conn, conn.transaction():
            # Serialise concurrent inits: IF NOT EXISTS alone races on the catalogs.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tenantgate.keys'))")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self._table} (
                    tenant text NOT NULL,
                    version int NOT NULL CHECK (version > 0),
                    wrapped bytea,
                    kek_id text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    destroyed_at timestamptz,
                    PRIMARY KEY (tenant, version),
                    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL)))"""
            )

    async def load(self, tenant: str) -> list[KeyRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {self._table} WHERE tenant = $1 ORDER BY version", tenant)
        return [KeyRecord(*row) for row in rows]

    async def list_all(self) -> list[KeyRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {self._table} ORDER BY tenant, version")
        return [KeyRecord(*row) for row in rows]

    async def insert(self, record: KeyRecord) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                f"INSERT INTO {self._table} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (tenant, version) DO NOTHING",
                record.tenant, record.version, record.wrapped, record.kek_id, record.created_at, record.destroyed_at,
            )
        return bool(status == "INSERT 0 1")

    async def update_wrapped(self, records: Sequence[KeyRecord]) -> None:
        async with self._conn() as conn, conn.transaction():
            for r in records:
                status = await conn.execute(
                    f"UPDATE {self._table} SET wrapped = $3, kek_id = $4 "
                    "WHERE tenant = $1 AND version = $2 AND destroyed_at IS NULL",
                    r.tenant, r.version, r.wrapped, r.kek_id,
                )
                if status != "UPDATE 1":
                    raise KeyStoreError(f"{self.schema}.keys: {r.tenant} v{r.version} missing or destroyed meanwhile")

    async def destroy(self, tenant: str, when: datetime) -> list[int]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"UPDATE {self._table} SET wrapped = NULL, destroyed_at = $2 "
                "WHERE tenant = $1 AND destroyed_at IS NULL RETURNING version",
                tenant, when,
            )
        return sorted(row["version"] for row in rows)

    async def resurrect(self, record: KeyRecord) -> None:
        async with self._conn() as conn:
            await conn.execute(
                f"UPDATE {self._table} SET wrapped = $3, kek_id = $4, destroyed_at = NULL "
                "WHERE tenant = $1 AND version = $2 AND destroyed_at IS NOT NULL",
                record.tenant, record.version, record.wrapped, record.kek_id,
            )

    async def close(self) -> None:
        return None
