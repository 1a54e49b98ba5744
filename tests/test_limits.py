"""Per-tenant limits through the real proxy: each one triggers with its documented error, leaves the
other tenant alone, and releases afterwards."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import (
    ORDERS_SCOPING,
    ORDERS_SETUP,
    Backend,
    ProxyProcess,
    RawClient,
    config_text,
    errors,
    start_proxy,
    wait_port,
)
from .test_admin import table

POOLED = 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 4\npool_timeout = 1.5'


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "limits", ORDERS_SETUP, owner=False)


def launch_limited(tmp: Path, backend: Backend, limits: str, *, pooled: bool = False) -> tuple[ProxyProcess, int, int]:
    port, admin, metrics = free_port(), free_port(), free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING, backend_extra=POOLED if pooled else "")
    text = text.replace('[tenants.acme]\ntier = "shared"\n', f'[tenants.acme]\ntier = "shared"\n{limits}\n')
    text = text.replace("[listen]\n", f'[listen]\nadmin = "127.0.0.1:{admin}"\nmetrics = "127.0.0.1:{metrics}"\n')
    proxy = start_proxy(tmp, text, port)
    for extra in (admin, metrics):
        wait_port(extra, proxy.proc, proxy.log_path)
    return proxy, admin, metrics


@pytest.fixture(scope="module")
def limited(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, int, int]]:
    limits = (
        "max_client_connections = 2\nstatements_per_second = 20\nstatement_burst = 20\nrate_limit_wait = 0.2\n"
        "statement_timeout = 1.0\nmax_rows = 3\n"
    )
    found = launch_limited(tmp_path_factory.mktemp("limited"), backend, limits)
    yield found
    found[0].stop()


def limit_hits(metrics: int, limit: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    prefix = f'tenantgate_tenant_limit_hits_total{{limit="{limit}",tenant="acme"}} '
    return sum(float(line.removeprefix(prefix)) for line in body.splitlines() if line.startswith(prefix))


def test_max_client_connections(limited: tuple[ProxyProcess, int, int]) -> None:
    proxy, _, metrics = limited
    before = limit_hits(metrics, "max_client_connections")
    first = psycopg.connect(proxy.dsn("alice"), autocommit=True)
    second = psycopg.connect(proxy.dsn("alice"), autocommit=True)
    try:
        third = RawClient(proxy.port)
        (refusal,) = errors(third.login("alice", "alice-pw"))
        third.close()
        assert (refusal.sqlstate, refusal.message) == ("53300", "too many connections for tenant acme (limit 2)")
        with psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob:  # the other tenant is not limited
            assert bob.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    finally:
        second.close()
    time.sleep(0.3)  # the proxy sees the close
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as again:  # released
        assert again.execute("SELECT 1").fetchone() == (1,)
    first.close()
    assert limit_hits(metrics, "max_client_connections") - before == 1


def test_statement_rate_limit(limited: tuple[ProxyProcess, int, int]) -> None:
    proxy, _, metrics = limited
    client = RawClient(proxy.port)
    try:
        assert not errors(client.login("alice", "alice-pw"))
        # 60 statements in one burst: 40 past the bucket, 2 s of tokens > rate_limit_wait: refused
        client.send(b"".join(codec.Query("SELECT 1").encode() for _ in range(60)))
        replies = [client.until_ready() for _ in range(60)]
        states = {e.sqlstate for r in replies for e in errors(r)}
        assert states == {"53400"}
        assert (
            "statement rate limit of tenant acme exceeded (20 statements per second)" in errors(replies[0])[0].message
        )
        time.sleep(1.1)  # the bucket refills
        assert not errors(client.query("SELECT 1"))
        # a little over the bucket (about 0.1 s of tokens short): waits briefly instead of failing
        time.sleep(1.1)
        client.send(b"".join(codec.Query("SELECT 1").encode() for _ in range(22)))
        assert not any(errors(client.until_ready()) for _ in range(22))
    finally:
        client.close()
    assert limit_hits(metrics, "statements_per_second") >= 1


def test_statement_timeout(limited: tuple[ProxyProcess, int, int]) -> None:
    proxy, _, metrics = limited
    before = limit_hits(metrics, "statement_timeout")
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(5)")
        # a client that lifts its own timeout is still cancelled by the proxy's backstop
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(psycopg.errors.QueryCanceled, match=r"tenant limit 1 s"):
            conn.execute("SELECT pg_sleep(6)")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)  # usable afterwards
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob:  # the other tenant has no limit
        assert bob.execute("SELECT pg_sleep(1.6), 1").fetchone() == ("", 1)
    assert limit_hits(metrics, "statement_timeout") - before == 2


def test_max_rows_refuse(limited: tuple[ProxyProcess, int, int]) -> None:
    proxy, admin, _ = limited
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        assert len(conn.execute("SELECT generate_series(1, 3)").fetchall()) == 3
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="more than 3 rows"):
            conn.execute("SELECT generate_series(1, 1000)").fetchall()
        assert conn.execute("SELECT 2").fetchone() == (2,)
    with psycopg.connect(proxy.dsn("alice")) as conn:  # inside a transaction block: the block fails
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("SELECT generate_series(1, 10)").fetchall()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob:
        assert len(bob.execute("SELECT generate_series(1, 1000)").fetchall()) == 1000
    _, listed = table(admin, "SHOW TENANTS")
    acme = next(r for r in listed if r["tenant"] == "acme")
    assert "max_rows = 3 (refuse)" in acme["limits"] and int(acme["limit_hits"]) >= 2


def test_max_rows_truncate(backend: Backend, tmp_path: Path) -> None:
    proxy, _, _ = launch_limited(tmp_path, backend, 'max_rows = 2\nmax_rows_action = "truncate"')
    notices: list[str] = []
    try:
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            cur = conn.execute("SELECT generate_series(1, 50)")
            assert cur.fetchall() == [(1,), (2,)] and cur.rowcount == 2
            with cur.copy("COPY (SELECT generate_series(1, 50)) TO STDOUT") as copy:
                assert b"".join(bytes(b) for b in copy) == b"1\n2\n"
        assert notices == ["result truncated to 2 rows (tenant limit max_rows)"] * 2
    finally:
        proxy.stop()


def test_max_backend_connections_session_mode(backend: Backend, tmp_path: Path) -> None:
    proxy, _, _ = launch_limited(tmp_path, backend, "max_backend_connections = 1")
    try:
        with (
            psycopg.connect(proxy.dsn("alice"), autocommit=True),
            pytest.raises(psycopg.OperationalError, match="too many backend connections for tenant acme"),
        ):
            psycopg.connect(proxy.dsn("alice"))
        time.sleep(0.3)
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proxy.stop()


def test_max_backend_connections_transaction_mode(backend: Backend, tmp_path: Path) -> None:
    """Two of the tenant's clients share one backend slot: the second waits for the first's
    transaction, and past pool_timeout gets 53300; the other tenant never waits."""
    proxy, admin, _ = launch_limited(tmp_path, backend, "max_backend_connections = 1", pooled=True)
    try:
        with (
            psycopg.connect(proxy.dsn("alice")) as first,
            psycopg.connect(proxy.dsn("alice")) as second,
            psycopg.connect(proxy.dsn("bob")) as bob,
        ):
            first.execute("SELECT 1")  # holds the tenant's only backend slot until commit
            assert bob.execute("SELECT count(*) FROM orders").fetchone() == (1,)
            bob.commit()
            done = threading.Event()

            def commit_soon() -> None:
                time.sleep(0.5)
                first.commit()
                done.set()

            threading.Thread(target=commit_soon).start()
            assert second.execute("SELECT count(*) FROM orders").fetchone() == (2,)  # waited, then ran
            assert done.is_set()
            second.commit()
            first.execute("SELECT 1")
            with pytest.raises(psycopg.OperationalError, match="no backend connection for tenant acme"):
                second.execute("SELECT 1")
            _, listed = table(admin, "SHOW TENANTS")
            assert next(r for r in listed if r["tenant"] == "acme")["backend_connections"] == "1"
            first.commit()
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
    finally:
        proxy.stop()


def test_limits_config_defaults_overrides_and_errors(backend: Backend, tmp_path: Path) -> None:
    from tenantgate.config import ConfigError, load_config

    base = config_text(backend, free_port(), scoping=ORDERS_SCOPING)
    good = tmp_path / "good.toml"
    good.write_text(
        base.replace('[tenants.acme]\ntier = "shared"\n', '[tenants.acme]\ntier = "shared"\nmax_rows = 10\n')
        + "\n[limits]\nstatements_per_second = 100\nmax_rows = 500\n"
    )
    cfg = load_config(good)
    acme, globex = cfg.tenants["acme"].limits, cfg.tenants["globex"].limits
    assert (acme.statements_per_second, acme.max_rows, globex.max_rows) == (100.0, 10, 500)
    assert cfg.tenant("from-a-token").limits.statements_per_second == 100.0  # [limits] covers unlisted tenants
    bad = tmp_path / "bad.toml"
    bad.write_text(
        base.replace(
            '[tenants.acme]\ntier = "shared"\n',
            '[tenants.acme]\ntier = "shared"\nstatements_per_second = 0\nmax_rows_action = "drop"\n'
            "max_client_connections = 1.5\nmax_clients = 3\n",
        )
        + "\n[limits]\nstatement_burst = 5\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    found = {(p.key, p.message.split(" (")[0]) for p in info.value.problems}
    assert found >= {
        ("tenants.acme.statements_per_second", "must be greater than 0 and at most 1000000000.0, got 0.0"),
        ("tenants.acme.max_rows_action", "must be one of refuse, truncate, got 'drop'"),
        ("tenants.acme.max_client_connections", "expected an integer, got a number"),
        ("tenants.acme.max_clients", "unknown key"),
        ("limits.statement_burst", "needs statements_per_second"),
    }, found
