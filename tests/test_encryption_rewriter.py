"""Encrypted-column analysis in the rewriter: allowed uses, refusals, literal sealing, caching, redaction."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.keyring import TYPES, EncryptedColumn, EncryptionSettings, Mode
from tenantgate.rewriter import Policy, Refused, Rewriter
from tenantgate.rewriter.encryption import literal_redactions

POLICY = Policy(
    scoped={("public", "customers"): "tenant_id", ("public", "orders"): "tenant_id"},
    encrypted={
        ("public", "customers", "ssn"): ("deterministic", "text"),
        ("public", "customers", "note"): ("randomized", "text"),
        ("public", "customers", "age"): ("deterministic", "int4"),
    },
    allow_explain=True,  # EXPLAIN's literals must be encrypted too (opt-in since issue 12)
)
HEX = re.compile(r"'\\x([0-9a-f]+)'::bytea")


class Encryptor:
    """A stand-in for SessionCrypto.encrypt_literal: records calls, returns a fresh value each time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, table: str, column: str, text: str) -> bytes:
        self.calls.append((table, column, text))
        return b"\xe1" + len(self.calls).to_bytes(4, "big")


def plan(sql: str, *, extended: bool = False, rw: Rewriter | None = None, enc: Encryptor | None = None):  # type: ignore[no-untyped-def]
    return (rw or Rewriter(POLICY)).plan(sql, "acme", extended=extended, encrypt=enc or Encryptor())


