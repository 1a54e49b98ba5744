"""Small composable AST transforms (pglast nodes in, pglast nodes out) that scope one construct.

The scoper (scoper.py) decides where each applies; here each one is a pure function with an
example of the SQL before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    return and_predicates([predicate], where)


def and_predicates(predicates: list[AstNode], where: AstNode) -> AstNode:
    """Several tenant predicates in front of an existing condition (None when there is neither).

    >>> preds = [tenant_predicate("o", "tenant_id", "acme"), tenant_predicate("c", "tenant_id", "acme")]
    >>> deparse(and_predicates(preds, _parse_one("SELECT 1 WHERE a OR b").whereClause))
    "o.tenant_id = 'acme' AND c.tenant_id = 'acme' AND (a OR b)"
    >>> deparse(and_predicates(preds[:1], _parse_one("SELECT 1 WHERE a AND (b OR c)").whereClause))
    "o.tenant_id = 'acme' AND a AND (b OR c)"
    """
    if not predicates:
        return where
    rest = () if where is None else tuple(conjuncts(where))  # ANDing flat reads as PostgreSQL's parser reads it
    args = (*predicates, *rest)
    return args[0] if len(args) == 1 else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=args)


def conjuncts(where: AstNode) -> list[AstNode]:
    """The terms of a condition's top-level AND chain (nested ANDs flattened): each must hold.

    >>> [deparse(c) for c in conjuncts(_parse_one("SELECT 1 WHERE a AND (b AND (c OR d))").whereClause)]
    ['a', 'b', 'c OR d']
    >>> conjuncts(None)
    []
    """
    if where is None:
        return []
    if isinstance(where, ast.BoolExpr) and where.boolop == enums.BoolExprType.AND_EXPR:
        return [term for arg in where.args or () for term in conjuncts(arg)]
    return [where]


def exposed_name(rv: AstNode) -> str:
    """The name a FROM-list table reference is known by in its query level (alias or table name)."""
    return str(rv.alias.aliasname if rv.alias is not None else rv.relname)


def injectable(rv: AstNode) -> bool:
    """A scoped table reference can be filtered through its exposed name: column aliases
    (``AS o(a, b)``) rename its columns, so ``o.tenant_id`` could name another column."""
    return rv.alias is None or not rv.alias.colnames


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
    """Replace a scoped table in FROM/JOIN by a derived table under the same name: only where no
    condition can filter its rows (a FULL JOIN side, column aliases ...); elsewhere the scoper
    injects ``tenant_predicate`` and keeps the table (system columns, functional dependency).

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
    """The tenant literal that fills a tenant column: the only tenant value the backend ever
    stores comes from the proxy, coerced to the column's type by assignment."""
    return string_literal(tenant)


# Casts that keep a string of at most that many characters unchanged (no typmod: unlimited).
_STRING_TYPES = frozenset({"text", "varchar", "bpchar"})


def _keeps_string(type_name: AstNode, length: int) -> bool:
    names = [s.sval for s in type_name.names or ()]
    if not names or len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
        return False
    if type_name.setof or type_name.pct_type or type_name.arrayBounds or names[-1] not in _STRING_TYPES:
        return False
    mods = type_name.typmods or ()
    if not mods:
        return True
    mod = mods[0]
    return (names[-1] != "text" and len(mods) == 1 and isinstance(mod, ast.A_Const)
            and isinstance(mod.val, ast.Integer) and (mod.val.ival or 0) >= length)


def value_core(value: AstNode, length: int) -> AstNode:
    """The expression under COLLATE and casts that provably keep a string of ``length``
    characters unchanged; the first cast that may change it (``char(1)``, ``"char"``, a
    domain, ``name``, any other type) is returned itself, so it is never taken for a literal.

    >>> core = value_core(_parse_one("SELECT CAST('acme'::varchar(4) AS text) COLLATE C").targetList[0].val, 4)
    >>> type(core).__name__, core.val.sval
    ('A_Const', 'acme')
    >>> type(value_core(_parse_one("SELECT 'acme'::varchar(2)").targetList[0].val, 4)).__name__
    'TypeCast'
    >>> type(value_core(_parse_one('SELECT $1::"char"').targetList[0].val, 4)).__name__
    'TypeCast'
    """
    while True:
        if not (isinstance(value, ast.CollateClause)
                or (isinstance(value, ast.TypeCast) and _keeps_string(value.typeName, length))):
            return value
        value = value.arg


def param_tenant_value(number: int, tenant: str) -> AstNode:
    """A ``$n`` the client gave the tenant column (checked at Bind): the statement keeps it only
    so that PostgreSQL can type it; the value stored is the proxy's literal whatever is bound
    (SQL-level EXECUTE with other arguments included).

    >>> deparse(param_tenant_value(2, "acme"))
    "CASE WHEN CAST($2 AS pg_catalog.text) IS NULL THEN 'acme' ELSE 'acme' END"
    """
    param = ast.TypeCast(arg=ast.ParamRef(number=number), typeName=_type("text"))
    return ast.CaseExpr(args=(ast.CaseWhen(expr=ast.NullTest(arg=param, nulltesttype=enums.NullTestType.IS_NULL),
                                           result=forced_value(tenant)),),
                        defresult=forced_value(tenant))


# The text of the error a row with another tenant's value raises (the session may map it to 42501).
MISMATCH_MARKER = "tenantgate: a row gives the tenant column a value other than the session's tenant"


