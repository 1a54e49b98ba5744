"""Scoping by predicate injection (issue 12 "system columns", issue 20 item 7): a scoped table stays
itself (``alias.tenant_id = 'acme'`` in its query level's WHERE, or in the ON of the outer join whose
nullable side it is on), so system columns, functional dependency and PostgreSQL's own join
semantics are kept. Through the real proxy, session and transaction pooling, RLS on and off.

Every query of ``SAME_AS_POSTGRES`` must return, through the proxy as acme, exactly what
PostgreSQL returns on a database that holds only acme's rows (other tenants' rows share ids and
join keys with acme's, so any unscoped reference shows)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer

from .iso_env import MODES, Env, make_env, mode_id, reference_database


@pytest.fixture(scope="module", params=MODES, ids=mode_id)
def env(request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    pool_mode, rls = request.param
    yield from make_env(pg, tmp_path_factory.mktemp("predicate"), "predicate", pool_mode, rls)


@pytest.fixture(scope="module")
def reference(pg: PgServer) -> str:
    return reference_database(pg, "predicate")


SAME_AS_POSTGRES = [
    "SELECT * FROM orders ORDER BY id",
    "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY 1, 2",
    "SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id ORDER BY 1, 2",
    "SELECT o.id, c.name FROM customers c RIGHT JOIN orders o ON c.id = o.customer_id ORDER BY 1, 2",
    "SELECT c.id, o.id FROM customers c LEFT JOIN orders o ON o.customer_id = c.id ORDER BY 1, 2",
    "SELECT c.id, o.id FROM orders o RIGHT JOIN customers c ON o.customer_id = c.id ORDER BY 1, 2",
    "SELECT c.id, o.id FROM customers c FULL JOIN orders o ON o.customer_id = c.id ORDER BY 1, 2",
    "SELECT c.id, o.id FROM customers c LEFT JOIN orders o USING (id) ORDER BY 1, 2",
    "SELECT id, name, note FROM customers NATURAL LEFT JOIN orders ORDER BY 1, 2, 3",
    "SELECT k.name, c.id, o.id FROM countries k LEFT JOIN (customers c JOIN orders o ON o.customer_id = c.id)"
    " ON c.country = k.code ORDER BY 1, 2, 3",
    "SELECT k.name, c.id, o.id FROM countries k LEFT JOIN customers c ON c.country = k.code"
    " LEFT JOIN orders o ON o.customer_id = c.id ORDER BY 1, 2, 3",
    "SELECT c.id, o.id, p.id FROM customers c LEFT JOIN (orders o LEFT JOIN products p ON p.id = o.id)"
    " ON o.customer_id = c.id ORDER BY 1, 2, 3",
    "SELECT j.id FROM (customers c JOIN orders o USING (id)) AS j ORDER BY 1",
    "SELECT * FROM (customers c LEFT JOIN orders o ON o.customer_id = c.id) AS j ORDER BY 1, 2, 5, 6",
    "SELECT count(*) FROM customers c CROSS JOIN orders o",
    "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) FROM customers c ORDER BY 1",
    "SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) ORDER BY 1",
    "SELECT c.id, x.n FROM customers c LEFT JOIN LATERAL (SELECT count(*) AS n FROM orders o"
    " WHERE o.customer_id = c.id) x ON true ORDER BY 1",
    "WITH big AS (SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id)"
    " SELECT c.id, big.n FROM customers c LEFT JOIN big ON big.customer_id = c.id ORDER BY 1",
    "SELECT id FROM orders UNION SELECT id FROM customers ORDER BY 1",
    "SELECT id FROM orders INTERSECT SELECT id FROM customers ORDER BY 1",
    "SELECT id FROM orders EXCEPT SELECT id FROM products ORDER BY 1",
    "SELECT p.id, p.name, count(o.id) FROM products p LEFT JOIN orders o ON o.id = p.id GROUP BY p.id ORDER BY 1",
    "SELECT count(*) FROM orders TABLESAMPLE BERNOULLI (100)",
    "SELECT o.id, k.name FROM orders o JOIN customers c ON c.id = o.customer_id"
    " JOIN countries k ON k.code = c.country WHERE k.code <> 'us' OR c.id = 9 ORDER BY 1",
]


@pytest.mark.parametrize("sql", SAME_AS_POSTGRES)
def test_results_equal_postgres_on_acme_rows_alone(env: Env, reference: str, sql: str) -> None:
    with psycopg.connect(reference, autocommit=True) as direct:
        expected = direct.execute(sql).fetchall()
    with env.tenant() as alice:
        assert alice.execute(sql).fetchall() == expected


def test_group_by_primary_key_keeps_functional_dependency(env: Env) -> None:
    """Django annotate(): GROUP BY the key alone, other columns selected (42803 through a wrapper)."""
    sql = ("SELECT p.id, p.name, count(o.id) AS n FROM products p LEFT JOIN orders o ON o.id = p.id "
           "GROUP BY p.id ORDER BY p.id")
    with env.tenant() as alice:
        assert alice.execute(sql).fetchall() == [(1, "a-p1", 1), (2, "a-p2", 1)]
        assert alice.execute("SELECT p.name, count(*) FROM products p GROUP BY p.id ORDER BY 1").fetchall() == [
            ("a-p1", 1), ("a-p2", 1)]


@pytest.mark.parametrize("column", ["xmin", "ctid", "tableoid::regclass::text", "cmin"])
def test_system_columns_are_visible(env: Env, column: str) -> None:
    with env.tenant() as alice:
        rows = alice.execute(f"SELECT o.id, o.{column} FROM orders o ORDER BY o.id").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4] and all(r[1] is not None for r in rows)
        if column.startswith("tableoid"):
            assert {r[1] for r in rows} == {"orders"}


def test_xmin_as_a_version_token(env: Env) -> None:
    """SQLAlchemy version_id_col on xmin: UPDATE ... WHERE id = ? AND xmin = ? RETURNING xmin."""
    with env.tenant() as alice:
        (token,) = alice.execute("SELECT xmin::text FROM orders WHERE id = 3").fetchone() or ()
        updated = alice.execute("UPDATE orders SET note = note WHERE id = 3 AND xmin = %s::xid RETURNING xmin::text",
                                (token,)).fetchall()
        assert len(updated) == 1 and updated[0][0] != token
        stale = alice.execute("UPDATE orders SET note = 'stale' WHERE id = 3 AND xmin = %s::xid", (token,))
        assert stale.rowcount == 0
        # another tenant's row with the same key is not reached by its xmin either
        with env.admin() as admin:
            (other,) = admin.execute("SELECT xmin::text FROM orders WHERE tenant_id = 'globex' AND id = 1"
                                     ).fetchone() or ()
        assert alice.execute("SELECT count(*) FROM orders WHERE xmin = %s::xid AND note LIKE 'G%%'",
                             (other,)).fetchone() == (0,)
    assert ("globex", 1, 4, "G-o1") in env.all_rows("orders")


def test_for_update_and_ctid_lookups(env: Env) -> None:
    with env.tenant() as alice, alice.transaction():
        rows = alice.execute("SELECT id, ctid FROM orders o WHERE id <= 2 ORDER BY id FOR UPDATE OF o").fetchall()
        assert [r[0] for r in rows] == [1, 2]
        again = alice.execute("SELECT note FROM orders WHERE ctid = %s::tid", (str(rows[0][1]),)).fetchall()
        assert again == [("a-o1",)]


@pytest.mark.parametrize("sql, rows", [
    ("UPDATE orders o SET note = o.note FROM customers c WHERE c.id = o.customer_id RETURNING o.id", [1, 2, 3]),
    ("UPDATE orders o SET note = o.note FROM customers c LEFT JOIN products p ON p.id = c.id"
     " WHERE c.id = o.customer_id RETURNING o.id", [1, 2, 3]),
    ("DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.name = 'G-four' RETURNING o.id", []),
])
def test_write_joins_see_only_the_tenants_rows(env: Env, sql: str, rows: list[int]) -> None:
    with env.tenant() as alice:
        assert sorted(r[0] for r in alice.execute(sql).fetchall()) == rows
    assert [r for r in env.all_rows("orders") if r[0] == "globex"] == [
        ("globex", 1, 4, "G-o1"), ("globex", 5, 3, "G-o5"), ("globex", 6, 1, "G-o6")]


def test_outer_join_on_conditions_do_not_reach_other_tenants(env: Env) -> None:
    """The nullable side is filtered in ON: another tenant's matching row never fills it."""
    with env.tenant() as alice:
        rows = alice.execute("SELECT c.id, o.note FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
                             "AND o.note LIKE 'G%%' ORDER BY 1").fetchall()
        assert rows == [(1, None), (2, None), (3, None)]
        rows = alice.execute("SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id "
                             "WHERE c.id IS NULL ORDER BY 1").fetchall()
        assert rows == [(4, None)]  # customer 9 exists, but only for globex


def test_aliased_column_lists_are_still_scoped(env: Env) -> None:
    """``AS o(a, b, ...)`` renames the columns: the reference is scoped by a derived table instead."""
    with env.tenant() as alice:
        rows = alice.execute("SELECT t, i FROM orders AS o(t, i) ORDER BY i").fetchall()
        assert rows == [("acme", 1), ("acme", 2), ("acme", 3), ("acme", 4)]
        rows = alice.execute("SELECT tenant_id FROM orders AS o(id, tenant_id) ORDER BY 1").fetchall()
        assert rows == [(1,), (2,), (3,), (4,)]
