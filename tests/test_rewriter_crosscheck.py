"""The second parser (rewriter/crosscheck.py): sqlglot must find the relations pglast finds."""

from __future__ import annotations

import pytest

from tenantgate.rewriter import Policy, Refused, Rewriter
from tenantgate.rewriter import crosscheck as cc
from tenantgate.rewriter import rewriter as rewriter_module

POLICY = Policy(scoped={("public", "orders"): "tenant_id", ("public", "customers"): "tenant_id"},
                reference=frozenset({("public", "countries")}))

# (statement, the relations both parsers must find)
AGREED = [
    ("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
     {"public.orders", "public.customers"}),
    ('SELECT 1 FROM "orders", PUBLIC.Customers, pg_class', {"public.orders", "public.customers",
                                                            "pg_catalog.pg_class"}),
    ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", {"public.orders"}),
    ("WITH a AS (SELECT 1 AS id), b AS (SELECT * FROM a) SELECT * FROM b, customers", {"public.customers"}),
    ("WITH b AS (SELECT * FROM orders) SELECT * FROM (WITH orders AS (SELECT 2) SELECT * FROM orders) x, b",
     {"public.orders"}),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r", set()),
    ("WITH customers AS (SELECT 1 AS id) DELETE FROM customers USING orders", {"public.customers",
                                                                              "public.orders"}),
    ("SELECT id FROM orders o FOR UPDATE OF o", {"public.orders"}),
    ("SELECT * FROM generate_series(1, 3) g, LATERAL (SELECT * FROM orders WHERE id = g) x", {"public.orders"}),
    ("SELECT $q$ FROM internal_notes; $q$ AS x, count(*) FROM customers", {"public.customers"}),
    ("SELECT count(*) /* a /* b */ FROM internal_notes */ FROM orders", {"public.orders"}),
    ("SELECT E'x\\' FROM internal_notes' AS a FROM orders", {"public.orders"}),
    ("SELECT 1 FROM orders WHERE note = 'a\\' UNION SELECT 1 FROM customers --'", {"public.orders",
                                                                                  "public.customers"}),
    ("INSERT INTO orders (id, note) VALUES ($1, $2) RETURNING *", {"public.orders"}),
    ("UPDATE orders SET note = c.name FROM customers c WHERE c.id = orders.customer_id",
     {"public.orders", "public.customers"}),
    ("MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN UPDATE SET note = 'x'",
     {"public.orders", "public.customers"}),
    ("SELECT 1 FROM Ärger", {"public.Ärger"}),  # only ASCII letters fold
    ("SELECT 1 FROM " + "x" * 70, {"public." + "x" * 63}),  # NAMEDATALEN
    ("COPY orders (id) TO STDOUT", {"public.orders"}),
]


@pytest.mark.parametrize(("sql", "expected"), AGREED, ids=range(len(AGREED)))
def test_both_parsers_find_the_same_relations(sql: str, expected: set[str]) -> None:
    assert cc.relations(sql, POLICY) == expected
    assert cc._sqlglot_relations(sql, POLICY) == expected
    cc.crosscheck(sql, POLICY)


