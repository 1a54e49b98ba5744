"""Property tests: generated statements always come out scoped; any text is a Plan or Refused."""

from __future__ import annotations

from typing import Any

import pglast
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import ast, enums

from tenantgate.rewriter import Policy, Refused, Rewriter
from tenantgate.rewriter.literals import _fast_literals, lift, lift_with_scanner
from tenantgate.rewriter.transforms import deparse, node_fields

SCOPED = {"orders": "tenant_id", "customers": "tenant_id", "invoices": "org_id"}
POLICY = Policy(scoped={("public", t): c for t, c in SCOPED.items()},
                reference=frozenset({("public", "countries")}))
TABLES = [*SCOPED, "countries"]
COLUMNS = ["id", "note", "total", "tenant_id", "org_id"]

names = st.sampled_from(TABLES).flatmap(lambda t: st.tuples(
    st.just(t), st.sampled_from(["", "public.", '"', "upper"]), st.sampled_from(["", " AS x", " y"])))


def _table(spec: tuple[str, str, str]) -> str:
    table, style, alias = spec
    text = {"": table, "public.": f"public.{table}", '"': f'"{table}"', "upper": table.upper()}[style]
    only = "ONLY " if len(table) % 2 else ""
    return f"{only}{text}{alias}"


@st.composite
def predicates(draw: st.DrawFn, depth: int = 0) -> str:
    col = draw(st.sampled_from(COLUMNS))
    base = draw(st.sampled_from([f"{col} = 1", f"{col} IS NULL", "1 = 1", f"{col} > 'globex'", "true"]))
    if depth < 2 and draw(st.booleans()):
        sub = draw(selects(depth + 1))
        base = draw(st.sampled_from([f"EXISTS ({sub})", f"{col} IN ({sub})", f"{col} = ({sub} LIMIT 1)"]))
    if depth < 2 and draw(st.booleans()):
        op = draw(st.sampled_from(["AND", "OR"]))
        base = f"({base} {op} {draw(predicates(depth + 1))})"
    return base


@st.composite
def from_items(draw: st.DrawFn, depth: int) -> str:
    item = _table(draw(names))
    if depth < 2 and draw(st.integers(0, 4)) == 0:
        item = f"({draw(selects(depth + 1))}) AS d{depth}"
    if draw(st.booleans()):
        join = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", ","]))
        other = _table(draw(names)).replace(" AS x", " AS z").replace(" y", " w")
        item = f"{item} {join} {other}" + ("" if join == "," else " ON true")
    return item


@st.composite
def selects(draw: st.DrawFn, depth: int = 0) -> str:
    sql = f"SELECT {draw(st.sampled_from(['*', 'count(*)', 'id', '1']))} FROM {draw(from_items(depth))}"
    if draw(st.booleans()):
        sql += f" WHERE {draw(predicates(depth + 1))}"
    if depth == 0 and draw(st.integers(0, 3)) == 0:
        sql = f"{sql} UNION ALL SELECT 1 FROM {_table(draw(names))}"
    if depth == 0 and draw(st.integers(0, 3)) == 0:
        sql = f"WITH c AS ({draw(selects(depth + 1))}) {sql}"
    return sql


@st.composite
def statements(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["select", "update", "delete"]))
    table = draw(st.sampled_from(list(SCOPED)))
    where = f" WHERE {draw(predicates(1))}" if draw(st.booleans()) else ""
    if kind == "update":
        source = f" FROM {draw(from_items(1))}" if draw(st.booleans()) else ""
        return f"UPDATE {table} AS t SET note = 'x'{source}{where}"
    if kind == "delete":
        using = f" USING {draw(from_items(1))}" if draw(st.booleans()) else ""
        return f"DELETE FROM {table}{using}{where}"
    return str(draw(selects()))


def _scoped_references(node: object, parents: tuple[ast.Node, ...] = ()) -> list[tuple[ast.RangeVar, tuple]]:
    found: list[tuple[ast.RangeVar, tuple]] = []
    if isinstance(node, tuple | list):
        for item in node:
            found += _scoped_references(item, parents)
    elif isinstance(node, ast.Node):
        if isinstance(node, ast.RangeVar) and node.relname in SCOPED:
            found.append((node, parents))
        for field in node_fields(node):
            found += _scoped_references(getattr(node, field), (*parents, node))
    return found


def _and_terms(node: Any) -> list[str]:
    if type(node).__name__ == "BoolExpr" and node.boolop == enums.BoolExprType.AND_EXPR:
        return [t for arg in node.args for t in _and_terms(arg)]
    return [] if node is None else [deparse(node)]


