"""Tenant scoping through the real proxy: real PostgreSQL, real clients, tenant users.

alice -> acme, bob -> globex, svc trusted. Every value of globex carries the marker GLOBEX, so a
leak shows up in any result. The attack matrix at the end compares each scoped statement with a
direct query (on the backend, past the proxy) that has the tenant predicate written in.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin

from .harness import USERS, Backend, ProxyProcess, RawClient, errors, launch

MARKER = "GLOBEX"
# EXPLAIN is opt-in since issue 12 (its estimates span every tenant); these tests read its plans
SCOPING = ('[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "orders", "tickets"]\n'
           'reference = ["countries"]\nallow_explain = true\n')
SCHEMA = """
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, customer_id int, total numeric(10,2),
                     note text, mood mood, PRIMARY KEY (tenant_id, id));
-- an inheritance child nobody listed: its rows show through "orders" (scoped), never on their own
CREATE TABLE orders_archive () INHERITS (orders);
-- a unique key without the tenant column: ON CONFLICT can meet another tenant's row
CREATE TABLE tickets (id int PRIMARY KEY, tenant_id text NOT NULL, subject text);
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE internal_notes (id int PRIMARY KEY, body text);
"""
DATA = """
TRUNCATE customers, orders, orders_archive, tickets, countries, internal_notes;
INSERT INTO customers VALUES ('acme', 1, 'acme-one'), ('acme', 2, 'acme-two'), ('acme', 3, NULL),
  ('globex', 1, 'GLOBEX-c1'), ('globex', 2, 'GLOBEX-c2'), ('globex', 7, 'GLOBEX-c7');
INSERT INTO orders VALUES
  ('acme', 1, 1, 10.00, 'acme order one', 'happy'), ('acme', 2, 1, 25.50, 'acme order two', 'sad'),
  ('acme', 3, 2, 100.00, 'acme order three', 'happy'), ('acme', 4, 3, 7.25, NULL, NULL),
  ('globex', 1, 1, 5000.00, 'GLOBEX order 1', 'sad'), ('globex', 2, 2, 6000.00, 'GLOBEX order 2', 'happy'),
  ('globex', 5, 1, 8000.00, 'GLOBEX order 5', 'happy'), ('globex', 6, 2, 9000.00, 'GLOBEX order 6', 'sad');
INSERT INTO orders_archive VALUES ('acme', 90, 1, 1.00, 'acme archived', 'happy'),
  ('globex', 91, 1, 9.00, 'GLOBEX archived', 'sad');
INSERT INTO tickets VALUES (10, 'acme', 'acme ticket'), (50, 'globex', 'GLOBEX ticket');
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France');
INSERT INTO internal_notes VALUES (1, 'GLOBEX internal note');
"""
# Everything a tenant could change, in a stable order (the child's rows show in orders too).
SNAPSHOT = {
    "customers": "SELECT tenant_id, id, name FROM customers",
    "orders": "SELECT tableoid::regclass::text, tenant_id, id, customer_id, total, note, mood FROM orders",
    "tickets": "SELECT tenant_id, id, subject FROM tickets",
    "countries": "SELECT code, name FROM countries",
    "internal_notes": "SELECT id, body FROM internal_notes",
}


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    b = Backend.create(pg, "scoping_proxy")
    with psycopg.connect(b.direct_dsn(), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(DATA)
    return b


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = launch(tmp_path_factory.mktemp("scoping-proxy"), backend, scoping=SCOPING)
    yield p
    p.stop()


@pytest.fixture
def direct(backend: Backend) -> Iterator[psycopg.Connection[Any]]:
    """The backend itself, past the proxy, with fresh data."""
    with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
        conn.execute(DATA)
        yield conn


def tenant(proxy: ProxyProcess, user: str = "alice", *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(user), autocommit=autocommit)


def snapshot(conn: psycopg.Connection[Any], tenant_id: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (those of one tenant where the table has a tenant column)."""
    out = {}
    for table, sql in SNAPSHOT.items():
        if tenant_id is not None and table in ("customers", "orders", "tickets"):
            sql += f" WHERE tenant_id = '{tenant_id}'"
        out[table] = sorted(conn.execute(sql).fetchall(), key=repr)
    return out


