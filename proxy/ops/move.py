"""``tenantgate tenant move``: move a shared-tier tenant into its own schema or database, online.

Longer than most modules on purpose: one tool whose steps (the Mover below) run in order on one
resumable state file; the copying of rows itself is placement_copy.py.

The steps, each printed as it goes:

1. check the request against the config (the new file must pass `load_config`, residency
   included) before anything is copied;
2. prepare the target: its own schema (``CREATE TABLE ... (LIKE ... INCLUDING ALL)``) or a
   dedicated database (the tables' DDL from ``pg_dump --schema-only``);
3. bulk copy the tenant's rows of every scoped table and all rows of every reference table,
   in primary-key batches, while the tenant keeps working;
4. PAUSE the tenant on the admin port and wait until none of its sessions is inside a
   transaction;
5. delta sync what changed since the bulk copy, then verify every table (row count and an
   order-independent checksum on both sides);
6. switch: write the new placement into the config file (a backup is kept), RELOAD, check
   SHOW TENANTS, RESUME;
7. clean up: remove the old placement's copy of the tenant (its rows in the shared tables, its
   schema, or its own database: placement_purge.py), but only while it is still exactly what was
   verified at the switch. ``--keep-old`` keeps it for now (the state file stays): the same
   command without ``--keep-old`` removes it later.

A state file beside the config (``.tenantgate-move-<tenant>.json``) records the phase and
each table's copy and verification, so re-running the same command continues where a
failed run stopped. Before the switch the source is only read; any failure resumes the
tenant, keeps its old placement and exits 1. ``--abort`` resumes the tenant, drops what
the move created in the target and removes the state file.

Exit codes: 0 moved (or aborted), 1 failed (old placement kept), 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from tenantgate.config import Config, ConfigError, Tenant, load_config
from tenantgate.config.values import parse_host, parse_identifier
from tenantgate.keyring.private_file import write_private_json
from tenantgate.keyring.quoting import quote_ident, quote_literal

from .admin_client import AdminClient, AdminCommandError
from .placement_config import PlacementSpec, replace_config, rewrite_config, validate_text, with_placement
from .placement_copy import (
    TEXT_SETTINGS,
    CopyError,
    MovedTable,
    TableShape,
    bulk_copy,
    checksum,
    clear_target,
    copy_row_security,
    delete_tenant_rows,
    delta_sync,
    describe,
    dump_ddl,
    fk_order,
    qualified,
    sync_sequences,
    target_checksum,
)
from .placement_purge import MAINTENANCE_DATABASES, Where, drop_database, others_in

__all__ = [
    "MoveError",
    "MoveRequest",
    "MoveState",
    "UsageError",
    "add_move_parser",
    "add_placement_arguments",
    "placement_of",
    "run_move",
    "state_path",
]

ADMIN_PASSWORD_ENV = "TENANTGATE_ADMIN_PASSWORD"  # noqa: S105 (a variable name)
PHASES = ("started", "prepared", "copied", "config_written", "switched")

Progress = Callable[[str], None]


class UsageError(Exception):
    """A request that cannot run as given (exit 2): bad arguments, a config problem."""


class MoveError(Exception):
    """A move that failed before or during the switch (exit 1): the old placement stays."""


@dataclass(frozen=True)
class MoveRequest:
    config: pathlib.Path
    tenant: str
    target: PlacementSpec  # as given on the command line (tier "" only with abort); placement() checks it
    admin_user: str | None = None
    keep_old: bool = False
    batch_rows: int = 10000
    pause_timeout: float = 30.0
    abort: bool = False

    def placement(self) -> PlacementSpec:
        """The target placement, checked; UsageError naming the missing or bad option."""
        t = self.target
        if t.tier == "shared":
            extra = [f"--{k.replace('_', '-')}" for k in t.as_dict() if k not in ("tier", "sslmode")]
            if extra:
                raise UsageError(f"{', '.join(extra)}: not for --to-tier shared")
            return PlacementSpec("shared")
        if t.tier == "schema":
            extra = [o for o, v in (("--host", t.host), ("--database", t.database)) if v is not None]
            if extra:
                raise UsageError(f"{', '.join(extra)}: only apply to --to-tier dedicated")
            schema = t.schema or f"t_{self.tenant}"
            try:
                parse_identifier(schema)
            except ValueError as exc:
                raise UsageError(f"--schema {schema!r}: {exc}") from None
            return PlacementSpec("schema", schema=schema)
        if t.tier != "dedicated":
            raise UsageError("--to-tier must be shared, schema or dedicated")
        options = (("--host", t.host), ("--port", t.port), ("--database", t.database), ("--user", t.user))
        missing = [o for o, v in options if v is None]
        if missing:
            raise UsageError(f"--to-tier dedicated needs {', '.join(missing)}")
        if (t.password_env is None) == (t.password_file is None):
            raise UsageError("--to-tier dedicated needs exactly one of --password-env, --password-file")
        if t.schema is not None:
            raise UsageError("--schema only applies to --to-tier schema")
        assert t.host is not None
        if not t.host.startswith("/"):
            try:
                parse_host(t.host)
            except ValueError as exc:
                raise UsageError(f"--host: {exc}") from None
        password_file = None if t.password_file is None else str(pathlib.Path(t.password_file).absolute())
        return replace(t, password_file=password_file, sslmode=t.sslmode or "prefer")


def state_path(config: pathlib.Path, tenant: str) -> pathlib.Path:
    return config.absolute().parent / f".tenantgate-move-{tenant}.json"


@dataclass
class MoveState:
    """What a move has done so far; saved after every step (atomically, mode 0600)."""

    path: pathlib.Path
    tenant: str
    placement: PlacementSpec
    phase: str = "started"
    created_schemas: list[str] = field(default_factory=list)
    created_tables: list[str] = field(default_factory=list)  # qualified names in the target
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> copied, verified
    backup: str | None = None

    @classmethod
    def load(cls, path: pathlib.Path) -> MoveState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: unreadable move state ({exc}); remove it or run --abort") from None
        try:
            return cls(
                path,
                data["tenant"],
                PlacementSpec.from_dict(data["placement"]),
                data["phase"],
                list(data["created_schemas"]),
                list(data["created_tables"]),
                dict(data["tables"]),
                data.get("backup"),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{path}: malformed move state ({exc}); remove it or run --abort") from None

    def save(self) -> None:
        data = {
            "tenant": self.tenant,
            "placement": self.placement.as_dict(),
            "phase": self.phase,
            "created_schemas": self.created_schemas,
            "created_tables": self.created_tables,
            "tables": self.tables,
            "backup": self.backup,
        }
        write_private_json(self.path, data, indent=2)

    def at_least(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)

    def table(self, label: str) -> dict[str, Any]:
        return self.tables.setdefault(label, {"copied": False, "verified": None})


# ---------------------------------------------------------------------- connections


def _ssl(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext | str:
    if not sslmode.startswith("verify-"):
        return sslmode
    ctx = ssl.create_default_context(cafile=sslrootcert)
    ctx.check_hostname = sslmode == "verify-full"
    return ctx


@dataclass(frozen=True)
class Endpoint:
    """A database the move connects to; the password stays out of repr."""

    host: str
    port: int
    user: str
    database: str
    sslmode: str
    sslrootcert: str | None = None
    timeout: float = 10.0
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> Where:
        return Where(self.host, self.port, self.database)

    async def connect(self, tenant: str) -> asyncpg.Connection:
        # tenantgate.tenant lets RLS (`tenantgate rls install`) show the tenant's rows; the
        # pinned settings make row::text render alike on both sides.
        settings = {**TEXT_SETTINGS, "tenantgate.tenant": tenant, "application_name": "tenantgate-move"}
        try:
            return await asyncpg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                database=self.database,
                ssl=_ssl(self.sslmode, self.sslrootcert),
                timeout=self.timeout,
                server_settings=settings,
                statement_cache_size=0,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise MoveError(f"cannot connect to {self.user}@{self.host}:{self.port}/{self.database}: {exc}") from None


async def drop_own_database(endpoint: Endpoint, tenant: str) -> int:
    """DROP the endpoint's database from a maintenance database of its server; sessions it ended."""
    failed: MoveError | None = None
    for name in MAINTENANCE_DATABASES:
        try:
            conn = await replace(endpoint, database=name).connect(tenant)
        except MoveError as exc:
            failed = failed or exc
            continue
        try:
            return await drop_database(conn, endpoint.where)
        finally:
            await conn.close()
    raise MoveError(f"cannot drop {endpoint.where.describe()}: {failed}")


