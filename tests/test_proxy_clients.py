"""Real clients through the real proxy: psql, psycopg 3, asyncpg, pgbench.

These run as the trusted service user, so statements are relayed unscoped: what is
tested here is the wire protocol (scoping has its own tests).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin

from .harness import Backend, ProxyProcess, launch

SETUP = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE items (id int PRIMARY KEY, name text, mood mood, data bytea, at timestamptz DEFAULT now());
INSERT INTO items (id, name, mood) SELECT g, 'item ' || g, 'happy' FROM generate_series(1, 100) g;
"""


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    b = Backend.create(pg, "clients")
    # the application role owns the objects (pgbench -i creates its own tables)
    conn = psycopg.connect(b.direct_dsn(), autocommit=True)
    conn.execute(SETUP)
    conn.close()
    return b


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = launch(tmp_path_factory.mktemp("proxy-clients"), backend)
    yield p
    p.stop()


def psql(proxy: ProxyProcess, *args: str, input: str | None = None) -> str:
    out = subprocess.run(
        [find_pg_bin("psql"), proxy.dsn("svc"), "-X", "-v", "ON_ERROR_STOP=1", "-At", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---------------------------------------------------------------------------- psql


def test_psql_query_and_meta_commands(proxy: ProxyProcess) -> None:
    assert psql(proxy, "-c", "SELECT count(*) FROM items").strip() == "100"
    listing = psql(proxy, "-c", r"\d items")
    assert "mood" in listing and "bytea" in listing
    assert "items" in psql(proxy, "-c", r"\dt")


def test_psql_copy_both_ways(proxy: ProxyProcess, tmp_path: Path) -> None:
    out_file = tmp_path / "items.csv"
    psql(proxy, "-c", rf"\copy (SELECT id, name FROM items WHERE id <= 10 ORDER BY id) TO '{out_file}' CSV")
    lines = out_file.read_text().splitlines()
    assert lines[0] == "1,item 1" and len(lines) == 10
    psql(proxy, "-c", "CREATE TABLE IF NOT EXISTS copied (id int, name text)")
    psql(proxy, "-c", rf"\copy copied FROM '{out_file}' CSV")
    assert psql(proxy, "-c", "SELECT count(*), max(name) FROM copied").strip() == "10|item 9"


# ---------------------------------------------------------------------------- psycopg


def test_psycopg_simple_and_extended(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc"), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)  # simple query protocol
        cur.execute("SELECT name FROM items WHERE id = %s", [7])
        assert cur.fetchone() == ("item 7",)
        # extended protocol with parameters, then several statements in one simple Query
        assert conn.execute("SELECT name FROM items WHERE id = %s", [8]).fetchone() == ("item 8",)
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchone() == (1,)
        assert cur.nextset() and cur.fetchone() == (2,)


def test_psycopg_pipeline_mode(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc")) as conn:
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 2", [i]) for i in range(50)]
            conn.execute("UPDATE items SET name = name WHERE id = %s", [1])
        assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(50)]  # type: ignore[index]
        # an error inside a pipeline aborts the rest up to the sync, as in PostgreSQL
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("SELECT 1 / %s", [0])
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_psycopg_copy(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bulk (id int, payload text)")
        conn.execute("TRUNCATE bulk")
        with conn.cursor().copy("COPY bulk FROM STDIN") as copy:
            for i in range(5000):
                copy.write_row((i, "x" * 50))
        assert conn.execute("SELECT count(*) FROM bulk").fetchone() == (5000,)
        with conn.cursor().copy("COPY (SELECT id FROM bulk ORDER BY id) TO STDOUT") as copy:
            rows = [r for r in copy.rows()]
        assert len(rows) == 5000 and rows[-1] == ("4999",)


def test_psycopg_listen_notify(proxy: ProxyProcess) -> None:
    listener = psycopg.connect(proxy.dsn("svc"), autocommit=True)
    listener.execute("LISTEN news")
    with psycopg.connect(proxy.dsn("svc"), autocommit=True) as sender:
        sender.execute("NOTIFY news, 'hello'")
    got = next(listener.notifies(timeout=5))
    assert (got.channel, got.payload) == ("news", "hello")
    listener.close()


def test_psycopg_server_side_cursor_and_binary(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc")) as conn:
        with conn.cursor(name="walker") as cur:
            cur.itersize = 7
            cur.execute("SELECT id FROM items ORDER BY id")
            assert [r[0] for r in cur] == list(range(1, 101))
        cur2 = conn.cursor(binary=True)
        cur2.execute("SELECT id, name, %s::bytea FROM items WHERE id = 3", [b"\x00\xff"])
        assert cur2.fetchone() == (3, "item 3", b"\x00\xff")


# ---------------------------------------------------------------------------- asyncpg


def test_asyncpg_prepared_executemany_introspection(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("svc"))
        try:
            stmt = await conn.prepare("SELECT id, mood FROM items WHERE id = $1")
            assert tuple(await stmt.fetchrow(5)) == (5, "happy")  # enum: type introspection query
            await conn.execute("CREATE TABLE IF NOT EXISTS many (id int, m mood)")
            await conn.executemany("INSERT INTO many VALUES ($1, $2)", [(i, "sad") for i in range(200)])
            assert await conn.fetchval("SELECT count(*) FROM many WHERE m = 'sad'") >= 200
            rows = await conn.fetch("SELECT data FROM items WHERE id = ANY($1::int[])", [1, 2])
            assert len(rows) == 2
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_cancellation_via_timeout(proxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(proxy.dsn("svc"))
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
            assert loop.time() - t0 < 10  # the backend query was really cancelled
            assert await conn.fetchval("SELECT 7") == 7
        finally:
            await conn.close()

    asyncio.run(main())


def test_cancel_reaches_only_the_owner(proxy: ProxyProcess) -> None:
    victim = psycopg.connect(proxy.dsn("svc"), autocommit=True)
    other = psycopg.connect(proxy.dsn("svc"), autocommit=True)
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            victim.execute("SELECT pg_sleep(20)")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=sleep)
    t.start()
    import time

    time.sleep(0.5)
    other.cancel()  # other's key: cancels other's (idle) backend, never the victim's query
    time.sleep(0.5)
    assert t.is_alive()
    victim.cancel()
    t.join(10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled)
    victim.close()
    other.close()


# ---------------------------------------------------------------------------- pgbench


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(proxy: ProxyProcess, backend: Backend, mode: str) -> None:
    pgbench = find_pg_bin("pgbench")
    env = {"PGPASSWORD": "svc-pw", "PATH": "/usr/bin:/bin"}
    common = ["-h", "127.0.0.1", "-p", str(proxy.port), "-U", "svc", backend.database]
    if mode == "simple":
        init = subprocess.run([pgbench, "-i", "-q", "-s", "1", *common], env=env, capture_output=True, text=True)
        assert init.returncode == 0, init.stderr
    subprocess.run([pgbench, "-i", "-q", "-s", "1", *common], env=env, capture_output=True, check=False)
    run = subprocess.run(
        [pgbench, "-c", "4", "-j", "2", "-t", "150", "-M", mode, *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed: 600/600" in run.stdout
    assert "number of failed transactions: 0" in run.stdout
