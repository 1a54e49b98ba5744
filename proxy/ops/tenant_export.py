"""``tenantgate tenant export T -o FILE``: every scoped table's rows of T in one signed archive.

The rows are read in one REPEATABLE READ, READ ONLY transaction (one snapshot across every
table) from wherever the tenant lives (shared tables, its schema, or its own database), each
filtered by the tenant column (and, with RLS installed, by the policy: the connection sets
``tenantgate.tenant``). ``--portable`` decrypts the encrypted columns (GDPR art. 20); the
default keeps the ciphertext and puts the tenant's *wrapped* DEKs in the manifest (a backup:
the KEK opens them; no plaintext key is ever written). Format: tenant_archive.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tenantgate.config import Config
from tenantgate.keyring.keyring import Keyring
from tenantgate.keyring.quoting import quote_ident
from tenantgate.keyring.settings import EncryptedColumn
from tenantgate.keyring.store_file import _entry  # the key file's entry format: wrapped DEKs, base64

from .lifecycle import (
    Checkpoint,
    LifecycleError,
    Progress,
    keyring_of,
    no_checkpoint,
    scoped_tables,
    sign,
    signer_of,
    tenant_endpoint,
)
from .placement_copy import MovedTable, describe, fk_order, qualified
from .tenant_archive import FORMAT, NULL, Digest, escape, from_bytea_field, member_name

__all__ = ["RowShape", "export_tenant", "row_shape"]



@dataclass(frozen=True)
class RowShape:
    """Where a table's tenant column and encrypted columns sit in its COPY lines."""

    name: str  # the table as [scoping] names it (what encrypted columns' associated data binds)
    columns: tuple[str, ...]
    tenant_index: int
    encrypted: dict[int, EncryptedColumn]

    def logical(self, fields: list[bytes], plain: Callable[[int, bytes], bytes]) -> list[bytes]:
        """The row as the tenant sees it: tenant column blanked, encrypted fields as their plaintext
        (``plain(index, field)`` opens one non-NULL field)."""
        out = list(fields)
        out[self.tenant_index] = b""
        for i in self.encrypted:
            if out[i] != NULL:
                out[i] = plain(i, out[i])
        return out


def config_name(cfg: Config, table: MovedTable) -> str:
    """The [scoping] name of a scoped table (schema tier: the shared table it copies)."""
    for t in cfg.scoping.tables:
        if (t.schema or "public", t.name) == table.definition:
            return f"{t.schema}.{t.name}" if t.schema else t.name
    raise LifecycleError(f"{qualified(table.definition)} is not a [scoping] table")


async def row_shape(conn: asyncpg.Connection, cfg: Config, table: MovedTable) -> RowShape:
    shape = await describe(conn, table.source)
    assert table.column is not None
    if table.column not in shape.columns:
        raise LifecycleError(f"{qualified(table.source)} has no tenant column {table.column}")
    name = config_name(cfg, table)
    encrypted = {}
    if cfg.encryption is not None:
        for i, column in enumerate(shape.columns):
            found = cfg.encryption.column(name, column)
            if found is not None:
                encrypted[i] = found
    return RowShape(name, shape.columns, shape.columns.index(table.column), encrypted)


def opener(keyring: Keyring | None, tenant: str, shape: RowShape) -> Callable[[int, bytes], bytes]:
    """Decrypts one stored field of ``shape`` to its COPY-escaped plaintext."""

    def plain(i: int, field: bytes) -> bytes:
        assert keyring is not None
        col = shape.encrypted[i]
        return escape(keyring.decrypt(tenant, col.table, col.column, from_bytea_field(field)))

    return plain


async def _dump(conn: asyncpg.Connection, table: MovedTable, shape: RowShape, tenant: str, path: pathlib.Path) -> None:
    cols = ", ".join(f"t.{quote_ident(c)}" for c in shape.columns)
    assert table.column is not None
    where = f"t.{quote_ident(table.column)} = $1"
    await conn.copy_from_query(
        f"SELECT {cols} FROM {qualified(table.source)} t WHERE {where}", tenant, output=str(path), format="text"
    )


