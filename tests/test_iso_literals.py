"""Issue 12 family 1, the plan cache half: a cached template never re-inserts the client's literal
token text; each literal is re-rendered in the proxy's canonical form, which lexes as exactly one
token of the slot's class and carries the same value. Properties (hypothesis) over every string
literal form PostgreSQL has, and the whole rewriter: a cached plan is the same statement as a
freshly built one.
"""

from __future__ import annotations

import re
from typing import Any

import pglast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast, parser, visitors

from tenantgate.rewriter import Policy, Refused, Rewriter
from tenantgate.rewriter.literals import Template, canonical_literal

SENTINELS = "SELECT x FROM t WHERE a = 700000000 AND b = '$tg1$' AND c = 700000002.5 AND d = '$tg3$'"
TEMPLATE = Template.build(SENTINELS, 4)
POLICY = Policy(scoped={("public", "orders"): "tenant_id"})

values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def _escape_string(value: str, draw: Any) -> str:
    out = []
    for c in value:
        form = draw(st.sampled_from(["plain", "hex", "unicode"])) if c not in "'\\" else "escaped"
        if form == "escaped":
            out.append("\\" + c)
        elif form == "hex" and ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif form == "unicode":
            out.append(f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return "E'" + "".join(out) + "'"


@st.composite
def string_tokens(draw: Any) -> tuple[str, str]:
    """(a string literal token in one of PostgreSQL's forms, its value)."""
    value = draw(values)
    form = draw(st.sampled_from(["plain", "escape", "dollar", "unicode", "continuation"]))
    if form == "escape":
        return _escape_string(value, draw), value
    if form == "dollar" and "$q$" not in value + "$" and not value.endswith("$q"):
        return f"$q${value}$q$", value
    if form == "unicode":
        body = "".join("\\\\" if c == "\\" else "''" if c == "'" else f"\\+{ord(c):06x}" if draw(st.booleans()) else c
                       for c in value)
        return f"U&'{body}'", value
    quoted = "'" + value.replace("'", "''") + "'"
    if form == "continuation":
        cut = draw(st.integers(0, len(value)))
        return "'" + value[:cut].replace("'", "''") + "'\n'" + value[cut:].replace("'", "''") + "'", value
    return quoted, value


def _classes(sql: str) -> list[str]:
    """Token classes; an integer past int32 is a numeric constant to PostgreSQL either way."""
    return ["NUMBER" if t.name in ("ICONST", "FCONST") else t.name for t in parser.scan(sql)]


def _constants(sql: str) -> list[object]:
    found: list[object] = []

    class Walk(visitors.Visitor):  # type: ignore[misc]
        def visit_A_Const(self, _ancestors: object, node: ast.A_Const) -> None:
            val = node.val
            found.append(getattr(val, "sval", None) or getattr(val, "ival", None) or getattr(val, "fval", None))

    Walk()(pglast.parse_sql(sql))
    return found


@settings(max_examples=300, deadline=None)
@given(string_tokens(), string_tokens(), st.integers(0, 10**12), st.decimals(0, 10**6, places=3))
def test_fill_lexes_to_the_slots_token_classes_with_the_same_values(
    s1: tuple[str, str], s3: tuple[str, str], i: int, f: Any
) -> None:
    assert TEMPLATE is not None
    filled = TEMPLATE.fill((str(i), s1[0], str(f), s3[0]))
    assert _classes(filled) == _classes(SENTINELS)
    # only canonical strings reach the backend: no escapes whose meaning depends on how bytes split
    assert all(re.fullmatch(r"'(?:[^']|'')*'", filled[t.start:t.end + 1])
               for t in parser.scan(filled) if t.name == "SCONST")
    assert _constants(filled) == _constants(SENTINELS.replace("700000000", str(i)).replace(
        "'$tg1$'", "'" + s1[1].replace("'", "''") + "'").replace("700000002.5", str(f)).replace(
        "'$tg3$'", "'" + s3[1].replace("'", "''") + "'"))


ATTACKS = ["E'\\' UNION SELECT body FROM internal_notes --'", "E'x\\\\\\' OR true --'",
           "$$' UNION SELECT 1 --$$", "U&'\\0027 OR true --'", "'a'\n' UNION SELECT 2 --'"]


@pytest.mark.parametrize("token", ATTACKS)
def test_a_literal_that_hides_sql_stays_one_literal(token: str) -> None:
    assert TEMPLATE is not None
    filled = TEMPLATE.fill(("1", token, "2.5", "'d'"))
    assert _classes(filled) == _classes(SENTINELS)
    assert "UNION" not in [t.name for t in parser.scan(filled)]


@pytest.mark.parametrize(("token", "after"), [("1.", ".."), (".5", ""), ("0x1F", ""), ("1_000", ""), ("\u0661", "")])
def test_numbers_that_would_lex_differently_are_refused(token: str, after: str) -> None:
    with pytest.raises(Refused) as info:
        canonical_literal("FCONST" if "." in token else "ICONST", token, "t" if token.startswith(".") else " ", after)
    assert info.value.sqlstate == "0A000"


@settings(max_examples=150, deadline=None)
@given(string_tokens(), st.integers(0, 10**9))
def test_a_cached_plan_is_the_statement_a_fresh_rewrite_makes(token: tuple[str, str], n: int) -> None:
    cached = Rewriter(POLICY)
    cached.plan("SELECT id FROM orders WHERE id = 17 AND note = 'warm'", "acme")
    sql = f"SELECT id FROM orders WHERE id = {n} AND note = {token[0]}"
    try:
        fresh = Rewriter(POLICY).plan(sql, "acme")
    except Refused:
        return
    plan = cached.plan(sql, "acme")
    assert pglast.prettify(plan.sql) == pglast.prettify(fresh.sql)
