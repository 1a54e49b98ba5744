"""The peer runner's world: a throwaway PostgreSQL, one multi-tenant database with RLS installed, and
the real proxy in session and in transaction pooling in front of it.

A *target* is one way to reach that database: ``direct`` (the backend role itself, as an app would
without tenantgate) or through a proxy, as the trusted user ``svc`` or as the tenant user ``alice``
(tenant ``acme``). Direct tenant runs set ``tenantgate.tenant`` at startup so the RLS policies show
the same rows the proxy's rewrite does: "direct" is PostgreSQL's own behaviour for that tenant.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg

from tenantgate.proxy.sandbox.pgcluster import PgServer, ThrowawayCluster, free_port

from ..harness import USERS, Backend, ProxyProcess, config_text, start_proxy

TENANT, OTHER = "acme", "globex"
TENANT_USER, TRUSTED_USER = "alice", "svc"

# Scoped tables of the peer programs: ids are global (ORMs want one-column keys); the tenant column
# defaults to the session's tenant so direct runs under RLS insert like the proxy's rewrite does.
_TENANT_COL = "tenant_id text NOT NULL DEFAULT current_setting('tenantgate.tenant', true)"
SCOPED = ["peer_items", "shop_customer", "shop_product", "shop_order", "shop_orderline", "sa_account"]
SCHEMA = f"""
CREATE TABLE peer_items (id serial PRIMARY KEY, {_TENANT_COL}, name text NOT NULL);
CREATE TABLE shop_customer (id serial PRIMARY KEY, {_TENANT_COL}, name text NOT NULL,
                            vip boolean NOT NULL DEFAULT false);
CREATE TABLE shop_product (id serial PRIMARY KEY, {_TENANT_COL}, sku text NOT NULL, price numeric(10,2) NOT NULL,
                           stock int NOT NULL DEFAULT 0);