ALLOWED = [
    "SELECT ssn, note, age, name FROM customers",
    "SELECT * FROM customers WHERE ssn = 'a' OR ssn <> 'b' OR ssn IN ('c', 'd') OR ssn NOT IN ('e')",
    "SELECT c.* FROM customers c WHERE 'x' = c.ssn AND c.note IS NULL AND c.age IS NOT NULL",
    "SELECT count(*) FROM customers WHERE age = 42 AND ssn = NULL",
    "INSERT INTO customers (tenant_id, ssn, note, age) VALUES ('acme', 'a', 'b', 1), ('acme', 'c', NULL, DEFAULT)",
    "INSERT INTO customers (ssn) VALUES ('a') ON CONFLICT (ssn) DO UPDATE SET ssn = EXCLUDED.ssn, note = 'n'",
    "UPDATE customers SET ssn = 'a', note = NULL, name = 'x' WHERE age IN (1, 2) RETURNING ssn",
    "DELETE FROM customers WHERE ssn = 'gone' RETURNING *",
    "WITH x AS (SELECT ssn FROM customers) SELECT * FROM x WHERE ssn = 'q'",
    "SELECT o.id, s.ssn FROM orders o JOIN (SELECT id, ssn FROM customers) s ON s.id = o.id WHERE s.ssn = 'q'",
    "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM customers c WHERE c.ssn = 'z')",
    "SELECT ssn FROM customers ORDER BY name LIMIT 5",
    "BEGIN; DECLARE cur CURSOR FOR SELECT ssn FROM customers WHERE ssn = 'a'; FETCH 1 FROM cur",
    "EXPLAIN SELECT * FROM customers WHERE ssn = 'a'",
    "COPY (SELECT name FROM customers) TO STDOUT",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_uses(sql: str) -> None:
    enc = Encryptor()
    out = plan(sql, enc=enc)
    for _, column, value in enc.calls:  # every encrypted literal left the SQL
        assert f"'{value}'" not in out.sql or column == "age"
    assert len(HEX.findall(out.sql)) == len(enc.calls)


REFUSED = [
    ("SELECT * FROM customers WHERE ssn LIKE 'a%'", "LIKE"),
    ("SELECT * FROM customers WHERE ssn ILIKE 'a%'", "ILIKE"),
    ("SELECT * FROM customers WHERE ssn ~ 'a'", "operator ~"),
    ("SELECT * FROM customers WHERE age > 3", "operator >"),
    ("SELECT * FROM customers WHERE age BETWEEN 1 AND 3", "BETWEEN"),
    ("SELECT * FROM customers ORDER BY ssn", "ORDER BY"),
    ("SELECT ssn FROM customers ORDER BY 1", "ORDER BY"),
    ("SELECT ssn AS s FROM customers ORDER BY s", "ORDER BY"),
    ("SELECT * FROM customers ORDER BY 2", "ORDER BY by position after *"),
    ("SELECT count(*) FROM customers GROUP BY ssn", "GROUP BY"),
    ("SELECT DISTINCT ssn FROM customers", "DISTINCT"),
    ("SELECT count(ssn) FROM customers", "function count()"),
    ("SELECT lower(ssn) FROM customers", "function lower()"),
    ("SELECT ssn::text FROM customers", "a cast"),
    ("SELECT ssn || 'x' FROM customers", "operator ||"),
    ("SELECT CASE WHEN true THEN ssn END FROM customers", "CASE"),
    ("SELECT * FROM customers WHERE note = 'x'", "randomized"),
    ("SELECT * FROM customers WHERE note IN ('x')", "randomized"),
    ("SELECT * FROM customers a JOIN customers b ON a.ssn = b.ssn", "two columns"),
    ("SELECT * FROM customers c JOIN orders o ON o.ref = c.ssn", "literal, a parameter or NULL"),
    ("SELECT * FROM customers WHERE ssn = 'a'::text", "literal, a parameter or NULL"),
    ("SELECT * FROM customers WHERE ssn = ANY('{a}')", "= ANY"),
    ("SELECT * FROM customers WHERE ssn IN (SELECT ref FROM orders)", "a comparison with a subquery"),
    ("SELECT (SELECT ssn FROM customers LIMIT 1)", "a subquery result"),
    ("SELECT ssn FROM customers UNION SELECT 'x'", "UNION"),
    ("SELECT customers FROM customers", "whole-row"),
    ("SELECT row_to_json(c.*) FROM customers c", "function row_to_json()"),
    ("SELECT * FROM customers a JOIN customers b USING (ssn)", "USING"),
    ("SELECT * FROM customers NATURAL JOIN orders", "NATURAL"),
    ("INSERT INTO customers (ssn) SELECT ssn FROM customers", "INSERT ... SELECT"),
    ("INSERT INTO customers (name) SELECT ssn FROM customers", "INSERT ... SELECT"),
    ("INSERT INTO customers (ssn) VALUES (lower('A'))", "literal, a parameter or NULL"),
    ("INSERT INTO customers (ssn) VALUES (true)", "string or numeric literals"),
    ("UPDATE customers SET ssn = name", "literal, a parameter or NULL"),
    ("UPDATE customers SET name = ssn", "SET"),
    ("UPDATE customers SET (ssn, name) = ('a', 'b')", "multiple-column"),
    ("INSERT INTO customers (ssn) VALUES ('a') ON CONFLICT (ssn) DO UPDATE SET ssn = EXCLUDED.note",
     "literal, a parameter or NULL"),
    ("COPY customers TO STDOUT", "COPY"),
    ("COPY (SELECT ssn FROM customers) TO STDOUT", "COPY"),
    ("SELECT * FROM (SELECT * FROM customers) s(a, b)", "column alias list"),
    ("PREPARE p AS SELECT * FROM customers WHERE ssn = $1", "extended protocol"),
    ("MERGE INTO customers c USING orders o ON o.id = c.id WHEN MATCHED THEN DELETE", "MERGE"),
    ("SELECT ssn FROM customers a, customers b", "ambiguous"),
]


@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_refusals_name_the_column(sql: str, why: str) -> None:
    with pytest.raises(Refused) as exc:
        plan(sql)
    assert exc.value.sqlstate == "0A000", exc.value
    assert exc.value.reason == "encrypted_column"
    assert "public.customers." in exc.value.message and why in exc.value.message


def test_bind_parameters_are_reported_not_encrypted() -> None:
    enc = Encryptor()
    out = plan("INSERT INTO customers (tenant_id, ssn, note, age, name) VALUES ($1, $2, $3, $4, $5) RETURNING ssn",
               extended=True, enc=enc)
    assert out.encrypt_params == ((2, "public.customers", "ssn", "text"), (3, "public.customers", "note", "text"),
                                  (4, "public.customers", "age", "int4"))
    assert out.tenant_params == (1,) and not enc.calls
    where = plan("SELECT * FROM customers WHERE ssn = $1 AND age IN ($2, 7)", extended=True, enc=enc)
    assert [p[0] for p in where.encrypt_params] == [1, 2] and enc.calls == [("public.customers", "age", "7")]
    with pytest.raises(Refused, match="bound to two encrypted columns"):
        plan("SELECT * FROM customers WHERE ssn = $1 AND age = $1", extended=True)


def test_literals_are_sealed_for_their_column_and_type() -> None:
    enc = Encryptor()
    out = plan("INSERT INTO customers (ssn, age, note) VALUES ('it''s', -12, E'a\\tb')", enc=enc)
    assert enc.calls == [("public.customers", "ssn", "it's"), ("public.customers", "age", "-12"),
                         ("public.customers", "note", "a\tb")]
    assert "it''s" not in out.sql and "-12" not in out.sql and "a\\tb" not in out.sql
    assert len(HEX.findall(out.sql)) == 3


def test_without_an_encrypt_callback_statements_touching_values_are_refused() -> None:
    with pytest.raises(Refused) as exc:
        Rewriter(POLICY).plan("SELECT * FROM customers WHERE ssn = 'x'", "acme")
    assert exc.value.sqlstate == "55000"
    assert Rewriter(POLICY).plan("SELECT ssn FROM customers", "acme").sql  # nothing to encrypt: fine


def test_cache_hits_encrypt_again_and_never_reuse_ciphertext() -> None:
    rw, enc = Rewriter(POLICY), Encryptor()
    first = plan("SELECT name FROM customers WHERE ssn = 'one'", rw=rw, enc=enc)
    second = plan("SELECT name FROM customers WHERE ssn = 'two'", rw=rw, enc=enc)  # template hit
    third = plan("SELECT name FROM customers WHERE ssn = 'two'", rw=rw, enc=enc)
    assert not first.cached and second.cached and third.cached
    assert [c[2] for c in enc.calls] == ["one", "two", "two"]
    assert len({HEX.search(p.sql).group(1) for p in (first, second, third)}) == 3  # type: ignore[union-attr]
    assert second.redactions == ((39, 44),)
    # statements cached by their exact text (extended protocol) are encrypted afresh as well
    a = plan("SELECT * FROM customers WHERE ssn = 'p'", extended=True, rw=rw, enc=enc)
    b = plan("SELECT * FROM customers WHERE ssn = 'p'", extended=True, rw=rw, enc=enc)
    assert b.cached and a.sql != b.sql and enc.calls[-2:] == [("public.customers", "ssn", "p")] * 2


def test_template_slots_follow_literals_not_positions() -> None:
    rw, enc = Rewriter(POLICY), Encryptor()
    sql = "UPDATE customers SET name = '{0}', ssn = '{1}' WHERE age = {2} AND name <> '{3}'"
    plan(sql.format("n1", "s1", 1, "x1"), rw=rw, enc=enc)
    out = plan(sql.format("n2", "s2", 2, "x2"), rw=rw, enc=enc)
    assert out.cached
    assert enc.calls[-2:] == [("public.customers", "ssn", "s2"), ("public.customers", "age", "2")]
    assert "'n2'" in out.sql and "'x2'" in out.sql and "'s2'" not in out.sql


@settings(max_examples=60, deadline=None)
@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
       noise=st.text(alphabet="abc ", max_size=5))