async def export_tenant(
    cfg: Config,
    tenant: str,
    output: pathlib.Path,
    *,
    portable: bool = False,
    out: Progress = print,
    checkpoint: Checkpoint = no_checkpoint,
) -> dict[str, Any]:
    """Write the archive; its signed manifest. LifecycleError (nothing written) on any failure."""
    t = cfg.tenants.get(tenant)
    if t is None:
        raise LifecycleError(f"{cfg.source}: no tenant {tenant!r} in [tenants]")
    signer = signer_of(cfg)
    keyring = keyring_of(cfg)
    keys: list[dict[str, Any]] = []
    if keyring is not None:
        await keyring.ensure_loaded(tenant, create=False)
        keys = [_entry(r) for r in await keyring.store.load(tenant) if not r.destroyed]
    endpoint = tenant_endpoint(cfg, tenant)
    conn = await endpoint.connect(tenant)
    tables: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=output.absolute().parent, prefix=".tenantgate-export-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                for table in await fk_order(conn, scoped_tables(cfg, tenant)):
                    checkpoint(f"export {table.label}")
                    shape = await row_shape(conn, cfg, table)
                    raw = tmp / f"{table.label}.raw"
                    await _dump(conn, table, shape, tenant, raw)
                    tables.append(
                        _transform(
                            raw, tmp / f"{table.label}.copy", table, shape, opener(keyring, tenant, shape), portable
                        )
                    )
                    out(f"export {table.label}: {tables[-1]['rows']} rows")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise LifecycleError(f"export of {tenant}: {type(exc).__name__}: {exc}; nothing written") from None
        finally:
            await conn.close()
            if keyring is not None:
                await keyring.close()
        manifest = sign(
            signer,
            {
                "format": FORMAT,
                "tenant": tenant,
                "mode": "portable" if portable else "backup",
                "created_at": datetime.now(UTC).isoformat(),
                "source": {"tier": t.tier, "schema": t.schema, "database": endpoint.database},
                "snapshot": "one REPEATABLE READ transaction",
                "tables": tables,
                "keys": [] if portable else keys,
            },
        )
        checkpoint("export write")
        staged = tmp / "archive.tar.gz"
        with tarfile.open(staged, "w:gz", compresslevel=1) as tar:
            data = json.dumps(manifest, indent=1, ensure_ascii=False).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, fileobj=io.BytesIO(data))
            for entry in tables:
                tar.add(tmp / f"{entry['relation']}.copy", arcname=entry["file"])
        staged.chmod(0o600)
        staged.replace(output)
    out(
        f"export: {output} ({output.stat().st_size} bytes, {sum(e['rows'] for e in tables)} rows, "
        f"{'portable: encrypted columns decrypted' if portable else 'backup: ciphertext and wrapped keys'})"
    )
    return manifest


def _transform(
    raw: pathlib.Path,
    dest: pathlib.Path,
    table: MovedTable,
    shape: RowShape,
    plain: Callable[[int, bytes], bytes],
    portable: bool,
) -> dict[str, Any]:
    """Write the archive's file of one table (portable: plaintext), with its digests."""
    digest = Digest()
    sha = hashlib.sha256()
    with raw.open("rb") as src, dest.open("wb") as dst:
        for line in src:
            fields = line.rstrip(b"\n").split(b"\t")
            logical = shape.logical(fields, plain)
            digest.add(logical)
            if portable and shape.encrypted:
                for i in shape.encrypted:
                    fields[i] = logical[i]
                line = b"\t".join(fields) + b"\n"
            sha.update(line)
            dst.write(line)
    raw.unlink()
    return {
        "table": shape.name,
        "relation": table.label,
        "file": member_name(table.label),
        "columns": list(shape.columns),
        "tenant_column": shape.columns[shape.tenant_index],
        "encrypted": {
            shape.columns[i]: {"mode": c.mode.value, "type": c.type.name} for i, c in shape.encrypted.items()
        },
        "rows": digest.count,
        "sha256": sha.hexdigest(),
        "digest": str(digest),
    }
