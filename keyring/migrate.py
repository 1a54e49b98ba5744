"""Bulk rewrites of encrypted columns, in batches, resumable, with progress lines.

``reencrypt`` moves one tenant's values of the configured columns to the
tenant's newest DEK version (after ``rotate``). Rows are visited in primary-key
order (``ctid`` when the table has none) in batches, each batch its own
transaction; a row is rewritten only if its ciphertext header is not already
the target (format, mode, version), and only if nobody changed it meanwhile
(compare-and-set), so a rerun after a crash simply continues.

``encrypt_column`` turns an existing plaintext column into an encrypted one
in place. SQL cannot encrypt, so the rows travel through Python:

1. setup (idempotent): add a ``bytea`` shadow column ``<column>__tg_enc`` and a
   trigger that clears the shadow whenever the plaintext changes;
2. batches: read rows whose shadow is NULL (plaintext as text, with
   DateStyle ISO / TimeZone UTC), canonicalise by the configured type, encrypt
   under the row's tenant (from the tenant column), write the shadow only if the
   plaintext is still the one read;
3. swap, in one transaction under ``ACCESS EXCLUSIVE``: finish rows changed since,
   drop the trigger and the plaintext column, rename the shadow to the column's
   name, restore NOT NULL, and mark it with ``COMMENT 'tenantgate:encrypted ...'``.

Interrupting at any point is safe: a rerun continues where the shadow column
says. The swap drops indexes, constraints, defaults and views on the plaintext
column (recreate unique indexes on the ciphertext: deterministic mode keeps
them meaningful), and the column moves to the end of the table. Until the proxy's
config lists the column, applications must not write it through the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from .errors import KeyringError
from .format import make_header
from .keyring import Keyring
from .quoting import quote_ident, quote_literal, quote_qualified
from .settings import EncryptedColumn

Progress = Callable[[str], None]
ENCRYPTED_COMMENT = "tenantgate:encrypted"
SHADOW_SUFFIX = "__tg_enc"


def quote_table(table: str) -> str:
    """``schema.table`` (already folded) quoted part by part."""
    schema, _, name = table.rpartition(".")
    return quote_qualified(schema or None, name)


async def _table_oid(conn: asyncpg.Connection, table: str) -> int:
    oid = await conn.fetchval("SELECT to_regclass($1)::oid", quote_table(table))
    if oid is None:
        raise KeyringError(f"table {table} does not exist")
    return int(oid)


async def _key_columns(conn: asyncpg.Connection, oid: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
        oid,
    )
    return [r["attname"] for r in rows] or ["ctid"]


async def _column_info(conn: asyncpg.Connection, oid: int, column: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT format_type(atttypid, atttypmod) AS type, attnotnull, col_description(attrelid, attnum) AS comment "
        "FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
        oid, column,
    )


def _keyset(keys: list[str], first: int) -> tuple[str, str]:
    """SQL for ``(k1, k2) > ($first, $first+1)`` and the ORDER BY list."""
    cols = ", ".join(k if k == "ctid" else quote_ident(k) for k in keys)
    params = ", ".join(f"${first + i}" for i in range(len(keys)))
    return f"({cols}) > ({params})", cols


def _pk_match(keys: list[str], first: int) -> str:
    return " AND ".join(f"{k if k == 'ctid' else quote_ident(k)} = ${first + i}" for i, k in enumerate(keys))


async def reencrypt(
    keyring: Keyring,
    conn: asyncpg.Connection,
    tenant: str,
    columns: Sequence[EncryptedColumn],
    *,
    batch_size: int = 500,
    max_rows: int | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Re-encrypt ``tenant``'s values of ``columns`` under its newest DEK; rows rewritten per column."""
    await keyring.ensure_loaded(tenant, create=False, force=True)
    version = keyring.current_version(tenant)
    done: dict[str, int] = {}
    budget = max_rows
    for col in columns:
        oid = await _table_oid(conn, col.table)
        tenant_info = await _column_info(conn, oid, col.tenant_column)
        if tenant_info is None:
            raise KeyringError(f"{col.table}: tenant column {col.tenant_column} does not exist")
        keys = await _key_columns(conn, oid)
        header = make_header(col.mode, version)
        n = len(keys)
        key_list = ", ".join(k if k == "ctid" else quote_ident(k) for k in keys)
        target, value = quote_table(col.table), quote_ident(col.column)
        base = (
            f"SELECT {key_list}, {value} FROM {target} WHERE {quote_ident(col.tenant_column)} = "
            f"$1::text::{tenant_info['type']} AND {value} IS NOT NULL AND substring({value} FROM 1 FOR 6) <> $2"
        )
        after, order = _keyset(keys, 3)
        update = f"UPDATE {target} SET {value} = $1 WHERE {_pk_match(keys, 3)} AND {value} = $2"
        count, last = 0, None
        name = f"{col.table}.{col.column}"
        while budget is None or budget > 0:
            limit = batch_size if budget is None else min(batch_size, budget)
            if last is None:
                rows = await conn.fetch(f"{base} ORDER BY {order} LIMIT {limit}", tenant, header)
            else:
                rows = await conn.fetch(f"{base} AND {after} ORDER BY {order} LIMIT {limit}", tenant, header, *last)
            if not rows:
                break
            args = []
            for row in rows:
                old = bytes(row[n])
                plain = keyring.decrypt(tenant, col.table, col.column, old)
                new = keyring.encrypt(tenant, col.table, col.column, col.mode, plain)
                args.append((new, old, *row[:n]))
            async with conn.transaction():
                await conn.executemany(update, args)
            last = tuple(rows[-1][:n])
            count += len(rows)
            if budget is not None:
                budget -= len(rows)
            if progress:
                progress(f"{name}: {count} rows re-encrypted to v{version} for tenant {tenant}")
        done[name] = count
    return done


