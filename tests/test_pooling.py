"""Transaction pooling: tenants share backends one transaction at a time, and nothing else."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin, free_port

from .harness import (
    ORDERS_SCOPING,
    ORDERS_SETUP,
    Backend,
    ProxyProcess,
    RawClient,
    config_text,
    errors,
    start_proxy,
)


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "pooled", ORDERS_SETUP, owner=False)


def pooled(backend: Backend, tmp: Path, size: int, timeout: float = 10) -> ProxyProcess:
    port = free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING).replace(
        'sslmode = "prefer"',
        f'sslmode = "prefer"\npool_mode = "transaction"\npool_size = {size}\npool_timeout = {timeout}',
    )
    return start_proxy(tmp, text, port)


@pytest.fixture(scope="module")
def one(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled(backend, tmp_path_factory.mktemp("pool1"), 1)
    yield p
    p.stop()


def backends(backend: Backend) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in backend.pg.fetch(
            "SELECT pid, state FROM pg_stat_activity WHERE usename = $1 ORDER BY pid", backend.role
        )
    ]


def test_two_tenants_interleave_on_one_backend(one: ProxyProcess, backend: Backend) -> None:
    alice = psycopg.connect(one.dsn("alice"), autocommit=True)
    bob = psycopg.connect(one.dsn("bob"), autocommit=True)
    seen = []
    for _ in range(3):
        for conn, tenant in ((alice, "acme"), (bob, "globex")):
            pid, setting = conn.execute("SELECT pg_backend_pid(), current_setting('tenantgate.tenant')").fetchone()  # type: ignore[misc]
            assert setting == tenant
            rows = conn.execute("SELECT tenant_id FROM orders").fetchall()
            assert rows and {r[0] for r in rows} == {tenant}
            seen.append(pid)
    assert len(set(seen)) == 1  # one backend served both tenants, alternately
    assert len(backends(backend)) == 1
    alice.close()
    bob.close()


def test_transaction_holds_the_backend_until_it_ends(one: ProxyProcess) -> None:
    alice = psycopg.connect(one.dsn("alice"))
    alice.execute("UPDATE orders SET note = 'held' WHERE id = 1")  # opens a transaction
    done = threading.Event()

    def bob_query() -> None:
        with psycopg.connect(one.dsn("bob"), autocommit=True) as bob:
            assert bob.execute("SELECT count(*) FROM orders").fetchone() == (1,)
        done.set()

    t = threading.Thread(target=bob_query)
    t.start()
    time.sleep(0.7)
    assert not done.is_set()  # bob waits for the only backend
    alice.rollback()
    t.join(10)
    assert done.is_set()
    alice.close()


def test_session_settings_follow_the_session_instead_of_leaking(backend: Backend, tmp_path: Path) -> None:
    p = pooled(backend, tmp_path, 2)
    try:
        alice = psycopg.connect(p.dsn("alice"), autocommit=True)
        alice.execute("SET statement_timeout = '4321s'")  # tracked (re-applied on every hand-over), or pinned
        bob = psycopg.connect(p.dsn("bob"), autocommit=True)
        for _ in range(3):
            timeout = bob.execute("SELECT current_setting('statement_timeout')").fetchone()
            assert timeout != ("4321s",)
            assert alice.execute("SHOW statement_timeout").fetchone() == ("4321s",)
        alice.close()
        bob.close()
    finally:
        p.stop()


def test_asyncpg_prepared_statements_in_transaction_mode(one: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(one.dsn("alice"))
        try:
            stmt = await conn.prepare("SELECT id FROM orders WHERE id = $1")
            assert [r[0] for r in await stmt.fetch(1)] == [1]
            assert await conn.fetchval("SELECT count(*) FROM orders") == 2
        finally:
            await conn.close()

    asyncio.run(main())


def test_pgbench_prepared_in_transaction_mode(backend: Backend, tmp_path: Path) -> None:
    """Named prepared statements follow each client from backend to backend: four clients, one backend."""
    one = pooled(backend, tmp_path, 1)
    script = tmp_path / "s.sql"
    script.write_text("\\set id random(1, 2)\nSELECT note FROM orders WHERE id = :id;\n")
    run = subprocess.run(
        [
            find_pg_bin("pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            "2",
            "-t",
            "50",
            "-f",
            str(script),
            "-h",
            "127.0.0.1",
            "-p",
            str(one.port),
            "-U",
            "alice",
            backend.database,
        ],
        env={"PGPASSWORD": "alice-pw", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    one.stop()
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout


def test_same_statement_name_different_sql_on_one_backend(one: ProxyProcess) -> None:
    """Two sessions prepare "same" with different text and take turns on the only backend."""
    a, b = RawClient(one.port), RawClient(one.port)
    a.login("alice", "alice-pw")
    b.login("bob", "bob-pw")
    prepare = {
        a: codec.Parse("same", "SELECT id::text FROM orders WHERE id = $1", (23,)),
        b: codec.Parse("same", "SELECT note FROM orders WHERE id = $1", (23,)),
    }
    for client in (a, b):
        client.send(prepare[client].encode() + codec.Sync().encode())
        assert not errors(client.until_ready())
    for _ in range(3):
        for client, want in ((a, b"1"), (b, b"g1")):
            client.send(codec.Bind("", "same", (), (b"1",)).encode() + codec.Execute().encode() + codec.Sync().encode())
            rows = [m.values for m in client.until_ready() if isinstance(m, codec.DataRow)]
            assert rows == [(want,)]
    a.close()
    b.close()


def test_disconnect_mid_transaction_leaves_nothing_open(one: ProxyProcess, backend: Backend) -> None:
    c = RawClient(one.port)
    c.login("alice", "alice-pw")
    c.query("BEGIN")
    assert not errors(c.query("UPDATE orders SET note = 'dangling' WHERE id = 2"))
    c.close()
    deadline = time.monotonic() + 5
    while any(state.startswith("idle in transaction") for _, state in backends(backend)):
        assert time.monotonic() < deadline, backends(backend)
        time.sleep(0.05)
    with psycopg.connect(one.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SELECT note FROM orders WHERE id = 2").fetchone() == ("a2",)


def test_many_clients_queue_fairly(backend: Backend, tmp_path: Path) -> None:
    p = pooled(backend, tmp_path, 2)
    failures: list[BaseException] = []

    def worker(user: str) -> None:
        try:
            with psycopg.connect(p.dsn(user), autocommit=True) as conn:
                for _ in range(10):
                    conn.execute("SELECT count(*) FROM orders").fetchone()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=("alice" if i % 2 else "bob",)) for i in range(40)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures[:3]
        assert len(backends(backend)) <= 2 + 1  # this pool, and the module's pool of one
    finally:
        p.stop()


def test_pool_timeout_gives_53300(backend: Backend, tmp_path: Path) -> None:
    p = pooled(backend, tmp_path, 1, timeout=1)
    try:
        holder = psycopg.connect(p.dsn("alice"))
        holder.execute("SELECT 1")  # transaction open: the only backend is held
        c = RawClient(p.port)
        c.login("bob", "bob-pw")
        msgs = c.query("SELECT 1")
        (err,) = errors(msgs)
        assert err.sqlstate == "53300" and "pool_timeout" in err.message
        holder.rollback()
        holder.close()
    finally:
        p.stop()


def test_trusted_users_stay_session_pooled(one: ProxyProcess) -> None:
    with psycopg.connect(one.dsn("svc"), autocommit=True) as conn:
        conn.execute("SET work_mem = '7MB'")
        assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)


def test_cancelled_backend_is_never_handed_on(one: ProxyProcess) -> None:
    """PgBouncer #245: a cancel that lands late must not hit another client's query."""
    conn = psycopg.connect(one.dsn("alice"), autocommit=True)
    before = conn.execute("SELECT pg_backend_pid()").fetchone()
    errors_seen: list[BaseException] = []

    def sleep() -> None:
        try:
            conn.execute("SELECT pg_sleep(20)")
        except psycopg.Error as exc:
            errors_seen.append(exc)

    t = threading.Thread(target=sleep)
    t.start()
    time.sleep(0.5)
    conn.cancel()
    t.join(10)
    assert errors_seen and isinstance(errors_seen[0], psycopg.errors.QueryCanceled)
    after = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert after != before  # the cancelled backend was closed, not pooled again
    conn.close()


def test_idle_backends_go_back_to_the_tenant_whose_settings_they_carry(backend: Backend, tmp_path: Path) -> None:
    """Two tenants on a pool of two: once each has run on a backend, each gets its own back, so the
    hand-over needs no SET (the settings are asserted per hand-over only when they differ)."""
    proxy = pooled(backend, tmp_path, 2)
    try:
        with (
            psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice,
            psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob,
        ):
            with alice.transaction(), bob.transaction():  # both backends in use: one each
                alice.execute("SELECT 1")
                bob.execute("SELECT 1")
            alice_pids = {alice.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(6)}  # type: ignore[index]
            bob_pids = {bob.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(6)}  # type: ignore[index]
            assert len(alice_pids) == len(bob_pids) == 1 and alice_pids != bob_pids
            assert alice.execute("SELECT current_setting('tenantgate.tenant')").fetchone() == ("acme",)
            assert bob.execute("SELECT current_setting('tenantgate.tenant')").fetchone() == ("globex",)
    finally:
        proxy.stop()
