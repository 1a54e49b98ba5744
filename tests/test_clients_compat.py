"""Client-visible behaviour the proxy must keep as PostgreSQL's (issue 20, the remaining items),
through the real proxy in both pool modes, as a tenant (with tenantgate's RLS and without it) and
as a trusted user.

- One namespace of prepared statements: SQL DEALLOCATE of a protocol-level statement drops it
  (ActiveRecord's statement-cache eviction, psycopg with libpq < 17), PREPARE and Parse collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from tenantgate.proxy.pgcluster import PgServer

from .harness import Backend
from .peer.env import TENANT_USER, TRUSTED_USER, create_backend
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
