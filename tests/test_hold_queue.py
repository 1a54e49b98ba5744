"""The session's one hold queue: what PAUSE held goes through the same checks as what was never held.

Before the queue was one, messages PAUSE held were relayed straight to a backend on RESUME: a
pooled client's Terminate held with its last query reached the pooled backend and ended it (a
backend other clients share). Now they resume at the check they stopped at, Terminate included.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin

from .harness import ORDERS_SCOPING, ORDERS_SETUP, USERS, Backend, ProxyProcess, RawClient, errors, launch_with_ports


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "hold_queue", ORDERS_SETUP, owner=False)


@pytest.fixture(scope="module")
def pooled(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, int]]:
    proxy, ports = launch_with_ports(tmp_path_factory.mktemp("hold"), backend, "admin",
                                     backend_extra='pool_mode = "transaction"\npool_size = 1',
                                     scoping=ORDERS_SCOPING)
    yield proxy, ports["admin"]
    proxy.stop()


def admin(port: int, sql: str) -> str:
    dsn = f"postgresql://dba:dba-pw@127.0.0.1:{port}/admin?sslmode=disable"
    out = subprocess.run([find_pg_bin("psql"), dsn, "-X", "-A", "-c", sql], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("messages", ["query+terminate", "terminate"])
def test_terminate_held_by_pause_never_reaches_the_pooled_backend(
    pooled: tuple[ProxyProcess, int], messages: str
) -> None:
    proxy, port = pooled
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice:
        pid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        raw = RawClient(proxy.port)
        assert not errors(raw.login("alice", USERS["alice"][1]))
        assert admin(port, "PAUSE acme") == "PAUSE"
        try:
            query = codec.Query("SELECT 1").encode() if messages == "query+terminate" else b""
            raw.send(query + codec.Terminate().encode())  # one read: held together by PAUSE
            time.sleep(0.3)
        finally:
            assert admin(port, "RESUME acme") == "RESUME"
        time.sleep(0.3)
        # the pool's one backend is still the one it was: the held Terminate was the proxy's, not the backend's
        assert alice.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        raw.close()


@pytest.mark.parametrize("tail", ["query", "extended", "unsynced"])
def test_a_pooled_clients_last_words_run_and_its_backend_stays_in_the_pool(
    pooled: tuple[ProxyProcess, int], tail: str
) -> None:
    """A Terminate behind whole requests, in one packet: they run and are answered (as PostgreSQL
    would), then the client is closed and the one pooled backend goes back clean (not closed
    mid-answer). Behind an unsynced extended message nothing ends: the client is closed at once
    and the backend, owing an answer, is not reused."""
    proxy, _ = pooled
    note = f"last-words-{tail}"
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice:
        alice.execute("DELETE FROM orders WHERE id = 4242")
        pid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        raw = RawClient(proxy.port)
        assert not errors(raw.login("alice", USERS["alice"][1]))
        insert = f"INSERT INTO orders (id, note) VALUES (4242, '{note}')"
        if tail == "query":
            words = codec.Query(insert).encode()
        else:
            words = codec.Parse("", insert).encode() + codec.Bind("", "").encode() + \
                codec.Execute("", 0).encode() + (codec.Sync().encode() if tail == "extended" else b"")
        raw.send(words + codec.Terminate().encode())
        answer = raw.until_ready()
        assert raw.closed()
        if tail == "unsynced":
            assert answer == []  # nothing ended: nothing is answered
        else:
            assert any(isinstance(m, codec.CommandComplete) for m in answer), answer
            assert isinstance(answer[-1], codec.ReadyForQuery)
        time.sleep(0.2)
        rows = alice.execute("SELECT note FROM orders WHERE id = 4242").fetchall()
        now = alice.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        if tail == "unsynced":
            assert now != pid  # closed owing an answer: never handed to anyone
        else:
            assert rows == [(note,)] and now == pid
        alice.execute("DELETE FROM orders WHERE id = 4242")


def test_last_words_that_wait_for_the_pool_still_run(pooled: tuple[ProxyProcess, int]) -> None:
    """The pool's one backend is busy in another client's transaction when a client sends its last
    statement and Terminate: the statement waits for the backend, then runs and is answered, and the
    client is closed (it was dropped at the hand-over and the connection left open)."""
    proxy, _ = pooled
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice:
        alice.execute("DELETE FROM orders WHERE id = 4343")
        alice.execute("BEGIN")  # holds the only backend
        raw = RawClient(proxy.port)
        assert not errors(raw.login("alice", USERS["alice"][1]))
        raw.send(codec.Query("INSERT INTO orders (id, note) VALUES (4343, 'waited')").encode()
                 + codec.Terminate().encode())
        time.sleep(0.3)
        alice.execute("COMMIT")  # the backend goes to the waiting statement
        answer = raw.until_ready()
        assert any(isinstance(m, codec.CommandComplete) for m in answer), answer
        assert raw.closed()
        assert alice.execute("SELECT note FROM orders WHERE id = 4343").fetchall() == [("waited",)]
        alice.execute("DELETE FROM orders WHERE id = 4343")


def test_show_sessions_publishes_why_a_session_holds_and_whether_it_is_pinned(pooled: tuple[ProxyProcess, int]) -> None:
    """The console reads each session's published snapshot: a statement waiting for the pool's one
    backend shows held = "pool wait" (released when the backend is free); a session whose state
    cannot be handed on (SQL PREPARE) shows pinned."""
    proxy, port = pooled

    def sessions() -> dict[str, tuple[str, str]]:
        header, *lines = admin(port, "SHOW SESSIONS").splitlines()
        rows = [dict(zip(header.split("|"), line.split("|"), strict=True)) for line in lines[:-1]]  # last: (n rows)
        return {r["application_name"]: (r["held"], r["pinned"]) for r in rows if r["application_name"]}

    with psycopg.connect(proxy.dsn("alice", application_name="holder"), autocommit=True) as holder, \
            psycopg.connect(proxy.dsn("alice", application_name="waiter"), autocommit=True) as waiter:
        assert sessions() == {"holder": ("", "no"), "waiter": ("", "no")}
        holder.execute("BEGIN")  # holds the only backend
        done: list[object] = []
        worker = threading.Thread(target=lambda: done.append(waiter.execute("SELECT 'served'").fetchone()))
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while sessions()["waiter"][0] != "pool wait" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sessions() == {"holder": ("", "no"), "waiter": ("pool wait", "no")}
        finally:
            holder.execute("COMMIT")
            worker.join(30)
        assert done == [("served",)]
        holder.execute("PREPARE mine AS SELECT 1")  # SQL-level state on the backend: it stays this session's
        assert sessions() == {"holder": ("", "yes"), "waiter": ("", "no")}


def test_a_statement_pause_held_that_must_then_wait_for_the_pool_is_served(pooled: tuple[ProxyProcess, int]) -> None:
    """RESUME replays a statement PAUSE held; the pool's one backend is busy in another client's
    transaction, so the replay holds it again, now for the pool, and it runs once the backend is
    free. The compiled replay once read its hold reason as narrowed to None across that re-hold
    (mypy keeps narrowing over calls; mypyc checks it): RESUME failed with an internal error."""
    proxy, port = pooled
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice:
        raw = RawClient(proxy.port)
        assert not errors(raw.login("alice", USERS["alice"][1]))
        alice.execute("BEGIN")  # holds the only backend; PAUSE holds at transaction boundaries only
        assert admin(port, "PAUSE acme") == "PAUSE"
        try:
            raw.send(codec.Query("SELECT 'replayed'").encode())
            time.sleep(0.3)
        finally:
            assert admin(port, "RESUME acme") == "RESUME"
        time.sleep(0.3)
        alice.execute("COMMIT")
        answer = raw.until_ready()
        assert not errors(answer), answer
        assert any(isinstance(m, codec.DataRow) for m in answer), answer
        raw.close()
