"""Issue 20 item 5: the backend identity a client sees, as PgBouncer presents it.

Session pooling: BackendKeyData carries the real pid of the one backend the client holds (with a
proxy-issued secret), so ``pg_backend_pid()``, notification pids and ``pg_stat_activity`` agree.
Transaction pooling: a proxy-issued pid, and the client's own notifications carry it. A backend
that ends the session with its own FATAL (57P01 terminated, 25P03 idle-in-transaction timeout, ...)
is reported with PostgreSQL's fields, in both modes; an idle pooled backend that dies just leaves
the pool. Cancel keys are (pid, secret) pairs whose secret names the owning worker.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantgate.proxy import codec
from tenantgate.proxy.cancel import MAX_PID, CancelRegistry
from tenantgate.proxy.codec import Bind, Execute, Parse, Sync
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import (
    ORDERS_SCOPING,
    ORDERS_SETUP,
    USERS,
    Backend,
    ProxyProcess,
    RawClient,
    config_text,
    errors,
    start_proxy,
)

MODES = ("session", "transaction")
WHO = ("svc", "alice")  # trusted (always holds its backend) and a tenant


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "identity", ORDERS_SETUP, owner=False)


@pytest.fixture(scope="module")
def proxies(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    started = {}
    for mode in MODES:
        port = free_port()
        text = config_text(backend, port, scoping=ORDERS_SCOPING)
        if mode == "transaction":
            text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 2')
        started[mode] = start_proxy(tmp_path_factory.mktemp(f"identity-{mode}"), text, port)
    yield started
    for proxy in started.values():
        proxy.stop()


def wait_gone(pg: PgServer, pid: int) -> None:
    deadline = time.monotonic() + 10
    while pg.fetch("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)[0][0]:
        assert time.monotonic() < deadline, f"backend {pid} still running"
        time.sleep(0.05)


@pytest.mark.parametrize("user", WHO)
@pytest.mark.parametrize("mode", MODES)
def test_backend_key_pid(proxies: dict[str, ProxyProcess], backend: Backend, mode: str, user: str) -> None:
    with psycopg.connect(proxies[mode].dsn(user), autocommit=True) as conn:
        real = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        if mode == "session" or user == "svc":  # trusted users hold their backend in either mode
            assert conn.info.backend_pid == real
            rows = backend.pg.fetch("SELECT usename FROM pg_stat_activity WHERE pid = $1", real)
            assert rows == [(backend.role,)]
        else:  # proxy-issued, as PgBouncer does: the backend changes per transaction
            assert conn.info.backend_pid != real


@pytest.mark.parametrize("user", WHO)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["NOTIFY ch, 'mine'", "SELECT pg_notify('ch', 'mine')"])
def test_own_notification_carries_the_clients_pid(
    proxies: dict[str, ProxyProcess], mode: str, user: str, how: str
) -> None:
    with psycopg.connect(proxies[mode].dsn(user), autocommit=True) as conn:
        conn.execute("LISTEN ch")  # pins a tenant in transaction pooling
        conn.execute(how)
        note = next(conn.notifies(timeout=5, stop_after=1))
        assert (note.channel, note.payload, note.pid) == ("ch", "mine", conn.info.backend_pid)


@pytest.mark.parametrize("mode", MODES)
def test_another_tenants_notifications_never_arrive(proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Channels are namespaced per tenant: bob's NOTIFY on the same name (and his pid) stays his."""
    proxy = proxies[mode]
    with (
        psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice,
        psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob,
    ):
        alice.execute("LISTEN ch")
        bob.execute("LISTEN ch")
        bob.execute("NOTIFY ch, 'bob'")
        bob.execute("SELECT pg_notify('ch', 'bob')")
        assert [n.payload for n in bob.notifies(timeout=5, stop_after=2)] == ["bob", "bob"]
        alice.execute("NOTIFY ch, 'alice'")
        notes = list(alice.notifies(timeout=1))
        assert [(n.payload, n.pid) for n in notes] == [("alice", alice.info.backend_pid)]