def _shared_endpoint(cfg: Config) -> Endpoint:
    b = cfg.backend
    if b.database is None:
        raise UsageError(f"{cfg.source}: backend.database must be set to move tenants (the shared database)")
    password = b.password.reveal() if b.password is not None else None
    return Endpoint(b.host, b.port, b.user, b.database, b.sslmode, b.sslrootcert, b.connect_timeout, password)


def _read_password(placement: PlacementSpec) -> str:
    if placement.password_env is not None:
        value = os.environ.get(placement.password_env)
        if not value:
            raise UsageError(f"environment variable {placement.password_env} (--password-env) is not set")
        return value
    assert placement.password_file is not None
    try:
        text = pathlib.Path(placement.password_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--password-file {placement.password_file}: cannot read: {exc}") from None
    text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
    if not text:
        raise UsageError(f"--password-file {placement.password_file} is empty")
    return text


def source_endpoint(cfg: Config, tenant: str) -> Endpoint:
    """The database holding the tenant's rows now: the shared one, or its dedicated backend."""
    t = cfg.tenants.get(tenant)
    b = t.backend if t is not None else None
    if b is None:
        return _shared_endpoint(cfg)
    if b.database is None:
        raise UsageError(f"{cfg.source}: tenants.{tenant}.backend.database must be set")
    password = b.password.reveal() if b.password is not None else None
    return Endpoint(b.host, b.port, b.user, b.database, b.sslmode, b.sslrootcert, b.connect_timeout, password)


def _target_endpoint(cfg: Config, placement: PlacementSpec) -> Endpoint:
    if placement.tier in ("schema", "shared"):
        return _shared_endpoint(cfg)
    assert placement.host and placement.port and placement.user and placement.database
    return Endpoint(
        placement.host,
        placement.port,
        placement.user,
        placement.database,
        placement.sslmode or "prefer",
        password=_read_password(placement),
    )


@dataclass(frozen=True)
class Admin:
    address: tuple[str, int]
    user: str
    password: str = field(repr=False)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AdminClient]:
        try:
            client = await AdminClient.connect(self.address, self.user, self.password)
        except AdminCommandError as exc:
            raise MoveError(str(exc)) from None
        try:
            yield client
        finally:
            await client.close()


