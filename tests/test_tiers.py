"""Isolation tiers through the real proxy: shared rows, a tenant's own schema, a tenant's own database.

acme is shared (rows in public.orders), globex has tier = schema (schema t_globex, whose table has no
tenant column at all: nothing but the schema separates it), initech is dedicated (its own database
and role on the same server; the backend side shows where its sessions land).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.config import ConfigError, load_config
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import ORDERS_SCOPING, Backend, ProxyProcess, config_text, start_proxy, wait_port
from .test_admin import admin_dsn, psql, table

SHARED_SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'a1'), ('acme', 2, 'a2'), ('globex', 1, 'leaked-g'), ('initech', 1, 'leaked-i');
CREATE SCHEMA t_globex;
CREATE TABLE t_globex.orders (id int PRIMARY KEY, note text);
INSERT INTO t_globex.orders VALUES (10, 'g10'), (11, 'g11'), (12, 'g12');
CREATE SCHEMA t_other;
CREATE TABLE t_other.orders (id int PRIMARY KEY, note text);
INSERT INTO t_other.orders VALUES (99, 'other');
"""
DEDICATED_SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('initech', 7, 'i7'), ('acme', 8, 'stray-acme-row');
"""
CAROL_PW = "carol-pw"


@pytest.fixture(scope="module")
def shared(pg: PgServer) -> Backend:
    backend = Backend.create(pg, "tiers", SHARED_SETUP, owner=False)
    pg.execute(
        f'GRANT USAGE ON SCHEMA t_globex, t_other TO "{backend.role}"; '
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA t_globex, t_other TO "{backend.role}"',
        dbname="tiers",
    )
    return backend


@pytest.fixture(scope="module")
def dedicated(pg: PgServer) -> Backend:
    backend = Backend.create(pg, "tiers_initech", DEDICATED_SETUP, owner=False)
    pg.execute(f'GRANT CREATE ON SCHEMA public TO "{backend.role}"', dbname=backend.database)
    return backend


def tiered_config(shared: Backend, dedicated: Backend, port: int, pool: str = "") -> str:
    text = config_text(shared, port, scoping=ORDERS_SCOPING, backend_extra=f'sslmode = "prefer"\n{pool}')
    own = (
        '[tenants.initech]\ntier = "dedicated"\nallow_ddl = true\n\n'
        f'[tenants.initech.backend]\nhost = "{dedicated.pg.host}"\nport = {dedicated.pg.port}\n'
        f'user = "{dedicated.role}"\npassword = "{dedicated.password}"\n'
        f'database = "{dedicated.database}"\nsslmode = "prefer"\n{pool}\n'
        f'[users.carol]\ntenant = "initech"\npassword = "{CAROL_PW}"\n'
    )
    return text.replace(
        '[tenants.globex]\ntier = "shared"\n', '[tenants.globex]\ntier = "schema"\nschema = "t_globex"\n\n' + own
    )


def launch_tiers(tmp: Path, shared: Backend, dedicated: Backend, pool: str = "") -> tuple[ProxyProcess, int]:
    port, admin = free_port(), free_port()
    text = tiered_config(shared, dedicated, port, pool).replace(
        "[listen]\n", f'[listen]\nadmin = "127.0.0.1:{admin}"\n'
    )
    proxy = start_proxy(tmp, text, port)
    wait_port(admin, proxy.proc, proxy.log_path)
    proxy.users["carol"] = ("initech", CAROL_PW)
    return proxy, admin


POOLS = {"session": "", "transaction": 'pool_mode = "transaction"\npool_size = 1\npool_timeout = 10'}


@pytest.fixture(scope="module", params=sorted(POOLS))
def tiers(
    request: pytest.FixtureRequest, shared: Backend, dedicated: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, int]]:
    proxy, admin = launch_tiers(tmp_path_factory.mktemp("tiers"), shared, dedicated, POOLS[request.param])
    yield proxy, admin
    proxy.stop()


def rows(proxy: ProxyProcess, user: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(proxy.dsn(user, "tiers"), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def refused(proxy: ProxyProcess, user: str, sql: str) -> psycopg.Error:
    with psycopg.connect(proxy.dsn(user, "tiers"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session stays usable
    return info.value


def test_each_tier_reads_only_its_own_rows(tiers: tuple[ProxyProcess, int]) -> None:
    proxy, _ = tiers
    assert rows(proxy, "alice", "SELECT id, note FROM orders ORDER BY id") == [(1, "a1"), (2, "a2")]
    assert rows(proxy, "bob", "SELECT id, note FROM orders ORDER BY id") == [(10, "g10"), (11, "g11"), (12, "g12")]
    # the dedicated database holds a stray row of another tenant: row scoping still applies there
    assert rows(proxy, "carol", "SELECT id, note FROM orders ORDER BY id") == [(7, "i7")]


def test_schema_tier_pins_search_path_and_needs_no_tenant_column(tiers: tuple[ProxyProcess, int]) -> None:
    proxy, _ = tiers
    assert rows(proxy, "bob", "SHOW search_path") == [("t_globex",)]
    with psycopg.connect(proxy.dsn("bob", "tiers")) as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (13, 'g13')")
        assert conn.execute("SELECT count(*) FROM t_globex.orders").fetchone() == (4,)
        conn.rollback()
    assert rows(proxy, "bob", "SELECT count(*) FROM orders") == [(3,)]


@pytest.mark.parametrize(("user", "sql", "pinned"), [
    ("bob", "SET search_path TO t_globex", "t_globex"),
    ("bob", "SET SCHEMA 't_globex'", "t_globex"),
    ("bob", "SELECT set_config('search_path', 't_globex', false)", "t_globex"),
    ("bob", "SELECT set_config('search_path', ' \"t_globex\" ', false)", "t_globex"),
    ("alice", "SET search_path = public", "public"),
    ("alice", "SELECT set_config('search_path', 'public', false)", "public"),
    ("carol", "SET search_path TO public", "public"),
])
def test_setting_the_pinned_search_path_is_a_no_op(tiers: tuple[ProxyProcess, int], user: str, sql: str,
                                                   pinned: str) -> None:
    """Issue 12: frameworks set search_path to what the proxy pins anyway; only a change is refused."""
    proxy, _ = tiers
    with psycopg.connect(proxy.dsn(user, "tiers"), autocommit=True) as conn:
        conn.execute(sql)
        assert conn.execute("SHOW search_path").fetchone() == (pinned,)
    err = refused(proxy, user, "SET search_path TO " + ("public" if user == "bob" else "t_globex"))
    assert err.sqlstate == "42501"


SCHEMA_ESCAPES = [
    "SELECT * FROM public.orders",
    'SELECT * FROM "public"."orders"',
    'SELECT * FROM U&"\\0070ublic".orders',
    "SELECT * FROM t_other.orders",
    "SELECT * FROM orders o JOIN public.orders p ON p.id = o.id",
    "SELECT (SELECT count(*) FROM public.orders)",
    "WITH x AS (SELECT * FROM public.orders) SELECT * FROM x",
    "SELECT * FROM orders WHERE id IN (SELECT id FROM t_other.orders)",
    "TABLE public.orders",
    "COPY public.orders TO STDOUT",
    "COPY (SELECT * FROM t_other.orders) TO STDOUT",
    "INSERT INTO public.orders (tenant_id, id) VALUES ('globex', 5)",
    "INSERT INTO orders SELECT id, note FROM t_other.orders",
    "UPDATE public.orders SET note = 'x'",
    "DELETE FROM t_other.orders",
    "MERGE INTO orders o USING public.orders p ON o.id = p.id WHEN MATCHED THEN DELETE",
    "SET search_path TO public",
    "SELECT set_config('search_path', 'public', false)",
    "CREATE TABLE orders2 (id int)",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT nextval('t_other.orders_id_seq')",
    "SELECT pg_relation_size('public.orders')",
    "SELECT query_to_xml('SELECT * FROM public.orders', true, false, '')",
]


@pytest.mark.parametrize("sql", SCHEMA_ESCAPES)
def test_schema_tier_cannot_reach_other_schemas(tiers: tuple[ProxyProcess, int], sql: str) -> None:
    proxy, _ = tiers
    err = refused(proxy, "bob", sql)
    assert err.sqlstate in ("42501", "0A000"), (err.sqlstate, str(err))


def test_shared_tier_cannot_reach_a_tenant_schema(tiers: tuple[ProxyProcess, int]) -> None:
    proxy, _ = tiers
    assert refused(proxy, "alice", "SELECT * FROM t_globex.orders").sqlstate == "42501"


def test_dedicated_sessions_land_on_their_own_server(
    tiers: tuple[ProxyProcess, int], shared: Backend, dedicated: Backend
) -> None:
    proxy, _ = tiers
    with psycopg.connect(proxy.dsn("carol", "tiers"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (
            dedicated.database,
            dedicated.role,
        )
        marker = f"carol-{secrets.token_hex(4)}"
        conn.execute(f"SET application_name = '{marker}'")
        seen = shared.pg.fetch("SELECT datname, usename FROM pg_stat_activity WHERE application_name = $1", marker)
        assert seen == [(dedicated.database, dedicated.role)]
        # inserts get the tenant column forced in the dedicated database too
        conn.execute("INSERT INTO orders (id, note) VALUES (70, 'i70')")
    assert dedicated.pg.fetch("SELECT tenant_id FROM orders WHERE id = 70", dbname=dedicated.database) == [("initech",)]
    dedicated.pg.execute("DELETE FROM orders WHERE id = 70", dbname=dedicated.database)
    assert shared.pg.fetch("SELECT count(*) FROM orders WHERE id = 70", dbname=shared.database) == [(0,)]


def test_pooled_backends_never_carry_a_schema_tenants_search_path(
    shared: Backend, dedicated: Backend, tmp_path: Path
) -> None:
    """One pooled backend, handed back and forth between a shared and a schema-tier tenant."""
    proxy, _ = launch_tiers(tmp_path, shared, dedicated, POOLS["transaction"])
    try:
        with (
            psycopg.connect(proxy.dsn("alice", "tiers"), autocommit=True) as alice,
            psycopg.connect(proxy.dsn("bob", "tiers"), autocommit=True) as bob,
        ):
            for _ in range(5):
                assert alice.execute("SELECT count(*), current_setting('search_path') FROM orders").fetchone() == (
                    2,
                    "public",
                )
                assert bob.execute("SELECT count(*), current_setting('search_path') FROM orders").fetchone() == (
                    3,
                    "t_globex",
                )
    finally:
        proxy.stop()


def test_show_tenants_reports_tier_backend_and_region(tiers: tuple[ProxyProcess, int], dedicated: Backend) -> None:
    _, admin = tiers
    _, listed = table(admin, "SHOW TENANTS")
    by_name = {r["tenant"]: r for r in listed}
    assert (by_name["acme"]["tier"], by_name["globex"]["tier"], by_name["initech"]["tier"]) == (
        "shared",
        "schema",
        "dedicated",
    )
    assert by_name["globex"]["schema"] == "t_globex"
    assert by_name["initech"]["backend"] == f"{dedicated.pg.host}:{dedicated.pg.port}/{dedicated.database}"


def test_reload_moves_a_tenant_to_its_schema(shared: Backend, dedicated: Backend, tmp_path: Path) -> None:
    """A placement change on RELOAD: a pooled session follows at its next transaction, a session-pooled
    one is told to reconnect (57P01) and the new connection lands on the new placement."""
    shared.pg.execute(
        "CREATE SCHEMA IF NOT EXISTS t_acme; CREATE TABLE IF NOT EXISTS t_acme.orders (id int PRIMARY KEY, note text);"
        "DELETE FROM t_acme.orders; INSERT INTO t_acme.orders VALUES (100, 'moved');"
        f'GRANT USAGE ON SCHEMA t_acme TO "{shared.role}"; GRANT ALL ON t_acme.orders TO "{shared.role}"',
        dbname=shared.database,
    )
    for pool in ("session", "transaction"):
        (tmp_path / pool).mkdir()
        proxy, admin = launch_tiers(tmp_path / pool, shared, dedicated, POOLS[pool])
        try:
            with psycopg.connect(proxy.dsn("alice", "tiers"), autocommit=True) as before:
                assert before.execute("SELECT count(*) FROM orders").fetchone() == (2,)
                text = proxy.config_path.read_text().replace(
                    '[tenants.acme]\ntier = "shared"\n', '[tenants.acme]\ntier = "schema"\nschema = "t_acme"\n'
                )
                proxy.config_path.write_text(text)
                out = psql(admin_dsn(admin), "RELOAD")
                assert out.returncode == 0, out.stderr
                assert "placement changed for tenant(s) acme" in out.stderr
                if pool == "transaction":
                    assert before.execute("SELECT id, note FROM orders").fetchall() == [(100, "moved")]
                else:
                    with pytest.raises(psycopg.OperationalError, match="tenant placement changed"):
                        before.execute("SELECT 1")
            assert rows(proxy, "alice", "SELECT id, note FROM orders") == [(100, "moved")]
        finally:
            proxy.stop()


def residency_config(tmp: Path, shared: Backend, backend_region: str | None, tenant_region: str) -> Path:
    text = config_text(shared, free_port())
    if backend_region is not None:
        text = text.replace('sslmode = "prefer"\n', f'sslmode = "prefer"\nregion = "{backend_region}"\n', 1)
    text = text.replace(
        '[tenants.acme]\ntier = "shared"\n', f'[tenants.acme]\ntier = "shared"\nregion = "{tenant_region}"\n'
    )
    path = tmp / f"residency-{backend_region}-{tenant_region}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("backend_region", "reason"), [("us", "is in region 'us'"), (None, "has no region label")])
def test_residency_refuses_a_placement_in_another_region(
    shared: Backend, tmp_path: Path, backend_region: str | None, reason: str
) -> None:
    path = residency_config(tmp_path, shared, backend_region, "eu")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.key == "tenants.acme.region"
    assert "must stay in region 'eu'" in problem.message and reason in problem.message
    assert load_config(residency_config(tmp_path, shared, "eu", "eu")).tenants["acme"].region == "eu"


def test_residency_applies_to_a_dedicated_backend(shared: Backend, dedicated: Backend, tmp_path: Path) -> None:
    text = tiered_config(shared, dedicated, free_port()).replace(
        '[tenants.initech]\ntier = "dedicated"\n', '[tenants.initech]\nregion = "eu"\ntier = "dedicated"\n'
    )
    path = tmp_path / "dedicated.toml"
    path.write_text(
        text.replace(f'database = "{dedicated.database}"\n', f'database = "{dedicated.database}"\nregion = "us"\n')
    )
    with pytest.raises(ConfigError, match=r"tenants.initech.region: .*tenants.initech.backend.*'us'"):
        load_config(path)
    path.write_text(
        text.replace(f'database = "{dedicated.database}"\n', f'database = "{dedicated.database}"\nregion = "eu"\n')
    )
    assert load_config(path).tenants["initech"].backend is not None


def test_dedicated_tenant_policy_may_allow_ddl_in_its_own_database(
    tiers: tuple[ProxyProcess, int], dedicated: Backend
) -> None:
    proxy, _ = tiers
    table_name = f"scratch_{secrets.token_hex(3)}"
    with psycopg.connect(proxy.dsn("carol", "tiers"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (id int)")
        conn.execute(f"DROP TABLE {table_name}")
    # still refused: DDL mixed with other statements, DDL that reaches beyond the database, other tenants' DDL
    assert refused(proxy, "carol", "CREATE TABLE x (id int); SELECT * FROM orders").sqlstate == "42501"
    assert refused(proxy, "carol", "CREATE ROLE intruder").sqlstate == "42501"
    assert refused(proxy, "carol", "GRANT ALL ON orders TO PUBLIC").sqlstate == "42501"
    assert refused(proxy, "alice", "CREATE TABLE x (id int)").sqlstate == "42501"
    assert refused(proxy, "bob", "CREATE TABLE x (id int)").sqlstate == "42501"


def test_allow_ddl_only_for_dedicated_tenants(shared: Backend, tmp_path: Path) -> None:
    path = tmp_path / "ddl.toml"
    path.write_text(
        config_text(shared, free_port()).replace(
            '[tenants.acme]\ntier = "shared"\n', '[tenants.acme]\ntier = "shared"\nallow_ddl = true\n'
        )
    )
    with pytest.raises(ConfigError, match=r"tenants.acme.allow_ddl: only applies to tier = dedicated"):
        load_config(path)


def test_schema_tier_keeps_field_encryption(pg: PgServer, tmp_path: Path) -> None:
    """An encrypted column is encrypted with the tenant's key in its own schema's copy of the table,
    and decrypted on the way back, exactly as in the shared tables."""
    from tenantgate.keyring.kek import create_kek_file

    from .test_encryption_proxy import keys

    backend = Backend.create(
        pg,
        "tiers_enc",
        "CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, ssn bytea, PRIMARY KEY (tenant_id, id));"
        "CREATE SCHEMA t_globex; CREATE TABLE t_globex.customers (id int PRIMARY KEY, ssn bytea);",
        owner=False,
    )
    pg.execute(
        f'GRANT USAGE ON SCHEMA t_globex TO "{backend.role}"; GRANT ALL ON t_globex.customers TO "{backend.role}"',
        dbname=backend.database,
    )
    create_kek_file(tmp_path / "kek.bin")
    extra = (
        '\n[encryption]\nkek = "file:kek.bin"\nstore = "file:keys.json"\n'
        '[[encryption.columns]]\ntable = "customers"\ncolumn = "ssn"\nmode = "deterministic"\ntype = "text"\n'
    )
    port = free_port()
    text = config_text(backend, port, scoping='[scoping]\ncolumn = "tenant_id"\ntables = ["customers"]\n', extra=extra)
    text = text.replace(
        '[tenants.globex]\ntier = "shared"\n', '[tenants.globex]\ntier = "schema"\nschema = "t_globex"\n'
    )
    proxy = start_proxy(tmp_path, text, port)
    try:
        keys(proxy, "init")
        for user in ("alice", "bob"):
            with psycopg.connect(proxy.dsn(user), autocommit=True) as conn:
                conn.execute("INSERT INTO customers (id, ssn) VALUES (1, %s)", (f"ssn-of-{user}",))
                assert conn.execute("SELECT ssn FROM customers WHERE ssn = %s", (f"ssn-of-{user}",)).fetchall() == [
                    (f"ssn-of-{user}",)
                ]
        stored = pg.fetch("SELECT ssn FROM t_globex.customers", dbname=backend.database)
        shared_rows = pg.fetch("SELECT tenant_id, ssn FROM public.customers", dbname=backend.database)
        assert len(stored) == 1 and b"ssn-of-bob" not in bytes(stored[0][0])
        assert [r[0] for r in shared_rows] == ["acme"] and b"ssn-of-alice" not in bytes(shared_rows[0][1])
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("tenant_text", "key", "message"),
    [
        ('tier = "dedicated"\n', "tenants.acme.backend", "is required with tier = dedicated"),
        ('tier = "schema"\nschema = "public"\n', "tenants.acme.schema", "is shared or reserved"),
        (
            'tier = "shared"\n[tenants.acme.backend]\nuser = "x"\n',
            "tenants.acme.backend",
            "only applies to tier = dedicated",
        ),
        ('tier = "schema"\nschema = "billing"\n', "tenants.acme.schema", "holds tables listed in [scoping]"),
    ],
)
def test_tier_config_errors_name_the_key(
    shared: Backend, tmp_path: Path, tenant_text: str, key: str, message: str
) -> None:
    text = config_text(shared, free_port(), scoping='[scoping]\ncolumn = "tenant_id"\ntables = ["billing.invoices"]\n')
    path = tmp_path / "tiers.toml"
    path.write_text(text.replace('[tenants.acme]\ntier = "shared"\n', "[tenants.acme]\n" + tenant_text))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.key == key and message in p.message for p in info.value.problems), info.value.problems


def test_statement_held_by_pause_runs_on_the_new_placement(shared: Backend, dedicated: Backend, tmp_path: Path) -> None:
    """PAUSE, RELOAD with a new placement, RESUME (what `tenantgate tenant move` does): a statement
    that arrived during the pause runs on the new placement, never on the old one."""
    import threading

    shared.pg.execute(
        "CREATE SCHEMA IF NOT EXISTS t_acme; CREATE TABLE IF NOT EXISTS t_acme.orders (id int PRIMARY KEY, note text);"
        "DELETE FROM t_acme.orders; INSERT INTO t_acme.orders VALUES (100, 'moved');"
        f'GRANT USAGE ON SCHEMA t_acme TO "{shared.role}"; GRANT ALL ON t_acme.orders TO "{shared.role}"',
        dbname=shared.database,
    )
    proxy, admin = launch_tiers(tmp_path, shared, dedicated, POOLS["transaction"])
    try:
        with psycopg.connect(proxy.dsn("alice", "tiers"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
            assert psql(admin_dsn(admin), "PAUSE acme").returncode == 0
            got: list[object] = []
            waiter = threading.Thread(
                target=lambda: got.append(
                    conn.execute("SELECT id, note, current_setting('search_path') FROM orders").fetchall()
                )
            )
            waiter.start()
            waiter.join(1.0)
            assert waiter.is_alive() and not got  # held by the pause
            proxy.config_path.write_text(
                proxy.config_path.read_text().replace(
                    '[tenants.acme]\ntier = "shared"\n', '[tenants.acme]\ntier = "schema"\nschema = "t_acme"\n'
                )
            )
            assert psql(admin_dsn(admin), "RELOAD").returncode == 0
            assert psql(admin_dsn(admin), "RESUME acme").returncode == 0
            waiter.join(10)
            assert got == [[(100, "moved", "t_acme")]]
    finally:
        proxy.stop()


def test_allow_ddl_never_for_a_read_only_user(shared: Backend, dedicated: Backend, tmp_path: Path) -> None:
    port = free_port()
    text = (
        tiered_config(shared, dedicated, port)
        + '\n[users.dave]\ntenant = "initech"\nrole = "readonly"\npassword = "dave-pw"\n'
    )
    proxy = start_proxy(tmp_path, text, port)
    proxy.users["dave"] = ("initech", "dave-pw")
    try:
        with psycopg.connect(proxy.dsn("dave", "tiers"), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("CREATE TABLE dave_was_here (id int)")
            assert info.value.sqlstate == "25006" and "DDL" in str(info.value)
    finally:
        proxy.stop()
