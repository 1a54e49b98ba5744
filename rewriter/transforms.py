"""Small composable AST transforms (pglast nodes in, pglast nodes out) that scope one construct.

The scoper (scoper.py) decides where each applies; here each one is a pure function with an
example of the SQL before and after.
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums, parse_sql, parser
from pglast.stream import RawStream

from .policy import Relation

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any


def deparse(node: AstNode) -> str:
    """PostgreSQL text for a node (pglast's deparser quotes identifiers and escapes literals).

    pglast prints PostgreSQL 17's ``WHEN NOT MATCHED BY TARGET``; the plain ``WHEN NOT MATCHED``
    means the same and older servers (15, 16) accept it.

    >>> deparse(_parse_one("MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN DO NOTHING"))
    'MERGE INTO t USING s ON t.a = s.a WHEN NOT MATCHED THEN DO NOTHING'
    """
    text = str(RawStream()(node))
    if isinstance(node, ast.MergeStmt) or "BY TARGET" in text:
        text = _drop_by_target(text)
    return text


def _drop_by_target(text: str) -> str:
    tokens = parser.scan(text)
    cut: list[tuple[int, int]] = []
    for i in range(len(tokens) - 3):
        names = [t.name for t in tokens[i:i + 4]]
        if names == ["NOT", "MATCHED", "BY", "TARGET"]:
            cut.append((tokens[i + 1].end + 1, tokens[i + 3].end + 1))
    for start, end in reversed(cut):
        text = text[:start] + text[end:]
    return text


def _parse_one(sql: str) -> AstNode:
    """Parse one statement (doctest helper)."""
    return parse_sql(sql)[0].stmt


def string_literal(value: str) -> AstNode:
    """A string constant node; the deparser renders it as a properly escaped literal.

    >>> deparse(string_literal("o'neil\\\\co"))
    "'o''neil\\\\co'"
    """
    return ast.A_Const(isnull=False, val=ast.String(sval=value))


def tenant_predicate(qualifier: str, column: str, tenant: str) -> AstNode:
    """``qualifier.column = 'tenant'``.

    >>> deparse(tenant_predicate("o", "tenant_id", "acme"))
    "o.tenant_id = 'acme'"
    >>> deparse(tenant_predicate("Order Lines", "org", "it's"))
    '"Order Lines".org = \\'it\\'\\'s\\''
    """
    return ast.A_Expr(
        kind=enums.A_Expr_Kind.AEXPR_OP,
        name=(ast.String(sval="="),),
        lexpr=ast.ColumnRef(fields=(ast.String(sval=qualifier), ast.String(sval=column))),
        rexpr=string_literal(tenant),
    )


def and_predicate(where: AstNode, predicate: AstNode) -> AstNode:
    """Put ``predicate`` in front of an existing condition (an OR in it cannot widen the scope).

    >>> where = _parse_one("SELECT 1 FROM t WHERE id = 1 OR 1 = 1").whereClause
    >>> deparse(and_predicate(where, tenant_predicate("t", "tenant_id", "acme")))
    "t.tenant_id = 'acme' AND (id = 1 OR 1 = 1)"
    >>> deparse(and_predicate(None, tenant_predicate("t", "tenant_id", "acme")))
    "t.tenant_id = 'acme'"
    """
    if where is None:
        return predicate
    return ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(predicate, where))


def scoped_select(relation: Relation, tenant: str, *, inherit: bool = True,
                  sample: AstNode = None) -> AstNode:
    """``SELECT * FROM schema.table WHERE table.column = 'tenant'``: a scoped table's only form.

    >>> rel = Relation("scoped", "public", "orders", column="tenant_id")
    >>> deparse(scoped_select(rel, "acme", inherit=False))
    "SELECT * FROM ONLY public.orders WHERE orders.tenant_id = 'acme'"
    """
    assert relation.column is not None
    table: AstNode = ast.RangeVar(schemaname=relation.schema, relname=relation.name, inh=inherit,
                                   relpersistence="p")
    if sample is not None:
        table = ast.RangeTableSample(relation=table, method=sample.method, args=sample.args,
                                     repeatable=sample.repeatable)
    return ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),))),),
        fromClause=(table,),
        whereClause=tenant_predicate(relation.name, relation.column, tenant),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )


def scope_range_var(rv: AstNode, relation: Relation, tenant: str,
                    sample: AstNode = None) -> AstNode:
    """Replace a scoped table in FROM/JOIN by a derived table under the same name.

    Scoping the table itself (not the WHERE of the query) keeps outer joins' semantics.

    >>> stmt = _parse_one("SELECT o.id, c.name FROM customers c LEFT JOIN ONLY orders o ON o.cid = c.id")
    >>> rel = Relation("scoped", "public", "orders", column="tenant_id")
    >>> stmt.fromClause[0].rarg = scope_range_var(stmt.fromClause[0].rarg, rel, "acme")
    >>> deparse(stmt)  # doctest: +NORMALIZE_WHITESPACE
    "SELECT o.id, c.name FROM customers AS c LEFT JOIN (SELECT * FROM ONLY public.orders
     WHERE orders.tenant_id = 'acme') AS o ON o.cid = c.id"
    """
    alias = rv.alias or ast.Alias(aliasname=rv.relname)
    return ast.RangeSubselect(lateral=False, subquery=scoped_select(relation, tenant, inherit=rv.inh,
                                                                    sample=sample), alias=alias)


def qualify(rv: AstNode, schema: str) -> AstNode:
    """Schema-qualify a table reference so that it never depends on search_path.

    >>> deparse(qualify(_parse_one("SELECT 1 FROM countries").fromClause[0], "public"))
    'public.countries'
    """
    rv.schemaname = schema
    return rv


def forced_value(tenant: str) -> AstNode:
    """The tenant literal that fills a tenant column an INSERT left out or set to DEFAULT."""
    return string_literal(tenant)


def add_tenant_column(insert: AstNode, column: str, tenant: str) -> AstNode:
    """INSERT without the tenant column: add it, with the tenant literal in every VALUES row.

    >>> ins = _parse_one("INSERT INTO orders (id, note) VALUES (1, 'a'), (2, DEFAULT)")
    >>> deparse(add_tenant_column(ins, "tenant_id", "acme"))
    "INSERT INTO orders (id, note, tenant_id) VALUES (1, 'a', 'acme'), (2, DEFAULT, 'acme')"
    >>> ins = _parse_one("INSERT INTO orders DEFAULT VALUES")
    >>> deparse(add_tenant_column(ins, "tenant_id", "acme"))
    "INSERT INTO orders (tenant_id) VALUES ('acme')"
    >>> ins = _parse_one("INSERT INTO orders (id) SELECT id + 100 FROM orders")
    >>> deparse(add_tenant_column(ins, "tenant_id", "acme"))
    "INSERT INTO orders (id, tenant_id) SELECT id + 100, 'acme' FROM orders"
    """
    insert.cols = (*(insert.cols or ()), ast.ResTarget(name=column))
    source = insert.selectStmt
    if source is None:
        insert.selectStmt = ast.SelectStmt(valuesLists=((forced_value(tenant),),),
                                           limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
                                           op=enums.SetOperation.SETOP_NONE)
    elif is_plain_values(source):
        source.valuesLists = tuple((*row, forced_value(tenant)) for row in source.valuesLists)
    else:
        insert.selectStmt = select_with_tenant(source, None, len(insert.cols) - 1, tenant)
    return insert


def is_plain_values(select: AstNode) -> bool:
    """A bare VALUES list (DEFAULT allowed in it), nothing around it."""
    return bool(select.valuesLists) and not (select.sortClause or select.limitCount or select.limitOffset
                                             or select.withClause or select.lockingClause)


def _is_simple_select(select: AstNode) -> bool:
    return (select.op == enums.SetOperation.SETOP_NONE and not select.valuesLists
            and select.targetList is not None and not select.intoClause)


def is_star(target: AstNode) -> bool:
    """A ``*`` or ``t.*`` entry of a target list (its width is unknown here)."""
    fields: Any = getattr(target.val, "fields", None) if isinstance(target.val, ast.ColumnRef) else None
    return bool(fields) and isinstance(fields[-1], ast.A_Star)


def _has_star(select: AstNode) -> bool:
    return any(is_star(t) for t in select.targetList)


def node_fields(node: AstNode) -> tuple[str, ...]:
    """The field names of a pglast node."""
    return tuple(type(node).__slots__)


def select_with_tenant(source: AstNode, index: int | None, width: int,
                       tenant: str) -> AstNode:
    """INSERT ... SELECT: force the tenant value at output position ``index`` (None: append it).

    ``width`` is the number of columns the INSERT names besides an appended tenant column.

    >>> sel = _parse_one("SELECT tenant_id, id FROM orders")
    >>> deparse(select_with_tenant(sel, 0, 2, "acme"))
    "SELECT 'acme', id FROM orders"
    >>> sel = _parse_one("SELECT 1, 'x' UNION SELECT 2, 'y'")
    >>> deparse(select_with_tenant(sel, 1, 2, "acme"))  # doctest: +NORMALIZE_WHITESPACE
    "SELECT _tg_src._tg_c1, 'acme' FROM (SELECT 1, 'x' UNION SELECT 2, 'y') AS _tg_src (_tg_c1, _tg_c2)"
    """
    if _is_simple_select(source):
        if index is None and not _has_star(source):
            source.targetList = (*source.targetList, ast.ResTarget(val=forced_value(tenant)))
            return source
        if index is not None and not _has_star(source) and index < len(source.targetList):
            targets = list(source.targetList)
            targets[index] = ast.ResTarget(val=forced_value(tenant))
            source.targetList = tuple(targets)
            return source
    names = [f"_tg_c{i + 1}" for i in range(width)]
    outputs: list[ast.Node] = [ast.ColumnRef(fields=(ast.String(sval="_tg_src"), ast.String(sval=n)))
                               for n in names]
    if index is None:
        outputs.append(forced_value(tenant))
    else:
        outputs[index] = forced_value(tenant)
    return ast.SelectStmt(
        targetList=tuple(ast.ResTarget(val=v) for v in outputs),
        fromClause=(ast.RangeSubselect(lateral=False, subquery=source, alias=ast.Alias(
            aliasname="_tg_src", colnames=tuple(ast.String(sval=n) for n in names))),),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )


def prefix_channel(expr: AstNode, prefix: str) -> AstNode:
    """pg_notify's channel argument, whatever expression it is, gets the tenant's prefix.

    >>> call = _parse_one("SELECT pg_notify(lower('Jobs'), 'x')").targetList[0].val
    >>> deparse(prefix_channel(call.args[0], "acme:"))
    "'acme:' || lower('Jobs')"
    """
    return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="||"),),
                      lexpr=string_literal(prefix), rexpr=expr)
