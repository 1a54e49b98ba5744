"""``tenantgate keys ...``: manage per-tenant DEKs and encrypted columns.

Each subcommand takes ``--config FILE`` (``[encryption]``, ``[backend]`` and
``[scoping]`` are read) and ``--dsn URL`` to override the backend connection.
Subcommands set ``func(args) -> int`` (exit status), like the other commands.
Key events are printed to stderr as ``event: <kind> k=v ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from .backup import key_names, read_backup, restore_keys, write_backup
from .errors import KeyringError
from .kek import create_kek_file, provider_from_uri
from .keyring import Keyring
from .migrate import encrypt_column, reencrypt
from .settings import EncryptionSettings, SettingsError, backend_dsn, fold_name, parse_encryption, read_toml
from .store import KeyStore
from .store_db import DatabaseKeyStore
from .store_file import FileKeyStore


class _Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.raw = read_toml(args.config)
        self.settings: EncryptionSettings = parse_encryption(self.raw, args.config)
        self._dsn: str | None = args.dsn

    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = backend_dsn(self.raw, self.settings.source)
        return self._dsn

    def store(self) -> KeyStore:
        if self.settings.store == "file":
            assert self.settings.store_path is not None
            return FileKeyStore(self.settings.store_path)
        return DatabaseKeyStore(self.dsn())

    def keyring(self) -> Keyring:
        return Keyring(
            provider_from_uri(self.settings.kek), self.store(), cache_ttl=self.settings.cache_ttl, on_event=_print_event
        )


Body = Callable[[_Context, argparse.Namespace], Coroutine[Any, Any, int]]


def _print_event(kind: str, **fields: Any) -> None:
    print(f"event: {kind} " + " ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr)


def _progress(line: str) -> None:
    print(line, flush=True)


def _command(body: Body) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(body(_Context(args), args))
        except (KeyringError, SettingsError) as exc:
            print(f"tenantgate keys {args.keys_command}: error: {exc}", file=sys.stderr)
            return 1
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"tenantgate keys {args.keys_command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1

    return run


async def _with_keyring(ctx: _Context, work: Callable[[Keyring], Awaitable[int]]) -> int:
    keyring = ctx.keyring()
    try:
        return await work(keyring)
    finally:
        await keyring.close()


async def _init(ctx: _Context, args: argparse.Namespace) -> int:
    kek = ctx.settings.kek
    if args.generate_kek:
        if not kek.startswith("file:"):
            raise KeyringError("--generate-kek needs encryption.kek = file:PATH")
        create_kek_file(kek[5:])
        print(f"wrote a new KEK to {kek[5:]} (mode 600); keep it away from the database and its backups")
    provider_from_uri(kek)  # fail now, not at the first encrypted statement
    store = ctx.store()
    try:
        await store.initialize()
    finally:
        await store.close()
    print(f"key store ready: {store!r}")
    return 0


async def _list(ctx: _Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    try:
        records = await store.list_all()
    finally:
        await store.close()
    rows = [("TENANT", "VERSION", "STATE", "KEK_ID", "CREATED_AT", "DESTROYED_AT")]
    for r in records:
        if args.tenant is None or r.tenant == args.tenant:
            rows.append((
                r.tenant, str(r.version), "destroyed" if r.destroyed else "active", r.kek_id,
                r.created_at.isoformat(timespec="seconds"),
                r.destroyed_at.isoformat(timespec="seconds") if r.destroyed_at else "",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _rotate(ctx: _Context, args: argparse.Namespace) -> int:
    async def work(keyring: Keyring) -> int:
        version = await keyring.rotate(args.tenant)
        print(f"tenant {args.tenant}: new writes use key version {version}; run `keys reencrypt {args.tenant}`")
        return 0

    return await _with_keyring(ctx, work)


async def _rewrap(ctx: _Context, args: argparse.Namespace) -> int:
    new_kek = provider_from_uri(args.new_kek)

    async def work(keyring: Keyring) -> int:
        count = await keyring.rewrap(new_kek)
        print(f"re-wrapped {count} keys under {new_kek.key_id}; now set encryption.kek to the new KEK")
        return 0

    return await _with_keyring(ctx, work)


async def _connect(ctx: _Context) -> asyncpg.Connection:
    return await asyncpg.connect(ctx.dsn(), statement_cache_size=0)


async def _reencrypt(ctx: _Context, args: argparse.Namespace) -> int:
    columns = ctx.settings.columns
    if args.table:
        columns = tuple(c for c in columns if c.table == fold_name(args.table))
        if not columns:
            raise KeyringError(f"table {args.table} has no [[encryption.columns]] entry")

    async def work(keyring: Keyring) -> int:
        conn = await _connect(ctx)
        try:
            done = await reencrypt(
                keyring, conn, args.tenant, columns,
                batch_size=args.batch_size, max_rows=args.max_rows, progress=_progress,
            )
        finally:
            await conn.close()
        print(f"tenant {args.tenant}: {sum(done.values())} values re-encrypted")
        return 0

    return await _with_keyring(ctx, work)


async def _shred(ctx: _Context, args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            f"This destroys every key of tenant {args.tenant!r}: its encrypted data becomes unreadable forever.\n"
            "Type the tenant name to confirm: ",
            end="", file=sys.stderr, flush=True,
        )
        if sys.stdin.readline().strip() != args.tenant:
            print("not confirmed; nothing destroyed", file=sys.stderr)
            return 1

    async def work(keyring: Keyring) -> int:
        versions = await keyring.shred(args.tenant, confirm=args.tenant)
        print(f"tenant {args.tenant}: destroyed key versions {versions or 'none (already shredded)'}")
        return 0

    return await _with_keyring(ctx, work)


async def _encrypt_column(ctx: _Context, args: argparse.Namespace) -> int:
    col = ctx.settings.column(args.table, args.column)
    if col is None:
        raise KeyringError(f"{args.table}.{args.column}: add it to [[encryption.columns]] (mode, type) first")

    async def work(keyring: Keyring) -> int:
        conn = await _connect(ctx)
        try:
            await encrypt_column(
                keyring, conn, col, batch_size=args.batch_size, max_rows=args.max_rows, progress=_progress
            )
        finally:
            await conn.close()
        return 0

    return await _with_keyring(ctx, work)


async def _backup(ctx: _Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    try:
        doc = await write_backup(store, Path(args.output))
    finally:
        await store.close()
    print(f"wrote {len(doc['keys'])} key records (wrapped under {', '.join(doc['kek_ids']) or 'no KEK'}) to "
          f"{args.output}; it is useless without the KEK: keep the two apart")
    return 0


async def _restore(ctx: _Context, args: argparse.Namespace) -> int:
    records = read_backup(Path(args.file))
    store = ctx.store()
    try:
        await store.initialize()  # the key table (or file) may be what was lost
        report = await restore_keys(store, provider_from_uri(ctx.settings.kek), records, force=args.force)
    finally:
        await store.close()
    if report.resurrected:
        print(f"WARNING: --force: restored crypto-shredded keys {key_names(report.resurrected)}", file=sys.stderr)
    print(f"restored {len(report.restored)} keys and {len(report.tombstones)} shredded-key tombstones; "
          f"{len(report.kept)} already in the store were left as they are")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command group to tenantgate's CLI."""
    keys = subparsers.add_parser("keys", help="manage per-tenant encryption keys and encrypted columns")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, body: Body) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", required=True, metavar="FILE", help="tenantgate TOML config")
        p.add_argument("--dsn", metavar="URL", help="backend connection (overrides [backend])")
        p.set_defaults(func=_command(body))
        return p

    p = command("init", "create the key table (or key file)", _init)
    p.add_argument("--generate-kek", action="store_true", help="also write a new random KEK to the file: path")
    p = command("list", "list keys: tenant, version, state, KEK id, times (never key material)", _list)
    p.add_argument("--tenant", help="only this tenant")
    p = command("rotate", "add a new key version for a tenant's new writes", _rotate)
    p.add_argument("tenant")
    p = command("rewrap", "re-wrap every key under a new KEK (data untouched)", _rewrap)
    p.add_argument("--new-kek", required=True, metavar="URI")
    for name, help_text, body in (
        ("reencrypt", "re-encrypt a tenant's values to its newest key version (resumable)", _reencrypt),
        ("encrypt-column", "encrypt an existing plaintext column in place (resumable)", _encrypt_column),
    ):
        p = command(name, help_text, body)
        if name == "reencrypt":
            p.add_argument("tenant")
            p.add_argument("--table", help="only this table's configured columns")
        else:
            p.add_argument("table")
            p.add_argument("column")
        p.add_argument("--batch-size", type=_positive, default=500)
        p.add_argument("--max-rows", type=_positive, help="stop after this many rows (rerun continues)")
    p = command("backup", "write every wrapped key and its metadata to a file (never a plaintext key)", _backup)
    p.add_argument("--output", "-o", required=True, metavar="FILE")
    p = command("restore", "put the keys of a backup back (refuses to resurrect shredded keys)", _restore)
    p.add_argument("file")
    p.add_argument("--force", action="store_true", help="restore keys the store records as shredded")
    p = command("shred", "destroy all keys of a tenant (crypto-shredding): its data becomes unreadable", _shred)
    p.add_argument("tenant")
    p.add_argument("--yes", action="store_true", help="do not ask to type the tenant name")
