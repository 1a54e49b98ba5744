"""Row-level security as the second lock behind the rewriter: ``tenantgate rls install|status``.

Every scoped table gets ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY (so the owner is
bound too) and one policy::

    CREATE POLICY tenantgate_tenant ON t
        USING (tenant_col = current_setting('tenantgate.tenant', true)
               OR current_setting('tenantgate.trusted', true) = 'on')
        WITH CHECK (<same>)

The proxy sets ``tenantgate.tenant`` for tenant sessions and ``tenantgate.trusted`` for
trusted service users as startup settings (their reset values, so RESET ALL / DISCARD
ALL keep them); a client can set neither. A leak must then defeat both the rewriter and
PostgreSQL. Installing is idempotent; ``status`` reports drift (a missing or changed
policy, RLS or FORCE switched off) and exits non-zero when there is any.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import asyncpg

from tenantgate.config import Config, ConfigError, load_config
from tenantgate.keyring.quoting import quote_ident, quote_qualified

POLICY = "tenantgate_tenant"


def policy_expression(column: str) -> str:
    return (
        f"({quote_ident(column)} = current_setting('tenantgate.tenant', true)"
        " OR current_setting('tenantgate.trusted', true) = 'on')"
    )


@dataclass(frozen=True)
class TableState:
    table: str
    exists: bool
    rls: bool
    forced: bool
    using: str | None
    check: str | None

    def drift(self, column: str) -> list[str]:
        if not self.exists:
            return [f"{self.table}: table does not exist"]
        problems = []
        if not self.rls:
            problems.append(f"{self.table}: row level security is off")
        if not self.forced:
            problems.append(f"{self.table}: FORCE ROW LEVEL SECURITY is off (the owner bypasses RLS)")
        if self.using is None:
            problems.append(f"{self.table}: policy {POLICY} is missing")
        elif column not in (self.using or "") or column not in (self.check or ""):
            problems.append(f"{self.table}: policy {POLICY} does not test column {column}")
        return problems


def scoped_tables(config: Config) -> list[tuple[str, str]]:
    """(qualified, quoted table name, tenant column) of every scoped table."""
    return [(quote_qualified(t.schema or "public", t.name), t.column) for t in config.scoping.tables]


async def table_state(conn: asyncpg.Connection, table: str) -> TableState:
    row = await conn.fetchrow(
        """
        SELECT c.relrowsecurity, c.relforcerowsecurity,
               pg_get_expr(p.polqual, p.polrelid) AS using_expr,
               pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr
        FROM pg_class c
        LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = $2
        WHERE c.oid = to_regclass($1)
        """,
        table,
        POLICY,
    )
    if row is None:
        return TableState(table, False, False, False, None, None)
    return TableState(table, True, row[0], row[1], row[2], row[3])


async def install(conn: asyncpg.Connection, config: Config) -> list[str]:
    """Create or refresh the policies; returns what was done."""
    done = []
    async with conn.transaction():
        for table, column in scoped_tables(config):
            expr = policy_expression(column)
            await conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            await conn.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            await conn.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
            await conn.execute(f"CREATE POLICY {POLICY} ON {table} USING {expr} WITH CHECK {expr}")
            done.append(f"{table}: RLS forced, policy {POLICY} on {column}")
    return done


async def status(conn: asyncpg.Connection, config: Config) -> list[str]:
    problems: list[str] = []
    for table, column in scoped_tables(config):
        problems += (await table_state(conn, table)).drift(column)
    return problems


def _dsn(args: argparse.Namespace, config: Config) -> dict[str, object]:
    if args.dsn:
        return {"dsn": args.dsn}
    return connect_args(config)


def connect_args(config: Config) -> dict[str, object]:
    """asyncpg.connect arguments for the configured backend role."""
    b = config.backend
    return {
        "host": b.host,
        "port": b.port,
        "user": b.user,
        "password": b.password.reveal() if b.password else None,
        "database": b.database or "postgres",
    }


async def install_configured(config: Config) -> list[str]:
    """`rls install` as the configured backend role (which must own the scoped tables)."""
    conn = await asyncpg.connect(**connect_args(config))  # type: ignore[arg-type]
    try:
        return await install(conn, config)
    finally:
        await conn.close()


def cmd_rls(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc)
        return 2

    async def run() -> int:
        conn = await asyncpg.connect(**_dsn(args, config))  # type: ignore[arg-type]
        try:
            if args.rls_command == "install":
                for line in await install(conn, config):
                    print(line)
                return 0
            problems = await status(conn, config)
            for line in problems:
                print(f"drift: {line}")
            if not problems:
                print(f"ok: {len(config.scoping.tables)} scoped tables carry the {POLICY} policy with FORCE")
            return 1 if problems else 0
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"rls {args.rls_command}: {exc}")
        return 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rls = subparsers.add_parser("rls", help="install or check the row-level-security policies behind the rewriter")
    sub = rls.add_subparsers(dest="rls_command", required=True)
    for name, text in (("install", "create/refresh the policies (idempotent)"), ("status", "report drift")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", required=True)
        p.add_argument("--dsn", help="connect as this owner/superuser instead of the [backend] role")
        p.set_defaults(func=cmd_rls)
