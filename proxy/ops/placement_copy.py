"""Copy one tenant's tables to a new placement: prepare the target, bulk copy, delta sync, verify.

The source is only ever read here. Tables are addressed as (schema, name) pairs; a
`MovedTable` pairs a source table with its copy and says whether only the tenant's
rows move (scoped tables) or all of them (reference tables: the tenant's own copy).
Row identity across the two sides is ``md5(row::text)``, so both connections must
render values alike: `TEXT_SETTINGS` pins the settings that change ``row::text``.

>>> qualified(("public", "orders")), qualified(("t_acme", 'we"ird'))
('"public"."orders"', '"t_acme"."we""ird"')
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from tenantgate.keyring.quoting import quote_ident, quote_qualified
from tenantgate.proxy.sandbox.pgcluster import find_pg_bin

__all__ = [
    "TEXT_SETTINGS",
    "Checksum",
    "CopyError",
    "MovedTable",
    "TableShape",
    "bulk_copy",
    "checksum",
    "clear_target",
    "copy_row_security",
    "delete_tenant_rows",
    "delta_sync",
    "describe",
    "dump_ddl",
    "fk_order",
    "qualified",
    "sync_sequences",
    "target_checksum",
]

# Everything that changes how row::text renders a value, pinned on both sides of a comparison.
TEXT_SETTINGS = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}

Name = tuple[str, str]
Progress = Callable[[str], None]

_KEY_CHUNK = 5000  # primary keys per statement in the delta sync
_STAGE = "tenantgate_stage"  # the delta sync's temporary table on the target


class CopyError(Exception):
    """A copy step that failed; the message names the table and what went wrong."""


def qualified(name: Name) -> str:
    return quote_qualified(*name)


@dataclass(frozen=True)
class MovedTable:
    source: Name
    target: Name
    column: str | None  # the tenant column of a scoped table; None: a reference table (all rows)
    template: Name | None = None  # the shared table whose definition a new copy takes (default: source)
    shared_target: bool = False  # the target is a shared table: other tenants' rows are there too

    @property
    def label(self) -> str:
        return f"{self.source[0]}.{self.source[1]}"

    @property
    def definition(self) -> Name:
        return self.template or self.source

    def target_where(self, alias: str, first_param: int) -> str:
        """What of the target is the copy: all of it, or the tenant's rows of a shared table."""
        if not self.shared_target:
            return "TRUE"
        assert self.column is not None
        return f"{alias}.{quote_ident(self.column)} = ${first_param}"

    def target_args(self, tenant: str) -> list[object]:
        return [tenant] if self.shared_target else []


@dataclass(frozen=True)
class TableShape:
    """What the copy needs to know about a source table."""

    columns: tuple[str, ...]  # stored columns in attnum order (generated columns left out)
    pk: tuple[str, ...]  # primary key columns, () when there is none
    pk_types: tuple[str, ...]  # their format_type(), for typed key arrays


@dataclass(frozen=True)
class Checksum:
    count: int
    digest: str

    def __str__(self) -> str:
        return f"{self.count} rows, checksum {self.digest}"


