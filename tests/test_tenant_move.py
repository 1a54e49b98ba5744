"""``tenantgate tenant move`` against a real PostgreSQL and the real proxy, under a live workload.

The "dedicated" server of these tests is a second database (with its own role) on the
same cluster as the shared one: the mover connects to it like to any other server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tenantgate.proxy.ops.placement_config import PlacementSpec, with_placement
from tenantgate.proxy.ops.placement_copy import (
    TEXT_SETTINGS,
    Checksum,
    MovedTable,
    bulk_copy,
    checksum,
    delta_sync,
    describe,
)
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, config_text, launch_with_ports

ADMIN_PASSWORD = "dba-pw"  # harness.config_text's [admins.dba]

SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
CREATE TABLE items (
    id serial PRIMARY KEY, tenant_id text NOT NULL, order_id int NOT NULL, qty int,
    FOREIGN KEY (tenant_id, order_id) REFERENCES orders
);
CREATE TABLE events (tenant_id text NOT NULL, payload jsonb, at timestamptz);
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO orders SELECT 'acme', g, 'a' || g FROM generate_series(1, 300) g;
INSERT INTO orders SELECT 'globex', g, 'g' || g FROM generate_series(1, 50) g;
INSERT INTO items (tenant_id, order_id, qty) SELECT 'acme', g, g % 7 FROM generate_series(1, 120) g;
INSERT INTO items (tenant_id, order_id, qty) SELECT 'globex', g, 1 FROM generate_series(1, 20) g;
INSERT INTO events SELECT 'acme', jsonb_build_object('n', g), '2026-01-01'::timestamptz + g * interval '1 hour'
    FROM generate_series(1, 25) g;
INSERT INTO events SELECT 'globex', jsonb_build_object('n', g), now() FROM generate_series(1, 5) g;
INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 10) g;
"""
SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders", "items", "events"]\nreference = ["products"]\n'
TABLES = ("orders", "items", "events", "products")


def sums(dsn: str, schema: str, tenant: str | None) -> dict[str, Checksum]:
    """Count and checksum of every moved table: the tenant's rows (tenant given) or all rows."""

    async def go() -> dict[str, Checksum]:
        conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
        try:
            out = {}
            for name in TABLES:
                column = None if name == "products" or tenant is None else "tenant_id"
                table = MovedTable((schema, name), (schema, name), column)
                out[name] = await checksum(conn, (schema, name), table if tenant else None, tenant or "")
            return out
        finally:
            await conn.close()

    return asyncio.run(go())


@dataclass
class Site:
    """A shared database, the proxy in front of it (with an admin port) and its config file."""

    pg: PgServer
    backend: Backend
    proxy: ProxyProcess
    admin_port: int
    tmp: Path

    @property
    def config(self) -> Path:
        return self.proxy.config_path

    def move(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tenantgate.proxy.cli", "tenant", "move", *args, "--config", str(self.config)]
        full_env = {**os.environ, "TENANTGATE_ADMIN_PASSWORD": ADMIN_PASSWORD, **(env or {})}
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)

    def admin(self, command: str) -> list[dict[str, object]]:
        dsn = f"postgresql://dba:{ADMIN_PASSWORD}@127.0.0.1:{self.admin_port}/admin?sslmode=disable"
        with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.execute(command)
            if cur.description is None:  # RELOAD, PAUSE, ...: no result set
                return []
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def placement(self, tenant: str) -> tuple[object, object]:
        """(tier, paused) of a tenant as SHOW TENANTS reports it."""
        (row,) = [r for r in self.admin("SHOW TENANTS") if r["tenant"] == tenant]
        return row["tier"], row["paused"]

    def dsn(self, database: str | None = None) -> str:
        return self.pg.dsn(dbname=database or self.backend.database)


def make_site(pg: PgServer, tmp: Path, *, tenants: str = "", pool_mode: str = "session") -> Iterator[Site]:
    backend = Backend.create(pg, f"mv_{secrets.token_hex(4)}", SETUP)
    # the application role owns its tables (and their sequences), as a migration tool would leave them
    owner = "; ".join(f'ALTER TABLE {t} OWNER TO "{backend.role}"' for t in TABLES)
    pg.execute(owner, dbname=backend.database)
    extra = f'sslmode = "prefer"\npool_mode = "{pool_mode}"'
    proxy, ports = launch_with_ports(tmp, backend, "admin", scoping=SCOPING, backend_extra=extra)
    if tenants:
        text = proxy.config_path.read_text().replace('[tenants.acme]\ntier = "shared"\n', tenants)
        proxy.config_path.write_text(text)
    try:
        yield Site(pg, backend, proxy, ports["admin"], tmp)
    finally:
        proxy.stop()


