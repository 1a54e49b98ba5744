"""Family 2 (issue 12): the value stored in the tenant column is always one the proxy wrote itself.

A client value that is not provably the tenant (a literal under a cast that may change it, a
``$n`` typed as ``"char"``, another tenant's row in INSERT ... SELECT) is refused, never silently
rewritten; DEFAULT, an omitted column and the tenant's own literal get the proxy's literal. Also:
UPDATE SET tenant_id = own tenant (Django save()), bulk_create's INSERT ... SELECT FROM UNNEST,
INSERT without a column list, and COPY TO option lists. Through the real proxy, session and
transaction pooling, RLS on and off (without it the rewriter alone must hold)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer
from tenantgate.rewriter.transforms import MISMATCH_MARKER

from .harness import USERS, RawClient, errors
from .iso_env import MODES, Env, make_env, mode_id


@pytest.fixture(scope="module", params=MODES, ids=mode_id)
def env(request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    pool_mode, rls = request.param
    yield from make_env(pg, tmp_path_factory.mktemp("tenantvalue"), "tenantvalue", pool_mode, rls)


def foreign_values(env: Env) -> list[tuple[Any, ...]]:
    """Rows of any table whose tenant column holds something other than a configured tenant."""
    with env.admin() as admin:
        return admin.execute(
            "SELECT 'orders', tenant_id FROM orders WHERE tenant_id NOT IN ('acme', 'globex') UNION ALL "
            "SELECT 'widgets', tenant_id FROM widgets WHERE tenant_id NOT IN ('acme', 'globex') UNION ALL "
            "SELECT 'customers', tenant_id FROM customers WHERE tenant_id NOT IN ('acme', 'globex')").fetchall()


def refused(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session stays usable
    return info.value


# A tenant literal under a cast (or collation) that may change it: refused, whatever the statement.
CHANGING = ["'acme'::varchar(2)", "'acme'::char(1)", "'acme'::\"char\"", "CAST('acme' AS character varying(3))",
            "'acme'::short_tenant", "('acme'::varchar(2))::text", "'acme'::bpchar(2) COLLATE \"C\"",
            "'acme'::name::varchar(1)", "'acme'::text::\"char\"", "'globex'", "'ACME'", "NULL"]
# Forms whose value provably is the tenant: stored as the proxy's own 'acme'.
KEEPING = ["'acme'", "'acme'::text", "'acme'::varchar", "'acme'::varchar(10)", "CAST('acme' AS char(4))",
           "'acme' COLLATE \"C\"", "E'ac\\x6de'", "U&'\\0061cme'", "$$acme$$"]

STATEMENTS = [
    "INSERT INTO widgets (tenant_id, id, label) VALUES ({v}, 100, 'x')",
    "INSERT INTO widgets (id, tenant_id) VALUES (101, 'acme'), (102, {v})",
    "INSERT INTO widgets (id, tenant_id) SELECT 103, {v}",
    "INSERT INTO widgets (tenant_id, id) VALUES ({v}, 104) ON CONFLICT DO NOTHING",
    "MERGE INTO widgets w USING (SELECT 105 AS id) s ON w.id = s.id WHEN NOT MATCHED THEN"
    " INSERT (tenant_id, id) VALUES ({v}, s.id)",
    "UPDATE widgets SET tenant_id = {v} WHERE id = 1",
    "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN MATCHED THEN UPDATE SET tenant_id = {v}",
    "INSERT INTO orders (tenant_id, id) VALUES ('acme', 1) ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = {v}",
]


@pytest.mark.parametrize("statement", STATEMENTS)
@pytest.mark.parametrize("value", CHANGING)
def test_a_value_that_is_not_provably_the_tenant_is_refused(env: Env, statement: str, value: str) -> None:
    before = env.all_rows("widgets")
    with env.tenant() as alice:
        err = refused(alice, statement.format(v=value))
    assert err.sqlstate == "42501", err
    assert "tenant" in str(err)
    assert env.all_rows("widgets") == before and foreign_values(env) == []


@pytest.mark.parametrize("value", KEEPING)
def test_the_tenants_own_value_is_stored_as_the_proxys_literal(env: Env, value: str) -> None:
    with env.tenant() as alice:
        alice.execute("DELETE FROM widgets")
        alice.execute(f"INSERT INTO widgets (tenant_id, id) VALUES ({value}, 1), ({value}, 2)")
        alice.execute(f"INSERT INTO widgets (id, tenant_id) SELECT 3, {value}")
        alice.execute(f"UPDATE widgets SET tenant_id = {value}, label = 'saved' WHERE id = 1")  # Django save()
        alice.execute(f"MERGE INTO widgets w USING (SELECT 4 AS id) s ON w.id = s.id WHEN NOT MATCHED THEN "
                      f"INSERT (tenant_id, id) VALUES ({value}, s.id)")
        assert alice.execute("SELECT id, tenant_id, label FROM widgets ORDER BY id").fetchall() == [
            (1, "acme", "saved"), (2, "acme", None), (3, "acme", None), (4, "acme", None)]
    assert {r[0] for r in env.all_rows("widgets")} <= {"acme", "globex"}


@pytest.mark.parametrize("value", ["lower('ACME')", "'ac' || 'me'", "(SELECT 'acme')"])
def test_computed_values_are_refused_in_values_and_checked_per_row_in_select(env: Env, value: str) -> None:
    """A VALUES entry must be the literal; INSERT ... SELECT computes per row, so the check runs
    per row: a computed 'acme' is stored (as the proxy's literal), anything else raises."""
    with env.tenant() as alice:
        alice.execute("DELETE FROM widgets WHERE id BETWEEN 900 AND 910")
        assert refused(alice, f"INSERT INTO widgets (tenant_id, id) VALUES ({value}, 900)").sqlstate == "42501"
        alice.execute(f"INSERT INTO widgets (id, tenant_id) SELECT 901, {value}")
        other = value.replace("ACME", "GLOBEX").replace("'me'", "'me2'").replace("'acme'", "'globex'")
        assert MISMATCH_MARKER in str(refused(alice, f"INSERT INTO widgets (id, tenant_id) SELECT 902, {other}"))
        assert alice.execute("SELECT id, tenant_id FROM widgets WHERE id >= 900 AND id <= 910").fetchall() == [
            (901, "acme")]
    assert foreign_values(env) == []


def test_update_to_the_own_tenant_is_a_no_op_and_another_is_refused(env: Env) -> None:
    """Issue 20: Django's Model.save() sets every column, tenant_id = its own tenant included."""
    with env.tenant() as alice:
        assert alice.execute("UPDATE customers SET tenant_id = 'acme', name = name WHERE id = 1").rowcount == 1
        save = alice.execute("UPDATE customers SET tenant_id = %s, name = name WHERE id = %s", ("acme", 1))
        assert save.rowcount == 1
        assert refused(alice, "UPDATE customers SET tenant_id = 'globex' WHERE id = 1").sqlstate == "42501"
        assert refused(alice, "UPDATE customers SET tenant_id = %s WHERE id = 1", ("globex",)).sqlstate == "42501"
        assert refused(alice, "UPDATE customers SET tenant_id = DEFAULT WHERE id = 1").sqlstate == "42501"
        assert refused(alice, "UPDATE customers SET (tenant_id, name) = ('acme', 'x') WHERE id = 1").sqlstate \
            == "42501"
    assert sorted(r[:2] for r in env.all_rows("customers")) == [
        ("acme", 1), ("acme", 2), ("acme", 3), ("globex", 1), ("globex", 4), ("globex", 9)]


def bind_insert(env: Env, param_types: tuple[int, ...], value: bytes, sql: str) -> list[object]:
    """Parse (with declared parameter types) + Bind + Execute + Sync by hand: one round trip."""
    client = RawClient(env.proxy.port)
    try:
        assert not errors(client.login("alice", USERS["alice"][1]))
        client.send(codec.Parse("", sql, param_types).encode() + codec.Bind("", "", (), (value,), ()).encode()
                    + codec.Execute("").encode() + codec.Sync().encode())
        return client.until_ready()
    finally:
        client.close()


@pytest.mark.parametrize("param_types", [(), (0,), (25,), (18,), (1042,), (1043,), (19,)],
                         ids=["undeclared", "unknown", "text", "char", "bpchar", "varchar", "name"])
def test_a_bound_tenant_parameter_cannot_change_the_stored_value(env: Env, param_types: tuple[int, ...]) -> None:
    """A $n declared as "char" (OID 18) used to store 'a' for a Bind of 'acme'; the statement the
    backend runs no longer depends on the bound value at all."""
    with env.tenant() as alice:
        alice.execute("DELETE FROM widgets WHERE id = 200")
    out = bind_insert(env, param_types, b"acme", "INSERT INTO widgets (tenant_id, id) VALUES ($1, 200)")
    assert not errors(out), errors(out)
    out = bind_insert(env, param_types, b"globex", "INSERT INTO widgets (tenant_id, id) VALUES ($1, 201)")
    assert [e.sqlstate for e in errors(out)] == ["42501"]
    with env.admin() as admin:
        assert admin.execute("SELECT tenant_id FROM widgets WHERE id IN (200, 201)").fetchall() == [("acme",)]
    assert foreign_values(env) == []


@pytest.mark.parametrize("cast", ["::bpchar(1)", "::\"char\"", "::varchar(2)", "::short_tenant"])
def test_a_bound_parameter_under_a_changing_cast_is_refused(env: Env, cast: str) -> None:
    with env.tenant() as alice:
        err = refused(alice, f"INSERT INTO widgets (tenant_id, id) VALUES (%s{cast}, 300)", ("acme",))
        assert err.sqlstate == "42501"
    assert foreign_values(env) == []


def test_sql_execute_of_a_bound_statement_cannot_change_the_tenant(env: Env) -> None:
    """Family 3 meets family 2: the prepared statement itself stores the proxy's literal, so
    EXECUTE with another argument from SQL is refused or still stores 'acme'."""
    with env.tenant() as alice:
        alice.execute("INSERT INTO widgets (tenant_id, id) VALUES (%s, %s)", ("acme", 400), prepare=True)
        # pg_prepared_statements is denied to tenants: try the names psycopg gives its statements
        for name in (f"_pg3_{i}" for i in range(4)):
            with contextlib.suppress(psycopg.Error):
                alice.execute(f'EXECUTE "{name}"(\'globex\', 401)')
    with env.admin() as admin:
        assert admin.execute("SELECT DISTINCT tenant_id FROM widgets WHERE id IN (400, 401)").fetchall() == [("acme",)]
    assert foreign_values(env) == []


BULK = "INSERT INTO widgets (tenant_id, id, label) SELECT * FROM UNNEST(%s::text[], %s::int[], %s::text[])"


@pytest.mark.parametrize("tenants", [["acme", "globex"], ["globex"], ["acme", None], ["acme", "acme "], ["a"]])
def test_bulk_create_with_another_tenants_row_is_refused(env: Env, tenants: list[str | None]) -> None:
    """Issue 20: Django 5.2 bulk_create; the other tenant's row used to be stored under acme."""
    ids = list(range(500, 500 + len(tenants)))
    before = env.all_rows("widgets")
    with env.tenant() as alice:
        err = refused(alice, BULK, (tenants, ids, ["bulk"] * len(tenants)))
        assert err.sqlstate in ("42501", "22P02") and MISMATCH_MARKER in str(err)
    assert env.all_rows("widgets") == before


def test_bulk_create_for_the_own_tenant_works(env: Env) -> None:
    with env.tenant() as alice:
        alice.execute("DELETE FROM widgets WHERE id >= 600")
        alice.execute(BULK, (["acme", "acme", "acme"], [600, 601, 602], ["a", "b", "c"]))
        alice.execute("INSERT INTO widgets (tenant_id, id) SELECT tenant_id, id + 10 FROM widgets WHERE id >= 600")
        rows = alice.execute("SELECT tenant_id, id FROM widgets WHERE id >= 600 ORDER BY id").fetchall()
    assert rows == [("acme", i) for i in (600, 601, 602, 610, 611, 612)]


def test_insert_select_from_another_tenants_rows_is_impossible(env: Env) -> None:
    """The source is scoped too: copying 'everything' copies only acme's rows."""
    with env.tenant() as alice:
        alice.execute("DELETE FROM widgets WHERE id >= 700")
        alice.execute("INSERT INTO widgets (tenant_id, id, label) SELECT tenant_id, id + 700, name FROM customers")
        assert alice.execute("SELECT count(*) FROM widgets WHERE id >= 700").fetchone() == (3,)


class TestWithoutColumnList:
    """Issue 12: INSERT INTO t VALUES (...) / INSERT INTO t SELECT ... were refused."""

    def test_values_and_select(self, env: Env) -> None:
        with env.tenant() as alice:
            alice.execute("DELETE FROM widgets WHERE id >= 800")
            alice.execute("INSERT INTO widgets VALUES ('acme', 800, 'v'), ('acme'::text, 801, DEFAULT)")
            alice.execute("INSERT INTO widgets VALUES (DEFAULT, 802)")  # fewer values: the rest default
            alice.execute("INSERT INTO widgets SELECT 'acme', 803, 's'")
            alice.execute("INSERT INTO widgets SELECT * FROM widgets WHERE id = 800 AND false")
            alice.execute("INSERT INTO widgets SELECT tenant_id, id + 10, label FROM widgets "
                          "WHERE id BETWEEN 800 AND 803")
            alice.execute("INSERT INTO widgets VALUES (%s, %s, %s)", ("acme", 820, "p"))
            rows = alice.execute("SELECT * FROM widgets WHERE id >= 800 ORDER BY id").fetchall()
        assert rows == [("acme", 800, "v"), ("acme", 801, None), ("acme", 802, None), ("acme", 803, "s"),
                        ("acme", 810, "v"), ("acme", 811, None), ("acme", 812, None), ("acme", 813, "s"),
                        ("acme", 820, "p")]

    @pytest.mark.parametrize("sql", [
        "INSERT INTO widgets VALUES ('globex', 850, 'x')",
        "INSERT INTO widgets VALUES ('acme'::char(1), 851)",
        "INSERT INTO widgets VALUES ('acme', 852), ('globex', 853)",
        "INSERT INTO orders SELECT 'globex', 854",
    ])
    def test_another_tenant_is_refused(self, env: Env, sql: str) -> None:
        with env.tenant() as alice:
            assert refused(alice, sql).sqlstate == "42501"
        assert foreign_values(env) == [] and not [r for r in env.all_rows("widgets") if r[1] >= 850]

    def test_select_star_with_another_tenant_fails_at_run_time(self, env: Env) -> None:
        with env.tenant() as alice:
            err = refused(alice, "INSERT INTO widgets SELECT * FROM (VALUES ('globex', 860, 'x')) AS v")
            assert MISMATCH_MARKER in str(err)

    def test_more_values_than_known_columns_fail_closed(self, env: Env) -> None:
        """A column added after the proxy read the catalog: the backend refuses the count, no guess."""
        with env.admin() as admin:
            admin.execute("ALTER TABLE widgets ADD COLUMN IF NOT EXISTS extra int")
        try:
            with env.tenant() as alice:
                err = refused(alice, "INSERT INTO widgets VALUES ('acme', 870, 'x', 1)")
                assert err.sqlstate == "42601"
                alice.execute("INSERT INTO widgets VALUES ('acme', 871, 'x')")
        finally:
            with env.admin() as admin:
                admin.execute("ALTER TABLE widgets DROP COLUMN extra")


@pytest.mark.parametrize("sql", [
    "COPY orders TO STDOUT (FORMAT csv)",
    "COPY orders TO STDOUT (FORMAT csv, HEADER)",
    "COPY orders (id, note) TO STDOUT (FORMAT csv, HEADER, DELIMITER ';', FORCE_QUOTE (id))",
    "COPY orders TO STDOUT WITH (FORMAT text, NULL 'NULL')",
    "COPY orders TO STDOUT CSV HEADER",
    "COPY (SELECT * FROM orders) TO STDOUT WITH CSV HEADER",
    "COPY (SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id) TO STDOUT (FORMAT csv)",
])
def test_copy_to_option_lists(env: Env, sql: str) -> None:
    with env.tenant() as alice, alice.cursor().copy(sql) as copy:
        data = b"".join(bytes(chunk) for chunk in copy).decode()
    assert "a-o1" in data or "a-one" in data or "1" in data
    assert "G-" not in data and "globex" not in data


@pytest.mark.parametrize("item", ["localtime", "current_date", "localtimestamp", "current_timestamp(0)",
                                  "current_user", "session_user"])
def test_sql_value_functions_as_from_items(env: Env, item: str) -> None:
    with env.tenant() as alice:
        assert alice.execute(f"SELECT count(*) FROM orders, {item}").fetchone() == (4,)


def copy_in(conn: psycopg.Connection[Any], sql: str, data: str) -> None:
    with conn.cursor().copy(sql) as copy:
        copy.write(data)


class TestCopyFrom:
    """Bulk import: COPY t [(cols)] FROM STDIN, every row's tenant column checked by the backend
    per row (sent or defaulted: the table's default is not trusted); one bad row aborts it all.
    PostgreSQL itself refuses COPY FROM into a table with row-level security (0A000): with
    tenantgate's RLS installed, the import fails closed there."""

    @pytest.mark.parametrize("sql, data", [
        ("COPY imports (tenant_id, id, label) FROM STDIN", "acme\t1\tx\nacme\t2\t\\N\n"),
        ("COPY imports FROM STDIN (FORMAT csv, HEADER)", "tenant_id,id,label\nacme,1,x\nacme,2,\n"),
        ("COPY imports (id, label) FROM STDIN", "1\tx\n2\ty\n"),  # the default: acme's here
        ("COPY imports (id, tenant_id) FROM STDIN WITH (FORMAT csv, DELIMITER ';') WHERE id < 3",
         "1;acme\n2;acme\n3;globex\n"),
    ])
    def test_own_rows_are_imported(self, env: Env, sql: str, data: str) -> None:
        with env.tenant() as alice:
            alice.execute("DELETE FROM imports")
            if env.rls:
                with pytest.raises(psycopg.errors.FeatureNotSupported):
                    copy_in(alice, sql, data)
                assert alice.execute("SELECT count(*) FROM imports").fetchone() == (0,)
                return
            copy_in(alice, sql, data)
            assert alice.execute("SELECT tenant_id, id FROM imports ORDER BY id").fetchall() == [
                ("acme", 1), ("acme", 2)]

    @pytest.mark.parametrize("user, sql, data", [
        ("alice", "COPY imports (tenant_id, id) FROM STDIN", "acme\t1\nglobex\t2\n"),
        ("alice", "COPY imports FROM STDIN (FORMAT csv)", "acme,1,x\nACME,2,y\n"),
        ("alice", "COPY imports (tenant_id, id) FROM STDIN", "\\N\t1\n"),
        ("alice", "COPY widgets (id, label) FROM STDIN", "1\tx\n"),  # no default: NULL is no tenant
        ("bob", "COPY imports (id, label) FROM STDIN", "1\tx\n"),  # the default is acme's, not globex's
    ])
    def test_a_row_for_another_tenant_aborts_the_copy(self, env: Env, user: str, sql: str, data: str) -> None:
        before = env.all_rows("imports"), env.all_rows("widgets")
        with env.tenant(user) as conn:
            with pytest.raises(psycopg.Error) as info:
                copy_in(conn, sql, data)
            if env.rls:
                assert info.value.sqlstate == "0A000"
            else:
                assert info.value.sqlstate in ("42501", "22P02") and MISMATCH_MARKER in str(info.value)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert (env.all_rows("imports"), env.all_rows("widgets")) == before

    @pytest.mark.parametrize("sql", ["COPY countries FROM STDIN", "COPY pg_catalog.pg_class FROM STDIN",
                                     "COPY imports FROM '/etc/passwd'", "COPY imports FROM PROGRAM 'id'"])
    def test_other_targets_stay_refused(self, env: Env, sql: str) -> None:
        with env.tenant() as alice:
            assert refused(alice, sql).sqlstate == "42501"