def _admin(cfg: Config, user: str | None) -> Admin:
    if cfg.listen.admin is None:
        raise UsageError(f"{cfg.source}: listen.admin is not set: the move pauses the tenant on the admin port")
    if user is None:
        if len(cfg.admins) != 1:
            raise UsageError(f"--admin-user is needed: {cfg.source} has {len(cfg.admins)} [admins]")
        user = next(iter(cfg.admins))
    elif user not in cfg.admins:
        raise UsageError(f"--admin-user {user!r}: no such user in [admins] of {cfg.source}")
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if not password:
        raise UsageError(f"set {ADMIN_PASSWORD_ENV} to the password of admin user {user!r}")
    return Admin(cfg.listen.admin, user, password)


async def _command(admin: AdminClient, command: str) -> list[dict[str, str | None]]:
    try:
        return await admin.query(command)
    except AdminCommandError as exc:
        raise MoveError(f"admin command failed: {exc}") from None


async def quiesce(admin: AdminClient, tenant: str, timeout: float, out: Progress) -> None:
    """PAUSE, then wait until no session of the tenant is inside a transaction."""
    await _command(admin, f"PAUSE {tenant}")
    out(f"pause: tenant {tenant} paused, waiting for open transactions")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = [
            r["id"]
            for r in await _command(admin, "SHOW SESSIONS")
            if r["tenant"] == tenant and (r["tx"] in ("T", "E") or r["state"] == "active")
        ]
        if not busy:
            return
        if loop.time() >= deadline:
            raise MoveError(
                f"pause: {len(busy)} session(s) of tenant {tenant} (ids {', '.join(map(str, busy))}) "
                f"still inside a transaction after {timeout:g}s; nothing was switched"
            )
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- the move


