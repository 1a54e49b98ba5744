"""A tenant's conditions must only ever run on the tenant's own rows.

PostgreSQL orders the conditions of a scan by estimated cost, not by their place in the query,
and pulls derived tables and CTEs up into the outer query. So the tenant predicate the scoper puts
first does not run first: ``CASE WHEN note = ANY('{x}') THEN (SELECT true UNION ALL SELECT true)
ELSE true END`` costs half an operator (the InitPlan nothing), runs on every row of the table and
raises exactly when another tenant has such a row. RLS does not stop it either: PostgreSQL counts
CASE and InitPlan parameters as leakproof, so the condition may run before the policy.

The fix at the mechanism: every condition that is not plainly harmless (``is_harmless``: column
compared with a constant or parameter, IS NULL, IN lists, AND/OR/NOT of those -- they cannot raise
or take time by a row's values) is guarded by the tenant predicates of its query level, ``CASE
WHEN <predicates> THEN <condition> END``, so whatever order the planner picks, it only sees the
tenant's rows; HAVING terms get an aggregate that keeps them out of WHERE. Derived tables and CTEs
holding scoped tables are fenced (OFFSET 0, MATERIALIZED) when the statement has such a condition
or computes values in them, so no outer condition is pushed into them.

>>> import pglast
>>> from .transforms import deparse, tenant_predicate
>>> where = pglast.parse_sql("SELECT 1 FROM t WHERE id = $1 AND CASE WHEN n IS NULL THEN (SELECT 1) END = 1"
...                          )[0].stmt.whereClause
>>> deparse(guarded(where, [tenant_predicate("t", "tenant_id", "acme")]))
"id = $1 AND CASE WHEN t.tenant_id = 'acme' THEN CASE WHEN n IS NULL THEN (SELECT 1) END = 1 END"
"""

from __future__ import annotations

import copy
from typing import Any

from pglast import ast, enums

from .transforms import conjuncts, walk_nodes

AstNode = Any

_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_K = enums.A_Expr_Kind
_PATTERN_KINDS = frozenset({_K.AEXPR_LIKE, _K.AEXPR_ILIKE})
_LIST_KINDS = frozenset({_K.AEXPR_IN, _K.AEXPR_BETWEEN, _K.AEXPR_NOT_BETWEEN, _K.AEXPR_BETWEEN_SYM,
                         _K.AEXPR_NOT_BETWEEN_SYM})


def _value(node: AstNode) -> bool:
    """A constant or a parameter (under casts and collations): the same for every row."""
    while isinstance(node, ast.TypeCast | ast.CollateClause):
        node = node.arg
    return isinstance(node, ast.A_Const | ast.ParamRef)


def _operand(node: AstNode) -> bool:
    return isinstance(node, ast.ColumnRef) or _value(node)


def is_harmless(cond: AstNode) -> bool:
    """Cannot raise, or take time, depending on a row's values.

    >>> import pglast
    >>> ok = lambda sql: is_harmless(pglast.parse_sql(f"SELECT 1 WHERE {sql}")[0].stmt.whereClause)
    >>> [ok(c) for c in ("id = 1", "a.b <> $2::int", "x IS NULL OR y IN (1, 2)", "NOT flag",
    ...                  "note LIKE 'a%'", "id BETWEEN 1 AND 3", "id = ANY($1)", "x IS DISTINCT FROM y")]
    [True, True, True, True, True, True, True, True]
    >>> [ok(c) for c in ("note::int = 1", "1 / id = 1", "lower(x) = 'a'", "'a' LIKE note",
    ...                  "CASE WHEN x THEN true END", "x = (SELECT 1)", "lower(x) IN (SELECT y FROM t)")]
    [False, False, False, False, False, False, False]
    >>> [ok(c) for c in ("EXISTS (SELECT 1 FROM t)", "id IN (SELECT id FROM t)")]  # may read the outer row
    [False, False]
    """
    if isinstance(cond, ast.BoolExpr):
        return all(is_harmless(arg) for arg in cond.args or ())
    if isinstance(cond, ast.NullTest | ast.BooleanTest):
        return _operand(cond.arg)
    if isinstance(cond, ast.ColumnRef) or _value(cond):
        return True
    if not isinstance(cond, ast.A_Expr):
        return False
    names = [n.sval for n in cond.name or () if isinstance(n, ast.String)]
    if cond.kind in (_K.AEXPR_OP, _K.AEXPR_OP_ANY, _K.AEXPR_OP_ALL, _K.AEXPR_DISTINCT, _K.AEXPR_NOT_DISTINCT):
        comparison = cond.kind in (_K.AEXPR_DISTINCT, _K.AEXPR_NOT_DISTINCT) or (
            len(names) == 1 and names[0] in _COMPARISONS)
        return comparison and _operand(cond.lexpr) and _operand(cond.rexpr)
    if cond.kind in _PATTERN_KINDS:  # a pattern from a row could be malformed: only a constant one
        return _operand(cond.lexpr) and _value(cond.rexpr)
    if cond.kind in _LIST_KINDS:
        items = cond.rexpr if isinstance(cond.rexpr, tuple | list) else (cond.rexpr,)
        return _operand(cond.lexpr) and all(_operand(item) for item in items)
    return False