def sorted_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def acme_orders(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------- tools and drivers


def psql(proxy: ProxyProcess, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_pg_bin("psql"), proxy.dsn(user), "-X", "-v", "ON_ERROR_STOP=1", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("meta", "expected"), [
    (r"\d", "orders"), (r"\dt", "customers"), (r"\d orders", "mood"), (r"\df", "List of functions"),
    (r"\dT", "mood"), (r"\dn", "public"), (r"\d+ tickets", "tickets_pkey"),
])
def test_psql_meta_commands_as_a_tenant(proxy: ProxyProcess, meta: str, expected: str) -> None:
    out = psql(proxy, "alice", "-c", meta)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


def test_psql_queries_are_scoped(proxy: ProxyProcess, direct: psycopg.Connection[Any]) -> None:
    out = psql(proxy, "alice", "-At", "-c", "SELECT id, note FROM orders ORDER BY id")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1|acme order one", "2|acme order two", "3|acme order three", "4|",
                                       "90|acme archived"]
    refused = psql(proxy, "alice", "-c", "SELECT * FROM internal_notes")
    assert refused.returncode != 0 and "not available to tenants" in refused.stderr


def test_asyncpg_enum_introspection_as_a_tenant(proxy: ProxyProcess, direct: psycopg.Connection[Any]) -> None:
    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        conn = await asyncpg.connect(proxy.dsn("alice"))
        try:
            # an enum column makes asyncpg introspect the type (pg_type ... = any($1::oid[]))
            rows = await conn.fetch("SELECT id, mood FROM orders WHERE mood = $1 ORDER BY id", "happy")
            types = await conn.fetch("SELECT typname FROM pg_catalog.pg_type WHERE oid = any($1::oid[]) "
                                     "ORDER BY typname", [23, 25])
            everything = await conn.fetch("SELECT tenant_id, note FROM orders")
            return rows, types, everything
        finally:
            await conn.close()

    rows, types, everything = asyncio.run(run())
    assert [(r["id"], r["mood"]) for r in rows] == [(1, "happy"), (3, "happy"), (90, "happy")]
    assert [t["typname"] for t in types] == ["int4", "text"]
    assert {r["tenant_id"] for r in everything} == {"acme"} and len(everything) == 5


@pytest.mark.parametrize("in_transaction", [True, False], ids=["transaction", "autocommit"])
def test_psycopg_pipeline_with_a_refused_statement(proxy: ProxyProcess, direct: psycopg.Connection[Any],
                                                   in_transaction: bool) -> None:
    with tenant(proxy, autocommit=not in_transaction) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info, conn.pipeline():
            first = conn.execute("SELECT count(*) FROM orders WHERE id < %s", [100])
            conn.execute("UPDATE orders SET note = %s WHERE id = %s", ["piped", 1])
            conn.execute("SELECT body FROM internal_notes WHERE id = %s", [1])
            later = conn.execute("UPDATE orders SET note = %s", ["after the error"])
        assert info.value.sqlstate == "42501"
        assert first.fetchone() == (5,)  # the result before the error arrived
        assert later.pgresult is None  # skipped: psycopg got no result for it
        expected = pq.TransactionStatus.INERROR if in_transaction else pq.TransactionStatus.IDLE
        assert conn.info.transaction_status == expected
        if in_transaction:
            conn.rollback()
        assert acme_orders(conn) == 5  # the session stays usable
    # up to the Sync everything is one transaction (implicit in autocommit): the error rolled it back
    notes = {n for (n,) in direct.execute("SELECT note FROM orders")}
    assert not notes & {"piped", "after the error"}


