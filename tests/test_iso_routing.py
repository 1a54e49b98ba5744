"""Issue 12 family 7, routing half: a tenant session reaches only its configured database, and its
startup options cannot choose the plans (planner switches force the scans used as side channels).

Like a PgBouncer database entry: a tenant's session always goes to the tenant's configured
database, whatever name the client gives (one connection string such as ``/app`` serves every
tier). With no database configured there is nowhere safe to go: refused with 3D000.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import ORDERS_SCOPING, ORDERS_SETUP, Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

MODES = ["session", "transaction"]


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "routing_main", ORDERS_SETUP, owner=False)


@pytest.fixture(scope="module")
def other(pg: PgServer, backend: Backend) -> str:
    """Another tenant's tier database that the same backend role can reach."""
    pg.create_database("routing_other", owner=backend.role)
    pg.execute("CREATE TABLE secrets (body text); INSERT INTO secrets VALUES ('GLOBEX secret');"
               f'GRANT SELECT ON secrets TO "{backend.role}"', dbname="routing_other")
    return "routing_other"


def _launch(backend: Backend, tmp: Path, mode: str, *, database: bool) -> ProxyProcess:
    port = free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING)
    if not database:
        text = text.replace(f'database = "{backend.database}"\n', "", 1)
    if mode == "transaction":
        text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 2', 1)
    return start_proxy(tmp, text, port)


@pytest.fixture(scope="module", params=MODES)
def proxy(request: pytest.FixtureRequest, backend: Backend, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    p = _launch(backend, tmp_path_factory.mktemp(f"routing-{request.param}"), request.param, database=True)
    yield p
    p.stop()


def _login(proxy: ProxyProcess, user: str, database: str = "", **startup: str) -> tuple[RawClient, list[object]]:
    client = RawClient(proxy.port)
    return client, client.login(user, proxy.users[user][1], database, **startup)


@pytest.mark.parametrize("database", ["routing_other", "postgres", "template1", "ROUTING_MAIN", "nonexistent",
                                      "", "routing_main", "alice"])
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_a_tenant_always_lands_in_its_configured_database(
    proxy: ProxyProcess, other: str, database: str, user: str
) -> None:
    with psycopg.connect(proxy.dsn(user, database), autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("routing_main",)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() is not None  # its own tables
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # not the other database's
            conn.execute("SELECT body FROM secrets")


@pytest.mark.parametrize("mode", MODES)
def test_without_a_configured_database_tenants_are_not_routed_anywhere(
    backend: Backend, other: str, tmp_path: Path, mode: str
) -> None:
    proxy = _launch(backend, tmp_path, mode, database=False)
    try:
        for database in (other, "alice", ""):
            client, out = _login(proxy, "alice", database)
            try:
                assert [e.sqlstate for e in errors(out)] == ["3D000"], out
            finally:
                client.close()
        # a trusted service user still goes where it asks
        with psycopg.connect(proxy.dsn("svc", other), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (other,)
    finally:
        proxy.stop()


PLANNER = ["enable_seqscan=off", "enable_indexscan=off", "enable_bitmapscan=off", "enable_hashjoin=off",
           "enable_mergejoin=off", "enable_nestloop=off", "random_page_cost=1000", "geqo=off",
           "gin_fuzzy_search_limit=1", "enable_indexonlyscan=off", "seq_page_cost=0", "cpu_tuple_cost=1",
           "plan_cache_mode=force_generic_plan", "enable_partition_pruning=off"]


@pytest.mark.parametrize("setting", PLANNER)
@pytest.mark.parametrize("how", ["options", "parameter"])
def test_startup_cannot_set_planner_switches(proxy: ProxyProcess, setting: str, how: str) -> None:
    name, value = setting.split("=")
    startup = {"options": f"-c {setting}"} if how == "options" else {name: value}
    client, out = _login(proxy, "alice", **startup)
    try:
        assert [e.sqlstate for e in errors(out)] == ["42501"], out
        assert name in errors(out)[0].message
    finally:
        client.close()


@pytest.mark.parametrize("setting", ["application_name=app", "TimeZone=UTC", "DateStyle=ISO", "extra_float_digits=3",
                                     "statement_timeout=5000", "client_min_messages=warning", "jit=off"])
def test_startup_keeps_harmless_settings(proxy: ProxyProcess, setting: str) -> None:
    client, out = _login(proxy, "alice", options=f"-c {setting}")
    try:
        assert not errors(out), out
    finally:
        client.close()