CREATE TABLE shop_order (id serial PRIMARY KEY, {_TENANT_COL},
                         customer_id int NOT NULL REFERENCES shop_customer(id), status text NOT NULL DEFAULT 'new',
                         created timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop_orderline (id serial PRIMARY KEY, {_TENANT_COL}, order_id int NOT NULL REFERENCES shop_order(id),
                             product_id int NOT NULL REFERENCES shop_product(id), qty int NOT NULL);
CREATE TABLE sa_account (id serial PRIMARY KEY, {_TENANT_COL}, owner text NOT NULL, balance int NOT NULL);
"""
# Each run starts from the same rows: acme's in lower case, globex's in upper case (a leak shows).
DATA = f"""
TRUNCATE {", ".join(SCOPED)} RESTART IDENTITY CASCADE;
INSERT INTO peer_items (tenant_id, name) VALUES ('{TENANT}', 'acme one'), ('{TENANT}', 'acme two'),
  ('{OTHER}', 'GLOBEX ONE');
INSERT INTO shop_customer (tenant_id, name) VALUES ('{TENANT}', 'ann'), ('{TENANT}', 'art'), ('{OTHER}', 'GREG');
INSERT INTO shop_product (tenant_id, sku, price, stock) VALUES ('{TENANT}', 'apple', 1.50, 10),
  ('{TENANT}', 'anvil', 99.00, 2), ('{OTHER}', 'GLUE', 3.00, 100);
INSERT INTO shop_order (tenant_id, customer_id) VALUES ('{TENANT}', 1), ('{TENANT}', 1), ('{TENANT}', 2),
  ('{OTHER}', 3);
INSERT INTO shop_orderline (tenant_id, order_id, product_id, qty) VALUES ('{TENANT}', 1, 1, 3), ('{TENANT}', 1, 2, 1),
  ('{TENANT}', 2, 1, 5), ('{TENANT}', 3, 2, 1), ('{OTHER}', 4, 3, 7);
INSERT INTO sa_account (tenant_id, owner, balance) VALUES ('{TENANT}', 'ann', 100), ('{OTHER}', 'GREG', 900);
"""
SCOPING = f'[scoping]\ncolumn = "tenant_id"\ntables = {SCOPED!r}\n'.replace("'", '"')
POOL_MODES = ("session", "transaction")
# What Django's postgres_tests create with CREATE EXTENSION IF NOT EXISTS, which needs a superuser
# unless the extension exists already: the throwaway cluster's template1 carries them.
TEMPLATE_EXTENSIONS = ("bloom", "btree_gin", "btree_gist", "citext", "hstore", "pg_trgm", "unaccent", "pgcrypto")


@dataclass(frozen=True)
class Target:
    """One way to reach the peer database; ``env()`` is what a libpq-style client reads."""

    name: str  # e.g. direct/tenant, session/trusted, transaction/tenant
    host: str
    port: int
    user: str
    password: str
    database: str
    tenant: str | None  # the tenant whose rows the session must see (None: trusted, all rows)
    options: str = ""  # startup options (direct runs: the RLS settings the proxy would set)

    @property
    def via_proxy(self) -> bool:
        return not self.name.startswith("direct")

    def url(self, scheme: str = "postgresql") -> str:
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                   PGPASSWORD=self.password, PGDATABASE=self.database, PGSSLMODE="disable",
                   PEER_OPTIONS=self.options, PGOPTIONS=self.options)
        env.pop("PEER_TENANT", None)
        if self.tenant:
            env["PEER_TENANT"] = self.tenant
        return env


@dataclass
class PeerEnv:
    cluster: ThrowawayCluster
    backend: Backend
    proxies: dict[str, ProxyProcess]  # pool mode -> proxy for trusted users (any database)
    tenant_proxies: dict[str, ProxyProcess]  # pool mode -> proxy with the database tenants are routed to

    def reset_data(self) -> None:
        self.cluster.execute(DATA, dbname=self.backend.database)

    def targets(self, role: str, modes: tuple[str, ...] = POOL_MODES) -> list[Target]:
        """``direct`` first, then each pool mode; ``role`` is "trusted" or "tenant"."""
        b = self.backend
        tenant = TENANT if role == "tenant" else None
        setting = f"-c tenantgate.tenant={TENANT}" if tenant else "-c tenantgate.trusted=on"
        out = [Target(f"direct/{role}", b.pg.host, b.pg.port, b.role, b.password, b.database, tenant, setting)]
        user = TENANT_USER if tenant else TRUSTED_USER
        for mode in modes:
            proxy = (self.tenant_proxies if tenant else self.proxies)[mode]
            out.append(Target(f"{mode}/{role}", "127.0.0.1", proxy.port, user, USERS[user][1], b.database, tenant))
        return out


def proxy_config(backend: Backend, port: int, mode: str, pool_size: int = 4, pool_timeout: float = 10,
                 *, any_database: bool = False) -> str:
    """The proxy's config text for the peer tables in ``mode`` (session or transaction pooling).
    ``any_database``: no [backend] database, so a client reaches the one it names (Django's test
    runner creates and drops its own test databases)."""
    text = config_text(backend, port, scoping=SCOPING)
    if any_database:
        text = text.replace(f'database = "{backend.database}"\n', "", 1)
    if mode == "session":
        return text
    pool = f'pool_mode = "transaction"\npool_size = {pool_size}\npool_timeout = {pool_timeout}'
    return text.replace('sslmode = "prefer"', f'sslmode = "prefer"\n{pool}', 1)


def create_backend(pg: PgServer, database: str) -> Backend:
    """The peer database with its tables and rows, owned by its application role."""
    backend = Backend.create(pg, database)
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:  # the role owns its tables (RLS)
        conn.execute(SCHEMA)
        conn.execute(DATA)
    return backend


def install_rls(proxy: ProxyProcess, backend: Backend) -> None:
    """``tenantgate rls install`` for the peer tables: the second lock, and what direct runs rely on."""
    done = subprocess.run(
        [sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install",
         "--config", str(proxy.config_path), "--dsn", backend.direct_dsn()],
        capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rls install failed: {done.stdout}{done.stderr}")


@contextmanager
def peer_env(work: Path, pool_size: int = 4) -> Iterator[PeerEnv]:
    """Start everything under ``work`` (logs stay there); stop it all on exit."""
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        cluster = stack.enter_context(ThrowawayCluster(log_to=work / "postgres.log",
                                                       settings={"max_connections": 200}))
        backend = create_backend(cluster, "peer")
        cluster.execute(f'ALTER ROLE "{backend.role}" CREATEDB')  # test runners make their own databases
        for extension in TEMPLATE_EXTENSIONS:  # new databases inherit them; a missing contrib fails both ways
            try:
                cluster.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}", dbname="template1")
            except asyncpg.PostgresError as exc:
                print(f"extension {extension} unavailable: {exc}", file=sys.stderr)
        # Trusted users reach any database (Django's test runner makes its own); tenant sessions are
        # only ever routed to a configured database, so they get proxies that name one.
        started: dict[bool, dict[str, ProxyProcess]] = {True: {}, False: {}}
        for any_database, proxies in started.items():
            for mode in POOL_MODES:
                folder = work / f"proxy-{mode}{'' if any_database else '-tenant'}"
                folder.mkdir(exist_ok=True)
                port = free_port()
                config = proxy_config(backend, port, mode, pool_size, any_database=any_database)
                proxy = start_proxy(folder, config, port)
                stack.callback(proxy.stop)
                proxies[mode] = proxy
        install_rls(started[True]["session"], backend)
        yield PeerEnv(cluster, backend, started[True], started[False])