def terminate_by_dba(pg: PgServer, pid: int) -> None:
    assert pg.fetch("SELECT pg_terminate_backend($1)", pid) == [(True,)]
    wait_gone(pg, pid)


def running_pid(pg: PgServer, role: str) -> int:
    deadline = time.monotonic() + 10
    while True:
        rows = pg.fetch(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep%'", role
        )
        if rows:
            return int(rows[0][0])
        assert time.monotonic() < deadline, "the statement never ran"
        time.sleep(0.05)


def kill_when_running(pg: PgServer, role: str) -> threading.Thread:
    killer = threading.Thread(target=lambda: terminate_by_dba(pg, running_pid(pg, role)))
    killer.start()
    return killer


@pytest.mark.parametrize("user", WHO)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("held_by", ["running", "running-extended", "transaction", "listen"])
def test_terminated_backend_sends_its_own_fatal_only(
    proxies: dict[str, ProxyProcess], backend: Backend, mode: str, user: str, held_by: str
) -> None:
    """On the wire: the client holding the backend (a statement running, a transaction open, LISTEN)
    gets exactly PostgreSQL's FATAL 57P01, with the server's own fields, then the close."""
    raw = RawClient(proxies[mode].port)
    assert not errors(raw.login(user, USERS[user][1]))
    if held_by.startswith("running"):
        killer = kill_when_running(backend.pg, backend.role)
        sleep = "SELECT pg_sleep(30)"
        if held_by == "running":
            raw.send(codec.Query(sleep).encode())
        else:
            raw.send(b"".join(m.encode() for m in (Parse("", sleep), Bind("", ""), Execute(""), Sync())))
        killer.join(10)
    else:
        raw.query("BEGIN" if held_by == "transaction" else "LISTEN held")
        pid = next(m for m in raw.query("SELECT pg_backend_pid()") if isinstance(m, codec.DataRow)).values[0]
        assert pid is not None
        terminate_by_dba(backend.pg, int(pid))
    got = errors(raw.until_ready())  # up to the close: no ReadyForQuery comes
    assert raw.closed()
    assert [(e.get("V"), e.sqlstate, e.message) for e in got] == [
        ("FATAL", "57P01", "terminating connection due to administrator command")
    ]
    assert got[0].get("R")  # the server's routine field: PostgreSQL's ErrorResponse, not a proxy copy
    raw.close()