def wire(messages: list[object]) -> list[tuple[str, str]]:
    """Backend messages as (type, detail) for comparison."""
    out = []
    for m in messages:
        if isinstance(m, codec.Simple):
            out.append(("Simple", m.kind.decode()))
        elif isinstance(m, codec.CommandComplete):
            out.append(("CommandComplete", m.tag))
        elif isinstance(m, codec.ErrorResponse):
            out.append(("ErrorResponse", m.sqlstate))
        elif isinstance(m, codec.ReadyForQuery):
            out.append(("ReadyForQuery", m.status))
        elif not isinstance(m, codec.NoticeResponse | codec.ParameterStatus):
            out.append((type(m).__name__, ""))
    return out


def step(sql: str) -> bytes:
    return codec.Parse("", sql).encode() + codec.Bind("", "").encode() + codec.Execute().encode()


@pytest.mark.parametrize("in_transaction", [True, False], ids=["transaction", "implicit"])
def test_wire_pipeline_skips_to_sync_after_a_refusal(proxy: ProxyProcess, direct: psycopg.Connection[Any],
                                                     in_transaction: bool) -> None:
    """Exactly PostgreSQL's behaviour on the wire: results before the refusal, the 42501 error,
    nothing for the rest up to Sync, and the true transaction status."""
    client = RawClient(proxy.port)
    try:
        assert not errors(client.login("alice", USERS["alice"][1]))
        if in_transaction:
            assert wire(client.query("BEGIN")) == [("CommandComplete", "BEGIN"), ("ReadyForQuery", "T")]
        client.send(step("SELECT count(*) FROM orders") + step("SELECT * FROM internal_notes")
                    + step("UPDATE orders SET note = 'skipped'") + codec.Sync().encode())
        assert wire(client.until_ready()) == [
            ("Simple", "1"), ("Simple", "2"), ("DataRow", ""), ("CommandComplete", "SELECT 1"),
            ("ErrorResponse", "42501"), ("ReadyForQuery", "E" if in_transaction else "I")]
        client.send(step("SELECT count(*) FROM orders") + codec.Sync().encode())
        if in_transaction:  # the transaction is aborted until ROLLBACK, as PostgreSQL has it
            assert wire(client.until_ready()) == [("ErrorResponse", "25P02"), ("ReadyForQuery", "E")]
            assert wire(client.query("ROLLBACK")) == [("CommandComplete", "ROLLBACK"), ("ReadyForQuery", "I")]
            client.send(step("SELECT count(*) FROM orders") + codec.Sync().encode())
        assert wire(client.until_ready())[-2:] == [("CommandComplete", "SELECT 1"), ("ReadyForQuery", "I")]
    finally:
        client.close()
    assert direct.execute("SELECT count(*) FROM orders WHERE note = 'skipped'").fetchone() == (0,)


