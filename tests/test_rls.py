"""`tenantgate rls install|status` against a real database, and row-level security as the second lock:
the backend role itself (the tables' owner, bound by FORCE) sees only the tenant its session names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess, launch

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "orders"]\n'
SCHEMA = """
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO customers VALUES ('acme', 1, 'acme one'), ('globex', 1, 'GLOBEX one'), ('globex', 2, 'GLOBEX two');
INSERT INTO orders VALUES ('acme', 1, 'acme order'), ('acme', 2, 'acme order 2'), ('globex', 1, 'GLOBEX order');
"""


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    b = Backend.create(pg, "scoping_rls")
    with psycopg.connect(b.direct_dsn(), autocommit=True) as conn:  # the backend role owns the tables
        conn.execute(SCHEMA)
    return b


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = launch(tmp_path_factory.mktemp("scoping-rls"), backend, scoping=SCOPING)
    yield p
    p.stop()


def rls(proxy: ProxyProcess, command: str, *dsn: str) -> subprocess.CompletedProcess[str]:
    args = ["--dsn", dsn[0]] if dsn else []
    return subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", command,
                           "--config", str(proxy.config_path), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed(proxy: ProxyProcess, backend: Backend) -> ProxyProcess:
    out = rls(proxy, "install", backend.direct_dsn())
    assert out.returncode == 0, out.stdout + out.stderr
    return proxy


def as_backend_role(backend: Backend, **settings: str) -> psycopg.Connection[Any]:
    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return psycopg.connect(backend.direct_dsn(), autocommit=True, options=options)


def tenants_seen(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    return conn.execute("SELECT tenant_id, count(*)::int FROM (SELECT tenant_id FROM customers UNION ALL "
                        "SELECT tenant_id FROM orders) t GROUP BY 1 ORDER BY 1").fetchall()


def test_install_status_and_drift(proxy: ProxyProcess, backend: Backend, pg: PgServer) -> None:
    for table in ("customers", "orders"):  # start from no RLS at all, whatever ran before
        pg.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY, NO FORCE ROW LEVEL SECURITY; "
                   f"DROP POLICY IF EXISTS tenantgate_tenant ON {table}", dbname=backend.database)
    before = rls(proxy, "status")  # the [backend] role of the config file
    assert before.returncode == 1
    assert "drift: \"public\".\"orders\": row level security is off" in before.stdout
    assert "policy tenantgate_tenant is missing" in before.stdout

    first = rls(proxy, "install", backend.direct_dsn())
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("RLS forced, policy tenantgate_tenant on tenant_id") == 2
    again = rls(proxy, "install", backend.direct_dsn())  # idempotent
    assert again.returncode == 0 and again.stdout == first.stdout
    ok = rls(proxy, "status", backend.direct_dsn())
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok: 2 scoped tables carry the tenantgate_tenant policy "
                                                     "with FORCE")

    pg.execute("ALTER TABLE orders NO FORCE ROW LEVEL SECURITY", dbname=backend.database)
    drift = rls(proxy, "status", pg.dsn(dbname=backend.database))  # as the superuser
    assert drift.returncode == 1
    assert drift.stdout.splitlines() == ['drift: "public"."orders": FORCE ROW LEVEL SECURITY is off '
                                         "(the owner bypasses RLS)"]
    pg.execute("DROP POLICY tenantgate_tenant ON customers", dbname=backend.database)
    drift = rls(proxy, "status", backend.direct_dsn())
    assert drift.returncode == 1 and "customers\": policy tenantgate_tenant is missing" in drift.stdout

    assert rls(proxy, "install", backend.direct_dsn()).returncode == 0
    assert rls(proxy, "status", backend.direct_dsn()).returncode == 0


def test_status_names_a_missing_table(proxy: ProxyProcess, tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text(proxy.config_path.read_text().replace('"customers", "orders"', '"customers", "nope"'))
    out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "rls", "status", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and 'drift: "public"."nope": table does not exist' in out.stdout


def test_the_backend_role_sees_only_the_tenant_it_names(installed: ProxyProcess, backend: Backend) -> None:
    with as_backend_role(backend, **{"tenantgate.tenant": "acme"}) as conn:
        assert tenants_seen(conn) == [("acme", 3)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # WITH CHECK
            conn.execute("INSERT INTO orders VALUES ('globex', 9, 'planted')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE orders SET tenant_id = 'globex' WHERE id = 1")
        assert conn.execute("UPDATE orders SET note = note WHERE true").rowcount == 2
    with as_backend_role(backend, **{"tenantgate.tenant": "globex"}) as conn:
        assert tenants_seen(conn) == [("globex", 3)]
    with as_backend_role(backend) as conn:  # no tenant named: nothing at all
        assert tenants_seen(conn) == []
        assert conn.execute("DELETE FROM orders").rowcount == 0
    with as_backend_role(backend, **{"tenantgate.trusted": "on"}) as conn:
        assert tenants_seen(conn) == [("acme", 3), ("globex", 3)]


def test_proxy_sessions_under_rls(installed: ProxyProcess) -> None:
    with psycopg.connect(installed.dsn("alice"), autocommit=True) as alice:
        assert tenants_seen(alice) == [("acme", 3)]
        alice.execute("INSERT INTO orders (id, note) VALUES (10, 'through the proxy')")
        assert alice.execute("SELECT note FROM orders WHERE id = 10").fetchall() == [("through the proxy",)]
        alice.execute("DELETE FROM orders WHERE id = 10")
    with psycopg.connect(installed.dsn("bob"), autocommit=True) as bob:
        assert tenants_seen(bob) == [("globex", 3)]
    with psycopg.connect(installed.dsn("svc"), autocommit=True) as svc:  # trusted: the policy lets it see all
        assert tenants_seen(svc) == [("acme", 3), ("globex", 3)]
        assert svc.execute("SELECT current_setting('tenantgate.trusted')").fetchone() == ("on",)