def moved_tables(cfg: Config, placement: PlacementSpec, tenant: str | None = None) -> list[MovedTable]:
    """Scoped tables (the tenant's rows) and reference tables (all rows), paired with their copies.

    The source is where ``tenant`` lives now (its schema's copies for a schema-tier tenant; the
    shared names otherwise); reference tables do not move back to the shared tier (shared already).
    """
    now = cfg.tenants.get(tenant) if tenant is not None else None
    pairs: list[tuple[tuple[str, str], str | None]] = [
        ((t.schema or "public", t.name), t.column) for t in cfg.scoping.tables
    ]
    if placement.tier != "shared":
        pairs += [((schema or "public", name), None) for schema, name in cfg.scoping.reference]
    tables = []
    seen: dict[tuple[str, str], str] = {}
    for shared, column in pairs:
        source = (now.schema, shared[1]) if now is not None and now.tier == "schema" and now.schema else shared
        target = (placement.schema or shared[0], shared[1]) if placement.tier == "schema" else shared
        if target in seen:
            raise UsageError(f"{shared[0]}.{shared[1]} and {seen[target]} would both become {qualified(target)}")
        seen[target] = f"{shared[0]}.{shared[1]}"
        tables.append(MovedTable(source, target, column, shared, placement.tier == "shared"))
    if not tables:
        raise UsageError(f"{cfg.source}: [scoping] lists no tables: nothing to move")
    return tables


def _check_residency(tenant: Tenant, placement: PlacementSpec) -> None:
    if placement.tier != "dedicated" or tenant.region is None:
        return
    if placement.region is None:
        raise UsageError(f"tenant {tenant.name!r} is pinned to region {tenant.region!r}: give the target's --region")
    if placement.region != tenant.region:
        raise UsageError(
            f"residency: tenant {tenant.name!r} is pinned to region {tenant.region!r}, "
            f"the target is in region {placement.region!r}"
        )


async def prepare_schema(dst: asyncpg.Connection, schema: str, tables: list[MovedTable], tenant: str) -> None:
    """The tenant's schema with a copy of each table (``LIKE ... INCLUDING ALL``); idempotent."""
    literal = quote_literal(tenant)
    async with dst.transaction():
        await dst.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        for t in tables:
            await dst.execute(
                f"CREATE TABLE IF NOT EXISTS {qualified(t.target)} (LIKE {qualified(t.definition)} INCLUDING ALL)"
            )
            if t.column is not None:  # the app's INSERTs may leave the tenant column out
                await dst.execute(
                    f"ALTER TABLE {qualified(t.target)} ALTER COLUMN {quote_ident(t.column)} SET DEFAULT {literal}"
                )


async def prepare_dedicated(source: Endpoint, target: Endpoint, tenant: str, tables: list[MovedTable]) -> None:
    """The tables' DDL from pg_dump of the shared database (``source``), applied to the tenant's own."""
    schemas = sorted({t.target[0] for t in tables} - {"public"})
    s = source
    ddl = await asyncio.to_thread(
        dump_ddl, s.host, s.port, s.user, s.password, s.database, s.sslmode, [t.definition for t in tables]
    )
    # pg_dump's SET lines change session state: run them on a connection of their own
    conn = await target.connect(tenant)
    try:
        async with conn.transaction():
            for schema in schemas:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            await conn.execute(ddl)
    finally:
        await conn.close()


