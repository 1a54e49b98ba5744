"""A tenant session waiting for a pooled backend, through the real proxy: what the client pipelines
meanwhile is held (reading the client goes on, bounded) and relayed in order once it has a backend."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import ORDERS_SCOPING, ORDERS_SETUP, Backend, ProxyProcess, RawClient, config_text, errors, start_proxy


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "pool_wait", ORDERS_SETUP, owner=False)


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    port = free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING).replace(
        'sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 1\npool_timeout = 10')
    p = start_proxy(tmp_path_factory.mktemp("poolwait"), text, port)
    yield p
    p.stop()


def _rows(messages: list[object]) -> list[str]:
    return [m.values[0].decode() for m in messages if type(m) is codec.DataRow]  # type: ignore[attr-defined]


@pytest.mark.parametrize("statements", [3, 2000], ids=["few", "over-the-read-bound"])
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_messages_sent_while_waiting_run_in_order_once_handed_a_backend(
    proxy: ProxyProcess, statements: int, protocol: str
) -> None:
    holder = psycopg.connect(proxy.dsn("alice"))
    try:
        holder.execute("SELECT 1")  # a transaction is open: the pool's one backend is held
        bob = RawClient(proxy.port)
        assert not errors(bob.login("bob", "bob-pw"))
        for i in range(statements):  # ~100 KB for 2000: more than a pool wait holds before it pauses reading
            sql = f"SELECT tenant_id || ':{i}' FROM orders LIMIT 1"
            if protocol == "simple":
                bob.send(codec.Query(sql).encode())
            else:
                bob.send(codec.Parse("", sql).encode() + codec.Bind("", "").encode()
                         + codec.Execute("", 0).encode() + codec.Sync().encode())
        time.sleep(0.3)
        assert bob.closed_now() is False
        holder.rollback()  # the backend is free: bob's wait ends
        rows: list[str] = []
        for _ in range(statements):
            messages = bob.until_ready()
            assert not errors(messages), errors(messages)
            rows += _rows(messages)
        assert rows == [f"globex:{i}" for i in range(statements)]  # bob's own rows, every one, in order
        bob.close()
    finally:
        holder.close()


def test_client_that_leaves_while_waiting_gives_nothing_to_the_backend(proxy: ProxyProcess) -> None:
    holder = psycopg.connect(proxy.dsn("alice"))
    try:
        holder.execute("SELECT 1")
        bob = RawClient(proxy.port)
        assert not errors(bob.login("bob", "bob-pw"))
        bob.send(codec.Query("SET search_path TO pg_catalog").encode())
        bob.close()  # gone while waiting: the backend it would have got goes back to the pool
        time.sleep(0.2)
        holder.rollback()
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as again:  # the one backend is usable and clean
            assert again.execute("SHOW search_path").fetchone() != ("pg_catalog",)
            assert again.execute("SELECT DISTINCT tenant_id FROM orders").fetchall() == [("acme",)]
    finally:
        holder.close()