@pytest.mark.parametrize("user", WHO)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("held_by", ["running", "transaction"])
def test_terminated_backend_is_admin_shutdown(
    proxies: dict[str, ProxyProcess], backend: Backend, mode: str, user: str, held_by: str
) -> None:
    conn = psycopg.connect(proxies[mode].dsn(user))
    statement = "SELECT 1"
    if held_by == "running":
        killer = kill_when_running(backend.pg, backend.role)
        statement = "SELECT pg_sleep(30)"
    else:
        terminate_by_dba(backend.pg, conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    with pytest.raises(psycopg.errors.AdminShutdown, match="terminating connection due to administrator command"):
        conn.execute(statement)
    assert conn.closed and conn.broken
    if held_by == "running":
        killer.join(10)


def test_self_terminate_is_admin_shutdown(proxies: dict[str, ProxyProcess]) -> None:
    """psycopg's own test_right_exception_on_server_disconnect (trusted: the key pid is the backend's)."""
    with psycopg.connect(proxies["session"].dsn("svc")) as conn:
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        assert conn.closed


@pytest.mark.parametrize("mode", MODES)
def test_idle_in_transaction_timeout_is_reported(proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Another FATAL of the family: 25P03 with PostgreSQL's message, alone, not followed by the proxy's 08006."""
    with psycopg.connect(proxies[mode].dsn("svc")) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = 100")
        conn.execute("SELECT 1")  # a transaction open, then idle
        time.sleep(1)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle-in-transaction timeout"):
            conn.execute("SELECT 1")
    raw = RawClient(proxies[mode].port)
    assert not errors(raw.login("svc", USERS["svc"][1]))
    raw.query("SET idle_in_transaction_session_timeout = 100; BEGIN")
    got = errors(raw.until_ready())  # the backend's unsolicited FATAL, then the close
    assert [(e.get("V"), e.sqlstate) for e in got] == [("FATAL", "25P03")] and raw.closed()


def test_fatal_behind_a_withheld_result_under_strict_audit(backend: Backend, tmp_path: Path) -> None:
    """Strict audit withholds a result until its record is durable; the backend's FATAL and close
    right behind it are released in order (the result, then 57P01), never replaced by 08006."""
    key = tmp_path / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    audit = f'[audit]\npath = "{tmp_path}/audit.jsonl"\nkey = "file:{key}"\ndurability = "strict"\n'
    port = free_port()
    proxy = start_proxy(tmp_path, config_text(backend, port, scoping=ORDERS_SCOPING, extra=audit), port)
    try:
        for _ in range(10):  # the close comes within a millisecond or so of the withheld result: a race
            raw = RawClient(port)
            assert not errors(raw.login("svc", USERS["svc"][1]))
            got = raw.query("SELECT 1; SELECT pg_terminate_backend(pg_backend_pid())")
            assert [m.values for m in got if isinstance(m, codec.DataRow)][:1] == [(b"1",)]
            assert [(e.sqlstate, e.message) for e in errors(got)] == [
                ("57P01", "terminating connection due to administrator command")
            ]
            assert raw.closed()
            raw.close()
    finally:
        proxy.stop()


def test_idle_pooled_backend_that_dies_leaves_the_pool(proxies: dict[str, ProxyProcess], backend: Backend) -> None:
    proxy = proxies["transaction"]
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        first = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        terminate_by_dba(backend.pg, first)  # idle in the pool: nobody is told
        for _ in range(3):
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != first  # type: ignore[index]


def test_pooled_backends_dying_idle_tell_nobody(pg: PgServer, tmp_path: Path) -> None:
    """Every backend ends itself (FATAL 57P05) 400 ms into being idle in the pool: the tenants' queries
    go on (on new backends), no error reaches anyone. (A timeout near the time between a hand-over
    and the query's arrival also kills backends just handed over: that client is told, as the promise
    says; at 30 ms a loaded 2-core machine got there.)"""
    timeout_ms = 400
    dying = Backend.create(pg, "dying", ORDERS_SETUP, owner=False)
    pg.execute(f'ALTER ROLE "{dying.role}" SET idle_session_timeout = {timeout_ms}')
    port = free_port()
    text = config_text(dying, port, scoping=ORDERS_SCOPING).replace(
        'sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 2'
    )
    proxy = start_proxy(tmp_path, text, port)
    try:
        with (
            psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice,
            psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob,
        ):
            for i in range(24):
                for conn, rows in ((alice, 2), (bob, 1)):
                    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (rows,)
                    assert not conn.pgconn.notifies() and not conn.closed
                if i % 8 == 0:
                    time.sleep(timeout_ms / 400)  # every idle backend dies in the pool
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------- the registry


@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.integers(1, MAX_PID))
def test_same_pid_on_two_hosts_never_collides(shape: tuple[int, int], pid: int) -> None:
    count, index = shape
    registry = CancelRegistry(index, count)
    here, there = object(), object()
    key_here = registry.register(here, pid=pid)  # type: ignore[arg-type]
    key_there = registry.register(there, pid=pid)  # type: ignore[arg-type]
    assert key_here[0] == key_there[0] == pid and key_here != key_there
    assert registry.owner(key_here[1]) == registry.owner(key_there[1]) == index
    assert registry.lookup(*key_here) is here and registry.lookup(*key_there) is there
    registry.unregister(key_here)
    assert registry.lookup(*key_here) is None and registry.lookup(*key_there) is there
    # the backend pid is reused by the next client: a new secret, the old key cancels nothing
    registry.register(object(), pid=pid)  # type: ignore[arg-type]
    assert registry.lookup(*key_here) is not here