class Mover:
    def __init__(self, req: MoveRequest, cfg: Config, state: MoveState, out: Progress) -> None:
        self.req, self.cfg, self.state, self.out = req, cfg, state, out
        self.tenant = req.tenant
        self.placement = state.placement
        # once the config names the new placement, the old one is read from the backup of the old config
        self.old_cfg = cfg
        if state.at_least("config_written") and state.backup is not None:
            try:
                self.old_cfg = load_config(state.backup)
            except ConfigError as exc:
                raise UsageError(f"the config as it was before the switch is needed: {exc}") from None
        self.source = source_endpoint(self.old_cfg, req.tenant)
        self.shared = _shared_endpoint(cfg)
        self.target = _target_endpoint(cfg, self.placement)
        self.admin = _admin(cfg, req.admin_user)
        self.tables = moved_tables(self.old_cfg, self.placement, req.tenant)

    async def run(self) -> None:
        st = self.state
        async with self.admin.session() as admin:  # fail fast when the proxy cannot be driven
            rows = await _command(admin, "SHOW TENANTS")
        if not any(r["tenant"] == self.tenant for r in rows):
            raise MoveError(f"the running proxy does not know tenant {self.tenant!r}: RELOAD it first")
        if not st.at_least("switched"):
            src = await self.source.connect(self.tenant)
            try:
                dst = await self.target.connect(self.tenant)
                try:
                    await self.copy_and_switch(src, dst)
                finally:
                    await dst.close()
            finally:
                await src.close()
        if self.req.keep_old:
            self.out(
                f"keep-old: the old placement still holds a copy of tenant {self.tenant}'s rows; "
                "the same command without --keep-old removes it"
            )
        else:
            await self.clean_old()
            st.path.unlink(missing_ok=True)
        self.out(f"done: tenant {self.tenant} is now {self.placement.tier} tier")

    async def copy_and_switch(self, src: asyncpg.Connection, dst: asyncpg.Connection) -> None:
        st = self.state
        try:
            ordered = await fk_order(src, self.tables)
            shapes = [(t, await describe(src, t.source)) for t in ordered]
            if not st.at_least("prepared"):
                await self.prepare(dst)
                st.phase = "prepared"
                st.save()
            if not st.at_least("copied"):
                # what a stopped run (or an earlier placement) left in the copies goes, children first
                for table, _ in reversed(shapes):
                    if not st.table(table.label)["copied"]:
                        await clear_target(dst, table, self.tenant)
                for table, shape in shapes:
                    await self.bulk(src, dst, table, shape)
                st.phase = "copied"
                st.save()
            await self.switch(src, dst, shapes)
        except (CopyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise MoveError(f"phase after {st.phase}: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ prepare

    async def _claim(self, dst: asyncpg.Connection, schemas: list[str]) -> bool:
        """Record what the move will create; True when its tables exist already (an earlier run)."""
        st = self.state
        existing = []
        for t in self.tables:
            name = qualified(t.target)
            if await dst.fetchval("SELECT to_regclass($1)", name) is not None:
                if name not in st.created_tables:
                    raise MoveError(f"target table {name} already exists and this move did not create it")
                existing.append(name)
        if not st.created_tables:
            for schema in schemas:
                if not await dst.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
                    st.created_schemas.append(schema)
            st.created_tables = [qualified(t.target) for t in self.tables]
            st.save()  # before creating anything: --abort then knows what is ours
        return bool(existing)

    async def prepare(self, dst: asyncpg.Connection) -> None:
        if self.placement.tier == "shared":
            self.out("prepare: back to the shared tables (they exist; only the tenant's rows are written)")
            return
        if self.placement.tier == "schema":
            schema = self.placement.schema
            assert schema is not None
            await self._claim(dst, [schema])
            await prepare_schema(dst, schema, self.tables, self.tenant)
            self.out(f"prepare: schema {schema} with {len(self.tables)} tables")
            return
        schemas = sorted({t.target[0] for t in self.tables} - {"public"})
        if await self._claim(dst, schemas):
            self.out("prepare: target tables exist from an earlier run")
            return
        await prepare_dedicated(self.shared, self.target, self.tenant, self.tables)
        self.out(
            f"prepare: {len(self.tables)} tables created in {self.target.database} on "
            f"{self.target.host}:{self.target.port}"
        )

    # ------------------------------------------------------------------ copy

    async def bulk(
        self, src: asyncpg.Connection, dst: asyncpg.Connection, table: MovedTable, shape: TableShape
    ) -> None:
        entry = self.state.table(table.label)
        if entry["copied"]:
            self.out(f"copy {table.label}: done in an earlier run")
            return
        async with dst.transaction():  # all of the table or none of it: a re-run copies it again
            await bulk_copy(src, dst, table, shape, self.tenant, self.req.batch_rows, self.out)
        entry["copied"] = True
        self.state.save()

    # ------------------------------------------------------------------ switch

    async def quiesce(self, admin: AdminClient) -> None:
        await quiesce(admin, self.tenant, self.req.pause_timeout, self.out)

    async def verify(self, src: asyncpg.Connection, dst: asyncpg.Connection) -> None:
        for t in self.tables:
            theirs = await checksum(src, t.source, t, self.tenant)
            ours = await target_checksum(dst, t, self.tenant)
            ok = theirs == ours
            self.out(f"verify {t.label}: source {theirs}; copy {ours}: {'ok' if ok else 'MISMATCH'}")
            if not ok:
                raise MoveError(f"verify {t.label}: the copy {qualified(t.target)} differs from the source")
            self.state.table(t.label)["verified"] = {"count": ours.count, "checksum": ours.digest}
        self.state.save()

    async def switch(
        self, src: asyncpg.Connection, dst: asyncpg.Connection, shapes: list[tuple[MovedTable, TableShape]]
    ) -> None:
        st = self.state
        path = self.req.config.absolute()
        async with self.admin.session() as admin:
            try:
                await self.quiesce(admin)
                await delta_sync(src, dst, shapes, self.tenant, self.out)
                await self.verify(src, dst)
                same = (self.source.host, self.source.port, self.source.database) == (
                    self.target.host, self.target.port, self.target.database,
                )  # fmt: skip
                await sync_sequences(src, dst, self.tables, same)
                if self.placement.tier == "dedicated":
                    await self.row_security(dst)
                if not st.at_least("config_written"):
                    self.write_config(path)
                await self.reload_and_check(admin, path)
                st.phase = "switched"
                st.save()
            except BaseException:
                with contextlib.suppress(MoveError):  # resume() has said so; the first error matters
                    await self.resume(admin)
                raise
            await self.resume(admin)

    async def row_security(self, dst: asyncpg.Connection) -> None:
        """RLS on the dedicated copies as on the shared tables (pg_dump brought their policies)."""
        shared = await self.shared.connect(self.tenant)
        try:
            await copy_row_security(shared, dst, self.tables)
        finally:
            await shared.close()

    def write_config(self, path: pathlib.Path) -> None:
        """Back the config up, then put the new placement in its place (validated, atomic)."""
        st = self.state
        old_text = path.read_text(encoding="utf-8")
        backup = rewrite_config(path, with_placement(old_text, self.tenant, self.placement))
        st.backup = str(backup)
        st.phase = "config_written"
        st.save()
        self.out(f"switch: {path} rewritten (backup {backup})")

    async def reload_and_check(self, admin: AdminClient, path: pathlib.Path) -> None:
        try:
            await _command(admin, "RELOAD")
            rows = await _command(admin, "SHOW TENANTS")
            tier = next((r["tier"] for r in rows if r["tenant"] == self.tenant), None)
            if tier != self.placement.tier:
                raise MoveError(
                    f"after RELOAD the proxy reports tenant {self.tenant} as {tier}, not {self.placement.tier}"
                )
        except MoveError:
            await self.restore_config(admin, path)
            raise
        self.out(f"switch: proxy reloaded, tenant {self.tenant} is {self.placement.tier} tier")

    async def restore_config(self, admin: AdminClient, path: pathlib.Path) -> None:
        """Put the backup back (the old placement) and reload it; the copy stays for a re-run."""
        st = self.state
        assert st.backup is not None
        replace_config(path, pathlib.Path(st.backup).read_text(encoding="utf-8"))
        st.phase = "copied"
        st.save()
        with contextlib.suppress(MoveError):
            await _command(admin, "RELOAD")
        self.out(f"switch: failed, {path} restored from {st.backup}")

    async def resume(self, admin: AdminClient) -> None:
        try:
            await admin.query(f"RESUME {self.tenant}")
        except AdminCommandError as exc:
            self.out(f"WARNING: RESUME {self.tenant} failed ({exc}): run it on the admin port")
            raise MoveError(f"RESUME {self.tenant} failed: {exc}") from None
        self.out(f"resume: tenant {self.tenant} resumed")

    # ------------------------------------------------------------------ after the switch

    async def unchanged_since_switch(self, conn: asyncpg.Connection, tables: list[MovedTable]) -> None:
        """The shared rows must still be what was verified at the switch: a later write there went to
        the old placement (a trusted service user, say) and would be lost with them."""
        for t in tables:
            verified = self.state.table(t.label)["verified"]
            now = await checksum(conn, t.source, t, self.tenant)
            if verified is None or (now.count, now.digest) != (verified["count"], verified["checksum"]):
                was = "never verified" if verified is None else f"{verified['count']} rows at the switch"
                raise MoveError(
                    f"delete-old refused: tenant {self.tenant}'s rows in {t.label} changed after the switch "
                    f"({was}, {now.count} now); the switch stands, the shared rows are kept for you to reconcile"
                )

    async def clean_old(self) -> None:
        """Remove the old placement's copy: its schema, its own database, or the tenant's rows there."""
        old = self.old_cfg.tenants[self.tenant]
        where = self.source.where
        try:
            now = load_config(self.req.config)  # the config the switch wrote (self.cfg: as the run found it)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        own_db = old.tier == "dedicated" and not others_in(self.old_cfg, where, self.tenant) + others_in(
            now, where, None
        )
        conn = await self.source.connect(self.tenant)
        try:
            ordered = await fk_order(conn, [t for t in self.tables if t.column is not None])
            await self.unchanged_since_switch(conn, ordered)
            if old.tier == "schema" and old.schema is not None:
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(old.schema)} CASCADE")
                self.out(f"cleanup: dropped schema {old.schema} (the old placement)")
            elif not own_db:
                total = 0
                for t in reversed(ordered):  # children first
                    total += await delete_tenant_rows(conn, t, self.tenant, self.req.batch_rows, self.out)
                self.out(f"cleanup: {total} rows of tenant {self.tenant} deleted from the old placement")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise MoveError(f"cleanup (after the switch; re-run to finish): {exc}") from None
        finally:
            await conn.close()
        if own_db:
            try:
                ended = await drop_own_database(self.source, self.tenant)
            except (asyncpg.PostgresError, OSError) as exc:
                raise MoveError(f"cleanup (after the switch; re-run to finish): {exc}") from None
            self.out(f"cleanup: dropped {where.describe()} (the old placement; {ended} sessions ended)")

