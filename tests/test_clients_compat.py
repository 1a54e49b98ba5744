"""Client-visible behaviour the proxy must keep as PostgreSQL's (issue 20, the remaining items),
through the real proxy in both pool modes, as a tenant (with tenantgate's RLS and without it) and
as a trusted user.

- One namespace of prepared statements: SQL DEALLOCATE of a protocol-level statement drops it
  (ActiveRecord's statement-cache eviction, psycopg with libpq < 17), PREPARE and Parse collide.
- ``set_config($1, $2, false)`` (SQLAlchemy, asyncpg): the Bind's values are checked as the literal
  form's and tracked like it; a forbidden setting is refused the same way.
- A COPY TO the client stops reading and cancels fails as directly (psycopg's own test).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import USERS, Backend
from .peer.env import TENANT, TENANT_USER, TRUSTED_USER, create_backend
from .test_clients_connect import MODES, Gate, gate

Conn = psycopg.Connection[tuple[Any, ...]]
USERS_ = [TENANT_USER, TRUSTED_USER]


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return create_backend(pg, "clients_compat")


@pytest.fixture(scope="module")
def bare_backend(pg: PgServer) -> Backend:
    """The same tables without RLS: the rewriter alone must hold."""
    return create_backend(pg, "clients_compat_bare")


@pytest.fixture(scope="module", params=[(m, rls) for m in MODES for rls in ("rls", "bare")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    mode, rls = request.param
    backend: Backend = request.getfixturevalue("backend" if rls == "rls" else "bare_backend")
    with gate(tmp_path_factory.mktemp(f"compat-{mode}-{rls}"), backend, mode, rls=rls == "rls", pool_size=2) as g:
        yield g


def sqlstate(conn: Conn, sql: str) -> str | None:
    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def run_prepared(conn: Conn, name: bytes) -> tuple[str | None, list[Any]]:
    """(SQLSTATE or None, first column) of a protocol-level Bind/Execute of ``name``."""
    res = conn.pgconn.exec_prepared(name, [])
    if res.status == pq.ExecStatus.FATAL_ERROR:
        return res.error_field(pq.DiagnosticField.SQLSTATE).decode(), []  # type: ignore[union-attr]
    return None, [res.get_value(i, 0) for i in range(res.ntuples)]


def prepare(conn: Conn, name: bytes, sql: bytes) -> str | None:
    res = conn.pgconn.prepare(name, sql)
    if res.status == pq.ExecStatus.FATAL_ERROR:
        return res.error_field(pq.DiagnosticField.SQLSTATE).decode()  # type: ignore[union-attr]
    return None


def churn(gate_: Gate, user: str) -> None:
    """Other clients' transactions, so that a pooled session's next one may run on another backend."""
    with gate_.connect(user) as other:
        for _ in range(3):
            other.execute("SELECT 1")


# -- one namespace of prepared statements -----------------------------------------------------------

@pytest.mark.parametrize("user", USERS_)
@pytest.mark.parametrize("verb", ["DEALLOCATE", "DEALLOCATE PREPARE"])
def test_sql_deallocate_drops_protocol_statement(proxy: Gate, user: str, verb: str) -> None:
    with proxy.connect(user) as conn:
        assert prepare(conn, b"ar_1", b"SELECT 41 + 1") is None
        churn(proxy, user)
        assert run_prepared(conn, b"ar_1") == (None, [b"42"])
        cur = conn.execute(f"{verb} ar_1")
        assert cur.pgresult is not None and cur.pgresult.command_status == b"DEALLOCATE"
        assert run_prepared(conn, b"ar_1")[0] == "26000"
        assert prepare(conn, b"ar_1", b"SELECT 7") is None  # the name is free again
        assert run_prepared(conn, b"ar_1") == (None, [b"7"])
        assert sqlstate(conn, f"{verb} ar_1") is None
        assert sqlstate(conn, f"{verb} ar_1") == "26000"  # gone: PostgreSQL's answer
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("user", USERS_)
def test_sql_deallocate_never_reaches_another_sessions_statement(proxy: Gate, user: str) -> None:
    """Same name, same text in two sessions (one backend name on a shared backend): a session's
    DEALLOCATE drops only its own; one that never prepared the name gets 26000."""
    with proxy.connect(user) as a, proxy.connect(user) as b:
        assert prepare(a, b"shared", b"SELECT 'a'") is None
        assert sqlstate(b, "DEALLOCATE shared") == "26000"
        assert prepare(b, b"shared", b"SELECT 'a'") is None
        assert sqlstate(b, "DEALLOCATE shared") is None
        for _ in range(3):
            assert run_prepared(a, b"shared") == (None, [b"a"])
        assert run_prepared(b, b"shared")[0] == "26000"


@pytest.mark.parametrize("user", USERS_)
def test_prepare_and_parse_collide_as_in_postgresql(proxy: Gate, user: str) -> None:
    with proxy.connect(user) as conn:
        conn.execute("BEGIN")  # SQL PREPARE pins a pooled session; keep it simple: one transaction
        assert prepare(conn, b"collide", b"SELECT 1") is None
        assert sqlstate(conn, "PREPARE collide AS SELECT 2") == "42P05"
        conn.execute("ROLLBACK")
        conn.execute("PREPARE sqlside AS SELECT 3")
        assert prepare(conn, b"sqlside", b"SELECT 4") == "42P05"
        assert conn.execute("EXECUTE sqlside").fetchone() == (3,)
        conn.execute("DEALLOCATE sqlside")
        assert prepare(conn, b"sqlside", b"SELECT 4") is None
        assert run_prepared(conn, b"sqlside") == (None, [b"4"])


@pytest.mark.parametrize("user", USERS_)
def test_deallocate_all_drops_both_kinds(proxy: Gate, user: str) -> None:
    with proxy.connect(user) as conn:
        assert prepare(conn, b"p1", b"SELECT 1") is None
        conn.execute("PREPARE s1 AS SELECT 1")
        conn.execute("DEALLOCATE ALL")
        assert run_prepared(conn, b"p1")[0] == "26000"
        assert sqlstate(conn, "EXECUTE s1") == "26000"
        assert prepare(conn, b"p1", b"SELECT 2") is None and prepare(conn, b"s1", b"SELECT 2") is None


@pytest.mark.parametrize("sql", ["EXECUTE pe", "DEALLOCATE pe; SELECT 1", "SELECT 1; DEALLOCATE pe"])
def test_unsupported_forms_fail_closed(proxy: Gate, sql: str) -> None:
    """A tenant's EXECUTE of a protocol statement (its Bind-time checks would be bypassed) and a DEALLOCATE
    of one beside other statements: a precise 0A000, nothing run, the statement still there, the session
    usable. (Trusted users hold their own backend under their own names: PostgreSQL answers them.)"""
    with proxy.connect(TENANT_USER) as conn:
        assert prepare(conn, b"pe", b"SELECT 5") is None
        assert sqlstate(conn, sql) == "0A000"
        assert run_prepared(conn, b"pe") == (None, [b"5"])
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("user", USERS_)
def test_failed_deallocate_in_aborted_transaction_keeps_statement(proxy: Gate, user: str) -> None:
    with proxy.connect(user) as conn:
        assert prepare(conn, b"kept", b"SELECT 6") is None
        conn.execute("BEGIN")
        assert sqlstate(conn, "SELECT 1/0") == "22012"
        assert sqlstate(conn, "DEALLOCATE kept") == "25P02"
        conn.execute("ROLLBACK")
        assert run_prepared(conn, b"kept") == (None, [b"6"])


def test_reserved_names_stay_refused(proxy: Gate) -> None:
    with proxy.connect(TENANT_USER) as conn:
        assert prepare(conn, b"r1", b"SELECT 1") is None
        assert sqlstate(conn, "DEALLOCATE tg_0123456789abcdef01234567") == "42501"


# -- an interrupted COPY OUT ------------------------------------------------------------------------

@pytest.mark.parametrize("user", USERS_)
@pytest.mark.parametrize("rows", [1_000_000, 1_000_001, 1_000_002])
def test_interrupted_copy_out_is_cancelled(proxy: Gate, user: str, rows: int) -> None:
    """psycopg's test_copy_out_error_with_copy_not_finished: a client that stops reading a COPY TO and
    cancels it finds its transaction failed (57014), as directly: the proxy must not soak up the
    rest of the output (letting the backend finish first) while the client is not reading."""
    with proxy.connect(user) as conn:
        conn.autocommit = False
        cur = conn.cursor()
        with pytest.raises(ZeroDivisionError), cur.copy(f"COPY (SELECT generate_series(1, {rows})) TO STDOUT") as copy:
            copy.read_row()
            1 / 0  # noqa: B018
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- set_config() with parameters ---------------------------------------------------------------------

def settings_of(conn: Conn) -> tuple[Any, ...]:
    row = conn.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
                       "current_setting('search_path'), current_setting('tenantgate.tenant', true)").fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("local", [False, "false", "off", "0"])
def test_set_config_with_parameters_is_tracked(proxy: Gate, local: object) -> None:
    with proxy.connect() as conn, proxy.connect() as other:
        other.execute("SET TimeZone = 'America/Lima'")
        before = settings_of(conn)
        sql = "SELECT set_config(%s, %s, %s)" if local is not False else "SELECT set_config(%s, %s, false)"
        args = ["TimeZone", "Asia/Tokyo"] + ([local] if local is not False else [])
        assert conn.execute(sql, args).fetchone() == ("Asia/Tokyo",)
        conn.execute("SELECT set_config('datestyle', %s, false)", ["SQL, DMY"])
        for _ in range(4):  # other clients' transactions in between: a pooled session moves, its settings follow
            assert other.execute("SHOW TimeZone").fetchone() == ("America/Lima",)
            assert settings_of(conn) == ("Asia/Tokyo", "SQL, DMY", *before[2:])
        assert conn.execute("SELECT count(*) FROM peer_items WHERE tenant_id <> %s", [TENANT]).fetchone() == (0,)


def test_set_config_local_with_parameters_lasts_one_transaction(proxy: Gate) -> None:
    with proxy.connect() as conn:
        with conn.transaction():
            conn.execute("SELECT set_config(%s, %s, %s)", ["TimeZone", "Asia/Tokyo", True])
            assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        assert conn.execute("SHOW TimeZone").fetchone() != ("Asia/Tokyo",)


FORBIDDEN = [
    ("search_path", "pg_catalog, public", "42501"),
    ("search_path", '"$user", public', "42501"),
    ("SEARCH_PATH", " public", "42501"),  # the pinned schema, but not as the proxy spells it
    ("role", "postgres", "42501"),
    ("session_authorization", "postgres", "42501"),
    ("tenantgate.tenant", "globex", "42501"),
    ("TenantGate.Trusted", "on", "42501"),
    ("row_security", "off", "42501"),
    ("standard_conforming_strings", "off", "42501"),
    ("backslash_quote", "on", "42501"),
    ("client_encoding", "LATIN1", "42501"),
    ("client_encoding", "UTF8", "42501"),
]


@pytest.mark.parametrize(("name", "value", "state"), FORBIDDEN, ids=[f"{n}={v}" for n, v, _ in FORBIDDEN])
def test_set_config_with_parameters_refuses_what_literals_may_not(proxy: Gate, name: str, value: str,
                                                                  state: str) -> None:
    with proxy.connect() as conn:
        before = settings_of(conn)
        for sql, args in [("SELECT set_config(%s, %s, false)", [name, value]),
                          ("SELECT set_config(%s, %s, true)", [name, value]),
                          ("SELECT set_config(%s, %s, %s)", [name, value, False]),
                          (f"SELECT set_config('{name}', %s, false)", [value])]:
            with pytest.raises(psycopg.Error) as err:
                conn.execute(sql, args)
            literal = sqlstate(conn, f"SELECT set_config('{name}', '{value}', false)")
            assert err.value.sqlstate in (state, literal), sql
            assert settings_of(conn) == before
            assert conn.execute("SELECT current_setting('standard_conforming_strings'), "
                                "current_setting('client_encoding')").fetchone() == ("on", "UTF8")


@pytest.mark.parametrize(("sql", "args"), [
    ("SELECT set_config(%s, %s || '', false)", ["TimeZone", "UTC"]),  # not a bare parameter
    ("SELECT set_config(%s::name, %s, false)", ["TimeZone", "UTC"]),  # a type that changes the text
    ("SELECT set_config(%s, %s, false)", ["TimeZone", None]),  # NULL: a reset the proxy does not follow
    ("SELECT set_config(%s, %s, %s)", ["TimeZone", "UTC", "maybe"]),
    ("SELECT set_config(%s, %s, %s)", ["TimeZone", "UTC", None]),
])
def test_set_config_with_parameters_unsupported_forms_fail_closed(proxy: Gate, sql: str, args: list[Any]) -> None:
    with proxy.connect() as conn:
        before = settings_of(conn)
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql, args)
        assert err.value.sqlstate in ("0A000", "42501")
        assert settings_of(conn) == before


def test_set_config_with_parameters_asyncpg_binary(proxy: Gate) -> None:
    """asyncpg binds text and booleans in binary format: the same checks on the same values."""
    import asyncio

    async def main() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.proxy.port, user=TENANT_USER,
                                     password=USERS[TENANT_USER][1], database=proxy.backend.database, ssl=False)
        try:
            assert await conn.fetchval("SELECT set_config($1, $2, $3)", "TimeZone", "Asia/Tokyo", False) == "Asia/Tokyo"
            for _ in range(3):
                assert await conn.fetchval("SHOW TimeZone") == "Asia/Tokyo"
            with pytest.raises(asyncpg.PostgresError) as err:
                await conn.fetchval("SELECT set_config($1, $2, $3)", "search_path", "pg_catalog", False)
            assert err.value.sqlstate == "42501"
            assert await conn.fetchval("SELECT current_setting('search_path')") != "pg_catalog"
        finally:
            await conn.close()

    asyncio.run(main())


# -- ParameterStatus after pooled hand-overs ----------------------------------------------------------

REPORTED = ("DateStyle", "IntervalStyle", "TimeZone", "application_name", "client_encoding",
            "standard_conforming_strings", "integer_datetimes")
# (startup options, SETs): each client's own, the two interleave on a pool of two
CLIENT_SETTINGS = [
    ({"options": "-c DateStyle=iso,dmy -c TimeZone=europe/paris"}, ["SET IntervalStyle = sql_standard"]),
    ({"application_name": "mine"}, ["SET datestyle = 'sql,mdy'", "SET application_name = 'later'",
                                    "SET TIME ZONE 'utc'"]),
    ({}, ["SET datestyle = german", "RESET ALL"]),
]


def reported(conn: Conn) -> dict[str, str | None]:
    return {k: conn.info.parameter_status(k) for k in REPORTED}


def direct(gate_: Gate, **kw: str) -> Conn:
    b = gate_.backend
    return psycopg.connect(b.pg.dsn(b.role, b.password, b.database), autocommit=True,
                           options=kw.pop("options", "") + " -c tenantgate.tenant=acme", **kw)


@pytest.mark.parametrize("user", USERS_)
def test_parameter_status_as_postgresql_reports_it(proxy: Gate, user: str) -> None:
    """What each client was told of its reported settings equals what PostgreSQL tells it directly, after
    many transactions moving between two backends, in PostgreSQL's spelling."""
    want, clients = [], []
    for startup, sets in CLIENT_SETTINGS:
        with direct(proxy, **startup) as ref:
            for sql in sets:
                ref.execute(sql)
            want.append(reported(ref))
        clients.append((proxy.connect(user, **startup), sets))
    try:
        for conn, sets in clients:
            for sql in sets:
                conn.execute(sql)
                for other, _ in clients:
                    other.execute("SELECT 1")
        for _ in range(3):
            for conn, _ in clients:
                conn.execute("SELECT 1")
        assert [reported(conn) for conn, _ in clients] == want
    finally:
        for conn, _ in clients:
            conn.close()