@pytest.fixture
def site(pg: PgServer, tmp_path: Path) -> Iterator[Site]:
    yield from make_site(pg, tmp_path)


@pytest.fixture
def pooled_site(pg: PgServer, tmp_path: Path) -> Iterator[Site]:
    yield from make_site(pg, tmp_path, pool_mode="transaction")


def dedicated_db(pg: PgServer, tmp: Path) -> tuple[Backend, Path]:
    """An empty database with its own role (the 'dedicated server') and a password file for it."""
    target = Backend.create(pg, f"mvd_{secrets.token_hex(4)}")
    password_file = tmp / "dedicated.pw"
    password_file.write_text(target.password + "\n")
    password_file.chmod(0o600)
    return target, password_file


def dedicated_args(target: Backend, password_file: Path) -> list[str]:
    return [
        "--to-tier", "dedicated", "--host", target.pg.host, "--port", str(target.pg.port),
        "--database", target.database, "--user", target.role, "--password-file", str(password_file),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- workload


class Writer(threading.Thread):
    """Inserts and updates orders through the proxy as one tenant's user until stopped.

    ``expected`` is what the tenant's orders must hold afterwards (id -> note). Connection
    losses (57P01 at a placement change, 08xxx) are reconnected and the statement retried;
    ``tolerate`` says whether they are allowed at all: any other error is recorded.
    """

    def __init__(self, proxy: ProxyProcess, user: str, seeded: dict[int, str], *, tolerate: bool, first_id: int):
        super().__init__(daemon=True)
        self.proxy, self.user, self.tolerate, self.first_id = proxy, user, tolerate, first_id
        self.seeded = len(seeded)
        self.expected = dict(seeded)
        self.errors: list[str] = []
        self.reconnects = 0
        self.ops = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        next_id = self.first_id
        retry = False
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(
                        self.proxy.dsn(self.user, application_name=f"w-{self.user}"), autocommit=True
                    )
                try:
                    conn.execute("INSERT INTO orders (id, note) VALUES (%s, %s)", (next_id, f"w{next_id}"))
                except psycopg.errors.UniqueViolation:
                    if not retry:  # only a retried insert may have landed already
                        raise
                self.expected[next_id] = f"w{next_id}"
                if next_id % 3 == 0:
                    victim = 1 + next_id % self.seeded  # one of the seeded rows
                    conn.execute("UPDATE orders SET note = %s WHERE id = %s", (f"u{next_id}", victim))
                    self.expected[victim] = f"u{next_id}"
                next_id += 1
                self.ops += 1
                retry = False
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
                if not self.tolerate:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.reconnects += 1
                retry = True
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.05)
            except psycopg.Error as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()

    def wait_ops(self, n: int) -> None:
        """Block until this writer has done ``n`` more operations (progress, not a timing check)."""
        target = self.ops + n
        for _ in range(1200):
            if self.ops >= target or not self.is_alive():
                return
            self.stop.wait(0.05)
        raise AssertionError(f"writer {self.user} made no progress: {self.errors[-3:]}")


def seeded(tenant: str, n: int) -> dict[int, str]:
    prefix = "a" if tenant == "acme" else "g"
    return {i: f"{prefix}{i}" for i in range(1, n + 1)}


def orders_in(pg: PgServer, database: str, table: str, tenant: str | None = None) -> dict[int, str]:
    where = "" if tenant is None else f" WHERE tenant_id = '{tenant}'"
    return {int(r[0]): str(r[1]) for r in pg.fetch(f"SELECT id, note FROM {table}{where}", dbname=database)}


def run_moving(site: Site, args: list[str]) -> tuple[subprocess.CompletedProcess[str], Writer, Writer]:
    """Run a move while alice (acme, moving) and bob (globex) keep writing."""
    acme = Writer(site.proxy, "alice", seeded("acme", 300), tolerate=True, first_id=1000)
    globex = Writer(site.proxy, "bob", seeded("globex", 50), tolerate=False, first_id=5000)
    acme.start()
    globex.start()
    try:
        acme.wait_ops(20)
        globex.wait_ops(20)
        done = site.move("acme", *args, "--batch-rows", "64")
        acme.wait_ops(20)  # the moved tenant's application goes on, on its new placement
        globex.wait_ops(5)
    finally:
        acme.stop.set()
        globex.stop.set()
        acme.join(30)
        globex.join(30)
    return done, acme, globex


