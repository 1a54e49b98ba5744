"""Runtime facts: what only a live system can show (tenantgate.config.compliance.RUNTIME_CHECKS).

Each check returns a `Finding` (passed, one line of evidence or of what is missing). The backend is
reached as the proxy reaches it: the configured role, host and sslmode.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tenantgate.config import Config
from tenantgate.config.schema import Backend, Tenant
from tenantgate.keyring.errors import KeyringError
from tenantgate.keyring.quoting import quote_ident, quote_qualified

from ...crypto import CryptoSetupError, backend_url, build_keyring
from ...placement import backend_target
from .. import rls
from . import auditlog


@dataclass(frozen=True, slots=True)
class Finding:
    passed: bool
    evidence: str


async def _connect(config: Config, backend: Backend | None = None) -> asyncpg.Connection:
    backend = backend or config.backend
    url = backend_url(backend_target(backend), backend.database or "postgres")
    return await asyncpg.connect(url, timeout=backend.connect_timeout)


def _dedicated(config: Config) -> list[Tenant]:
    return [t for t in config.tenants.values() if t.tier == "dedicated" and t.backend is not None]


async def _each_dedicated(config: Config, check: Callable[[Tenant, asyncpg.Connection], Awaitable[list[str]]]
                          ) -> list[str]:
    """`check` run in every dedicated tenant's own database (the main backend's checks do not see it)."""
    problems: list[str] = []
    for tenant in _dedicated(config):
        assert tenant.backend is not None
        try:
            conn = await _connect(config, tenant.backend)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            problems.append(f"tenant {tenant.name} (dedicated): backend unreachable: {exc}")
            continue
        try:
            problems += [f"tenant {tenant.name} (dedicated): {p}" for p in await check(tenant, conn)]
        finally:
            await conn.close()
    return problems


async def _schema_tables(config: Config, conn: asyncpg.Connection) -> list[str]:
    """A schema-tier tenant's pinned search_path must find each scoped table in its own schema: a
    table missing there is one its sessions cannot reach (refused by the rewriter, not leaked)."""
    problems: list[str] = []
    for tenant in config.tenants.values():
        if tenant.tier != "schema" or tenant.schema is None:
            continue
        if await conn.fetchval("SELECT to_regnamespace($1) IS NULL", quote_ident(tenant.schema)):
            problems.append(f"tenant {tenant.name} (schema): schema {tenant.schema} does not exist")
            continue
        for table in config.scoping.tables:
            name = quote_qualified(tenant.schema, table.name)
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                problems.append(f"tenant {tenant.name} (schema): {tenant.schema}.{table.name} does not exist")
    return problems


async def check_rls(config: Config, conn: asyncpg.Connection) -> Finding:
    """RLS on the shared tables, in every dedicated tenant's database, and each schema-tier tenant's
    own tables in place (that tier isolates by schema: search_path pinned, other schemas refused)."""
    if not config.scoping.tables:
        return Finding(True, "no scoped tables (nothing for RLS to guard)")
    drift = await rls.status(conn, config)
    drift += await _each_dedicated(config, lambda _t, c: rls.status(c, config))
    drift += await _schema_tables(config, conn)
    if drift:
        return Finding(False, "RLS drift: " + "; ".join(drift))
    placed = [f"{len(_dedicated(config))} dedicated database(s)"] if _dedicated(config) else []
    schemas = sum(t.tier == "schema" for t in config.tenants.values())
    placed += [f"{schemas} schema-tier tenant(s) with their own tables"] if schemas else []
    where = f" (and in {', '.join(placed)})" if placed else ""
    return Finding(True, f"{len(config.scoping.tables)} scoped table(s) carry the {rls.POLICY} policy with FORCE"
                         + where)


async def _role_problems(conn: asyncpg.Connection) -> list[str]:
    row = await conn.fetchrow(
        "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    user, superuser, bypass = row
    if superuser or bypass:
        return [f"backend role {user} is {'superuser' if superuser else 'BYPASSRLS'}: RLS does not bind it"]
    return []


async def check_backend_role(config: Config, conn: asyncpg.Connection) -> Finding:
    """The role the proxy logs in as, on the main backend and on every dedicated tenant's."""
    problems = await _role_problems(conn) + await _each_dedicated(config, lambda _t, c: _role_problems(c))
    if problems:
        return Finding(False, "; ".join(problems))
    count = 1 + len(_dedicated(config))
    return Finding(True, f"backend role(s) of {count} server connection(s) neither superuser nor BYPASSRLS")


async def check_clock(config: Config, conn: asyncpg.Connection) -> Finding:
    limit = config.compliance.max_clock_skew if config.compliance else 1.0
    before = time.time()
    backend_now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
    after = time.time()
    skew = abs(backend_now - (before + after) / 2)
    if skew > limit + (after - before) / 2:
        return Finding(False, f"clock differs from the backend's by {skew:.3f}s (allowed {limit}s)")
    return Finding(True, f"clock within {skew:.3f}s of the backend's (allowed {limit}s)")


async def check_audit_chain(config: Config, conn: asyncpg.Connection | None = None) -> Finding:
    integrity = auditlog.integrity(config)  # every instance's log in a [cluster]
    return Finding(integrity.ok, integrity.summary)


async def check_keys(config: Config, conn: asyncpg.Connection | None = None) -> Finding:
    settings = config.encryption
    if settings is None:
        return Finding(False, "no [encryption]: no tenant keys to check")
    max_age = timedelta(days=config.compliance.max_key_age_days if config.compliance else 365)
    try:
        keyring = build_keyring(settings, backend_target(config.backend), config.backend.database)
        try:
            records = await keyring.list_keys()
            tenants = sorted({r.tenant for r in records if not r.destroyed})
            for tenant in tenants:
                await keyring.ensure_loaded(tenant, create=False)  # unwraps every DEK under the KEK
        finally:
            await keyring.close()
    except (CryptoSetupError, KeyringError, OSError, asyncpg.PostgresError) as exc:
        return Finding(False, f"tenant keys cannot be unwrapped: {exc}")
    now = datetime.now(UTC)
    stale = []
    for tenant in tenants:
        newest = max(r.created_at for r in records if r.tenant == tenant and not r.destroyed)
        if now - newest > max_age:
            stale.append(f"{tenant} ({(now - newest).days} days)")
    if stale:
        return Finding(False, f"DEK older than {max_age.days} days, rotate: {', '.join(stale)}")
    return Finding(True, f"KEK {keyring.kek_id} unwraps {len(tenants)} tenant(s)' DEKs, newest of each "
                         f"younger than {max_age.days} days")


Check = Callable[[Config, asyncpg.Connection], Awaitable[Finding]]
_NEEDS_BACKEND: dict[str, Check] = {"rls": check_rls, "backend_role": check_backend_role, "clock": check_clock}
_LOCAL: dict[str, Callable[[Config], Awaitable[Finding]]] = {"audit_chain": check_audit_chain, "keys": check_keys}


async def run_checks(config: Config, names: set[str]) -> dict[str, Finding]:
    """Each named runtime check once (controls share them)."""
    found: dict[str, Finding] = {}
    for name in sorted(names & set(_LOCAL)):
        found[name] = await _LOCAL[name](config)
    wanted = sorted(names & set(_NEEDS_BACKEND))
    if not wanted:
        return found
    try:
        conn = await _connect(config)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return found | {name: Finding(False, f"backend unreachable: {exc}") for name in wanted}
    try:
        for name in wanted:
            found[name] = await _NEEDS_BACKEND[name](config, conn)
    finally:
        await conn.close()
    return found
