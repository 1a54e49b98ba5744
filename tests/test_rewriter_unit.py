"""Rewriter API, plan cache, protocol rules and driver queries (no database needed)."""

from __future__ import annotations

import dataclasses
import types

import pglast
import pytest

from tenantgate.rewriter import Plan, Policy, Refused, Rewriter, strip_channel
from tenantgate.rewriter.verifier import verify

POLICY = Policy(scoped={("public", "orders"): "tenant_id", ("public", "invoices"): "org_id"},
                reference=frozenset({("public", "countries")}))
SCOPED = "public.orders WHERE orders.tenant_id = 'acme'"  # the predicate is injected, the table kept


def refused(sql: str, *, tenant: str = "acme", extended: bool = False, rw: Rewriter | None = None) -> Refused:
    with pytest.raises(Refused) as info:
        (rw or Rewriter(POLICY)).plan(sql, tenant, extended=extended)
    return info.value


def test_plan_is_frozen_and_complete() -> None:
    plan = Rewriter(POLICY).plan("SELECT id FROM orders", "acme")
    assert plan == Plan(f"SELECT id FROM {SCOPED}", ("select",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.sql = "SELECT 1"  # type: ignore[misc]


def test_refused_attributes() -> None:
    err = refused("SELECT * FROM internal_notes")
    assert (err.sqlstate, err.reason) == ("42501", "unlisted_table")
    assert "public.internal_notes" in err.message
    assert refused("SELEC 1").sqlstate == "42601"
    assert refused("DELETE FROM orders WHERE CURRENT OF c").sqlstate == "0A000"


def test_refusal_never_echoes_values() -> None:
    err = refused("INSERT INTO orders (tenant_id, id) VALUES ('globex-secret-value', 1)")
    assert "globex-secret-value" not in err.message and "globex-secret-value" not in repr(err)
    err = refused("SELECT set_config('search_path', 'hunter2', false)")
    assert "hunter2" not in err.message


def test_tenant_literal_is_escaped() -> None:
    plan = Rewriter(POLICY).plan("SELECT 1 FROM orders", "o'neil\\x")
    assert "orders.tenant_id = 'o''neil\\x'" in plan.sql
    with pytest.raises(ValueError):
        Rewriter(POLICY).plan("SELECT 1", "")


def test_per_table_column_and_schema_qualification() -> None:
    plan = Rewriter(POLICY).plan("UPDATE invoices i SET total = 1 FROM countries c", "acme")
    assert plan.sql == ("UPDATE public.invoices AS i SET total = 1 FROM public.countries AS c "
                        "WHERE i.org_id = 'acme'")


def test_extended_protocol_rules() -> None:
    err = refused("SELECT 1; SELECT 2", extended=True)
    assert (err.sqlstate, err.reason, err.message) == (
        "42601", "multi_statement_extended", "cannot insert multiple commands into a prepared statement")
    assert Rewriter(POLICY).plan("", "acme", extended=True) == Plan("", ())
    assert Rewriter(POLICY).plan(" ; ", "acme").kinds == ()


@pytest.mark.parametrize("sql", [
    "SELECT $1,$2 FROM orders",  # sqlglot cannot tokenize these; PostgreSQL's scanner can
    "INSERT INTO orders (id,note) VALUES ($1,$2) RETURNING *",
    "SELECT t.oid FROM pg_catalog.pg_type t WHERE t.oid = any($1::oid[])",
    'SELECT U&"\\006Frders".id FROM orders',
])
def test_statements_other_parsers_trip_on(sql: str) -> None:
    plan = Rewriter(POLICY).plan(sql, "acme", extended=True)
    assert pglast.parse_sql(plan.sql)
    assert "$1" in plan.sql or "U&" not in plan.sql


def test_tenant_params_at_bind_time() -> None:
    plan = Rewriter(POLICY).plan("INSERT INTO orders (tenant_id, id) VALUES ($2, $1)", "acme", extended=True)
    assert plan.tenant_params == (2,)
    # the statement does not depend on the bound value: $2 is kept only to be typed
    assert plan.sql == ("INSERT INTO public.orders (tenant_id, id) VALUES "
                        "(CASE WHEN CAST($2 AS pg_catalog.text) IS NULL THEN 'acme' ELSE 'acme' END, $1)")
    # the simple protocol has no Bind: a parameter there (PREPARE body) cannot be checked
    assert refused("PREPARE p(text) AS INSERT INTO orders (tenant_id) VALUES ($1)").reason == "tenant_column"


def test_asyncpg_introspection_passes_unchanged() -> None:
    introspection = pytest.importorskip("asyncpg.introspection")
    rw = Rewriter(POLICY)
    for name in ("INTRO_LOOKUP_TYPES", "INTRO_LOOKUP_TYPES_13", "TYPE_BY_NAME"):
        query = getattr(introspection, name)
        sql = rw.plan(query, "acme", extended=True).sql
        # unchanged but for pg_class, read through its mask since issue 12 (reltuples & co. count every tenant)
        assert sql == query or ("CAST(-1 AS real) AS reltuples" in sql and "pg_class" in query)


def test_literal_lifting_shares_one_plan() -> None:
    rw = Rewriter(POLICY)
    first = rw.plan("SELECT id FROM orders WHERE id = 17 AND note = 'a'", "acme")
    second = rw.plan("SELECT id FROM orders WHERE id = 42 AND note = E'b\\'c'", "acme")
    assert not first.cached and second.cached
    # the cached template re-renders the literal in canonical form, never the client's token (issue 12)
    assert second.sql == f"SELECT id FROM {SCOPED} AND id = 42 AND note = 'b''c'"
    assert rw.stats() == {"hits": 1, "misses": 1, "size": 1}
    assert rw.plan("SELECT id FROM orders WHERE id = 42 AND note = 'a'", "globex").cached is False


def test_template_results_equal_a_cold_rewrite() -> None:
    rw = Rewriter(POLICY)
    rw.plan("UPDATE orders SET note = 'x', total = 1.5 WHERE id IN (1, 2)", "acme")
    for note, total, a, b in [("'it''s'", "2.0", "3", "4"), ("$$d$$", "7.25", "10", "11")]:
        sql = f"UPDATE orders SET note = {note}, total = {total} WHERE id IN ({a}, {b})"
        hot = rw.plan(sql, "acme")
        cold = Rewriter(POLICY).plan(sql, "acme")
        assert hot.cached
        assert [pglast.prettify(s) for s in hot.sql.split(";")] == [pglast.prettify(cold.sql)]


@pytest.mark.parametrize("good, bad", [
    ("INSERT INTO orders (tenant_id, id) VALUES ('acme', 1)",
     "INSERT INTO orders (tenant_id, id) VALUES ('globex', 1)"),
    ("SELECT set_config('application_name', 'x', false)", "SELECT set_config('tenantgate.tenant', 'x', false)"),
    ("INSERT INTO orders (id, tenant_id) SELECT 1, 'acme'", "INSERT INTO orders (id, tenant_id) SELECT 1, 'globex'"),
])
def test_value_dependent_decisions_are_not_lifted(good: str, bad: str) -> None:
    rw = Rewriter(POLICY)
    rw.plan(good, "acme")
    assert rw.plan(good, "acme").cached
    with pytest.raises(Refused):
        rw.plan(bad, "acme")


def test_channels_are_checked_per_value() -> None:
    rw = Rewriter(POLICY)
    assert rw.plan("LISTEN a", "acme").sql == 'LISTEN "acme:a"'
    assert rw.plan("LISTEN b", "acme").sql == 'LISTEN "acme:b"'
    assert refused("LISTEN " + "x" * 60).reason == "channel"
    assert strip_channel("acme", "acme:b") == "b"
    assert strip_channel("acme", "acme2:b") is None
    assert strip_channel("a:b", "a:b:c") is None


def test_refusals_are_cached_and_raised_again() -> None:
    rw = Rewriter(POLICY)
    for _ in range(2):
        assert refused("TRUNCATE orders", rw=rw).reason == "truncate"
    assert rw.stats()["hits"] == 1


def test_cache_is_bounded_per_policy_and_clearable() -> None:
    rw = Rewriter(POLICY, cache_size=2)
    for table in ("orders", "invoices", "countries"):
        rw.plan(f"SELECT 1 FROM {table}", "acme")
    assert rw.stats()["size"] == 2
    assert not rw.plan("SELECT 1 FROM orders", "acme").cached  # evicted first
    other = Rewriter(dataclasses.replace(POLICY, allow_explain=True))  # a new policy: a new cache
    assert not other.plan("SELECT 1 FROM countries", "acme").cached
    with pytest.raises(AttributeError):
        rw.policy = POLICY  # type: ignore[misc]
    rw.clear()
    assert rw.stats() == {"hits": 0, "misses": 0, "size": 0}


def test_multi_statement_refuses_as_a_whole_and_keeps_comments_harmless() -> None:
    assert refused("SELECT 1; SELECT 2; DROP TABLE orders").reason == "ddl"
    plan = Rewriter(POLICY).plan("SELECT 1 -- c\n; SELECT id FROM orders /* x */", "acme")
    assert plan.sql == f"SELECT 1; SELECT id FROM {SCOPED}"
    assert plan.kinds == ("select", "select")


def test_from_config_duck_types_scoping() -> None:
    table = types.SimpleNamespace
    scoping = types.SimpleNamespace(column="tenant_id", tables=(
        table(schema=None, name="orders", column="tenant_id"), table(schema="billing", name="inv", column="org")),
        reference=((None, "countries"),))
    policy = Policy.from_config(scoping)
    assert policy.scoped == {("public", "orders"): "tenant_id", ("billing", "inv"): "org"}
    assert policy.reference == frozenset({("public", "countries")})
    plan = Rewriter(policy).plan("SELECT * FROM billing.inv", "acme")
    assert "billing.inv WHERE inv.org = 'acme'" in plan.sql
    bad = types.SimpleNamespace(column="t", tables=(table(schema=None, name="x", column="t"),),
                                reference=(("public", "x"),))
    with pytest.raises(ValueError, match=r"public\.x"):
        Policy.from_config(bad)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM orders",
    "SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'globex') AS orders",
    "SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'acme' OR true) AS orders",
    "SELECT * FROM (SELECT * FROM orders WHERE orders.tenant_id = 'acme') AS orders",
    "UPDATE public.orders SET note = 'x' WHERE id = 1 AND orders.tenant_id = 'acme'",
    "DELETE FROM public.orders WHERE orders.tenant_id = 'acme' OR true",
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, 'globex')",
    "INSERT INTO public.orders (id, tenant_id) SELECT *, 'acme' FROM (VALUES (1)) v",
    "UPDATE public.orders SET tenant_id = 'x' WHERE orders.tenant_id = 'acme'",
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, 'acme') ON CONFLICT (id) DO UPDATE SET note = 'x'",
    "SELECT pg_notify('globex:x', '')",
    'LISTEN "globex:x"',
    "SELECT * FROM countries",
    "COPY orders TO STDOUT",
    # the injected predicate: only as a top-level conjunct of the right condition, for that very reference
    "SELECT * FROM public.orders WHERE orders.tenant_id = 'acme' OR true",
    "SELECT * FROM public.orders WHERE orders.tenant_id = 'globex'",
    "SELECT * FROM public.orders WHERE NOT (orders.tenant_id = 'acme' AND false)",
    "SELECT * FROM public.orders AS o WHERE orders.tenant_id = 'acme'",
    "SELECT * FROM orders WHERE orders.tenant_id = 'acme'",
    "SELECT * FROM public.orders AS o (tenant_id) WHERE o.tenant_id = 'acme'",
    "SELECT * FROM public.orders o LEFT JOIN public.customers c ON c.id = o.id WHERE o.tenant_id = 'acme'",
    "SELECT * FROM public.orders o FULL JOIN public.customers c ON c.tenant_id = 'acme' AND o.tenant_id = 'acme'",
    "SELECT * FROM (public.orders o JOIN public.customers c ON true) AS j WHERE o.tenant_id = 'acme'"
    " AND c.tenant_id = 'acme'",
    "SELECT * FROM public.orders o WHERE o.tenant_id = 'acme' AND EXISTS (SELECT 1 FROM (public.orders o"
    " JOIN public.customers c ON c.tenant_id = 'acme') AS j WHERE o.tenant_id = 'acme')",
    "SELECT * FROM public.orders o WHERE EXISTS (SELECT 1 FROM public.customers c WHERE o.tenant_id = 'acme'"
    " AND c.tenant_id = 'acme')",
    "SELECT * FROM public.orders o LEFT JOIN public.customers c USING (id) WHERE o.tenant_id = 'acme'"
    " AND c.tenant_id = 'acme'",
    # the tenant column's value: only the proxy's own forms
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, CAST('acme' AS varchar(2)))",
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, 'acme'::\"char\")",
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, $1)",
    "INSERT INTO public.orders (id, tenant_id) VALUES (1, CASE WHEN $1::text IS NULL THEN 'acme' ELSE $1 END)",
    "INSERT INTO public.orders (id, tenant_id) SELECT 1, lower('ACME')",
    "UPDATE public.orders SET tenant_id = CAST('acme' AS bpchar(1)) WHERE orders.tenant_id = 'acme'",
    "MERGE INTO public.orders o USING public.customers c ON o.tenant_id = 'acme' AND c.tenant_id = 'acme'"
    " AND o.id = c.id WHEN NOT MATCHED THEN INSERT (id, tenant_id) VALUES (c.id, 'acme')",
])
def test_verifier_rejects_unscoped_output(sql: str) -> None:
    with pytest.raises(Refused) as info:
        verify(sql, POLICY, "acme", frozenset())
    assert info.value.reason == "verification_failed"