async def encrypt_column(
    keyring: Keyring,
    conn: asyncpg.Connection,
    col: EncryptedColumn,
    *,
    batch_size: int = 500,
    max_rows: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Migrate a plaintext column to ciphertext in place (see the module docstring); rows encrypted.

    With ``max_rows`` it stops early without swapping; rerun to continue.
    """
    oid = await _table_oid(conn, col.table)
    info = await _column_info(conn, oid, col.column)
    if info is None:
        raise KeyringError(f"column {col.table}.{col.column} does not exist")
    if info["type"] == "bytea" and (info["comment"] or "").startswith(ENCRYPTED_COMMENT):
        if progress:
            progress(f"{col.table}.{col.column}: already encrypted")
        return 0
    tenant_info = await _column_info(conn, oid, col.tenant_column)
    if tenant_info is None:
        raise KeyringError(f"{col.table}: tenant column {col.tenant_column} does not exist")
    shadow = col.column + SHADOW_SUFFIX
    trigger = "tenantgate_encmig_" + col.column
    if max(len(shadow.encode()), len(trigger.encode())) > 63:
        raise KeyringError(f"{col.table}.{col.column}: column name too long for the migration's helper names")
    target, value, shadow_q = quote_table(col.table), quote_ident(col.column), quote_ident(shadow)
    for setting in ("DateStyle = 'ISO, YMD'", "TimeZone = 'UTC'", "bytea_output = 'hex'", "IntervalStyle = 'postgres'"):
        await conn.execute(f"SET {setting}")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tenantgate.encmig'))")
        await conn.execute("CREATE SCHEMA IF NOT EXISTS tenantgate")
        await conn.execute(
            "CREATE OR REPLACE FUNCTION tenantgate.encmig_reset() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0], NULL)); RETURN NEW; END $$"
        )
        await conn.execute(f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {shadow_q} bytea")
        await conn.execute(
            f"CREATE OR REPLACE TRIGGER {quote_ident(trigger)} BEFORE UPDATE OF {value} ON {target} FOR EACH ROW "
            f"WHEN (OLD.{value} IS DISTINCT FROM NEW.{value}) "
            f"EXECUTE FUNCTION tenantgate.encmig_reset({quote_literal(shadow)})"
        )
    keys = await _key_columns(conn, oid)
    n = len(keys)
    key_list = ", ".join(k if k == "ctid" else quote_ident(k) for k in keys)
    select = (
        f"SELECT {key_list}, {quote_ident(col.tenant_column)}::text, {value}::text FROM {target} "
        f"WHERE {shadow_q} IS NULL AND {value} IS NOT NULL ORDER BY {key_list} LIMIT $1"
    )
    update = f"UPDATE {target} SET {shadow_q} = $1 WHERE {_pk_match(keys, 3)} AND {value}::text = $2"
    name = f"{col.table}.{col.column}"
    total = 0

    async def batch(limit: int) -> int:
        rows = await conn.fetch(select, limit)
        args = []
        for row in rows:
            tenant, text = row[n], row[n + 1]
            if tenant is None:
                raise KeyringError(f"{name}: a row has NULL in tenant column {col.tenant_column}; cannot pick a key")
            await keyring.ensure_loaded(tenant)
            plain = col.type.from_text(text.encode())
            args.append((keyring.encrypt(tenant, col.table, col.column, col.mode, plain), text, *row[:n]))
        if args:
            await conn.executemany(update, args)
        return len(rows)

    # while/else: the else branch runs only when max_rows ran out (no break), so no swap then.
    while max_rows is None or total < max_rows:
        limit = batch_size if max_rows is None else min(batch_size, max_rows - total)
        async with conn.transaction():
            count = await batch(limit)
        if not count:
            break
        total += count
        if progress:
            progress(f"{name}: {total} rows encrypted")
    else:
        if progress:
            progress(f"{name}: stopped after {total} rows; rerun to continue")
        return total

    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {target} IN ACCESS EXCLUSIVE MODE")
        while count := await batch(batch_size):
            total += count
        await conn.execute(f"DROP TRIGGER {quote_ident(trigger)} ON {target}")
        await conn.execute(f"ALTER TABLE {target} DROP COLUMN {value}")
        await conn.execute(f"ALTER TABLE {target} RENAME COLUMN {shadow_q} TO {value}")
        if info["attnotnull"]:
            await conn.execute(f"ALTER TABLE {target} ALTER COLUMN {value} SET NOT NULL")
        comment = f"{ENCRYPTED_COMMENT} mode={col.mode.value} type={col.type.name}"
        await conn.execute(f"COMMENT ON COLUMN {target}.{value} IS {quote_literal(comment)}")
    if progress:
        progress(f"{name}: done, {total} rows encrypted; column is now bytea ciphertext")
    return total