def _carries_predicate(rv: Any, parents: tuple[Any, ...]) -> bool:
    """Independent of the verifier: the derived-table wrapper around the reference, or its
    predicate in the condition that filters its rows (walking up through inner joins; the ON of
    the outer join whose nullable side holds it; never a FULL JOIN side)."""
    owner: Any = parents[-1]
    column = SCOPED[rv.relname]
    kind = type(owner).__name__
    qualifier = rv.alias.aliasname if rv.alias else rv.relname
    want = f"{qualifier}.{column} = 'acme'"
    if (len(parents) > 1 and type(parents[-2]).__name__ == "RangeSubselect" and not rv.alias
            and kind == "SelectStmt" and len(owner.fromClause) == 1 and deparse(owner).startswith("SELECT * FROM")
            and deparse(owner.whereClause) == f"{rv.relname}.{column} = 'acme'"):
        return rv.schemaname == "public"  # the derived-table wrapper
    child: Any = rv
    for parent in reversed(parents):
        name = type(parent).__name__
        if name == "JoinExpr":
            if parent.alias is not None or parent.jointype == enums.JoinType.JOIN_FULL:
                return False
            nullable = {enums.JoinType.JOIN_LEFT: parent.rarg, enums.JoinType.JOIN_RIGHT: parent.larg}
            if child is nullable.get(parent.jointype):
                return rv.schemaname == "public" and want in _and_terms(parent.quals)
            child = parent
        elif name == "SelectStmt" or (name in ("UpdateStmt", "DeleteStmt") and parent.relation is not rv):
            return rv.schemaname == "public" and want in _and_terms(parent.whereClause)
        else:
            break
    if kind in ("UpdateStmt", "DeleteStmt") and owner.relation is rv:
        qualifier = rv.alias.aliasname if rv.alias else rv.relname
        where: Any = owner.whereClause
        is_and = type(where).__name__ == "BoolExpr" and where.boolop == enums.BoolExprType.AND_EXPR
        first = where.args[0] if is_and else where
        return deparse(first) == f"{qualifier}.{column} = 'acme'"
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements())
def test_generated_statements_come_out_scoped(sql: str) -> None:
    plan = Rewriter(POLICY).plan(sql, "acme")
    stmts = pglast.parse_sql(plan.sql)
    assert len(stmts) == 1
    for rv, parents in _scoped_references(stmts[0].stmt):
        assert _carries_predicate(rv, parents), plan.sql


SQL_WORDS = ["SELECT", "FROM", "WHERE", "orders", "countries", "internal_notes", "pg_class", "(", ")", ",",
             ";", "'globex'", "$1", "1", "*", "=", "OR", "AND", "UNION", "WITH", "x", "AS", "JOIN", "ON",
             "INSERT", "INTO", "VALUES", "UPDATE", "SET", "tenant_id", "DELETE", "USING", "LATERAL",
             "set_config", "pg_read_file", "EXISTS", "--", "/*", "*/", "$$", "E'\\''", "U&\"\\0061\"",
             "COPY", "TO", "STDOUT", "EXPLAIN", "LISTEN", "RETURNING", "ONLY", "TABLE", "RESET", "ALL"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(SQL_WORDS), max_size=14).map(" ".join)),
       st.booleans())
def test_any_text_is_a_plan_or_refused(text: str, extended: bool) -> None:
    try:
        plan = Rewriter(POLICY).plan(text, "acme", extended=extended)
    except Refused as err:
        assert err.sqlstate in ("42501", "42601", "0A000", "42622")
        assert err.reason != "internal", text
        return
    assert len(pglast.parse_sql(plan.sql)) == len(plan.kinds)


LEXER_ALPHABET = st.sampled_from(["'", '"', "''", "1", "2.5", ".", "e", "E", "x", "_", "$", "\\", "&", "-", "/",
                                  "*", " ", "\n", "\t", "a", "é", "€", "0x1F", "U&", "--", "/*", "*/", ",", "("])


@settings(max_examples=1500, deadline=None)
@given(st.lists(LEXER_ALPHABET, max_size=20).map("".join).map(lambda s: "SELECT " + s))
def test_fast_lexer_agrees_with_postgresql_scanner(text: str) -> None:
    """Wherever the fast literal lexer decides, it finds exactly PostgreSQL's literals."""
    if _fast_literals(text) is not None:
        assert lift(text) == lift_with_scanner(text)