@pytest.mark.parametrize("sql", [
    "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM orders, localtime",
    "PREPARE p(int) AS SELECT * FROM orders, localtime WHERE id = $1",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM orders, localtime",
    "EXPLAIN DECLARE c CURSOR FOR (SELECT * FROM orders, localtime)",
    "COPY (SELECT * FROM orders, localtime) TO STDOUT",
    "EXECUTE p1((SELECT count(*) FROM orders, localtime)::int)",
])
def test_wrapped_queries_are_read_by_sqlglot(sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlglot knows none of these commands: it reads the query inside (and, since it learnt
    that LOCALTIME in FROM is a function, agrees with PostgreSQL's parser about it)."""
    read = misreading(monkeypatch)
    cc.crosscheck(sql, POLICY)
    assert read and all("FROM orders, localtime" in text and text.lstrip("(").startswith("SELECT") for text in read)


def misreading(monkeypatch: pytest.MonkeyPatch, marker: str = "ghost") -> list[str]:
    """Make sqlglot see one more table in any text holding ``marker`` (a stand-in for a lexing
    difference); returns the texts sqlglot was given."""
    read: list[str] = []
    real = cc._sqlglot_relations

    def reading(text: str, policy: Policy) -> frozenset[str] | None:
        read.append(text)
        found = real(text, policy)
        return found | {"public.current_user"} if found is not None and marker in text else found

    monkeypatch.setattr(cc, "_sqlglot_relations", reading)
    return read


def test_disagreement_names_both_sets_and_no_values(monkeypatch: pytest.MonkeyPatch) -> None:
    misreading(monkeypatch)
    with pytest.raises(Refused) as info:
        cc.crosscheck("SELECT 'very-secret-value' AS ghost FROM customers", POLICY)
    err = info.value
    assert (err.reason, err.sqlstate) == ("parser_disagreement", "42501")
    assert "{public.customers}" in err.message and "{public.current_user, public.customers}" in err.message
    assert "very-secret" not in err.message


def test_every_statement_of_a_message_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    misreading(monkeypatch)
    cc.crosscheck("SELECT 1 FROM orders; SELECT * FROM customers, localtime, current_date", POLICY)
    with pytest.raises(Refused) as info:
        cc.crosscheck("SELECT 1 FROM orders; SELECT 1 AS ghost FROM customers", POLICY)
    assert info.value.reason == "parser_disagreement"


def test_unparseable_by_sqlglot_is_refused_unless_catalog_only() -> None:
    with pytest.raises(Refused) as info:
        cc.crosscheck("SELECT @ -1 FROM orders", POLICY)
    assert (info.value.reason, info.value.sqlstate) == ("unparseable_secondary", "42501")
    # asyncpg's introspection: sqlglot cannot read `oid[]`, but only pg_catalog is touched
    cc.crosscheck("SELECT t.oid, t.typname FROM pg_catalog.pg_type t WHERE t.oid = any($1::oid[])", POLICY)
    cc.crosscheck("SELECT @ -1 FROM pg_class", POLICY)
    # a catalog-only statement calling a function tenants may not call gets no such pass
    with pytest.raises(Refused) as info:
        cc.crosscheck("SELECT @ -1 FROM pg_class WHERE leak_orders() IS NULL", POLICY)
    assert info.value.reason == "unparseable_secondary"


def test_statements_without_relations_skip_the_check() -> None:
    for sql in ("SET statement_timeout = 5", "SHOW TimeZone", "BEGIN", "LISTEN ch", "FETCH 1 FROM c",
                "EXECUTE p(1)", "DISCARD ALL", "SELECT 1"):
        cc.crosscheck(sql, POLICY)


def test_unicode_escaped_identifiers_are_read_after_normalising() -> None:
    sql = 'SELECT count(*) FROM U&"\\006Frders" /* c */, U&"!0063ustomers" UESCAPE \'!\''
    assert cc._sqlglot_relations(sql, POLICY) is None
    assert cc.normalised(sql) == 'SELECT count ( * ) FROM "orders" , "customers"'
    cc.crosscheck(sql, POLICY)


@pytest.mark.parametrize(("sql", "expected"), [
    ('U&"a\\0041\\+000042"', '"aAB"'),
    ('U&"d\\d83d\\de00"', '"d\U0001f600"'),  # a surrogate pair is one character
    ('U&"x""y"', '"x""y"'),
    ("U&'it''s \\0041'", "'it''s A'"),
    ("U&'#0041##' UESCAPE '#'", "'A#'"),
    ("E'a\\'b' -- tail", "E'a\\'b'"),
])
def test_normalised_tokens(sql: str, expected: str) -> None:
    assert cc.normalised("SELECT " + sql) == "SELECT " + expected


def test_rewriter_refuses_and_caches_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(sql: str, policy: Policy) -> None:
        calls.append(sql)
        cc.crosscheck(sql, policy)

    monkeypatch.setattr(rewriter_module, "crosscheck", counting)
    misreading(monkeypatch)
    rw = Rewriter(POLICY)
    for _ in range(2):
        with pytest.raises(Refused) as info:
            rw.plan("SELECT id AS ghost FROM orders", "acme")
        assert info.value.reason == "parser_disagreement"
    assert len(calls) == 1
    # cache hits (exact text, and the literal-lifted digest) never run the second parser again
    rw.plan("SELECT id FROM orders WHERE id = 1", "acme")
    rw.plan("SELECT id FROM orders WHERE id = 1", "acme")
    rw.plan("SELECT id FROM orders WHERE id = 2", "acme")
    assert len(calls) == 2
    assert rw.stats()["hits"] == 3
