"""Random statements through the proxy as tenant acme equal the same statements run directly on a
database that holds only acme's rows (hypothesis; real PostgreSQL and the real proxy).

Writes run inside a transaction that is rolled back on both sides, so every example starts from
the same data. RETURNING lists the tenant of every row a write touched: a write that reached a
globex row would show it there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import Backend, ProxyProcess, launch

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "orders"]\nreference = ["regions"]\n'
SCHEMA = """
CREATE TABLE regions (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, name text, region text, score int,
                        PRIMARY KEY (tenant_id, id));
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, customer_id int, total int, status text,
                     PRIMARY KEY (tenant_id, id));
INSERT INTO regions VALUES ('eu', 'Europe'), ('us', 'Americas');
"""
ACME = """
INSERT INTO customers VALUES ('acme', 1, 'acme-a', 'eu', 10), ('acme', 2, 'acme-b', 'us', 20),
  ('acme', 3, NULL, 'eu', NULL), ('acme', 4, 'acme-d', NULL, 5);
INSERT INTO orders VALUES ('acme', 1, 1, 100, 'open'), ('acme', 2, 1, 250, 'paid'), ('acme', 3, 2, 40, 'open'),
  ('acme', 4, 3, 75, NULL), ('acme', 5, 9, 300, 'paid'), ('acme', 6, 2, NULL, 'void');
"""
GLOBEX = """
INSERT INTO customers VALUES ('globex', 1, 'GLOBEX-a', 'us', 99), ('globex', 2, 'GLOBEX-b', 'eu', 15),
  ('globex', 5, 'GLOBEX-e', 'eu', 7), ('globex', 9, 'GLOBEX-i', 'us', 30);
INSERT INTO orders VALUES ('globex', 1, 1, 5000, 'open'), ('globex', 2, 2, 45, 'paid'),
  ('globex', 7, 5, 80, 'open'), ('globex', 8, 9, 260, 'void'), ('globex', 9, 1, 100, 'paid');