async def describe(conn: asyncpg.Connection, name: Name) -> TableShape:
    oid = await conn.fetchval("SELECT to_regclass($1)::oid", qualified(name))
    if oid is None:
        raise CopyError(f"table {qualified(name)} does not exist in the source database")
    columns = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped"
        " AND attgenerated = '' ORDER BY attnum",
        oid,
    )
    pk = await conn.fetch(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = $1 AND i.indisprimary
        ORDER BY k.n
        """,
        oid,
    )
    return TableShape(tuple(r[0] for r in columns), tuple(r[0] for r in pk), tuple(r[1] for r in pk))


async def fk_order(conn: asyncpg.Connection, tables: Sequence[MovedTable]) -> list[MovedTable]:
    """The tables with every foreign-key parent ahead of its children (the copy order)."""
    by_oid: dict[int, MovedTable] = {}
    for t in tables:
        by_oid[await conn.fetchval("SELECT to_regclass($1)::oid", qualified(t.source))] = t
    edges = await conn.fetch(
        "SELECT conrelid::oid, confrelid::oid FROM pg_constraint"
        " WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[])",
        list(by_oid),
    )
    parents: dict[int, set[int]] = {oid: set() for oid in by_oid}
    for child, parent in edges:
        if child != parent:
            parents[child].add(parent)
    ordered: list[MovedTable] = []
    done: set[int] = set()
    while len(done) < len(by_oid):
        ready = [o for o in by_oid if o not in done and parents[o] <= done]
        if not ready:  # a foreign-key cycle: no order satisfies it, keep the configured one
            ready = [o for o in by_oid if o not in done]
        for oid in ready:
            done.add(oid)
            ordered.append(by_oid[oid])
    return ordered


def _tenant_filter(table: MovedTable, first_param: int) -> str:
    if table.column is None:
        return "TRUE"
    return f"t.{quote_ident(table.column)} = ${first_param}"


def _source_args(table: MovedTable, tenant: str) -> list[object]:
    return [] if table.column is None else [tenant]


async def checksum(conn: asyncpg.Connection, name: Name, table: MovedTable | None, tenant: str) -> Checksum:
    """Row count and an order-independent digest (two sums of md5(row::text) halves).

    ``table`` given: only what moves from the source (the tenant's rows of a scoped table);
    None: every row of ``name`` (the copy, which holds nothing else).
    """
    where = "TRUE" if table is None else _tenant_filter(table, 1)
    args = [] if table is None else _source_args(table, tenant)
    row = await conn.fetchrow(
        "SELECT count(*), coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0)::text || '-'"
        " || coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0)::text || '-'"
        " || coalesce(sum(('x' || substr(h, 31, 2))::bit(8)::int), 0)::text"
        f" FROM (SELECT md5(t::text) AS h FROM {qualified(name)} t WHERE {where}) s",
        *args,
    )
    assert row is not None
    return Checksum(row[0], row[1])


async def target_checksum(conn: asyncpg.Connection, table: MovedTable, tenant: str) -> Checksum:
    """The copy's checksum (the tenant's rows only, when the target is a shared table)."""
    return await checksum(conn, table.target, table if table.shared_target else None, tenant)


async def clear_target(conn: asyncpg.Connection, table: MovedTable, tenant: str) -> None:
    """Empty the copy: a run that stopped part-way left rows (never another tenant's)."""
    await conn.execute(
        f"DELETE FROM {qualified(table.target)} t WHERE {table.target_where('t', 1)}", *table.target_args(tenant)
    )


async def _pipe(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    query: str,
    args: Sequence[object],
    target: Name,
    columns: Sequence[str],
) -> int:
    """Stream a binary COPY out of ``src`` into ``target`` on ``dst``; the number of rows copied."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=32)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    async def produce() -> None:
        await src.copy_from_query(query, *args, output=queue.put, format="binary")
        await queue.put(None)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(produce())
            status = tasks.create_task(
                dst.copy_to_table(
                    target[1], schema_name=target[0], columns=list(columns), source=chunks(), format="binary"
                )
            )
    except ExceptionGroup as group:  # one side failed (the other was cancelled): its error is the story
        raise group.exceptions[0] from None
    return int(status.result().split()[-1])


async def _pipe_to_copy(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    query: str,
    args: Sequence[object],
    table: MovedTable,
    columns: Sequence[str],
) -> int:
    """`_pipe` into the table's copy; a shared target (row-level security refuses COPY into it) through
    a temporary table. Runs inside the caller's transaction."""
    if not table.shared_target:
        return await _pipe(src, dst, query, args, table.target, columns)
    cols = ", ".join(quote_ident(c) for c in columns)
    await dst.execute(
        f"CREATE TEMPORARY TABLE {_STAGE} ON COMMIT DROP AS SELECT {cols} FROM {qualified(table.target)} WITH NO DATA"
    )
    n = await _pipe(src, dst, query, args, ("pg_temp", _STAGE), columns)
    await dst.execute(
        f"INSERT INTO {qualified(table.target)} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {_STAGE}"
    )
    await dst.execute(f"DROP TABLE {_STAGE}")
    return n


def _row(values: Sequence[str]) -> str:
    """A row constructor for several values, the value itself for one."""
    return "(" + ", ".join(values) + ")" if len(values) > 1 else values[0]


async def bulk_copy(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    table: MovedTable,
    shape: TableShape,
    tenant: str,
    batch_rows: int,
    progress: Progress,
) -> int:
    """Copy what moves of ``table`` into its (empty) copy, in primary-key batches; rows copied."""
    where = _tenant_filter(table, 1)
    args = _source_args(table, tenant)
    total = await src.fetchval(f"SELECT count(*) FROM {qualified(table.source)} t WHERE {where}", *args)
    cols = ", ".join(f"t.{quote_ident(c)}" for c in shape.columns)
    source = qualified(table.source)
    copied = 0
    progress(f"copy {table.label}: 0/{total} rows")
    if not shape.pk:
        copied = await _pipe_to_copy(
            src, dst, f"SELECT {cols} FROM {source} t WHERE {where}", args, table, shape.columns
        )
        progress(f"copy {table.label}: {copied}/{max(total, copied)} rows")
        return copied
    pk = [f"t.{quote_ident(c)}" for c in shape.pk]
    order = ", ".join(pk)
    last: tuple[object, ...] | None = None
    while True:
        n = len(args)
        after = "" if last is None else f" AND {_row(pk)} > {_row([f'${n + i + 1}' for i in range(len(pk))])}"
        bound_args = [*args, *(last or ())]
        bound = await src.fetchrow(
            f"SELECT {order} FROM {source} t WHERE {where}{after} ORDER BY {order} OFFSET {batch_rows - 1} LIMIT 1",
            *bound_args,
        )
        upto = ""
        query_args = bound_args
        if bound is not None:
            m = len(bound_args)
            upto = f" AND {_row(pk)} <= {_row([f'${m + i + 1}' for i in range(len(pk))])}"
            query_args = [*bound_args, *bound]
        copied += await _pipe_to_copy(
            src,
            dst,
            f"SELECT {cols} FROM {source} t WHERE {where}{after}{upto} ORDER BY {order}",
            query_args,
            table,
            shape.columns,
        )
        progress(f"copy {table.label}: {copied}/{max(total, copied)} rows")
        if bound is None:
            return copied
        last = tuple(bound)


@dataclass
class Delta:
    """What the delta sync found for one table: keys to upsert and keys to delete in the copy."""

    table: MovedTable
    shape: TableShape
    upsert: list[tuple[object, ...]]
    delete: list[tuple[object, ...]]
    replace: bool = False  # no primary key and the copy differs: replace it whole


async def _hashes(conn: asyncpg.Connection, query: str, args: Sequence[object]) -> dict[tuple[object, ...], str]:
    return {tuple(r)[:-1]: r[-1] for r in await conn.fetch(query, *args)}


async def find_delta(
    src: asyncpg.Connection, dst: asyncpg.Connection, table: MovedTable, shape: TableShape, tenant: str
) -> Delta:
    """Compare (primary key, md5(row::text)) on both sides; a table without a key by checksum."""
    if not shape.pk:
        same = await checksum(src, table.source, table, tenant) == await target_checksum(dst, table, tenant)
        return Delta(table, shape, [], [], replace=not same)
    keys = ", ".join(f"t.{quote_ident(c)}" for c in shape.pk)
    where = _tenant_filter(table, 1)
    source = await _hashes(
        src,
        f"SELECT {keys}, md5(t::text) FROM {qualified(table.source)} t WHERE {where}",
        _source_args(table, tenant),
    )
    target = await _hashes(
        dst,
        f"SELECT {keys}, md5(t::text) FROM {qualified(table.target)} t WHERE {table.target_where('t', 1)}",
        table.target_args(tenant),
    )
    upsert = [k for k, h in source.items() if target.get(k) != h]
    delete = [k for k in target if k not in source]
    return Delta(table, shape, upsert, delete)


def _key_match(shape: TableShape, alias: str, first: int) -> str:
    """``(alias.pk...) IN (unnest of typed arrays $first...)``."""
    cols = _row([f"{alias}.{quote_ident(c)}" for c in shape.pk])
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(shape.pk_types))
    return f"{cols} IN (SELECT * FROM unnest({arrays}))"


def _columns_of(keys: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    return [[k[i] for k in keys] for i in range(width)]


async def apply_upserts(
    src: asyncpg.Connection, dst: asyncpg.Connection, delta: Delta, tenant: str, progress: Progress
) -> None:
    """New and changed rows: staged in a temporary table on the target, then INSERT ... ON CONFLICT."""
    table, shape = delta.table, delta.shape
    if not delta.replace and not delta.upsert:
        return
    cols = ", ".join(quote_ident(c) for c in shape.columns)
    where = _tenant_filter(table, 1)
    args = _source_args(table, tenant)
    # staged in a temporary table: COPY straight into the copy would fail once it has row-level security
    async with dst.transaction():
        await dst.execute(
            f"CREATE TEMPORARY TABLE {_STAGE} ON COMMIT DROP AS SELECT {cols} FROM {qualified(table.target)}"
            " WITH NO DATA"
        )
        if delta.replace:
            select = ", ".join("t." + quote_ident(c) for c in shape.columns)
            query = f"SELECT {select} FROM {qualified(table.source)} t WHERE {where}"
            staged = await _pipe(src, dst, query, args, ("pg_temp", _STAGE), shape.columns)
            await clear_target(dst, table, tenant)
            await dst.execute(
                f"INSERT INTO {qualified(table.target)} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {_STAGE}"
            )
            progress(f"sync {table.label}: no primary key, copy replaced ({staged} rows)")
            return
        for i in range(0, len(delta.upsert), _KEY_CHUNK):
            chunk = delta.upsert[i : i + _KEY_CHUNK]
            rows = await src.fetch(
                f"SELECT {', '.join('t.' + quote_ident(c) for c in shape.columns)} FROM {qualified(table.source)} t"
                f" WHERE {where} AND {_key_match(shape, 't', len(args) + 1)}",
                *args,
                *_columns_of(chunk, len(shape.pk)),
            )
            await dst.copy_records_to_table(_STAGE, records=rows, columns=list(shape.columns))
        updates = [c for c in shape.columns if c not in shape.pk]
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates)
            if updates
            else "DO NOTHING"
        )
        if updates and table.column is not None:  # a key clash with another tenant's row: never overwrite it
            conflict += f" WHERE copy.{quote_ident(table.column)} = EXCLUDED.{quote_ident(table.column)}"
        await dst.execute(
            f"INSERT INTO {qualified(table.target)} AS copy ({cols}) OVERRIDING SYSTEM VALUE"
            f" SELECT {cols} FROM {_STAGE} ON CONFLICT ({', '.join(quote_ident(c) for c in shape.pk)})"
            f" {conflict}"
        )
    progress(f"sync {table.label}: {len(delta.upsert)} rows inserted or updated")