async def abort(req: MoveRequest, cfg: Config, state: MoveState, out: Progress) -> None:
    if state.at_least("config_written"):
        raise MoveError(f"the move of {req.tenant} has switched already ({state.phase}): re-run it to finish")
    with contextlib.suppress(MoveError, UsageError):
        async with _admin(cfg, req.admin_user).session() as admin:
            await _command(admin, f"RESUME {req.tenant}")
            out(f"abort: tenant {req.tenant} resumed")
    if state.created_tables or state.created_schemas:
        conn = await _target_endpoint(cfg, state.placement).connect(req.tenant)
        try:
            if state.created_tables:
                await conn.execute(f"DROP TABLE IF EXISTS {', '.join(state.created_tables)}")
                out(f"abort: dropped {', '.join(state.created_tables)}")
            for schema in state.created_schemas:
                try:
                    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)}")
                    out(f"abort: dropped schema {schema}")
                except asyncpg.DependentObjectsStillRemainError:
                    out(f"abort: schema {schema} kept: it holds objects this move did not create")
        except (asyncpg.PostgresError, OSError) as exc:
            raise MoveError(f"abort: {exc}") from None
        finally:
            await conn.close()
    state.path.unlink(missing_ok=True)
    out(f"abort: move of tenant {req.tenant} abandoned, state removed")


