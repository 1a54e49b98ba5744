"""The PostgreSQL archive of `[audit.retention]`: rotated file segments shipped into a table.

One row per segment, its stored bytes exactly as the hot file holds them (a zstd frame, or plain
lines when compression is off), inserted in one transaction: a crash mid-insert leaves no row, and
the segment name is the primary key, so a segment is never there twice. `verified_at` (with the
facts verify found) is set only after the row was read back from the server, verified on its own
and matched the hot copy; until then the row counts as not shipped (retention.py). An expired
segment keeps its row with `data` NULL and `expired_at` set, as the directory's manifest does.

Sync API over asyncpg (one private event loop per archive), for `tenantgate audit ship` and verify.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from .errors import AuditUnavailable
from .pgsink import quote_table

ARCHIVE_TABLE = "tenantgate_audit_archive"
_COLUMNS = ("segment text PRIMARY KEY, data bytea, sha256 text NOT NULL, first_seq bigint, last_seq bigint, "
            "last_mac text, last_ts text, shipped_at timestamptz NOT NULL DEFAULT now(), verified_at timestamptz, "
            "expired_at timestamptz")


class PgArchive:
    """The archive table `table` in the database at `dsn` (created on first use)."""

    def __init__(self, dsn: str, table: str = ARCHIVE_TABLE) -> None:
        self._dsn = dsn
        self._table = quote_table(table)
        self.name = f"postgres table {table}"

    def __repr__(self) -> str:
        return f"PgArchive({self.name!r})"  # never the DSN: it may hold a password

    def _run(self, *steps: tuple[str, str, tuple[Any, ...]]) -> list[Any]:
        """Run (method, query, args) steps in one transaction on a fresh connection."""
        import asyncpg  # lazy: a file-only CLI never loads it

        async def go() -> list[Any]:
            conn = await asyncpg.connect(self._dsn)
            try:
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} ({_COLUMNS})")
                async with conn.transaction():
                    return [await getattr(conn, method)(query.format(t=self._table), *args)
                            for method, query, args in steps]
            finally:
                await conn.close()

        try:
            return asyncio.run(go())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise AuditUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    def entries(self) -> dict[str, dict[str, object]]:
        """segment -> its row without the data (for what is shipped, verified, expired)."""
        rows = self._run(("fetch", "SELECT segment, sha256, first_seq, last_seq, last_mac, last_ts, verified_at, "
                                   "expired_at, data IS NOT NULL AS present FROM {t}", ()))[0]
        return {row["segment"]: dict(row) for row in rows}

    def put(self, segment: str, data: bytes, sha256: str) -> bool:
        """Insert a segment's bytes; False when a row for it is already there (nothing changed)."""
        status = self._run(("execute", "INSERT INTO {t} (segment, data, sha256) VALUES ($1, $2, $3) "
                                       "ON CONFLICT (segment) DO NOTHING", (segment, data, sha256)))[0]
        return bool(status == "INSERT 0 1")

    def data(self, segment: str) -> bytes | None:
        found: bytes | None = self._run(("fetchval", "SELECT data FROM {t} WHERE segment = $1", (segment,)))[0]
        return found

    def mark_verified(self, segment: str, facts: dict[str, object], when: datetime) -> None:
        self._run(("execute", "UPDATE {t} SET first_seq = $2, last_seq = $3, last_mac = $4, last_ts = $5, "
                              "verified_at = $6 WHERE segment = $1",
                   (segment, facts["first_seq"], facts["last_seq"], facts["last_mac"], facts["last_ts"], when)))

    def expire(self, segment: str, when: datetime) -> None:
        self._run(("execute", "UPDATE {t} SET data = NULL, expired_at = $2 WHERE segment = $1", (segment, when)))