async def apply_deletes(dst: asyncpg.Connection, delta: Delta, tenant: str, progress: Progress) -> None:
    """Rows the copy has and the source no longer has."""
    if not delta.delete:
        return
    shape = delta.shape
    async with dst.transaction():
        for i in range(0, len(delta.delete), _KEY_CHUNK):
            chunk = delta.delete[i : i + _KEY_CHUNK]
            t = delta.table
            await dst.execute(
                f"DELETE FROM {qualified(t.target)} t WHERE {_key_match(shape, 't', 1)}"
                f" AND {t.target_where('t', len(shape.pk) + 1)}",
                *_columns_of(chunk, len(shape.pk)),
                *t.target_args(tenant),
            )
    progress(f"sync {delta.table.label}: {len(delta.delete)} rows deleted")


async def delta_sync(
    src: asyncpg.Connection,
    dst: asyncpg.Connection,
    tables: Sequence[tuple[MovedTable, TableShape]],
    tenant: str,
    progress: Progress,
) -> None:
    """Bring every copy level with its source: upserts parents first, deletes children first."""
    deltas = [await find_delta(src, dst, t, s, tenant) for t, s in tables]
    for delta in deltas:
        await apply_upserts(src, dst, delta, tenant, progress)
    for delta in reversed(deltas):
        await apply_deletes(dst, delta, tenant, progress)