def check_moved(site: Site, done: subprocess.CompletedProcess[str], acme: Writer, globex: Writer) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert not globex.errors, globex.errors  # the other tenant never noticed
    assert not acme.errors, acme.errors  # only reconnects, no failed statements
    assert "verify public.orders" in done.stdout and "MISMATCH" not in done.stdout
    assert site.placement("acme")[1] == "no", "tenant left paused"
    # globex still shared and whole
    assert orders_in(site.pg, site.backend.database, "public.orders", "globex") == globex.expected
    assert not Path(site.config.parent / ".tenantgate-move-acme.json").exists()
    assert list(site.tmp.glob("tenantgate.toml.bak-*")), "no backup of the config"


# ---------------------------------------------------------------------------- the moves


def test_move_to_schema_under_load(pooled_site: Site) -> None:
    site = pooled_site
    before = sums(site.dsn(), "public", "acme")
    done, acme, globex = run_moving(site, ["--to-tier", "schema"])
    check_moved(site, done, acme, globex)
    assert site.placement("acme") == ("schema", "no")
    cfg = tomllib.loads(site.config.read_text())
    assert cfg["tenants"]["acme"] == {"tier": "schema", "schema": "t_acme"}
    # the copy holds the source's rows plus everything the workload wrote, before and after the switch
    db = site.backend.database
    assert orders_in(site.pg, db, "t_acme.orders") == acme.expected
    after = sums(site.dsn(), "t_acme", None)
    assert {k: v for k, v in after.items() if k != "orders"} == {k: v for k, v in before.items() if k != "orders"}
    # the application's next statements land in its schema (the tenant column defaults to it)
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (99999, 'after')")
        assert conn.execute("SELECT count(*) FROM products").fetchone() == (10,)
    assert site.pg.fetch("SELECT tenant_id FROM t_acme.orders WHERE id = 99999", dbname=db) == [("acme",)]
    assert site.pg.fetch("SELECT 1 FROM public.orders WHERE id = 99999", dbname=db) == []


def test_move_to_dedicated_under_load_then_cleans_up(site: Site) -> None:
    target, password_file = dedicated_db(site.pg, site.tmp)
    before = sums(site.dsn(), "public", "acme")
    globex_before = sums(site.dsn(), "public", "globex")
    done, acme, globex = run_moving(site, dedicated_args(target, password_file))
    check_moved(site, done, acme, globex)
    assert site.placement("acme") == ("dedicated", "no")
    backend = tomllib.loads(site.config.read_text())["tenants"]["acme"]["backend"]
    assert backend["password_file"] == str(password_file) and "password" not in backend
    assert target.password not in site.config.read_text()
    assert orders_in(site.pg, target.database, "public.orders") == acme.expected
    after = sums(site.dsn(target.database), "public", None)
    assert {k: v for k, v in after.items() if k != "orders"} == {k: v for k, v in before.items() if k != "orders"}
    # the clean-up (the default now): exactly acme's rows left the shared tables; globex's and the reference table stay
    shared = site.backend.database
    for table in ("orders", "items", "events"):
        assert site.pg.fetch(f"SELECT count(*) FROM {table} WHERE tenant_id = 'acme'", dbname=shared) == [(0,)]
    kept = sums(site.dsn(), "public", "globex")
    assert {k: v for k, v in kept.items() if k != "orders"} == {k: v for k, v in globex_before.items() if k != "orders"}
    assert "delete-old public.items: 120 rows deleted" in done.stdout
    assert "delete-old public.events: 25 rows deleted" in done.stdout
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (99999, 'after')")
        # the serial column's sequence moved along: a new item does not collide with the copied ones
        conn.execute("INSERT INTO items (order_id, qty) VALUES (1, 1)")
        on_target = site.pg.fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2", target.database, target.role
        )
        assert on_target[0][0] >= 1
    assert site.pg.fetch("SELECT tenant_id FROM orders WHERE id = 99999", dbname=target.database) == [("acme",)]
    assert site.pg.fetch("SELECT 1 FROM orders WHERE id = 99999", dbname=shared) == []


