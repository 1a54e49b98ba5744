"""The isolation oracle, run against a real PostgreSQL with the rewriter standing in for the proxy.

Every case of /work/shared/isolation/cases.jsonl (plus our own family members below) goes through
Rewriter.plan exactly as the proxy will send it (simple protocol without parameters, extended with
them), then check.py's own judge compares with the acme-only oracle database. Uses
the shared ``pg`` fixture (tests/conftest.py) and its own databases and role, so it never meets
the proxy's isolation test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import types
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from tenantgate.rewriter import Policy, Refused, Rewriter  # noqa: E402

ISOLATION = pathlib.Path(os.environ.get("TENANTGATE_ISOLATION_DIR", "/work/shared/isolation"))
ROLE, PASSWORD, MAIN_DB, ORACLE_DB = "tg_rw_app", "tg-rw-app", "iso_rw_main", "iso_rw_oracle"
POLICY = Policy(scoped={("public", "orders"): "tenant_id", ("public", "customers"): "tenant_id"},
                reference=frozenset({("public", "countries")}))

# More members of the attack families than the public cases show; same format as cases.jsonl.
EXTRA_CASES = [
    {"id": "cte-shadow", "sql": "WITH orders AS (SELECT * FROM orders) SELECT count(*) FROM orders",
     "expect": "scoped"},
    {"id": "cte-shadow-qualified", "sql": "WITH orders AS (SELECT 1 AS id) SELECT count(*) FROM public.orders",
     "expect": "scoped"},
    {"id": "recursive-cte", "sql": "WITH RECURSIVE r(n, id) AS (SELECT 1, min(id) FROM orders UNION ALL "
     "SELECT n + 1, (SELECT min(id) FROM orders o WHERE o.id > r.id) FROM r WHERE n < 10) "
     "SELECT id FROM r WHERE id IS NOT NULL", "expect": "scoped"},
    {"id": "only", "sql": "SELECT count(*) FROM ONLY orders", "expect": "scoped"},
    {"id": "table-stmt", "sql": "TABLE orders", "expect": "scoped"},
    {"id": "star-inherit", "sql": "SELECT count(*) FROM orders *", "expect": "scoped"},
    {"id": "u-ident", "sql": "SELECT count(*) FROM U&\"\\006Frders\"", "expect": "scoped"},
    {"id": "dollar-quote", "sql": "SELECT $q$ FROM orders; $q$ AS x, count(*) FROM customers",
     "expect": "scoped"},
    {"id": "nested-comment", "sql": "SELECT count(*) /* a /* b */ FROM internal_notes */ FROM orders",
     "expect": "scoped"},
    {"id": "estring", "sql": "SELECT E'x\\' FROM orders' AS a, count(*) FROM orders", "expect": "scoped"},
    {"id": "row-compare", "sql": "SELECT count(*) FROM orders WHERE (tenant_id, id) = ('globex', 5)",
     "expect": "scoped"},
    {"id": "any-subquery", "sql": "SELECT id FROM customers WHERE id = ANY (SELECT customer_id FROM orders)",
     "expect": "scoped"},
    {"id": "having-sub", "sql": "SELECT customer_id FROM orders GROUP BY customer_id "
     "HAVING count(*) > (SELECT count(*) FROM orders) / 10", "expect": "scoped"},
    {"id": "orderby-sub", "sql": "SELECT id FROM customers c ORDER BY (SELECT count(*) FROM orders o "
     "WHERE o.customer_id = c.id)", "expect": "scoped"},
    {"id": "case-sub", "sql": "SELECT CASE WHEN EXISTS (SELECT 1 FROM orders WHERE total > 4000) "
     "THEN 'leak' ELSE 'ok' END", "expect": "scoped"},
    {"id": "func-arg-sub", "sql": "SELECT coalesce((SELECT max(note) FROM orders), 'none')", "expect": "scoped"},
    {"id": "values-sub", "sql": "VALUES ((SELECT count(*) FROM orders))", "expect": "scoped"},
    {"id": "join-on-sub", "sql": "SELECT c.id FROM customers c JOIN countries k ON k.code = 'de' "
     "AND c.id IN (SELECT customer_id FROM orders)", "expect": "scoped"},
    {"id": "window", "sql": "SELECT id, sum(total) OVER (ORDER BY id) FROM orders", "expect": "scoped"},
    {"id": "grouping-sets", "sql": "SELECT customer_id, count(*) FROM orders "
     "GROUP BY GROUPING SETS ((customer_id), ())", "expect": "scoped"},
    {"id": "intersect-except", "sql": "SELECT id FROM orders INTERSECT SELECT id FROM customers "
     "EXCEPT SELECT 99", "expect": "scoped"},
    {"id": "for-update", "sql": "SELECT id FROM orders WHERE id < 3 FOR UPDATE", "expect": "scoped"},
    {"id": "returning-sub", "sql": "UPDATE orders SET note = 'n' WHERE id = 1 RETURNING "
     "(SELECT count(*) FROM orders)", "expect": "scoped"},
    {"id": "update-row-tenant", "sql": "UPDATE orders SET (note, tenant_id) = ('x', 'globex')",
     "expect": "refused"},
    {"id": "update-where-or", "sql": "UPDATE orders SET note = 'x' WHERE id = 1 OR true", "expect": "scoped"},
    {"id": "delete-all", "sql": "DELETE FROM orders", "expect": "scoped"},
    {"id": "insert-default-values", "sql": "INSERT INTO countries DEFAULT VALUES", "expect": "refused"},
    {"id": "insert-multirow", "sql": "INSERT INTO orders (id, note) VALUES (50, 'a'), (51, 'b')",
     "expect": "scoped"},
    {"id": "insert-tenant-literal", "sql": "INSERT INTO orders (tenant_id, id) VALUES ('acme', 52)",
     "expect": "scoped"},
    {"id": "insert-tenant-expr", "sql": "INSERT INTO orders (tenant_id, id) VALUES (lower('GLOBEX'), 53)",
     "expect": "refused"},
    {"id": "insert-tenant-param", "sql": "INSERT INTO orders (tenant_id, id) VALUES (%s, %s)",
     "params": ["globex", 54], "expect": "refused"},
    {"id": "insert-tenant-param-ok", "sql": "INSERT INTO orders (tenant_id, id) VALUES (%s, %s)",
     "params": ["acme", 54], "expect": "scoped"},
    {"id": "insert-select-tenant", "sql": "INSERT INTO orders (tenant_id, id) SELECT tenant_id, id + 200 "
     "FROM orders", "expect": "scoped"},
    {"id": "insert-union", "sql": "INSERT INTO orders (id, note) SELECT 300, 'u' UNION SELECT 301, 'v'",
     "expect": "scoped"},
    {"id": "upsert-set-tenant", "sql": "INSERT INTO orders (id) VALUES (1) ON CONFLICT (tenant_id, id) "
     "DO UPDATE SET tenant_id = 'globex'", "expect": "refused"},
    {"id": "upsert-nothing", "sql": "INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING",
     "expect": "scoped"},
    {"id": "writable-cte-insert", "sql": "WITH i AS (INSERT INTO orders (id) VALUES (77) RETURNING id) "
     "SELECT count(*) FROM i", "expect": "scoped"},
    {"id": "writable-cte-update", "sql": "WITH u AS (UPDATE orders SET note = 'w' RETURNING id) "
     "SELECT count(*) FROM u", "expect": "scoped"},
    {"id": "merge", "sql": "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN "
     "UPDATE SET note = 'merged' WHEN NOT MATCHED THEN INSERT (id, note) VALUES (c.id + 50, 'new')",
     "expect": "scoped"},
    {"id": "merge-tenant", "sql": "MERGE INTO orders o USING customers c ON o.id = c.id WHEN NOT MATCHED "
     "THEN INSERT (tenant_id, id) VALUES ('globex', c.id + 50)", "expect": "refused"},
    {"id": "pg-settings-update", "sql": "UPDATE pg_settings SET setting = 'globex' "
     "WHERE name = 'tenantgate.tenant'", "expect": "refused"},
    {"id": "set-config-named", "sql": "SELECT set_config(new_value => 'globex', "
     "setting_name => 'tenantgate.tenant', is_local => false)", "expect": "refused"},
    {"id": "set-config-expr", "sql": "SELECT set_config('tenantgate.' || 'tenant', 'globex', false)",
     "expect": "refused"},
    {"id": "set-config-ok", "sql": "SELECT set_config('statement_timeout', '5s', false)", "expect": "scoped"},
    {"id": "reset-tenant", "sql": "RESET tenantgate.tenant", "expect": "refused"},
    {"id": "session-auth", "sql": "SET SESSION AUTHORIZATION postgres", "expect": "refused"},
    {"id": "row-security", "sql": "SET row_security = off", "expect": "refused"},
    {"id": "scs", "sql": "SET standard_conforming_strings = off", "expect": "refused"},
    {"id": "query-to-xml", "sql": "SELECT query_to_xml('SELECT * FROM orders', true, false, '')",
     "expect": "refused"},
    {"id": "qualified-read-file", "sql": "SELECT pg_catalog.pg_read_file('/etc/hostname')",
     "expect": "refused"},
    {"id": "lo-import", "sql": "SELECT lo_import('/etc/hostname')", "expect": "refused"},
    # issue 12: advisory locks are namespaced per tenant instead of refused
    {"id": "advisory", "sql": "SELECT pg_advisory_xact_lock(1)", "expect": "scoped", "compare": False},
    {"id": "stat-func", "sql": "SELECT pg_stat_get_backend_activity(1)", "expect": "refused"},
    {"id": "pg-stats", "sql": "SELECT * FROM pg_stats WHERE tablename = 'orders'", "expect": "refused"},
    {"id": "view-qualified", "sql": "SELECT * FROM public.all_orders", "expect": "refused"},
    {"id": "func-in-expr", "sql": "SELECT (leak_orders()).note", "expect": "refused"},
    {"id": "pg-temp", "sql": "SELECT * FROM pg_temp.orders", "expect": "refused"},
    {"id": "lock", "sql": "LOCK orders", "expect": "refused"},
    {"id": "call", "sql": "CALL leak_orders()", "expect": "refused"},
    {"id": "select-into", "sql": "SELECT * INTO stolen FROM orders", "expect": "refused"},
    {"id": "copy-table", "sql": "COPY orders TO STDOUT", "expect": "scoped"},
    {"id": "copy-cols-csv", "sql": "COPY orders (id, note) TO STDOUT WITH (FORMAT csv)", "expect": "scoped"},
    {"id": "copy-file", "sql": "COPY (SELECT 1) TO '/tmp/x'", "expect": "refused"},
    {"id": "copy-program", "sql": "COPY (SELECT 1) TO PROGRAM 'id'", "expect": "refused"},
    # issue 12: EXPLAIN ANALYZE counts the rows the tenant filter removed (other tenants')
    {"id": "explain-analyze-delete", "sql": "EXPLAIN ANALYZE DELETE FROM orders", "expect": "refused"},
    {"id": "catalog-read", "sql": "SELECT count(*) > 0 FROM pg_catalog.pg_class WHERE relname = 'orders'",
     "expect": "scoped"},
    {"id": "info-schema", "sql": "SELECT column_name FROM information_schema.columns "
     "WHERE table_name = 'orders' ORDER BY ordinal_position", "expect": "scoped"},
    {"id": "multi-later-bad", "sql": "DELETE FROM orders; SELECT pg_read_file('/etc/passwd')",
     "expect": "refused"},
    {"id": "two-phase", "sql": "BEGIN; PREPARE TRANSACTION 'x'", "expect": "refused"},
    {"id": "tablesample", "sql": "SELECT count(*) FROM orders TABLESAMPLE SYSTEM (100)", "expect": "scoped"},
    {"id": "lateral-func", "sql": "SELECT c.id, g FROM customers c, LATERAL generate_series(1, c.id) g",
     "expect": "scoped"},
    {"id": "natural-join", "sql": "SELECT count(*) FROM orders NATURAL JOIN customers", "expect": "scoped"},
    {"id": "using-join", "sql": "SELECT count(*) FROM orders JOIN customers USING (tenant_id)",
     "expect": "scoped"},
]


def _load_check() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("isolation_check", ISOLATION / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RewritingCursor:
    """Stands in for a psycopg cursor connected through the proxy: every statement is planned."""

    def __init__(self, conn: Any, rewriter: Rewriter, tenant: str) -> None:
        self._conn, self._rw, self._tenant = conn, rewriter, tenant
        self._cur = conn.cursor()

    def __enter__(self) -> _RewritingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cur.close()

    def _plan(self, sql: str, extended: bool) -> Any:
        try:
            return self._rw.plan(sql, self._tenant, extended=extended)
        except Refused as err:
            raise psycopg.errors.InsufficientPrivilege(f"{err.sqlstate} {err.reason}: {err.message}") from None

    def execute(self, query: str | bytes, params: list[Any] | None = None) -> None:
        text = query.decode() if isinstance(query, bytes) else query
        if params is None:
            self._cur.execute(self._plan(text, False).sql.encode())
            return
        counter = iter(range(1, len(params) + 1))
        numbered = re.sub("%s", lambda _m: f"${next(counter)}", text)
        plan = self._plan(numbered, True)
        for n in plan.tenant_params:  # what the proxy checks at Bind time
            if params[n - 1] != self._tenant:
                raise psycopg.errors.InsufficientPrivilege("tenant parameter differs from the session tenant")
        self._cur.close()
        self._cur = psycopg.RawCursor(self._conn)
        self._cur.execute(plan.sql, params)

    def copy(self, text: str) -> Any:
        return self._cur.copy(self._plan(text, False).sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


class _RewritingConnection:
    def __init__(self, conn: Any, rewriter: Rewriter, tenant: str) -> None:
        self._conn, self._rw, self._tenant = conn, rewriter, tenant

    def cursor(self) -> _RewritingCursor:
        return _RewritingCursor(self._conn, self._rw, self._tenant)

    def rollback(self) -> None:
        self._conn.rollback()


def _cases() -> list[dict[str, Any]]:
    cases = []
    path = ISOLATION / "cases.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                cases.append(json.loads(line))
    return cases + EXTRA_CASES


@pytest.fixture(scope="module")
def isolation(pg: Any) -> Iterator[tuple[types.ModuleType, Any, Any, Any]]:
    if not (ISOLATION / "check.py").exists():
        pytest.skip("isolation checker not found")
    check = _load_check()
    args = types.SimpleNamespace(admin_dsn=pg.admin_dsn, app_role=ROLE, app_password=PASSWORD,
                                 main_db=MAIN_DB, oracle_db=ORACLE_DB)
    check.build(args)
    main = psycopg.connect(psycopg.conninfo.make_conninfo(pg.admin_dsn, dbname=MAIN_DB), autocommit=True)
    oracle = psycopg.connect(psycopg.conninfo.make_conninfo(pg.admin_dsn, dbname=ORACLE_DB), autocommit=True)
    # the backend role is no superuser: what the proxy itself will use
    backend = psycopg.connect(pg.dsn(user=ROLE, password=PASSWORD, dbname=MAIN_DB), autocommit=True)
    try:
        yield check, main, oracle, backend
    finally:
        for conn in (main, oracle, backend):
            conn.close()
        with psycopg.connect(pg.admin_dsn, autocommit=True) as admin:
            for db in (MAIN_DB, ORACLE_DB):
                admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_isolation_case(isolation: tuple[types.ModuleType, Any, Any, Any], case: dict[str, Any]) -> None:
    check, main, oracle, backend = isolation
    check.reset(main, oracle)
    before = check._snapshot(main)
    proxy = _RewritingConnection(backend, Rewriter(POLICY), "acme")
    verdict, problems = check.judge(case, proxy, main, oracle, before)
    assert verdict == "pass", problems