async def sync_sequences(
    src: asyncpg.Connection, dst: asyncpg.Connection, tables: Sequence[MovedTable], same_database: bool
) -> None:
    """Advance the copies' own sequences (serial/identity) to where the source's stand.

    A copy in the source database whose default still draws from the source's sequence
    (LIKE keeps a serial column's nextval) shares it and needs nothing.
    """
    for table in tables:
        for (column,) in await src.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            qualified(table.source),
        ):
            theirs = await src.fetchval("SELECT pg_get_serial_sequence($1, $2)", qualified(table.source), column)
            ours = await dst.fetchval("SELECT pg_get_serial_sequence($1, $2)", qualified(table.target), column)
            if theirs is None or ours is None or (same_database and theirs == ours):
                continue
            state = await src.fetchrow(f"SELECT last_value, is_called FROM {theirs}")  # a regclass text: quoted
            mine = await dst.fetchrow(f"SELECT last_value, is_called FROM {ours}")
            assert state is not None and mine is not None
            if (state[0], state[1]) > (mine[0], mine[1]):
                await dst.execute("SELECT setval($1::regclass, $2, $3)", ours, state[0], state[1])


async def delete_tenant_rows(
    conn: asyncpg.Connection, table: MovedTable, tenant: str, batch_rows: int, progress: Progress
) -> int:
    """Delete the tenant's rows from a shared scoped table in batches of ``batch_rows``; rows deleted."""
    assert table.column is not None
    deleted = 0
    name = qualified(table.source)
    while True:
        status = await conn.execute(
            f"DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT t.ctid FROM {name} t"
            f" WHERE t.{quote_ident(table.column)} = $1 LIMIT {batch_rows}))",
            tenant,
        )
        n = int(status.split()[-1])
        deleted += n
        if n == 0:
            progress(f"delete-old {table.label}: {deleted} rows deleted")
            return deleted


