"""Strict audit under transaction pooling: a result waits for its completion record, its backend does not.

While a completion record is being made durable the session's output waits behind it, in order,
but the backend (ReadyForQuery received) goes back to the pool and serves other clients. What
must still hold: no client sees a statement complete whose records are not on disk (SIGKILL
mid-load), every result arrives whole and in order, and a pool of one backend serves them all.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import ORDERS_SETUP, Backend
from .test_audit_proxy import audited_proxy, records_tolerant


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "strictpool", ORDERS_SETUP, owner=False)


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_completed_statements_are_logged_under_kill(backend: Backend, tmp_path: Path, pool_mode: str) -> None:
    p = audited_proxy(backend, tmp_path, durability="strict", pool_mode=pool_mode,
                      pool_size=1 if pool_mode == "transaction" else 20)
    seen: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    wrong: list[object] = []

    def load(first: int) -> None:
        try:
            with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
                i = first
                while not stop.is_set():
                    got = conn.execute(
                        f"INSERT INTO orders (id, note) VALUES ({i}, 'strictpool') RETURNING id, note"
                    ).fetchall()
                    if got != [(i, "strictpool")]:  # each result whole, and this client's own
                        wrong.append(got)
                    with lock:
                        seen.append(i)  # the client saw this statement complete
                    i += 1
        except psycopg.Error:
            pass

    threads = [threading.Thread(target=load, args=(10_000 * (n + 1),)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    assert not wrong
    assert len(seen) > 10
    ended = {
        str(r.get("sql")) for r in records_tolerant(tmp_path) if (r.get("details") or {}).get("phase") == "end"
    }
    missing = [i for i in seen if not any(f"VALUES ({i}," in sql for sql in ended)]
    assert not missing, f"{len(missing)} completed statements have no completion record"
    backend.pg.execute("DELETE FROM orders WHERE note = 'strictpool'", dbname=backend.database)


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_a_pipeline_waits_behind_each_write_ahead_record_in_order(
    backend: Backend, tmp_path: Path, pool_mode: str
) -> None:
    """Strict audit holds what it made for the backend in the session's one hold queue (reason
    "strict audit"); a pipeline sent meanwhile waits behind it, through every check, read on up to
    the hold's bound: one pipelined burst larger than that (~120 KiB) with a refused statement in the
    middle is answered whole, in order, and every statement's write-ahead record precedes the next."""
    p = audited_proxy(backend, tmp_path, durability="strict", pool_mode=pool_mode,
                      pool_size=1 if pool_mode == "transaction" else 20)
    big = "y" * 2000
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
            results: list[object] = []
            with conn.pipeline() as pipe:
                cursors = []
                for i in range(60):
                    sql = "SELECT count(*) FROM pg_stat_activity" if i == 30 else f"SELECT %s::text, {i} AS pipelined"
                    cursors.append(conn.cursor().execute(sql, () if i == 30 else (big,)))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    pipe.sync()
                results.extend(cur.fetchone() for cur in cursors[:30])
            assert results == [(big, i) for i in range(30)]
            # the refusal aborted the rest of its pipeline, as PostgreSQL's own error would; the session goes on
            assert conn.execute("SELECT %s::text, 61 AS pipelined", (big,)).fetchone() == (big, 61)
    finally:
        p.stop()
    starts = [str(r.get("sql")) for r in records_tolerant(tmp_path)
              if (r.get("details") or {}).get("phase") == "start" and "pipelined" in str(r.get("sql"))]
    assert starts == [f"SELECT $1::text, {i} AS pipelined" for i in [*range(30), 61]]
