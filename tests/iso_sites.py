"""Shared setup of the isolation round-2 tests (issue 12): a proxy per pool mode, with and without RLS.

alice -> acme, bob -> globex, svc trusted. globex has many more rows than acme, so any count that
leaks from globex's side shows up in a tenant's answer.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess, launch

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n'
SCHEMA = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
CREATE SEQUENCE shared_seq;
INSERT INTO orders VALUES ('acme', 1, 'a1'), ('acme', 2, 'a2');
INSERT INTO orders SELECT 'globex', g, 'GLOBEX' FROM generate_series(1, 3000) g;
ANALYZE orders;
SELECT nextval('shared_seq') FROM generate_series(1, 77);
"""
# pool_size 1: in transaction pooling every tenant's transactions share one backend
POOLS = {"session": 'sslmode = "prefer"',
         "transaction": 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 1\npool_timeout = 10'}


@dataclass
class Site:
    proxy: ProxyProcess
    backend: Backend
    pool: str
    rls: bool

    def connect(self, user: str = "alice", *, simple: bool = False, autocommit: bool = True) -> psycopg.Connection[Any]:
        """``simple``: the simple query protocol (ClientCursor); else psycopg's extended protocol."""
        factory = psycopg.ClientCursor if simple else psycopg.Cursor
        return psycopg.connect(self.proxy.dsn(user), autocommit=autocommit, cursor_factory=factory)


def install_rls(proxy: ProxyProcess, backend: Backend) -> None:
    out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config",
                          str(proxy.config_path), "--dsn", backend.direct_dsn()],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def iso_backends(pg: PgServer, request: pytest.FixtureRequest) -> dict[bool, Backend]:
    """One database without RLS and one with it (installed once a proxy's config exists), holding
    the test module's own ``SCHEMA`` when it has one, else this module's."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    schema = getattr(request.module, "SCHEMA", SCHEMA)
    found = {}
    for rls in (False, True):
        b = Backend.create(pg, f"{name}_{'rls' if rls else 'plain'}")
        with psycopg.connect(b.direct_dsn(), autocommit=True) as conn:
            conn.execute(schema)
        found[rls] = b
    return found


@pytest.fixture(scope="module", params=[(pool, rls) for pool in sorted(POOLS) for rls in (False, True)],
                ids=lambda p: f"{p[0]}-{'rls' if p[1] else 'norls'}")
def site(request: pytest.FixtureRequest, iso_backends: dict[bool, Backend],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    pool, rls = request.param
    backend = iso_backends[rls]
    proxy = launch(tmp_path_factory.mktemp(f"iso-{pool}"), backend, scoping=SCOPING, backend_extra=POOLS[pool])
    if rls:
        install_rls(proxy, backend)
    yield Site(proxy, backend, pool, rls)
    proxy.stop()


def refused(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> psycopg.Error:
    """Run ``sql``; it must fail with 42501, and the session must stay usable."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.sqlstate == "42501", (sql, info.value.sqlstate, str(info.value))
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return info.value
