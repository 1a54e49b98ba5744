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
from tenantgate.keyring.errors import KeyringError

from ...crypto import CryptoSetupError, backend_url, build_keyring
from ...placement import backend_target
from .. import rls
from . import auditlog


@dataclass(frozen=True, slots=True)
class Finding:
    passed: bool
    evidence: str


async def _connect(config: Config) -> asyncpg.Connection:
    url = backend_url(backend_target(config.backend), config.backend.database or "postgres")
    return await asyncpg.connect(url, timeout=config.backend.connect_timeout)


async def check_rls(config: Config, conn: asyncpg.Connection) -> Finding:
    if not config.scoping.tables:
        return Finding(True, "no scoped tables (nothing for RLS to guard)")
    drift = await rls.status(conn, config)
    if drift:
        return Finding(False, "RLS drift: " + "; ".join(drift))
    return Finding(True, f"{len(config.scoping.tables)} scoped table(s) carry the {rls.POLICY} policy with FORCE")


async def check_backend_role(config: Config, conn: asyncpg.Connection) -> Finding:
    row = await conn.fetchrow(
        "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    user, superuser, bypass = row
    if superuser or bypass:
        what = "superuser" if superuser else "BYPASSRLS"
        return Finding(False, f"backend role {user} is {what}: RLS does not bind it")
    return Finding(True, f"backend role {user} is neither superuser nor BYPASSRLS")


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