def test_extended_insert_with_the_tenant_as_a_parameter(proxy: ProxyProcess,
                                                        direct: psycopg.Connection[Any]) -> None:
    sql = "INSERT INTO orders (tenant_id, id, note) VALUES (%s, %s, %s)"
    with tenant(proxy) as conn:
        conn.execute(sql, ["acme", 100, "mine"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, ["globex", 101, "theirs"])
        # the same statement again, now prepared by the driver, still checks every Bind
        for i in range(6):
            conn.execute(sql, ["acme", 110 + i, "again"], prepare=True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql, ["globex", 120, "theirs"], prepare=True)
        assert acme_orders(conn) == 12
    rows = direct.execute("SELECT tenant_id, id FROM orders WHERE id >= 100 ORDER BY id").fetchall()
    assert rows == [("acme", 100)] + [("acme", 110 + i) for i in range(6)]


def test_multi_statement_query_with_one_refused_runs_nothing(proxy: ProxyProcess,
                                                             direct: psycopg.Connection[Any]) -> None:
    before = snapshot(direct)
    with tenant(proxy) as conn:
        cur = psycopg.ClientCursor(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO orders (id, note) VALUES (300, 'multi'); UPDATE orders SET note = 'multi'; "
                        "SELECT * FROM internal_notes; DELETE FROM customers")
        assert acme_orders(conn) == 5
    assert snapshot(direct) == before


def heard(conn: psycopg.Connection[Any], last: str) -> list[tuple[str, str]]:
    """Notifications up to and including the one whose payload is ``last``."""
    got = []
    for note in conn.notifies(timeout=10):
        got.append((note.channel, note.payload))
        if note.payload == last:
            break
    return got


def test_listen_notify_is_per_tenant(proxy: ProxyProcess) -> None:
    with tenant(proxy, "alice") as alice, tenant(proxy, "alice") as alice2, tenant(proxy, "bob") as bob:
        alice.execute("LISTEN events")
        bob.execute("LISTEN events")
        bob.execute("NOTIFY events, 'from globex'")
        alice2.execute("SELECT pg_notify('events', 'from acme')")
        bob.execute("NOTIFY events, 'globex done'")
        alice2.execute("NOTIFY events, 'acme done'")
        # delivery follows commit order: anything of the other tenant would arrive before the last one
        assert heard(alice, "acme done") == [("events", "from acme"), ("events", "acme done")]
        assert heard(bob, "globex done") == [("events", "from globex"), ("events", "globex done")]
        alice.execute("UNLISTEN events")
        alice2.execute("NOTIFY events, 'unheard'")
        alice.execute("LISTEN events")
        alice2.execute("NOTIFY events, 'heard'")
        assert heard(alice, "heard") == [("events", "heard")]


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
def test_reset_keeps_the_session_scoped(proxy: ProxyProcess, reset: str) -> None:
    with tenant(proxy) as conn:
        conn.execute("SET statement_timeout = 12345")
        conn.execute(reset)
        settings = conn.execute("SELECT current_setting('tenantgate.tenant'), current_setting('search_path'), "
                                "current_setting('statement_timeout')").fetchone()
        assert settings == ("acme", "public", "0")
        assert acme_orders(conn) == 5
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET tenantgate.tenant = 'globex'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT set_config('tenantgate.tenant', 'globex', false)")
        assert conn.execute("SELECT current_setting('tenantgate.tenant')").fetchone() == ("acme",)


def test_copy_to_stdout_is_scoped_and_copy_from_checked(proxy: ProxyProcess,
                                                        direct: psycopg.Connection[Any]) -> None:
    before = snapshot(direct)
    with tenant(proxy) as conn:
        with conn.cursor().copy("COPY orders (id, note) TO STDOUT") as copy:
            rows = sorted(copy.rows())
        # COPY table reads that table only, like PostgreSQL: no inheritance children
        assert rows == [("1", "acme order one"), ("2", "acme order two"), ("3", "acme order three"),
                        ("4", None)]
        with conn.cursor().copy("COPY (SELECT c.name FROM customers c ORDER BY c.id) TO STDOUT") as copy:
            assert [r for r in copy.rows()] == [("acme-one",), ("acme-two",), (None,)]
        # issue 12: COPY FROM is supported, each row's tenant column checked (another's aborts it)
        with pytest.raises(psycopg.Error, match="tenantgate: a row gives the tenant column"), conn.cursor().copy(
                "COPY orders (tenant_id, id) FROM STDIN") as copy:
            copy.write_row(("globex", 400))
        assert acme_orders(conn) == 5
    assert snapshot(direct) == before


def test_statements_sqlglot_finds_hard_run_when_legitimate(proxy: ProxyProcess,
                                                           direct: psycopg.Connection[Any]) -> None:
    with tenant(proxy) as conn:
        assert conn.execute("SELECT %s::int, %s::text FROM orders WHERE id = 1", [7, "x"]).fetchall() == [
            (7, "x")]
        inserted = conn.execute("INSERT INTO orders (id, note) VALUES (%s, %s) RETURNING *", [500, "new"]).fetchall()
        assert inserted == [("acme", 500, None, None, "new", None)]
        assert conn.execute('SELECT count(*) FROM U&"\\006Frders"').fetchone() == (6,)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM orders WHERE id = 1").fetchall())
        assert "'acme'::text" in plan
        conn.execute("PREPARE mine(int) AS SELECT note FROM orders WHERE id = $1")
        assert conn.execute("EXECUTE mine(1)").fetchall() == [("acme order one",)]
        assert conn.execute("EXECUTE mine(5)").fetchall() == []  # globex's order 5
        conn.execute("DEALLOCATE mine")
    with tenant(proxy, autocommit=False) as conn:
        conn.execute("DECLARE cur CURSOR FOR SELECT id, note FROM orders ORDER BY id")
        assert conn.execute("FETCH 2 FROM cur").fetchall() == [(1, "acme order one"), (2, "acme order two")]
        assert [r[0] for r in conn.execute("FETCH ALL FROM cur").fetchall()] == [3, 4, 90, 500]
        conn.execute("CLOSE cur")
        conn.rollback()
    assert direct.execute("SELECT tenant_id FROM orders WHERE id = 500").fetchall() == [("acme",)]


def test_a_long_message(proxy: ProxyProcess, direct: psycopg.Connection[Any]) -> None:
    """A simple Query with many statements: all scoped; one refused among them stops them all."""
    count = 500
    with tenant(proxy) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT count(*) FROM orders WHERE id <> 0;" * count)
        results = 1
        assert cur.fetchone() == (5,)
        while cur.nextset():
            results += 1
            assert cur.fetchone() == (5,)
        assert results == count
        statements = ["INSERT INTO orders (id) VALUES (600)"] + ["SELECT 1 FROM orders"] * count
        statements.insert(count // 2, "SELECT * FROM orders_archive")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cur.execute("; ".join(statements))
    assert direct.execute("SELECT count(*) FROM orders WHERE id = 600").fetchone() == (0,)


# ---------------------------------------------------------------------------- the attack matrix


@dataclass(frozen=True)
class Attack:
    id: str
    sql: str
    oracle: str | None = None  # the same statement with the tenant predicate written in (direct)
    refused: bool = False


ACME = "(SELECT * FROM orders WHERE tenant_id = 'acme')"
ACME_C = "(SELECT * FROM customers WHERE tenant_id = 'acme')"

ATTACKS = [
    Attack("cte-shadow-and-real",
           "WITH orders AS (SELECT id, total FROM orders WHERE total > 5) "
           "SELECT o.id, (SELECT count(*) FROM public.orders) AS n FROM orders o",
           f"WITH s AS (SELECT id, total FROM {ACME} x WHERE total > 5) "
           f"SELECT s.id, (SELECT count(*) FROM {ACME} y) AS n FROM s"),
    Attack("nested-cte", "WITH a AS (WITH orders AS (SELECT * FROM orders) SELECT * FROM orders) "
           "SELECT count(*), sum(total) FROM a",
           f"SELECT count(*), sum(total) FROM {ACME} a"),
    Attack("recursive-cte",
           "WITH RECURSIVE chain(id, depth) AS (SELECT min(id), 1 FROM orders UNION ALL "
           "SELECT (SELECT min(o.id) FROM orders o WHERE o.id > chain.id), depth + 1 FROM chain "
           "WHERE depth < 20 AND chain.id IS NOT NULL) SELECT id FROM chain WHERE id IS NOT NULL",
           f"SELECT id FROM {ACME} o"),
    Attack("window", "SELECT id, sum(total) OVER (PARTITION BY customer_id ORDER BY id), "
           "rank() OVER (ORDER BY total DESC), count(*) OVER () FROM orders",
           f"SELECT id, sum(total) OVER (PARTITION BY customer_id ORDER BY id), "
           f"rank() OVER (ORDER BY total DESC), count(*) OVER () FROM {ACME} o"),
    Attack("grouping-sets", "SELECT customer_id, mood, count(*), sum(total) FROM orders "
           "GROUP BY GROUPING SETS ((customer_id), (mood), ())",
           f"SELECT customer_id, mood, count(*), sum(total) FROM {ACME} o "
           "GROUP BY GROUPING SETS ((customer_id), (mood), ())"),
    Attack("union-in-where-subquery", "SELECT name FROM customers WHERE id IN "
           "(SELECT customer_id FROM orders UNION SELECT id + 1 FROM customers WHERE name LIKE 'GLOBEX%')",
           f"SELECT name FROM {ACME_C} c WHERE id IN (SELECT customer_id FROM {ACME} o "
           f"UNION SELECT id + 1 FROM {ACME_C} d WHERE name LIKE 'GLOBEX%')"),
    Attack("lateral-with-function", "SELECT c.id, x.n, g FROM customers c, "
           "LATERAL (SELECT count(*) AS n FROM orders o WHERE o.customer_id = c.id) x, "
           "LATERAL generate_series(1, x.n::int) g",
           f"SELECT c.id, x.n, g FROM {ACME_C} c, LATERAL (SELECT count(*) AS n FROM {ACME} o "
           "WHERE o.customer_id = c.id) x, LATERAL generate_series(1, x.n::int) g"),
    Attack("values-join", "SELECT v.k, o.note FROM (VALUES (1, 'a'), (5, 'b'), (6, 'c')) AS v(id, k) "
           "JOIN orders o ON o.id = v.id",
           f"SELECT v.k, o.note FROM (VALUES (1, 'a'), (5, 'b'), (6, 'c')) AS v(id, k) JOIN {ACME} o "
           "ON o.id = v.id"),
    Attack("for-update", "SELECT id, note FROM orders WHERE id IN (1, 5, 6) FOR UPDATE",
           f"SELECT id, note FROM {ACME} o WHERE id IN (1, 5, 6)"),
    Attack("row-comparison", "SELECT id FROM orders WHERE (tenant_id, id) IN (('globex', 5), ('acme', 1)) "
           "OR ROW(tenant_id, total) > ROW('acme', 1000)",
           f"SELECT id FROM {ACME} o WHERE (tenant_id, id) IN (('globex', 5), ('acme', 1)) "
           "OR ROW(tenant_id, total) > ROW('acme', 1000)"),
    Attack("dollar-quoted-fake-sql",
           "SELECT $x$'; SELECT * FROM internal_notes; SELECT * FROM orders WHERE tenant_id = 'globex'; --$x$ "
           "AS s, count(*) FROM orders",
           f"SELECT $x$'; SELECT * FROM internal_notes; SELECT * FROM orders WHERE tenant_id = 'globex'; "
           f"--$x$ AS s, count(*) FROM {ACME} o"),
    Attack("nested-comments", "SELECT count(*) /* outer /* inner */ FROM internal_notes; */ FROM orders "
           "-- FROM customers\n WHERE true",
           f"SELECT count(*) FROM {ACME} o"),
    Attack("e-string-escaped-quotes", "SELECT E'it\\'s'' FROM internal_notes --' AS s, note FROM orders "
           "WHERE note <> E'\\' OR tenant_id = \\'globex'",
           f"SELECT E'it\\'s'' FROM internal_notes --' AS s, note FROM {ACME} o "
           "WHERE note <> E'\\' OR tenant_id = \\'globex'"),
    Attack("inheritance", "SELECT id, note FROM orders WHERE id > 80",
           "SELECT id, note FROM orders WHERE tenant_id = 'acme' AND id > 80"),
    Attack("only", "SELECT id FROM ONLY orders", "SELECT id FROM ONLY orders WHERE tenant_id = 'acme'"),
    Attack("unicode-escapes", 'SELECT id FROM U&"\\006Frders" WHERE U&"n\\006Fte" IS NOT NULL '
           "AND note <> U&'\\0041'", f"SELECT id FROM {ACME} o WHERE note IS NOT NULL"),
    Attack("not-exists-or", "SELECT name FROM customers c WHERE NOT EXISTS "
           "(SELECT 1 FROM orders o WHERE o.customer_id = c.id AND o.total > 50) OR c.id > 5",
           f"SELECT name FROM {ACME_C} c WHERE NOT EXISTS (SELECT 1 FROM {ACME} o "
           "WHERE o.customer_id = c.id AND o.total > 50) OR c.id > 5"),
    Attack("scalar-subquery-other-tenant",
           "SELECT (SELECT max(note) FROM orders WHERE tenant_id = 'globex'), (SELECT count(*) FROM tickets)",
           f"SELECT (SELECT max(note) FROM {ACME} o WHERE tenant_id = 'globex'), "
           "(SELECT count(*) FROM tickets WHERE tenant_id = 'acme')"),
    Attack("except-intersect", "SELECT customer_id FROM orders EXCEPT SELECT id FROM customers WHERE id = 2 "
           "INTERSECT SELECT id FROM customers",
           f"SELECT customer_id FROM {ACME} o EXCEPT SELECT id FROM {ACME_C} c WHERE id = 2 "
           f"INTERSECT SELECT id FROM {ACME_C} d"),
    Attack("reference-join", "SELECT c.name, k.name FROM customers c CROSS JOIN countries k",
           f"SELECT c.name, k.name FROM {ACME_C} c CROSS JOIN countries k"),
    Attack("distinct-on-order-by-subquery", "SELECT DISTINCT ON (customer_id) customer_id, id FROM orders "
           "ORDER BY customer_id, (SELECT count(*) FROM orders o2 WHERE o2.id < orders.id), id",
           f"SELECT DISTINCT ON (customer_id) customer_id, id FROM {ACME} orders ORDER BY customer_id, "
           f"(SELECT count(*) FROM {ACME} o2 WHERE o2.id < orders.id), id"),
    # writes: the oracle runs directly in a transaction that is rolled back
    Attack("update-from-subquery", "UPDATE orders o SET note = 'upd:' || c.name "
           "FROM (SELECT id, name FROM customers WHERE id < 7) c WHERE o.customer_id = c.id RETURNING o.id",
           f"UPDATE orders o SET note = 'upd:' || c.name FROM (SELECT id, name FROM {ACME_C} x WHERE id < 7) c "
           "WHERE o.customer_id = c.id AND o.tenant_id = 'acme' RETURNING o.id"),
    Attack("delete-using-cte", "WITH cheap AS (SELECT id FROM orders WHERE total < 50) "
           "DELETE FROM orders o USING cheap WHERE o.id = cheap.id RETURNING o.id, o.note",
           f"WITH cheap AS (SELECT id FROM {ACME} x WHERE total < 50) DELETE FROM orders o USING cheap "
           "WHERE o.id = cheap.id AND o.tenant_id = 'acme' RETURNING o.id, o.note"),
    Attack("returning-subquery-reads-globex", "UPDATE orders SET total = total + 1 WHERE id = 1 RETURNING id, "
           "(SELECT string_agg(note, ',') FROM orders o2 WHERE o2.tenant_id = 'globex')",
           "UPDATE orders SET total = total + 1 WHERE id = 1 AND tenant_id = 'acme' RETURNING id, NULL::text"),
    Attack("insert-select-all-customers", "INSERT INTO orders (id, customer_id, note) "
           "SELECT 1000 + id, id, name FROM customers RETURNING tenant_id, id, note",
           f"INSERT INTO orders (tenant_id, id, customer_id, note) SELECT 'acme', 1000 + id, id, name "
           f"FROM {ACME_C} c RETURNING tenant_id, id, note"),
    Attack("insert-select-tenant-expression", "INSERT INTO orders (tenant_id, id, note) "
           "SELECT tenant_id, 2000 + id, name FROM customers",
           f"INSERT INTO orders (tenant_id, id, note) SELECT 'acme', 2000 + id, name FROM {ACME_C} c"),
    Attack("on-conflict-collides-with-globex", "INSERT INTO tickets (id, subject) VALUES (50, 'mine'), (11, 'ok') "
           "ON CONFLICT (id) DO UPDATE SET subject = 'hijacked' RETURNING id, subject",
           "INSERT INTO tickets (id, tenant_id, subject) VALUES (11, 'acme', 'ok') RETURNING id, subject"),
    Attack("merge", "MERGE INTO orders o USING customers c ON o.id = c.id "
           "WHEN MATCHED THEN UPDATE SET note = 'merged ' || c.name "
           "WHEN NOT MATCHED THEN INSERT (id, customer_id, note) VALUES (c.id + 700, c.id, 'merge new')",
           f"MERGE INTO orders o USING {ACME_C} c ON o.id = c.id AND o.tenant_id = 'acme' "
           "WHEN MATCHED THEN UPDATE SET note = 'merged ' || c.name "
           "WHEN NOT MATCHED THEN INSERT (tenant_id, id, customer_id, note) "
           "VALUES ('acme', c.id + 700, c.id, 'merge new')"),
    Attack("delete-or-true", "DELETE FROM orders WHERE id = 5 OR true",
           "DELETE FROM orders WHERE tenant_id = 'acme'"),
    Attack("update-set-from-globex", "UPDATE customers SET name = (SELECT max(note) FROM orders "
           "WHERE tenant_id = 'globex') WHERE id = 1",
           "UPDATE customers SET name = NULL WHERE id = 1 AND tenant_id = 'acme'"),
    # refused outright
    Attack("pg-temp-qualified", "SELECT * FROM pg_temp.orders", refused=True),
    Attack("inheritance-child-direct", "SELECT * FROM orders_archive", refused=True),
    Attack("unicode-escape-to-unlisted", 'SELECT * FROM U&"intern\\0061l_notes"', refused=True),
    Attack("change-tenant-column", "UPDATE orders SET tenant_id = 'globex' WHERE id = 1", refused=True),
    Attack("insert-other-tenant", "INSERT INTO orders (tenant_id, id) VALUES ('globex', 77)", refused=True),
    Attack("search-path", "SET search_path = pg_temp, public", refused=True),
    Attack("write-reference", "UPDATE countries SET name = 'x'", refused=True),
    Attack("temp-table", "CREATE TEMP TABLE orders AS SELECT * FROM public.orders", refused=True),
]


def run_all(conn: psycopg.Connection[Any], sql: str) -> list[list[tuple[Any, ...]]]:
    """Every result set of ``sql`` (simple protocol), each sorted."""
    cur = conn.cursor()
    cur.execute(sql.encode())
    results = []
    while True:
        if cur.description is not None:
            results.append(sorted_rows(cur.fetchall()))
        if not cur.nextset():
            return results


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_attack(proxy: ProxyProcess, direct: psycopg.Connection[Any], attack: Attack) -> None:
    globex_before = snapshot(direct, "globex")
    everything_before = snapshot(direct)
    expected_acme = None
    expected: list[list[tuple[Any, ...]]] | None = None
    if attack.oracle is not None:
        with direct.transaction(force_rollback=True):
            expected = run_all(direct, attack.oracle)
            expected_acme = snapshot(direct, "acme")
    with tenant(proxy) as conn:
        if attack.refused:
            with pytest.raises(psycopg.Error) as info:
                run_all(conn, attack.sql)
            assert info.value.sqlstate in ("42501", "0A000"), info.value
            assert snapshot(direct) == everything_before
        else:
            got = run_all(conn, attack.sql)
            assert got == expected
            assert MARKER not in repr(got)
            assert snapshot(direct, "acme") == expected_acme
        assert acme_orders(conn) >= 0 and MARKER not in repr(conn.execute("SELECT * FROM orders").fetchall())
    assert snapshot(direct, "globex") == globex_before


def test_attack_matrix_is_broad() -> None:
    assert len(ATTACKS) >= 35
    assert sum(not a.refused for a in ATTACKS) >= 28
    assert all(a.refused or a.oracle for a in ATTACKS)


def test_oracle_sees_globex_where_the_proxy_must_not(direct: psycopg.Connection[Any]) -> None:
    """The fixtures are able to catch a leak: unscoped, these statements do return globex rows."""
    leaky = direct.execute("SELECT max(note) FROM orders WHERE tenant_id = 'globex'").fetchone()
    assert leaky is not None and MARKER in str(leaky[0])
    assert direct.execute("SELECT total FROM orders WHERE id = 5").fetchone() == (Decimal("8000.00"),)