def dump_ddl(
    host: str, port: int, user: str, password: str | None, database: str, sslmode: str, tables: Sequence[Name]
) -> str:
    """The tables' DDL (with their sequences, indexes, constraints, policies) from pg_dump.

    psql meta-commands (pg_dump's ``\\restrict`` guard lines) are left out: the DDL runs through
    asyncpg. The password reaches pg_dump through its environment, never its argument list.
    """
    args = [
        find_pg_bin("pg_dump"),
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--no-comments",
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        database,
    ]
    for name in tables:
        args += ["-t", qualified(name)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = sslmode
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise CopyError(f"pg_dump of the source tables failed: {done.stderr.strip()}")
    return "\n".join(line for line in done.stdout.splitlines() if not _held_back(line))


def _held_back(line: str) -> bool:
    """pg_dump lines the copy runs without: psql meta-commands, and switching on row-level
    security, which would refuse the bulk COPY (`copy_row_security` turns it on at the switch)."""
    return line.startswith("\\") or line.endswith(("ENABLE ROW LEVEL SECURITY;", "FORCE ROW LEVEL SECURITY;"))


async def copy_row_security(src: asyncpg.Connection, dst: asyncpg.Connection, tables: Sequence[MovedTable]) -> None:
    """ENABLE / FORCE ROW LEVEL SECURITY on each copy whose shared table (on ``src``) has it
    (dedicated copies keep pg_dump's policies; this turns them on once the data is in)."""
    for t in tables:
        flags = await src.fetchrow(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass($1)",
            qualified(t.definition),
        )
        if flags is not None and flags[0]:
            await dst.execute(f"ALTER TABLE {qualified(t.target)} ENABLE ROW LEVEL SECURITY")
        if flags is not None and flags[1]:
            await dst.execute(f"ALTER TABLE {qualified(t.target)} FORCE ROW LEVEL SECURITY")
