"""Removing a placement's copy of a tenant: its schema, or its own database (what `tenant delete`
purges, and what `tenant move` cleans up on the old placement after the switch).

A dedicated database is dropped only when it is the tenant's alone: neither the shared backend's
database nor any other tenant's (else only the tenant's tables or rows go). The proxy's pooled
backends to it are closed by the RELOAD that took the placement away; what still holds the
database open after ``wait`` seconds (a pool whose sessions were ending) is terminated by
``DROP DATABASE ... WITH (FORCE)``.

>>> Where("127.0.0.1", 5432, "acme").describe()
'DATABASE "acme" on 127.0.0.1:5432'
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from tenantgate.config import Config
from tenantgate.keyring.quoting import quote_ident

__all__ = ["MAINTENANCE_DATABASES", "Where", "drop_database", "others_in"]

MAINTENANCE_DATABASES = ("postgres", "template1")  # where DROP DATABASE runs from (not the one dropped)


@dataclass(frozen=True)
class Where:
    """A database on a server."""

    host: str
    port: int
    database: str

    def describe(self) -> str:
        return f"DATABASE {quote_ident(self.database)} on {self.host}:{self.port}"


def others_in(cfg: Config, where: Where, tenant: str | None) -> list[str]:
    """Who keeps data in ``where`` by ``cfg``: the shared backend, tenants other than ``tenant``."""
    def at(b: object) -> bool:
        return (getattr(b, "host", None), getattr(b, "port", None), getattr(b, "database", None)) == (
            where.host, where.port, where.database,
        )  # fmt: skip

    users = ["the shared backend"] if at(cfg.backend) else []
    return users + [f"tenant {name}" for name, t in cfg.tenants.items() if name != tenant and at(t.backend)]


async def drop_database(maintenance: asyncpg.Connection, where: Where, wait: float = 5.0) -> int:
    """DROP ``where`` (connected to another database of its server); the sessions it had to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    while (left := int(await maintenance.fetchval(query, where.database))) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await maintenance.execute(f"DROP DATABASE IF EXISTS {quote_ident(where.database)} WITH (FORCE)")
    return left