def or_null(predicate: AstNode) -> AstNode:
    """``alias.col = 'acme' OR alias.col IS NULL``: a guard for a table on the nullable side of an
    outer join (its predicate is in that join's ON), true on its rows and on the NULLs it is
    padded with; a non-strict CASE over it keeps PostgreSQL from turning the join into an inner one.

    >>> from .transforms import deparse, tenant_predicate
    >>> deparse(or_null(tenant_predicate("l", "tenant_id", "acme")))
    "l.tenant_id = 'acme' OR l.tenant_id IS NULL"
    """
    return ast.BoolExpr(boolop=enums.BoolExprType.OR_EXPR, args=(
        copy.deepcopy(predicate),
        ast.NullTest(arg=copy.deepcopy(predicate.lexpr), nulltesttype=enums.NullTestType.IS_NULL)))


def _case(when: AstNode, then: AstNode) -> AstNode:
    return ast.CaseExpr(args=(ast.CaseWhen(expr=when, result=then),))


def guarded(cond: AstNode, predicates: list[AstNode]) -> AstNode:
    """``cond`` with each term that is not harmless evaluated only where ``predicates`` hold."""
    if cond is None or not predicates:
        return cond
    terms = conjuncts(cond)
    if all(is_harmless(t) for t in terms):
        return cond
    when = copy.deepcopy(predicates[0]) if len(predicates) == 1 else ast.BoolExpr(
        boolop=enums.BoolExprType.AND_EXPR, args=tuple(copy.deepcopy(p) for p in predicates))
    out = tuple(t if is_harmless(t) else _case(copy.deepcopy(when), t) for t in terms)
    return out[0] if len(out) == 1 else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=out)


_ALWAYS = ast.NullTest(arg=ast.FuncCall(funcname=(ast.String(sval="count"),), agg_star=True),
                       nulltesttype=enums.NullTestType.IS_NOT_NULL)


# Aggregates a HAVING term is known to call (it then stays in HAVING); any other is guarded.
_AGGREGATES = frozenset({"count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "array_agg",
                         "string_agg", "json_agg", "jsonb_agg", "stddev", "variance", "bit_and", "bit_or"})


def _aggregates(term: AstNode) -> bool:
    for node in walk_nodes(term):
        if isinstance(node, ast.FuncCall) and node.over is None:
            names = [f.sval for f in node.funcname or ()]
            if node.agg_star or (names[-1:] and names[-1] in _AGGREGATES):
                return True
    return False


