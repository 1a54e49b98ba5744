"""PostgreSQL table sink (asyncpg), with its own DSN so the audit can live in another database.

Each record is one row; `record` holds the exact canonical line (jsonb would re-encode it and break
the hash), the other columns exist for queries. A batch is one transaction: durable on COMMIT with
the server's synchronous_commit (keep it on for the audit database). Rows are only ever inserted.

Liveness: the writer's connection holds a session advisory lock on the table (WRITER_LOCK_SQL) for
as long as it writes. It is the table's equivalent of the file sink's flock: a reader sees it in
pg_locks without taking it, and the server drops it when the writer's connection ends, so a
crashed or killed writer (whose chain has no chain_end) is told apart from a live one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from tenantgate.keyring.quoting import quote_qualified

from .errors import AuditUnavailable
from .lean import chain_value, ts_text
from .record import SealedRecord
from .sink import Head, OpenResult


def quote_table(table: str) -> str:
    return quote_qualified(*table.split("."))


# Two-key advisory lock (classid, objid): a constant naming tenantgate's audit writer, and the table's
# oid (unique within its database), so writers of different tables never contend.
_LOCK_CLASS = 0x54474155  # "TGAU"
WRITER_LOCK_SQL = "SELECT pg_try_advisory_lock($1::int4, $2::regclass::oid::int4)"
WRITER_HOLDER_SQL = (
    "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.classid = $1::int4::oid AND l.objid = $2::regclass::oid "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


# The server ends a session whose peer vanished (host down, no FIN) after ~25 s of silence instead of
# the OS default of hours: only then is the lock, and so "log open", released for a dead writer.
_SESSION = {"application_name": "tenantgate audit writer", "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}


def lock_args(table: str) -> tuple[int, str]:
    """Arguments of WRITER_LOCK_SQL / WRITER_HOLDER_SQL for `table`."""
    return _LOCK_CLASS, quote_table(table)


def create_table_sql(table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {quote_table(table)} ("
            "seq bigint PRIMARY KEY, ts timestamptz NOT NULL, kind text NOT NULL, tenant text, "
            "username text, decision text, hash text NOT NULL, record text NOT NULL)")


class PostgresSink:
    """Writes sealed records to `table` in the database at `dsn` (created if missing)."""

    def __init__(self, dsn: str, *, table: str = "tenantgate_audit", connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._table = quote_table(table)
        self._lock = lock_args(table)
        self._create = create_table_sql(table)
        self.name = f"postgres table {table}"
        self._timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None

    def __repr__(self) -> str:
        return f"PostgresSink({self.name!r})"  # never the DSN: it may hold a password

    async def open(self) -> OpenResult:
        await self.close()
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout, server_settings=_SESSION)
            try:
                await conn.execute(self._create)
                # Before reading the head: a second writer would fork the chain (same seqs, other macs).
                if not await conn.fetchval(WRITER_LOCK_SQL, *self._lock):
                    raise AuditUnavailable(f"{self.name}: another writer holds the table's writer lock "
                                           "(one writer per table; give each instance its own table)")
                row = await conn.fetchrow(f"SELECT record FROM {self._table} ORDER BY seq DESC LIMIT 1")
            except BaseException:
                await conn.close()
                raise
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise AuditUnavailable(f"{self.name}: cannot open: {type(exc).__name__}: {exc}") from exc
        self._conn = conn
        if row is None:
            return OpenResult(None)
        rec = json.loads(row["record"])
        return OpenResult(Head(int(rec["seq"]), chain_value(rec), rec["kind"]))

    async def write(self, records: Sequence[SealedRecord]) -> None:
        if self._conn is None:
            raise AuditUnavailable(f"{self.name}: not open")
        rows = [(r.seq, _ts(r), r.kind, r.record.get("tenant"), r.record.get("user"),
                 r.record.get("decision"), r.hash, r.line[:-1].decode("utf-8")) for r in records]
        try:
            async with self._conn.transaction():
                await self._conn.executemany(
                    f"INSERT INTO {self._table} (seq, ts, kind, tenant, username, decision, hash, record) "
                    "VALUES ($1, $2::text::timestamptz, $3, $4, $5, $6, $7, $8)", rows)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise AuditUnavailable(f"{self.name}: cannot write: {type(exc).__name__}: {exc}") from exc

    def rotation_due(self) -> bool:
        return False

    async def rotate(self) -> str:
        raise NotImplementedError("a table sink does not rotate")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=self._timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()


def _ts(record: SealedRecord) -> str:
    ts = record.record["ts"]
    return ts_text(ts) if isinstance(ts, int) else str(ts)