async def run_move(req: MoveRequest, out: Progress = print) -> None:
    """Run (or continue, or abort) a move; raises UsageError (exit 2) or MoveError (exit 1)."""
    try:
        cfg = load_config(req.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    path = state_path(req.config, req.tenant)
    state = MoveState.load(path)
    if req.abort:
        if state is None:
            raise UsageError(f"no move of tenant {req.tenant!r} in progress ({path} does not exist)")
        await abort(req, cfg, state, out)
        return
    tenant = cfg.tenants.get(req.tenant)
    if tenant is None:
        raise UsageError(f"{cfg.source}: no tenant {req.tenant!r} in [tenants]")
    placement = req.placement()
    if state is not None:
        if state.placement != placement:
            raise UsageError(
                f"a move of {req.tenant} to {state.placement.as_dict()} is in progress ({path}): "
                "re-run it with the same arguments, or --abort it"
            )
        if tenant.tier != placement.tier and state.at_least("config_written"):
            state.phase = "copied"  # the switch did not stick: the config names the old placement
        out(f"continue: move of {req.tenant} from phase {state.phase}")
    elif tenant.tier == placement.tier and placement.tier != "dedicated" and tenant.schema == placement.schema:
        raise UsageError(f"tenant {req.tenant!r} is {tenant.tier} tier there already: nothing to move")
    else:
        state = MoveState(path, req.tenant, placement)
    if not state.at_least("config_written"):
        _check_residency(tenant, placement)
        text = req.config.read_text(encoding="utf-8")
        try:
            validate_text(req.config.absolute(), with_placement(text, req.tenant, placement))
        except ConfigError as exc:
            raise UsageError(f"the config with the new placement would be refused:\n{exc}") from None
    mover = Mover(req, cfg, state, out)
    if not path.exists():
        state.save()
    await mover.run()


# ---------------------------------------------------------------------- command line


def cmd_tenant_move(args: argparse.Namespace) -> int:
    req = MoveRequest(
        config=pathlib.Path(args.config),
        tenant=args.tenant,
        target=placement_of(args, args.to_tier or "", args.region),
        admin_user=args.admin_user,
        keep_old=args.keep_old,
        batch_rows=args.batch_rows,
        pause_timeout=args.pause_timeout,
        abort=args.abort,
    )
    if not req.abort and not req.target.tier:
        print("tenant move: --to-tier is required (or --abort)", file=sys.stderr)
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        asyncio.run(run_move(req, out))
    except UsageError as exc:
        print(f"tenant move: {exc}", file=sys.stderr)
        return 2
    except MoveError as exc:
        print(f"tenant move: FAILED: {exc}", file=sys.stderr)
        print(f"tenant move: tenant {req.tenant} keeps its old placement unless a switch was reported", file=sys.stderr)
        return 1
    return 0


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def add_placement_arguments(p: argparse.ArgumentParser, region: str) -> None:
    """The options that name a placement (``tenant move``, ``create``, ``restore``); placement_of reads them."""
    p.add_argument("--schema", help="schema tier: the tenant's schema (default t_<tenant>)")
    p.add_argument("--host", help="dedicated tier: the tenant's server")
    p.add_argument("--port", type=int)
    p.add_argument("--database")
    p.add_argument("--user", help="dedicated tier: the role on the tenant's server")
    p.add_argument("--password-env", help="variable holding the server's password (its name goes in the config)")
    p.add_argument("--password-file", help="file holding the server's password (its path goes in the config)")
    p.add_argument("--sslmode", choices=["disable", "prefer", "require", "verify-ca", "verify-full"],
                   help="dedicated tier (default prefer)")  # fmt: skip
    p.add_argument("--region", help=region)


def placement_of(args: argparse.Namespace, tier: str, region: str | None) -> PlacementSpec:
    """The placement add_placement_arguments' options give (``region``: the dedicated server's)."""
    return PlacementSpec(
        tier,
        schema=args.schema,
        host=args.host,
        port=args.port,
        database=args.database,
        user=args.user,
        password_env=args.password_env,
        password_file=args.password_file,
        sslmode=args.sslmode,
        region=region,
    )


def add_move_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tenant move`` in the ``tenant`` command group (tenant_cli.py)."""
    m = sub.add_parser("move", help="move a shared-tier tenant online (copy, pause, sync, verify, switch)")
    m.add_argument("tenant")
    m.add_argument("--config", "-c", required=True, help="the TOML config file the proxy runs with")
    m.add_argument("--to-tier", choices=["shared", "schema", "dedicated"])
    add_placement_arguments(m, region="dedicated tier: the target's region (checked against the tenant's)")
    m.add_argument("--admin-user", help=f"admin user for PAUSE/RELOAD/RESUME (password from ${ADMIN_PASSWORD_ENV})")
    m.add_argument(
        "--keep-old", action="store_true", help="keep the old placement's copy for now (re-run without it to remove)"
    )
    m.add_argument("--batch-rows", type=_positive(int), default=10000, help="rows per copy/delete batch")
    m.add_argument(
        "--pause-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds to wait for the tenant's open transactions (default 30)",
    )
    m.add_argument("--abort", action="store_true", help="resume, drop what the move created, forget its state")
    m.set_defaults(func=cmd_tenant_move)
