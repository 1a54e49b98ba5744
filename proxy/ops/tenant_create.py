"""``tenantgate tenant create T --tier shared|schema|dedicated``: onboard a tenant, ready at once.

Steps, in an order that keeps every failure harmless and every re-run complete (each step is
idempotent, so the same command continues where a failed run stopped):

1. check: the config with the new tenant must load (name rules, residency) before anything;
2. placement: schema tier: its schema with a copy of every scoped and reference table
   (``LIKE ... INCLUDING ALL``); dedicated: the tables' DDL from ``pg_dump --schema-only`` of the
   shared database (policies included, row-level security switched on); reference rows copied;
3. key: the tenant's DEK (version 1) when ``[encryption]`` is configured;
4. config: ``[tenants.T]`` (and ``--login`` user, stored as a SCRAM verifier) written with
   comments kept, a backup beside it, validated, atomic rename; the tenant exists from here on;
5. reload: ``RELOAD`` on the admin port, and SHOW TENANTS must list the tenant in its tier.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from dataclasses import dataclass

import asyncpg

from tenantgate.config import ConfigError, Tenant
from tenantgate.keyring.auth.scram import make_verifier
from tenantgate.keyring.errors import KeyringError

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
)
from .move import (
    ADMIN_PASSWORD_ENV,
    MoveRequest,
    _shared_endpoint,
    _target_endpoint,
    moved_tables,
    prepare_dedicated,
    prepare_schema,
)
from .placement_config import PlacementSpec, rewrite_config, validate_text, with_tenant
from .placement_copy import bulk_copy, copy_row_security, describe, qualified

__all__ = ["CreateRequest", "create_tenant"]



@dataclass(frozen=True)
class CreateRequest:
    config: pathlib.Path
    tenant: str
    target: PlacementSpec  # tier shared | schema | dedicated, with the dedicated server's options
    region: str | None = None
    login: str | None = None  # a tenant user to add, its password from login_password_env
    login_password_env: str | None = None
    admin_user: str | None = None
    reload: bool = True

    def placement(self) -> PlacementSpec:
        if self.target.tier == "shared":
            extra = [k for k, v in self.target.as_dict().items() if k != "tier"]
            if extra:
                raise UsageError(f"{', '.join('--' + k.replace('_', '-') for k in extra)}: not for the shared tier")
            return self.target
        return MoveRequest(self.config, self.tenant, self.target).placement()

    def login_entry(self) -> tuple[str, str] | None:
        if self.login is None:
            return None
        env = self.login_password_env
        password = os.environ.get(env) if env else None
        if not password:
            raise UsageError(f"--login {self.login}: set --login-password-env to a variable holding its password")
        return self.login, str(make_verifier(password))


def _same(t: Tenant, p: PlacementSpec) -> bool:
    return t.tier == p.tier and (p.tier != "schema" or t.schema == p.schema)


async def create_tenant(req: CreateRequest, out: Progress = print, checkpoint: Checkpoint = no_checkpoint) -> None:
    """Onboard (or finish onboarding) a tenant; UsageError (exit 2) or LifecycleError (exit 1)."""
    cfg = load(req.config)
    placement = req.placement()
    if placement.tier == "dedicated" and req.region is not None and placement.region is None:
        placement = PlacementSpec(**{**placement.as_dict(), "region": req.region})
    existing = cfg.tenants.get(req.tenant)
    new_text = None
    if existing is not None:
        if not _same(existing, placement):
            raise UsageError(f"tenant {req.tenant!r} exists as {existing.tier} tier: `tenant move` changes a placement")
        out(f"check: tenant {req.tenant} is in the config already; finishing its set-up")
    else:
        text = req.config.read_text(encoding="utf-8")
        new_text = with_tenant(text, req.tenant, placement, req.region, req.login_entry())
        try:
            validate_text(req.config.absolute(), new_text)
        except ConfigError as exc:
            raise UsageError(f"the config with tenant {req.tenant!r} would be refused:\n{exc}") from None
        out(f"check: tenant {req.tenant} ({placement.tier} tier) fits the config")
    try:
        checkpoint("placement")
        await _placement(req, placement, out)
        checkpoint("key")
        keyring = keyring_of(cfg)
        if keyring is not None:
            try:
                out(f"key: tenant {req.tenant} encrypts with key version {await current_key(keyring, req.tenant)}")
            finally:
                await keyring.close()
        checkpoint("config")
        if new_text is not None:
            backup = rewrite_config(req.config.absolute(), new_text)
            out(f"config: {req.config} has tenant {req.tenant} (backup {backup})")
        checkpoint("reload")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, KeyringError, ConfigError) as exc:
        raise LifecycleError(f"create {req.tenant}: {type(exc).__name__}: {exc}; re-run to continue") from None
    if req.reload:
        await _reload(req, placement.tier, out)
    out(f"done: tenant {req.tenant} is ready ({placement.tier} tier)")


async def _placement(req: CreateRequest, placement: PlacementSpec, out: Progress) -> None:
    if placement.tier == "shared":
        out("placement: shared tables (rows scoped by the rewriter and RLS)")
        return
    cfg = load(req.config)
    tables = moved_tables(cfg, placement)
    source = _shared_endpoint(cfg)
    target = _target_endpoint(cfg, placement)
    src = await source.connect(req.tenant)
    dst = await target.connect(req.tenant)
    try:
        present = [t for t in tables if await dst.fetchval("SELECT to_regclass($1)", qualified(t.target))]
        if placement.tier == "schema":
            assert placement.schema is not None
            await prepare_schema(dst, placement.schema, tables, req.tenant)
        elif not present:
            await prepare_dedicated(source, target, req.tenant, tables)
        elif len(present) != len(tables):
            missing = ", ".join(qualified(t.target) for t in tables if t not in present)
            raise LifecycleError(f"{target.database} has some of the tables but not {missing}: drop them or add them")
        for t in tables:
            if t.column is None and await dst.fetchval(f"SELECT count(*) FROM {qualified(t.target)}") == 0:
                await bulk_copy(src, dst, t, await describe(src, t.source), req.tenant, 10000, out)
        if placement.tier == "dedicated":
            await copy_row_security(src, dst, tables)
    finally:
        await src.close()
        await dst.close()
    where = placement.schema if placement.tier == "schema" else f"{target.database} on {target.host}:{target.port}"
    out(f"placement: {len(tables)} tables in {where}")


async def _reload(req: CreateRequest, tier: str, out: Progress) -> None:
    cfg = load(req.config)
    if cfg.listen.admin is None or not os.environ.get(ADMIN_PASSWORD_ENV):
        out(f"reload: not done (no admin port or ${ADMIN_PASSWORD_ENV}): RELOAD the proxy to serve {req.tenant}")
        return
    async with admin_of(cfg, req.admin_user).session() as admin:
        await command(admin, "RELOAD")
        rows = await command(admin, "SHOW TENANTS")
    if not any(r["tenant"] == req.tenant and r["tier"] == tier for r in rows):
        raise LifecycleError(f"after RELOAD the proxy does not list {req.tenant} as {tier} tier")
    out(f"reload: the proxy serves tenant {req.tenant}")
    sha = hashlib.sha256(req.config.read_bytes()).hexdigest()
    await note(cfg, req.admin_user, "created", req.tenant, sha, out)  # the config that names it
