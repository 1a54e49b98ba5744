"""``tenantgate tenant restore T FILE [--as T2] [--tier ...]``: load an export back, verified first.

1. The archive's signature and every file's SHA-256 and row count are checked before anything
   (tenant_archive.open_archive); so is that the KEK opens the archive's wrapped DEKs.
2. The target tenant (T, or T2 with ``--as``) is onboarded when the config lacks it
   (tenant_create: any tier), else it must already be in the ``--tier`` asked for.
3. The tenant is PAUSEd (when the proxy serves it) at a transaction boundary; then in ONE
   transaction on its placement: its current rows are deleted (children first), the archive's
   rows loaded (parents first) with the tenant column set to the target and encrypted values
   re-encrypted under the target's current DEK (a shredded tenant gets a new version: the
   archive's keys never go back into the key store), the rows read back, decrypted and their
   logical digest compared with the signed manifest's, serial sequences advanced. Only then
   COMMIT; RESUME in every case. Any failure rolls back: the tenant keeps the rows it had.

Other tenants are not touched (their rows, their sessions); the re-run of a failed restore
starts over and completes.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg

from tenantgate.config import Config
from tenantgate.keyring.errors import KeyringError
from tenantgate.keyring.format import DataKey, decrypt_value, parse_header
from tenantgate.keyring.kek import provider_from_uri
from tenantgate.keyring.keyring import Keyring
from tenantgate.keyring.quoting import quote_ident
from tenantgate.keyring.store_file import _record

from .lifecycle import (
    Checkpoint,
    LifecycleError,
    Progress,
    UsageError,
    admin_of,
    command,
    current_key,
    keyring_of,
    load,
    no_checkpoint,
    note,
    quiesce,
    scoped_tables,
    served,
    signer_of,
    tenant_endpoint,
)
from .placement_copy import MovedTable, fk_order, qualified
from .tenant_archive import NULL, Archive, Digest, bytea_field, escape, from_bytea_field, open_archive, unescape
from .tenant_create import CreateRequest, create_tenant
from .tenant_export import RowShape, config_name, opener, row_shape

__all__ = ["RestoreRequest", "restore_tenant"]

_STAGE = "tenantgate_restore_stage"


@dataclass(frozen=True)
class RestoreRequest:
    create: CreateRequest  # config, target tenant (T or --as T2), tier and server for onboarding
    source: str  # the tenant in the archive
    archive: pathlib.Path
    tier_given: bool = False
    pause_timeout: float = 30.0


def _archived_keys(cfg: Config, archive: Archive) -> dict[int, DataKey]:
    entries = archive.manifest.get("keys") or []
    if not entries:
        return {}
    if cfg.encryption is None:
        raise UsageError("the archive holds encrypted columns but the config has no [encryption]")
    kek = provider_from_uri(cfg.encryption.kek)
    keys = {}
    for e in entries:
        r = _record(e)
        assert r.wrapped is not None
        keys[r.version] = DataKey(r.version, kek.unwrap(r.wrapped))
    return keys


class Loader:
    """Turns an archived table's lines into the target's: tenant column and encryption."""

    def __init__(
        self, archive: Archive, source: str, target: str, keys: dict[int, DataKey], keyring: Keyring | None
    ) -> None:
        self.archive, self.source, self.target, self.keys, self.keyring = archive, source, target, keys, keyring
        self.portable = archive.manifest["mode"] == "portable"

    def plaintext(self, shape: RowShape, i: int, field: bytes) -> bytes:
        if self.portable:
            return unescape(field)
        col = shape.encrypted[i]
        ct = from_bytea_field(field)
        key = self.keys.get(parse_header(ct)[1])
        if key is None:
            raise LifecycleError(f"{shape.name}.{col.column}: a value under a key version the archive lacks")
        return decrypt_value(key, self.source, col.table, col.column, ct)

    async def lines(self, entry: dict[str, object], shape: RowShape, digest: Digest) -> AsyncIterator[bytes]:
        tenant = escape(self.target.encode())
        for line in self.archive.rows(entry):
            fields = line.split(b"\t")
            plain = {i: self.plaintext(shape, i, fields[i]) for i in shape.encrypted if fields[i] != NULL}
            digest.add(shape.logical(fields, _lookup(plain)))
            fields[shape.tenant_index] = tenant
            for i, value in plain.items():
                assert self.keyring is not None
                col = shape.encrypted[i]
                fields[i] = bytea_field(self.keyring.encrypt(self.target, col.table, col.column, col.mode, value))
            yield b"\t".join(fields) + b"\n"


def _lookup(plain: dict[int, bytes]) -> Callable[[int, bytes], bytes]:
    def field(i: int, _stored: bytes) -> bytes:
        return escape(plain[i])

    return field


async def restore_tenant(req: RestoreRequest, out: Progress = print, checkpoint: Checkpoint = no_checkpoint) -> None:
    cfg = load(req.create.config)
    target = req.create.tenant
    archive = open_archive(req.archive, signer_of(cfg).verifier)
    try:
        manifest = archive.manifest
        if manifest["tenant"] != req.source:
            raise UsageError(f"{req.archive} is an export of tenant {manifest['tenant']!r}, not {req.source!r}")
        out(f"verify: {req.archive} signed, {len(manifest['tables'])} tables, checksums match")
        keys = _archived_keys(cfg, archive)
        existing = cfg.tenants.get(target)
        if existing is None:
            checkpoint("create")
            await create_tenant(req.create, out, checkpoint)
            cfg = load(req.create.config)
        elif req.tier_given and existing.tier != req.create.target.tier:
            raise UsageError(f"tenant {target!r} is {existing.tier} tier: `tenant move` it, or restore --as another")
        await _swap(cfg, req, archive, keys, out, checkpoint)
        await note(cfg, req.create.admin_user, "restored", target, archive.sha256, out)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, KeyringError) as exc:
        raise LifecycleError(f"restore of {target}: {type(exc).__name__}: {exc}; its rows are unchanged") from None
    finally:
        archive.tar.close()
    out(f"done: tenant {target} restored from {req.archive}")


async def _swap(
    cfg: Config, req: RestoreRequest, archive: Archive, keys: dict[int, DataKey], out: Progress, checkpoint: Checkpoint
) -> None:
    target = req.create.tenant
    keyring = keyring_of(cfg)
    try:
        if keyring is not None:
            out(f"key: tenant {target} re-encrypts with key version {await current_key(keyring, target)}")
        async with admin_of(cfg, req.create.admin_user).session() as admin:
            paused = await served(admin, target)
            try:
                if paused:
                    await quiesce(admin, target, req.pause_timeout, out)
                checkpoint("swap")
                await _load(cfg, req, archive, Loader(archive, req.source, target, keys, keyring), out, checkpoint)
            finally:
                if paused:
                    await command(admin, f"RESUME {target}")
                    out(f"resume: tenant {target} resumed")
    finally:
        if keyring is not None:
            await keyring.close()


async def _load(
    cfg: Config, req: RestoreRequest, archive: Archive, loader: Loader, out: Progress, checkpoint: Checkpoint
) -> None:
    target = req.create.tenant
    by_name = {config_name(cfg, t): t for t in scoped_tables(cfg, target)}
    conn = await tenant_endpoint(cfg, target).connect(target)
    try:
        async with conn.transaction():
            tables = await fk_order(conn, list(by_name.values()))
            for t in reversed(tables):  # children first
                status = await conn.execute(
                    f"DELETE FROM {qualified(t.source)} WHERE {quote_ident(t.column or '')} = $1", target
                )
                out(f"swap {t.label}: {status.split()[-1]} current rows removed")
            for entry in archive.manifest["tables"]:
                table = by_name.get(entry["table"])
                if table is None:
                    raise LifecycleError(f"the archive's table {entry['table']} is not a scoped table of {target}")
                checkpoint(f"load {entry['table']}")
                shape = await row_shape(conn, cfg, table)
                if list(shape.columns) != entry["columns"]:
                    raise LifecycleError(
                        f"{qualified(table.source)}: columns {list(shape.columns)} differ from the "
                        f"archive's {entry['columns']}"
                    )
                digest = Digest()
                # staged in a temporary table: COPY into a table with row-level security is refused
                cols = ", ".join(quote_ident(c) for c in shape.columns)
                await conn.execute(
                    f"CREATE TEMPORARY TABLE {_STAGE} ON COMMIT DROP AS SELECT {cols} FROM {qualified(table.source)}"
                    " WITH NO DATA"
                )
                await conn.copy_to_table(
                    _STAGE, schema_name="pg_temp", columns=list(shape.columns),
                    source=loader.lines(entry, shape, digest), format="text",
                )  # fmt: skip
                await conn.execute(
                    f"INSERT INTO {qualified(table.source)} ({cols}) OVERRIDING SYSTEM VALUE"
                    f" SELECT {cols} FROM {_STAGE}"
                )
                await conn.execute(f"DROP TABLE {_STAGE}")
                if str(digest) != entry["digest"]:
                    raise LifecycleError(f"{entry['table']}: the archive's rows do not match its signed digest")
            checkpoint("verify")
            for entry in archive.manifest["tables"]:
                table = by_name[entry["table"]]
                now = await _digest_of(conn, cfg, table, target, loader.keyring)
                ok = now == entry["digest"]
                out(f"verify {entry['table']}: archive {entry['digest']}; loaded {now}: {'ok' if ok else 'MISMATCH'}")
                if not ok:
                    raise LifecycleError(f"verify {entry['table']}: loaded rows differ from the archive; rolled back")
                await _advance_sequences(conn, table)
            checkpoint("commit")
    finally:
        await conn.close()


async def _digest_of(
    conn: asyncpg.Connection, cfg: Config, table: MovedTable, tenant: str, keyring: Keyring | None
) -> str:
    """The logical digest of the tenant's rows in ``table`` as stored now (encrypted ones opened)."""
    shape = await row_shape(conn, cfg, table)
    cols = ", ".join(f"t.{quote_ident(c)}" for c in shape.columns)
    chunks: list[bytes] = []
    await conn.copy_from_query(
        f"SELECT {cols} FROM {qualified(table.source)} t WHERE t.{quote_ident(table.column or '')} = $1",
        tenant,
        output=_collect(chunks),
        format="text",
    )
    digest = Digest()
    plain = opener(keyring, tenant, shape)
    for line in b"".join(chunks).splitlines():
        digest.add(shape.logical(line.split(b"\t"), plain))
    return str(digest)


def _collect(chunks: list[bytes]) -> Callable[[bytes], object]:
    async def put(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    return put


async def _advance_sequences(conn: asyncpg.Connection, table: MovedTable) -> None:
    """Serial/identity sequences past the restored keys (a new database's start at 1)."""
    for (column,) in await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        qualified(table.source),
    ):
        seq = await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", qualified(table.source), column)
        if seq is not None:
            top = await conn.fetchval(f"SELECT max({quote_ident(column)}) FROM {qualified(table.source)}")
            if top is not None:
                await conn.execute(
                    f"SELECT setval($1::regclass, greatest($2, (SELECT last_value FROM {seq})))", seq, top
                )