def guarded_value(value: AstNode, tenant: str) -> AstNode:
    """A computed tenant value (INSERT ... SELECT): the proxy's literal when the row's value is
    the tenant, else an error raised per row. The error branch depends on the row so that the
    planner cannot fold it into a plan-time error; it casts the marker text to int4 (22P02).

    >>> print(deparse(guarded_value(_parse_one("SELECT src.t").targetList[0].val, "acme")))
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    CASE WHEN CAST(src.t AS pg_catalog.text) = 'acme' THEN 'acme' ELSE CAST(CAST(CASE WHEN src.t IS NULL
    THEN 'tenantgate: ...' ELSE 'tenantgate: ...' END AS integer) AS pg_catalog.text) END
    """
    failure = ast.TypeCast(arg=_raising(value, "int4"), typeName=_type("text"))
    return ast.CaseExpr(args=(ast.CaseWhen(expr=_is_tenant(value, tenant), result=forced_value(tenant)),),
                        defresult=failure)


def copy_row_check(column: str, tenant: str) -> AstNode:
    """COPY ... FROM STDIN's WHERE: true for a row whose tenant column (sent, or filled by the
    table's default) is the tenant, an error (the marker, 22P02) for any other row.

    >>> print(deparse(copy_row_check("tenant_id", "acme")))  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    CASE WHEN CAST(tenant_id AS pg_catalog.text) = 'acme' THEN TRUE ELSE CAST(CASE WHEN tenant_id IS NULL
    THEN 'tenantgate: ...' ELSE 'tenantgate: ...' END AS boolean) END
    """
    value = ast.ColumnRef(fields=(ast.String(sval=column),))
    return ast.CaseExpr(args=(ast.CaseWhen(expr=_is_tenant(value, tenant), result=ast.A_Const(
        isnull=False, val=ast.Boolean(boolval=True))),), defresult=_raising(value, "bool"))


def _is_tenant(value: AstNode, tenant: str) -> AstNode:
    return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="="),),
                      lexpr=ast.TypeCast(arg=value, typeName=_type("text")), rexpr=string_literal(tenant))


def _raising(value: AstNode, type_name: str) -> AstNode:
    """The marker cast to a type it is no value of: an error whenever evaluated, never folded at
    plan time (the CASE over the row's value is not a constant)."""
    raising = ast.CaseExpr(args=(ast.CaseWhen(expr=ast.NullTest(arg=value, nulltesttype=enums.NullTestType.IS_NULL),
                                              result=string_literal(MISMATCH_MARKER)),),
                           defresult=string_literal(MISMATCH_MARKER))
    return ast.TypeCast(arg=raising, typeName=_type(type_name))


def _type(name: str) -> AstNode:
    return ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval=name)), typemod=-1)


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


def walk_nodes(node: object) -> Iterator[AstNode]:
    """Every pglast node in ``node`` (a node, or a tuple/list of them), depth first, itself first."""
    if isinstance(node, tuple | list):
        for item in node:
            yield from walk_nodes(item)
    elif isinstance(node, ast.Node):
        yield node
        for field in node_fields(node):
            yield from walk_nodes(getattr(node, field))


def select_with_tenant(source: AstNode, index: int | None, width: int,
                       tenant: str) -> AstNode:
    """INSERT ... SELECT: append the tenant literal (``index`` None), or guard the client's value
    at output position ``index`` (``guarded_value``: the literal if it is the tenant, else an error).

    ``width`` is the number of columns the INSERT names besides an appended tenant column.

    >>> sel = _parse_one("SELECT id FROM orders")
    >>> deparse(select_with_tenant(sel, None, 1, "acme"))
    "SELECT id, 'acme' FROM orders"
    >>> sel = _parse_one("SELECT 1, 'x' UNION SELECT 2, 'y'")
    >>> deparse(select_with_tenant(sel, None, 2, "acme"))  # doctest: +NORMALIZE_WHITESPACE
    "SELECT _tg_src._tg_c1, _tg_src._tg_c2, 'acme' FROM (SELECT 1, 'x' UNION SELECT 2, 'y')
     AS _tg_src (_tg_c1, _tg_c2)"
    >>> sel = _parse_one("SELECT * FROM unnest($1::text[], $2::int[])")
    >>> deparse(select_with_tenant(sel, 0, 2, "acme"))  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    "SELECT CASE WHEN CAST(_tg_src._tg_c1 AS pg_catalog.text) = 'acme' THEN 'acme' ELSE ... END,
     _tg_src._tg_c2 FROM ..."
    """
    targets = list(source.targetList or ()) if _is_simple_select(source) and not _has_star(source) else None
    if targets is not None and index is None:
        source.targetList = (*targets, ast.ResTarget(val=forced_value(tenant)))
        return source
    if targets is not None and index is not None and index < len(targets):
        targets[index] = ast.ResTarget(val=guarded_value(targets[index].val, tenant))
        source.targetList = tuple(targets)
        return source
    names = [f"_tg_c{i + 1}" for i in range(width)]
    outputs: list[ast.Node] = [ast.ColumnRef(fields=(ast.String(sval="_tg_src"), ast.String(sval=n)))
                               for n in names]
    if index is None:
        outputs.append(forced_value(tenant))
    else:
        outputs[index] = guarded_value(outputs[index], tenant)
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