# ---------------------------------------------------------------------------- failures


def test_failures_keep_the_tenant_shared_then_rerun_completes(site: Site) -> None:
    # RLS behind the rewriter: the mover must read (and write) as the tenant to see its rows
    rls = [sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config", str(site.config)]
    assert subprocess.run(rls, capture_output=True, text=True, timeout=60).returncode == 0
    # usage errors: nothing is touched
    assert site.move("nosuch", "--to-tier", "schema").returncode == 2
    no_admin_pw = site.move("acme", "--to-tier", "schema", env={"TENANTGATE_ADMIN_PASSWORD": ""})
    assert no_admin_pw.returncode == 2 and "TENANTGATE_ADMIN_PASSWORD" in no_admin_pw.stderr
    target, password_file = dedicated_db(site.pg, site.tmp)
    right = password_file.read_text()
    # a wrong target password: exit 1, no secret in the output
    password_file.write_text("wrong-password\n")
    failed = site.move("acme", *dedicated_args(target, password_file))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "password authentication failed" in failed.stderr
    assert "wrong-password" not in failed.stdout + failed.stderr
    # a target that refuses writes: exit 1 once the move reaches it
    password_file.write_text(right)
    site.pg.execute(f'ALTER DATABASE "{target.database}" SET default_transaction_read_only = on')
    failed = site.move("acme", *dedicated_args(target, password_file))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "read-only transaction" in failed.stderr
    # each time: still shared, not paused, served from the shared tables
    assert site.placement("acme") == ("shared", "no")
    assert tomllib.loads(site.config.read_text())["tenants"]["acme"] == {"tier": "shared"}
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (300,)
    site.pg.execute(f'ALTER DATABASE "{target.database}" RESET default_transaction_read_only')
    done = site.move("acme", *dedicated_args(target, password_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "continue: move of acme" in done.stdout
    assert site.placement("acme") == ("dedicated", "no")
    assert orders_in(site.pg, target.database, "orders") == seeded("acme", 300)
    # pg_dump carried the policies along: the dedicated copy keeps its second lock
    forced = "SELECT relforcerowsecurity FROM pg_class WHERE oid = 'public.orders'::regclass"
    assert site.pg.fetch(forced, dbname=target.database) == [(True,)]


def test_pause_timeout_resumes_keeps_state_and_abort_cleans_up(site: Site) -> None:
    db = site.backend.database
    state = site.config.parent / ".tenantgate-move-acme.json"
    # an acme transaction left open: PAUSE cannot reach a transaction boundary
    holder = psycopg.connect(site.proxy.dsn("alice"))
    holder.execute("UPDATE orders SET note = 'held' WHERE id = 1")
    failed = site.move("acme", "--to-tier", "schema", "--pause-timeout", "1")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "still inside a transaction" in failed.stderr
    assert "copy public.orders: 300/300 rows" in failed.stdout
    assert site.placement("acme") == ("shared", "no")
    assert tomllib.loads(site.config.read_text())["tenants"]["acme"] == {"tier": "shared"}
    assert state.exists()
    # a re-run continues after the bulk copy (not redone), and fails the same way
    again = site.move("acme", "--to-tier", "schema", "--pause-timeout", "0.5")
    assert again.returncode == 1 and "continue: move of acme from phase copied" in again.stdout
    assert "copy public.orders" not in again.stdout
    # the other sessions of the tenant were never held for good: the tenant is served
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, note) VALUES (7000, 'between')")
    holder.commit()
    holder.close()
    # --abort: what the move created goes, the shared data stays
    assert site.pg.fetch("SELECT count(*) FROM t_acme.orders", dbname=db) == [(300,)]
    aborted = site.move("acme", "--abort")
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert site.pg.fetch("SELECT 1 FROM pg_namespace WHERE nspname = 't_acme'", dbname=db) == []
    assert site.pg.fetch("SELECT count(*) FROM public.orders", dbname=db) == [(351,)]
    assert not state.exists()
    assert site.move("acme", "--abort").returncode == 2  # nothing left to abort
    # and a fresh move picks up everything, the held update and the later insert included
    done = site.move("acme", "--to-tier", "schema")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = orders_in(site.pg, db, "t_acme.orders")
    assert rows[1] == "held" and rows[7000] == "between" and len(rows) == 301
    assert site.placement("acme") == ("schema", "no")


def test_residency_mismatch_fails_before_copying(pg: PgServer, tmp_path: Path) -> None:
    backend = Backend.create(pg, f"mv_{secrets.token_hex(4)}", SETUP)
    text = config_text(backend, free_port(), scoping=SCOPING, backend_extra='sslmode = "prefer"\nregion = "eu"')
    config = tmp_path / "tenantgate.toml"
    config.write_text(text.replace('[tenants.acme]\ntier = "shared"\n', '[tenants.acme]\nregion = "eu"\n'))
    target, password_file = dedicated_db(pg, tmp_path)
    cmd = [sys.executable, "-m", "tenantgate.proxy.cli", "tenant", "move", "acme", "--config", str(config)]
    cmd += [*dedicated_args(target, password_file), "--region", "us"]
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "residency" in failed.stderr and "'eu'" in failed.stderr and "'us'" in failed.stderr
    assert failed.stdout == ""
    assert pg.fetch("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=target.database) == [(0,)]
    assert not (tmp_path / ".tenantgate-move-acme.json").exists()


# ---------------------------------------------------------------------------- the config rewrite


def test_placement_rewrite_keeps_comments_and_writes_no_password() -> None:
    text = (
        '# tenants of the EU cluster\n[tenants.acme]  # first customer\ntier = "shared"\n'
        'region = "eu"\n\n[tenants.globex]\ntier = "shared"\n'
    )
    placement = PlacementSpec(
        "dedicated", host="db2.internal", port=5433, database="acme", user="acme_app",
        password_env="ACME_DB_PASSWORD", sslmode="require", region="eu",
    )  # fmt: skip
    out = with_placement(text, "acme", placement)
    assert "# tenants of the EU cluster" in out and "# first customer" in out
    data = tomllib.loads(out)
    assert data["tenants"]["acme"] == {
        "tier": "dedicated",
        "region": "eu",
        "backend": {
            "host": "db2.internal",
            "port": 5433,
            "user": "acme_app",
            "password_env": "ACME_DB_PASSWORD",
            "database": "acme",
            "sslmode": "require",
            "region": "eu",
        },
    }
    assert data["tenants"]["globex"] == {"tier": "shared"}
    back = with_placement(out, "acme", PlacementSpec("schema", schema="t_acme"))
    assert tomllib.loads(back)["tenants"]["acme"] == {"tier": "schema", "region": "eu", "schema": "t_acme"}


# ---------------------------------------------------------------------------- the copy engine


def test_bulk_copy_and_delta_sync_bring_a_copy_level_with_its_source(pg: PgServer) -> None:
    """Without the proxy: batches, then updates/inserts/deletes and a key-less table caught up."""
    db = f"mvc_{secrets.token_hex(4)}"
    pg.create_database(db)
    pg.execute(
        "CREATE TABLE k (tenant_id text, a int, b text, v numeric, d date, PRIMARY KEY (tenant_id, a, b));"
        "CREATE TABLE n (tenant_id text, v jsonb);"
        "INSERT INTO k SELECT t, g, 'x' || g, g / 3.0, date '2026-01-01' + g FROM generate_series(1, 230) g,"
        " unnest(ARRAY['acme', 'globex']) t;"
        "INSERT INTO n SELECT t, jsonb_build_object('g', g) FROM generate_series(1, 7) g,"
        " unnest(ARRAY['acme', 'globex']) t;"
        "CREATE SCHEMA c; CREATE TABLE c.k (LIKE k INCLUDING ALL); CREATE TABLE c.n (LIKE n INCLUDING ALL);",
        dbname=db,
    )
    tables = [MovedTable(("public", t), ("c", t), "tenant_id") for t in ("k", "n")]
    lines: list[str] = []

    async def go() -> None:
        src = await asyncpg.connect(pg.dsn(dbname=db), server_settings=TEXT_SETTINGS)
        dst = await asyncpg.connect(pg.dsn(dbname=db), server_settings=TEXT_SETTINGS)
        try:
            shapes = [(t, await describe(src, t.source)) for t in tables]
            assert shapes[0][1].pk == ("tenant_id", "a", "b") and shapes[1][1].pk == ()
            for t, shape in shapes:
                await bulk_copy(src, dst, t, shape, "acme", 50, lines.append)
            await src.execute(
                "UPDATE k SET v = -1 WHERE tenant_id = 'acme' AND a % 10 = 0;"
                "DELETE FROM k WHERE tenant_id = 'acme' AND a % 7 = 0;"
                "INSERT INTO k VALUES ('acme', 1000, 'new', 1, NULL), ('globex', 1000, 'other', 1, NULL);"
                "UPDATE n SET v = '{\"changed\": true}' WHERE tenant_id = 'acme' AND v->>'g' = '3'"
            )
            await delta_sync(src, dst, shapes, "acme", lines.append)
            for t, _ in shapes:
                assert await checksum(src, t.source, t, "acme") == await checksum(dst, t.target, None, "acme")
            assert await dst.fetchval("SELECT count(*) FROM c.k WHERE tenant_id <> 'acme'") == 0
        finally:
            await src.close()
            await dst.close()

    asyncio.run(go())
    assert "copy public.k: 230/230 rows" in lines and "copy public.k: 50/230 rows" in lines
    assert "sync public.k: 21 rows inserted or updated" in lines  # 23 updated, 3 of them then deleted, 1 new
    assert "sync public.k: 32 rows deleted" in lines


# ---------------------------------------------------------------------------- every direction


def left_behind(site: Site, tier: str, database: str | None) -> list[object]:
    """What of acme an old placement still holds: its shared rows, its schema, its own database."""
    db = site.backend.database
    if tier == "shared":
        count = "SELECT count(*) FROM public.{} WHERE tenant_id = 'acme'"
        return [t for t in TABLES[:3] if site.pg.fetch(count.format(t), dbname=db)[0][0]]
    if tier == "schema":
        return site.pg.fetch("SELECT nspname FROM pg_namespace WHERE nspname = 't_acme'", dbname=db)
    return site.pg.fetch("SELECT datname FROM pg_database WHERE datname = $1", database)


@pytest.mark.parametrize(
    ("route", "rls"),
    [(("schema", "dedicated", "shared"), False), (("dedicated", "schema", "shared"), False),
     (("schema", "dedicated", "shared"), True)],
    ids=["s-d-sh", "d-s-sh", "s-d-sh-rls"],
)  # fmt: skip
def test_moves_in_every_direction_under_load(pooled_site: Site, route: tuple[str, ...], rls: bool) -> None:
    """shared -> schema -> dedicated -> shared (and the other way round), globex writing throughout:
    each hop verified, and back in the shared tables acme's rows are exactly what it wrote."""
    site = pooled_site
    if rls:
        cmd = [sys.executable, "-m", "tenantgate.proxy.cli", "rls", "install", "--config", str(site.config)]
        assert subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0
    expected = seeded("acme", 300)
    first_id = 1000
    was: tuple[str, str | None] = ("shared", None)
    for tier in route:
        args = ["--to-tier", tier]
        database = None
        if tier == "dedicated":
            target, password_file = dedicated_db(site.pg, site.tmp)
            args, database = dedicated_args(target, password_file), target.database
        acme = Writer(site.proxy, "alice", seeded("acme", 300), tolerate=True, first_id=first_id)
        acme.expected = dict(expected)  # its updates go to the seeded rows; earlier hops' rows stay
        globex = Writer(site.proxy, "bob", seeded("globex", 50), tolerate=False, first_id=500000 + first_id)
        acme.start()
        globex.start()
        try:
            acme.wait_ops(10)
            globex.wait_ops(10)
            done = site.move("acme", *args, "--batch-rows", "64")
            acme.wait_ops(10)
            globex.wait_ops(5)
        finally:
            acme.stop.set()
            globex.stop.set()
            acme.join(30)
            globex.join(30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not globex.errors, globex.errors
        assert not acme.errors, acme.errors
        assert site.placement("acme") == (tier, "no")
        assert left_behind(site, *was) == [], f"the old placement {was} still holds acme's data: {done.stdout}"
        was = (tier, database)
        expected = acme.expected
        first_id += 100000
    db = site.backend.database
    assert orders_in(site.pg, db, "public.orders", "acme") == expected
    assert site.pg.fetch("SELECT count(*) FROM public.orders WHERE tenant_id = 'globex'", dbname=db)[0][0] > 50
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (len(expected),)
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (120,)
    # moving to where it already is: refused before anything
    assert site.move("acme", "--to-tier", "shared").returncode == 2