def test_redactions_cover_exactly_the_encrypted_literals(value: str, noise: str) -> None:
    rw, enc = Rewriter(POLICY), Encryptor()
    quoted = "'" + value.replace("'", "''") + "'"
    sql = f"SELECT name FROM customers WHERE name = '{noise}' AND ssn = {quoted}"
    for _ in range(2):  # a miss, then a template hit
        out = rw.plan(sql, "acme", encrypt=enc)
        masked = sql
        for start, end in sorted(out.redactions, reverse=True):
            masked = masked[:start] + "?" + masked[end:]
        # a miss redacts by value: an equal literal elsewhere is masked too (never too little)
        shown = {f"'{noise}'", "?"} if noise == value else {f"'{noise}'"}
        assert masked in {f"SELECT name FROM customers WHERE name = {s} AND ssn = ?" for s in shown}
        assert enc.calls[-1] == ("public.customers", "ssn", value)


def test_redaction_of_continued_strings_and_the_fallback() -> None:
    enc = Encryptor()
    sql = "SELECT * FROM customers WHERE ssn = 'a'\n'b' AND name = 'c'"
    out = plan(sql, enc=enc)
    assert enc.calls == [("public.customers", "ssn", "ab")]
    assert out.redactions == ((36, 43),)
    # a value no token holds: every literal is masked rather than too few
    assert literal_redactions(sql, ["zz"]) == ((36, 43), (55, 58))


def test_policy_from_config_validates_encrypted_tables() -> None:
    scoping = SimpleNamespace(column="tenant_id", reference=(("public", "countries"),),
                              tables=(SimpleNamespace(schema=None, name="customers", column="org"),))

    def settings_for(*cols: tuple[str, str]) -> EncryptionSettings:
        return EncryptionSettings("file:/k", "database", None, 300.0, tuple(
            EncryptedColumn(t, c, Mode.DETERMINISTIC, TYPES["text"], "org") for t, c in cols), None)  # type: ignore[arg-type]

    policy = Policy.from_config(scoping, settings_for(("customers", "ssn")))
    assert policy.encrypted == {("public", "customers", "ssn"): ("deterministic", "text")}
    assert policy.encrypted_tables == {("public", "customers"): {"ssn": ("deterministic", "text")}}
    assert hash(policy) != hash(Policy.from_config(scoping, None))
    with pytest.raises(ValueError, match="not a scoped table"):
        Policy.from_config(scoping, settings_for(("countries", "name")))
    with pytest.raises(ValueError, match="tenant column"):
        Policy.from_config(scoping, settings_for(("public.customers", "org")))


def test_no_encrypted_columns_means_no_change() -> None:
    plain = Policy(scoped={("public", "customers"): "tenant_id"})
    out = Rewriter(plain).plan("SELECT * FROM customers WHERE ssn LIKE 'x%'", "acme")
    assert out.encrypt_params == () and out.redactions == () and "LIKE 'x%'" in out.sql