def guarded_having(cond: AstNode) -> AstNode:
    """HAVING terms without an aggregate become WHERE conditions in the planner: each that is not
    harmless gets one (``count(*) IS NOT NULL``, always true), so it runs on groups of the
    tenant's rows only.

    >>> import pglast
    >>> from .transforms import deparse
    >>> having = pglast.parse_sql("SELECT 1 HAVING a = 1 AND b::int = 1 AND sum(c) > 1")[0].stmt.havingClause
    >>> deparse(guarded_having(having))
    'a = 1 AND CASE WHEN count(*) IS NOT NULL THEN CAST(b AS integer) = 1 END AND sum(c) > 1'
    """
    if cond is None:
        return cond
    terms = conjuncts(cond)
    if all(is_harmless(t) or _aggregates(t) for t in terms):
        return cond
    out = tuple(t if is_harmless(t) or _aggregates(t) else _case(copy.deepcopy(_ALWAYS), t) for t in terms)
    return out[0] if len(out) == 1 else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=out)


def _computed(targets: AstNode) -> bool:
    """A target list with a value computed from a row (pulled up, it may run before the filter)."""
    for target in targets or ():
        val = target.val if isinstance(target, ast.ResTarget) else target
        if not (isinstance(val, ast.ColumnRef) or _value(val)):
            return True
    return False


def needs_fence(stmt: AstNode) -> bool:
    """Does the statement have a condition that is not harmless, or a derived table or CTE that
    computes values? Then derived tables and CTEs holding scoped tables are fenced.

    >>> import pglast
    >>> fence = lambda sql: needs_fence(pglast.parse_sql(sql)[0].stmt)
    >>> fence("SELECT * FROM (SELECT * FROM o) s WHERE s.id = 1"), fence("SELECT * FROM o WHERE lower(n) = 'a'")
    (False, True)
    >>> fence("SELECT * FROM (SELECT n::int AS n FROM o) s WHERE n = 1")
    True
    """
    for node in walk_nodes(stmt):
        conds: tuple[AstNode, ...] = ()
        if isinstance(node, ast.SelectStmt | ast.UpdateStmt | ast.DeleteStmt):
            conds = (node.whereClause, getattr(node, "havingClause", None))
        elif isinstance(node, ast.JoinExpr):
            conds = (node.quals,)
        elif isinstance(node, ast.MergeStmt):
            conds = (node.joinCondition,)
        if any(not is_harmless(t) for c in conds for t in conjuncts(c)):
            return True
        if isinstance(node, ast.RangeSubselect | ast.CommonTableExpr):
            query = node.subquery if isinstance(node, ast.RangeSubselect) else node.ctequery
            if isinstance(query, ast.SelectStmt) and any(
                    isinstance(s, ast.SelectStmt) and _computed(s.targetList) for s in walk_nodes(query)):
                return True
    return False


def fence_subquery(query: AstNode) -> None:
    """OFFSET 0: PostgreSQL neither pulls the subquery up nor pushes outer conditions into it."""
    if isinstance(query, ast.SelectStmt) and query.limitOffset is None and query.limitCount is None:
        query.limitOffset = ast.A_Const(val=ast.Integer(ival=0))


def fence_cte(cte: AstNode) -> None:
    if isinstance(cte.ctequery, ast.SelectStmt):
        cte.ctematerialized = enums.CTEMaterialize.CTEMaterializeAlways


def fence_join(join: AstNode) -> AstNode:
    """An aliased join inside a fenced subquery that shows the same columns under the same name:
    behind the alias an outer condition cannot name the tables' tenant columns to be guarded, so
    it must not reach their scans. The join keeps its alias inside (and with it the verified form
    of its ON); LATERAL keeps the FROM items before it in reach of whatever the join referred to.

    >>> import pglast
    >>> from .transforms import deparse
    >>> sel = pglast.parse_sql("SELECT 1 FROM (a JOIN b ON a.id = b.id) AS j(x)")[0].stmt
    >>> deparse(fence_join(sel.fromClause[0]))
    'LATERAL (SELECT * FROM (a INNER JOIN b ON a.id = b.id) AS j (x) OFFSET 0) AS j'
    """
    star = ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),)))
    query = ast.SelectStmt(targetList=(star,), fromClause=(join,), limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
                           op=enums.SetOperation.SETOP_NONE)
    fence_subquery(query)
    return ast.RangeSubselect(lateral=True, subquery=query, alias=ast.Alias(aliasname=join.alias.aliasname))
