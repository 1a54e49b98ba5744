"""``tenantgate admin COMMAND``: one admin console command from the command line.

It runs on the admin port of the instance the config names (with [cluster]: the instance
``TENANTGATE_INSTANCE`` or ``instance`` names), as the admin user of ``--admin-user`` (or the only
one) with the password from ``$TENANTGATE_ADMIN_PASSWORD`` — as ``tenant move`` does. So in a
[cluster] ``tenantgate admin RELOAD`` (or PAUSE, RESUME, KILL TENANT) reaches every instance and
every worker before it returns (console/cluster.py), exactly as typed into psql on that port.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from tenantgate.config import ConfigError, load_config

from .admin_client import AdminCommandError
from .move import ADMIN_PASSWORD_ENV, Admin, MoveError, UsageError, _admin


async def _run(admin: Admin, command: str) -> list[dict[str, str | None]]:
    async with admin.session() as client:
        return await client.query(command)


def cmd_admin(args: argparse.Namespace) -> int:
    command = " ".join(args.words)
    try:
        admin = _admin(load_config(args.config), args.admin_user)
    except (ConfigError, UsageError) as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(_run(admin, command))
    except (AdminCommandError, MoveError) as exc:
        print(f"admin: {exc}", file=sys.stderr)
        return 1
    if rows:
        print("\t".join(rows[0]))
    for row in rows:
        print("\t".join("" if v is None else v for v in row.values()))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("admin", help="run one admin console command (in a [cluster]: RELOAD etc. on all)")
    p.add_argument("--config", "-c", required=True, help="the TOML config file the proxy runs with")
    p.add_argument("--admin-user", help=f"admin user (password from ${ADMIN_PASSWORD_ENV})")
    p.add_argument("words", nargs="+", metavar="COMMAND", help="e.g. RELOAD, PAUSE acme, SHOW SESSIONS")
    p.set_defaults(func=cmd_admin)