"""


@pytest.fixture(scope="module")
def databases(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """(acme through the proxy over both tenants' data, the acme-only oracle database)."""
    main = Backend.create(pg, "scoping_prop")
    oracle = Backend.create(pg, "scoping_prop_oracle")
    for backend, data in ((main, ACME + GLOBEX), (oracle, ACME)):
        with psycopg.connect(backend.direct_dsn(), autocommit=True) as conn:
            conn.execute(SCHEMA + data)
    proxy: ProxyProcess = launch(tmp_path_factory.mktemp("scoping-prop"), main, scoping=SCOPING)
    try:
        with psycopg.connect(proxy.dsn("alice")) as through, psycopg.connect(oracle.direct_dsn()) as direct:
            yield through, direct
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------- statement generator

INT_COLUMNS = {"customers": ("id", "score"), "orders": ("id", "customer_id", "total")}
TEXT_COLUMNS = {"customers": ("name", "region", "tenant_id"), "orders": ("status", "tenant_id")}
TEXT_VALUES = ("'acme'", "'globex'", "'open'", "'paid'", "'eu'", "'acme-a'", "'GLOBEX-a'")


@st.composite
def predicate(draw: st.DrawFn, alias: str, table: str, depth: int = 2) -> str:
    kind = draw(st.sampled_from(["cmp", "cmp", "text", "null", "and", "or", "not", "in", "exists"]
                                if depth > 0 else ["cmp", "text", "null"]))
    if kind == "cmp":
        column = draw(st.sampled_from(INT_COLUMNS[table]))
        op = draw(st.sampled_from(["=", "<>", "<", ">=", "<="]))
        return f"{alias}.{column} {op} {draw(st.integers(-1, 300))}"
    if kind == "text":
        column = draw(st.sampled_from(TEXT_COLUMNS[table]))
        if draw(st.booleans()):
            return f"{alias}.{column} LIKE '{draw(st.sampled_from(['a%', 'G%', '%o%', 'acme%']))}'"
        return f"{alias}.{column} = {draw(st.sampled_from(TEXT_VALUES))}"
    if kind == "null":
        column = draw(st.sampled_from(INT_COLUMNS[table] + TEXT_COLUMNS[table]))
        return f"{alias}.{column} IS {draw(st.sampled_from(['NULL', 'NOT NULL']))}"
    if kind in ("and", "or"):
        left = draw(predicate(alias, table, depth - 1))
        right = draw(predicate(alias, table, depth - 1))
        return f"({left} {kind.upper()} {right})"
    if kind == "not":
        return f"NOT ({draw(predicate(alias, table, depth - 1))})"
    inner = draw(predicate("s", "orders", depth - 1))
    key = "id" if table == "customers" else "customer_id"
    if kind == "in":
        return f"{alias}.{key} IN (SELECT s.customer_id FROM orders s WHERE {inner})"
    return f"EXISTS (SELECT 1 FROM orders s WHERE s.customer_id = {alias}.{key} AND {inner})"


@st.composite
def statement(draw: st.DrawFn) -> str:
    form = draw(st.sampled_from(["select", "join", "aggregate", "count", "scalar", "update", "delete"]))
    if form == "select":
        table = draw(st.sampled_from(["orders", "customers"]))
        return f"SELECT t.* FROM {table} t WHERE {draw(predicate('t', table))}"
    if form == "join":
        join = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]))
        where = draw(predicate("o", "orders", 1))
        return (f"SELECT o.id, o.total, c.name, r.name FROM orders o {join} customers c ON c.id = o.customer_id "
                f"LEFT JOIN regions r ON r.code = c.region WHERE {where} OR o.id IS NULL")
    if form == "aggregate":
        where = draw(predicate("o", "orders"))
        return (f"SELECT o.status, count(*), sum(o.total), max(o.id) FROM orders o WHERE {where} "
                "GROUP BY o.status HAVING count(*) > 0")
    if form == "count":
        return f"SELECT count(*), min(c.score), string_agg(c.name, ',' ORDER BY c.id) FROM customers c " \
               f"WHERE {draw(predicate('c', 'customers'))}"
    if form == "scalar":
        inner = draw(predicate("o", "orders", 1))
        return (f"SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id AND {inner}) "
                f"FROM customers c WHERE {draw(predicate('c', 'customers', 1))}")
    if form == "update":
        table = draw(st.sampled_from(["orders", "customers"]))
        setter = "total = total + 1" if table == "orders" else "score = coalesce(score, 0) * 2, name = 'changed'"
        return f"UPDATE {table} t SET {setter} WHERE {draw(predicate('t', table))} RETURNING t.tenant_id, t.id"
    table = draw(st.sampled_from(["orders", "customers"]))
    return f"DELETE FROM {table} t WHERE {draw(predicate('t', table))} RETURNING t.tenant_id, t.id"


def outcome(conn: psycopg.Connection[Any], sql: str) -> tuple[list[tuple[Any, ...]], ...]:
    """The statement's rows, then every table's rows as the connection sees them; rolled back."""
    try:
        rows = conn.execute(sql).fetchall()
        tables = tuple(conn.execute(f"SELECT * FROM {t}").fetchall() for t in ("customers", "orders", "regions"))
    finally:
        conn.rollback()
    return tuple(sorted(part, key=repr) for part in (rows, *tables))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=statement())
def test_random_statements_match_the_acme_only_oracle(
        databases: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], sql: str) -> None:
    through, oracle = databases
    got = outcome(through, sql)
    assert got == outcome(oracle, sql), sql
    assert "GLOBEX" not in repr(got) and "'globex'" not in repr(got)


@pytest.mark.parametrize("piece", ["FULL JOIN", "EXISTS", " IN (SELECT", "NOT (", "UPDATE", "DELETE",
                                   "GROUP BY", " OR ", " AND ", "tenant_id = 'globex'"])
def test_the_generator_reaches_every_form(piece: str) -> None:
    assert piece in find(statement(), lambda sql: piece in sql, settings=settings(database=None, max_examples=5000))
