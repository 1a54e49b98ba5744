"""A two-tenant schema behind the real proxy in every combination the isolation tests need:
session and transaction pooling, with tenantgate's RLS policies installed and without them
(then the rewriter alone must hold). Also a reference database holding only acme's rows:
what a scoped query returns through the proxy must equal what PostgreSQL returns there."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess, launch

TABLES = ["customers", "orders", "products", "widgets", "imports"]
SCOPING = f'[scoping]\ncolumn = "tenant_id"\ntables = {TABLES!r}\nreference = ["countries"]\n'.replace("'", '"')
SCHEMA = """
CREATE TABLE countries (code text PRIMARY KEY, name text);
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, name text, country text,
                        PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, customer_id int, note text,
                     PRIMARY KEY (tenant_id, id));
CREATE TABLE products (id int PRIMARY KEY, tenant_id text NOT NULL, name text);
CREATE TABLE widgets (tenant_id text NOT NULL, id int NOT NULL, label text);
CREATE TABLE imports (tenant_id text NOT NULL DEFAULT 'acme', id int, label text);  -- a default for one tenant
CREATE DOMAIN short_tenant AS varchar(2);
"""
ROWS = {
    "acme": """
INSERT INTO customers VALUES ('acme', 1, 'a-one', 'de'), ('acme', 2, 'a-two', 'fr'), ('acme', 3, 'a-three', NULL);
INSERT INTO orders VALUES ('acme', 1, 1, 'a-o1'), ('acme', 2, 1, 'a-o2'), ('acme', 3, 2, 'a-o3'),
                          ('acme', 4, 9, 'a-o4');
INSERT INTO products VALUES (1, 'acme', 'a-p1'), (2, 'acme', 'a-p2');
""",
    "globex": """
INSERT INTO customers VALUES ('globex', 1, 'G-one', 'de'), ('globex', 4, 'G-four', 'fr'), ('globex', 9, 'G-nine', 'us');
INSERT INTO orders VALUES ('globex', 1, 4, 'G-o1'), ('globex', 5, 3, 'G-o5'), ('globex', 6, 1, 'G-o6');
INSERT INTO products VALUES (3, 'globex', 'G-p3'), (4, 'globex', 'G-p4');
""",
}
COMMON = "INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('us', 'USA');"
MODES = [("session", False), ("transaction", False), ("session", True), ("transaction", True)]


@dataclass
class Env:
    proxy: ProxyProcess
    backend: Backend
    pool_mode: str
    rls: bool

    def tenant(self, user: str = "alice", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.proxy.dsn(user), autocommit=True, **kw)

    def admin(self) -> psycopg.Connection[Any]:
        """The superuser, directly on the backend database (sees every tenant's rows)."""
        return psycopg.connect(self.backend.pg.dsn(dbname=self.backend.database), autocommit=True)

    def all_rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.admin() as conn:
            return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def make_env(pg: PgServer, tmp: Path, name: str, pool_mode: str, rls: bool) -> Iterator[Env]:
    database = f"{name}_{pool_mode[:4]}_{'rls' if rls else 'norls'}"
    backend = Backend.create(pg, database)
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:  # the backend role owns the tables
        conn.execute(SCHEMA + COMMON + ROWS["acme"] + ROWS["globex"])
    pooling = f'sslmode = "prefer"\npool_mode = "{pool_mode}"\npool_size = 2\npool_timeout = 10'
    proxy = launch(tmp, backend, scoping=SCOPING, backend_extra=pooling)
    try:
        if rls:
            out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config",
                                  str(proxy.config_path), "--dsn", backend.direct_dsn()],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
        yield Env(proxy, backend, pool_mode, rls)
    finally:
        proxy.stop()


def reference_database(pg: PgServer, name: str) -> str:
    """A database with the same schema and only acme's rows; returns a superuser DSN to it."""
    database = f"{name}_reference"
    pg.create_database(database)
    dsn = pg.dsn(dbname=database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA + COMMON + ROWS["acme"])
    return dsn


def mode_id(mode: tuple[str, bool]) -> str:
    return f"{mode[0]}-{'rls' if mode[1] else 'rewriter-only'}"


def sqlstate_of(excinfo: pytest.ExceptionInfo[psycopg.Error]) -> str | None:
    return excinfo.value.sqlstate
