"""The one CTE scope resolver (rewriter/scope.py), through every walker that uses it, against
PostgreSQL's own answer: EXPLAIN names each real relation a statement reads or writes (a CTE
reference is a CTE Scan or inlined), so a name the resolver wrongly calls a CTE shows up here.

Every CTE in these statements is referenced, so PostgreSQL plans every body (none is pruned)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer
from tenantgate.rewriter import Policy, Rewriter
from tenantgate.rewriter import crosscheck as cc

POLICY = Policy(scoped={("public", "orders"): "tenant_id", ("public", "customers"): "tenant_id"})
BOTH = {"public.orders", "public.customers"}
ORDERS, CUSTOMERS = {"public.orders"}, {"public.customers"}

# (statement, the real relations in it)
CASES = [
    # a CTE is visible in subqueries of its statement ...
    ("WITH orders AS (SELECT 1 AS id) SELECT * FROM (SELECT * FROM orders) s", set()),
    ("WITH orders AS (SELECT 1 AS id) SELECT (SELECT count(*) FROM orders) FROM customers", CUSTOMERS),
    ("WITH orders AS (SELECT 1 AS id) SELECT id FROM orders UNION ALL SELECT id FROM orders", set()),
    # ... never outside it
    ("SELECT * FROM (WITH orders AS (SELECT 1 AS id) SELECT * FROM orders) s, orders", ORDERS),
    ("(WITH orders AS (SELECT 1 AS id) SELECT id FROM orders) UNION ALL SELECT id FROM orders", ORDERS),
    ("SELECT (WITH orders AS (SELECT 1 AS id) SELECT count(*) FROM orders), id FROM orders", ORDERS),
    # its own name inside its body is the table; a later sibling is not visible without RECURSIVE
    ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", ORDERS),
    ("WITH x AS (SELECT id FROM customers), customers AS (SELECT 1 AS id) SELECT * FROM x, customers", CUSTOMERS),
    ("WITH customers AS (SELECT 1 AS id), x AS (SELECT id FROM customers) SELECT * FROM x, customers", set()),
    # with RECURSIVE every CTE of the list is visible in every body
    ("WITH RECURSIVE x AS (SELECT id FROM customers), customers AS (SELECT 1 AS id) SELECT * FROM x, customers",
     set()),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, orders", ORDERS),
    # shadowing: an inner WITH hides an outer name (and a table) only inside its statement
    ("WITH customers AS (SELECT * FROM orders) SELECT * FROM customers,"
     " (WITH orders AS (SELECT 2 AS id) SELECT id FROM orders) s", ORDERS),
    ("WITH orders AS (SELECT 1 AS id) SELECT * FROM orders, (WITH c AS (SELECT * FROM orders) SELECT * FROM c) s",
     set()),
    # a qualified name is never a CTE
    ("WITH orders AS (SELECT 1 AS id) SELECT o.id FROM public.orders o, orders", ORDERS),
    # DML: the write target is never a CTE; the rest of the statement sees the WITH list
    ("WITH orders AS (SELECT 1 AS id) DELETE FROM orders WHERE id IN (SELECT id FROM orders)", ORDERS),
    ("WITH orders AS (SELECT 1 AS id) UPDATE orders SET id = 2 WHERE id IN (SELECT id FROM orders)", ORDERS),
    ("WITH orders AS (SELECT 1 AS id) INSERT INTO orders (tenant_id, id) SELECT 'acme', id FROM orders", ORDERS),
    ("WITH customers AS (SELECT 1 AS id) UPDATE orders SET id = 1 FROM customers WHERE orders.id = customers.id",
     ORDERS),
    ("WITH orders AS (SELECT 1 AS id) MERGE INTO orders o USING orders s ON o.id = s.id WHEN MATCHED THEN DELETE",
     ORDERS),
    # data-modifying CTEs, and CTE names inside them
    ("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d", ORDERS),
    ("WITH d AS (WITH orders AS (SELECT 1 AS id) DELETE FROM customers WHERE id IN (SELECT id FROM orders)"
     " RETURNING id) SELECT * FROM d, orders", BOTH),
    ("WITH orders AS (SELECT 1 AS id), d AS (DELETE FROM orders WHERE id IN (SELECT id FROM orders) RETURNING id)"
     " SELECT * FROM d", ORDERS),
]
IDS = [str(i) for i in range(len(CASES))]


def _plan_relations(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            found.add(f"{plan['Schema']}.{plan['Relation Name']}")
        for value in plan.values():
            found |= _plan_relations(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= _plan_relations(item)
    return found


@pytest.fixture(scope="module")
def conn(pg: PgServer) -> Iterator[psycopg.Connection[Any]]:
    pg.create_database("scope_resolver")
    with psycopg.connect(pg.dsn(dbname="scope_resolver"), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS orders (tenant_id text, id int);"
                  " CREATE TABLE IF NOT EXISTS customers (tenant_id text, id int)")
        yield c


@pytest.mark.parametrize(("sql", "expected"), CASES, ids=IDS)
def test_postgres_reads_exactly_these_relations(conn: psycopg.Connection[Any], sql: str, expected: set[str]) -> None:
    """The expectations are PostgreSQL's, not ours."""
    row = conn.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {sql}").fetchone()
    assert row is not None
    assert _plan_relations(row[0]) == expected


@pytest.mark.parametrize(("sql", "expected"), CASES, ids=IDS)
def test_both_readings_resolve_like_postgres(sql: str, expected: set[str]) -> None:
    assert cc.relations(sql, POLICY) == expected
    assert cc._sqlglot_relations(sql, POLICY) in (expected, None)  # None: sqlglot cannot read it (refused)


@pytest.mark.parametrize(("sql", "expected"), CASES, ids=IDS)
def test_scoper_scopes_every_real_reference(sql: str, expected: set[str]) -> None:
    """The scoper's output names the tenant once per scoped reference it found real, and the verifier
    (which runs inside plan) re-derives the CTEs with the same resolver from the output text."""
    out = Rewriter(POLICY).plan(sql, "acme").sql
    assert cc.relations(out, POLICY) == expected
    assert ("'acme'" in out) == bool(expected)
