"""Rewrites and checks that keep a tenant away from other sessions' state on a pooled backend and
from other tenants' volume and activity (catalog estimates, plans, lock and transaction counters).

>>> from .transforms import deparse
>>> import pglast
>>> call = pglast.parse_sql("SELECT pg_try_advisory_xact_lock(42)")[0].stmt.targetList[0].val
>>> deparse(ast.FuncCall(funcname=call.funcname, args=namespaced_lock_args(call.args, "acme")))
"pg_try_advisory_xact_lock(hashtextextended('4:acme:1:' || CAST(CAST(42 AS bigint) AS text), 0))"
>>> lock_args_namespaced(namespaced_lock_args(call.args, "acme"), "acme"), lock_args_namespaced(call.args, "acme")
(True, False)
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast, enums

from .errors import Refused
from .policy import Relation
from .settings import type_names
from .transforms import deparse, node_fields, string_literal, walk_nodes

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any

# Protocol-level statements and portals carry backend names the proxy owns (proxy/pool.py
# backend_name): SQL may never name them, or it would run them past the Bind-time checks.
RESERVED_PREFIX = "tg_"

# Advisory locks live in one lock space per database: every key a tenant names is hashed into its
# own namespace. Transaction-scoped ones end with the transaction; session-scoped ones outlive it,
# so they pin the session to its backend (the only one holding them).
XACT_LOCKS = frozenset({"pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_xact_lock",
                        "pg_try_advisory_xact_lock_shared"})
SESSION_LOCKS = frozenset({"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
                           "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared"})
KEYED_LOCKS = XACT_LOCKS | SESSION_LOCKS
# ... pg_advisory_unlock_all() releases only this session's locks (all of them namespaced).
SESSION_STATE_FUNCTIONS = SESSION_LOCKS | {"pg_advisory_unlock_all"}

# Sizes count every tenant's rows: their first argument becomes a NULL of its type, so these strict
# functions answer NULL (psql's \\dt+ and \\l+ still work, with an empty size).
SIZE_FUNCTIONS = {
    "pg_relation_size": "regclass", "pg_table_size": "regclass", "pg_total_relation_size": "regclass",
    "pg_indexes_size": "regclass", "pg_database_size": "oid", "pg_tablespace_size": "oid",
}

# pg_class as tenants read it: the same columns in PostgreSQL 15's order (a test compares them with
# the server's), those counting every tenant's rows, pages and transactions replaced by constants.
PG_CLASS_COLUMNS = (
    "oid", "relname", "relnamespace", "reltype", "reloftype", "relowner", "relam", "relfilenode",
    "reltablespace", "relpages", "reltuples", "relallvisible", "reltoastrelid", "relhasindex", "relisshared",
    "relpersistence", "relkind", "relnatts", "relchecks", "relhasrules", "relhastriggers", "relhassubclass",
    "relrowsecurity", "relforcerowsecurity", "relispopulated", "relreplident", "relispartition", "relrewrite",
    "relfrozenxid", "relminmxid", "relacl", "reloptions", "relpartbound",
)
PG_CLASS_MASKS = {  # -1 tuples: "never analysed", what a fresh table shows
    "relpages": "CAST(0 AS integer)", "reltuples": "CAST(-1 AS real)", "relallvisible": "CAST(0 AS integer)",
    "relfrozenxid": "CAST('0' AS xid)", "relminmxid": "CAST('0' AS xid)",
}
MASKED_COLUMNS = frozenset(PG_CLASS_MASKS)
_MASKED_BY_NAME = frozenset({(None, "pg_class"), ("pg_catalog", "pg_class")})
_MASKED_SQL = {
    ("pg_catalog", "pg_class"): "SELECT " + ", ".join(
        f"{PG_CLASS_MASKS[c]} AS {c}" if c in PG_CLASS_MASKS else c for c in PG_CLASS_COLUMNS
    ) + " FROM pg_catalog.pg_class",
}


def rewrite_call(name: str, args: tuple[AstNode, ...], tenant: str) -> tuple[AstNode, ...] | None:
    """The arguments a built-in gets instead of the client's (already checked), or None to keep them."""
    if name in KEYED_LOCKS:
        return namespaced_lock_args(args, tenant)
    if name in SIZE_FUNCTIONS:
        return null_size_args(name, args)
    if name == "age" and len(args) == 1:
        return timestamp_age_args(args)
    return None


def refuse_reserved_name(name: str | None, what: str) -> None:
    """SQL naming a proxy-owned backend statement or portal (case-folded, as the backend does).

    >>> refuse_reserved_name("my_stmt", "EXECUTE")
    >>> try:
    ...     refuse_reserved_name("TG_1a2b", "EXECUTE")
    ... except Refused as err:
    ...     print(err.sqlstate, err.message)
    42501 EXECUTE of TG_1a2b is not allowed: names starting with tg_ belong to the proxy's protocol-level statements
    """
    if name is not None and name.lower().startswith(RESERVED_PREFIX):
        raise Refused("42501", f"{what} of {name} is not allowed: names starting with {RESERVED_PREFIX} "
                      "belong to the proxy's protocol-level statements", "reserved_name")


def explain_refusal(options: AstNode, allowed: bool) -> Refused | None:
    """EXPLAIN ANALYZE counts the rows the tenant filter removed (other tenants' rows): never. Plain
    EXPLAIN shows estimates from statistics over every tenant: only with [scoping] allow_explain.

    >>> import pglast
    >>> opts = lambda sql: pglast.parse_sql(sql)[0].stmt.options
    >>> explain_refusal(opts("EXPLAIN SELECT 1"), True), explain_refusal(opts("EXPLAIN (ANALYZE off) SELECT 1"), True)
    (None, None)
    >>> explain_refusal(opts("EXPLAIN ANALYZE SELECT 1"), True).message
    'EXPLAIN ANALYZE is not allowed for tenants: it counts rows of other tenants that the tenant filter removes'
    >>> explain_refusal(opts("EXPLAIN (costs) SELECT 1"), False).reason
    'explain'
    """
    for option in options or ():
        if option.defname == "analyze" and (option.arg is None or deparse(option.arg).strip("'").lower()
                                            not in ("off", "false", "0", "no")):
            return Refused("42501", "EXPLAIN ANALYZE is not allowed for tenants: it counts rows of other "
                           "tenants that the tenant filter removes", "explain")
    if not allowed:
        return Refused("42501", "EXPLAIN is not allowed for tenants: its estimates come from statistics over "
                       "every tenant's rows (the operator may allow it: [scoping] allow_explain)", "explain")
    return None


def _expr(sql: str) -> AstNode:
    stmt: AstNode = pglast.parse_sql(f"SELECT {sql}")[0].stmt
    return stmt.targetList[0].val


def _lock_prefix(tenant: str, arity: int) -> str:
    """Length-prefixed, so no tenant id can end inside another's namespace; 1- and 2-key forms apart."""
    return f"{len(tenant)}:{tenant}:{arity}:"


def namespaced_lock_args(args: tuple[AstNode, ...], tenant: str) -> tuple[AstNode, ...]:
    """The one bigint key of a tenant's advisory lock: a 64-bit hash of tenant and key(s)."""
    if len(args) not in (1, 2):
        raise Refused("42501", "advisory lock functions take one bigint key or two integer keys", "denied_function")
    key: AstNode = string_literal(_lock_prefix(tenant, len(args)))
    for i, arg in enumerate(args):
        part = _expr(f"CAST(CAST(NULL AS {'bigint' if len(args) == 1 else 'integer'}) AS text)")
        part.arg.arg = arg
        if i:
            key = _concat(key, string_literal(":"))
        key = _concat(key, part)
    return (ast.FuncCall(funcname=(ast.String(sval="hashtextextended"),), args=(key, _expr("0"))),)


def _concat(left: AstNode, right: AstNode) -> AstNode:
    return ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String(sval="||"),), lexpr=left, rexpr=right)


def lock_args_namespaced(args: AstNode, tenant: str) -> bool:
    """The verifier's check: the key is hashtextextended(<this tenant's prefix> || ..., 0)."""
    if not args or len(args) != 1 or not isinstance(args[0], ast.FuncCall):
        return False
    call: AstNode = args[0]
    if [s.sval for s in call.funcname] != ["hashtextextended"] or len(call.args or ()) != 2:
        return False
    if deparse(call.args[1]) != "0":
        return False
    left: AstNode = call.args[0]
    while isinstance(left, ast.A_Expr) and [s.sval for s in left.name or ()] == ["||"]:
        left = left.lexpr
    prefix = _const_string(left)
    return prefix is not None and prefix in (_lock_prefix(tenant, 1), _lock_prefix(tenant, 2))


def _const_string(node: AstNode) -> str | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def timestamp_age_args(args: tuple[AstNode, ...]) -> tuple[AstNode, ...]:
    """age(x) of one argument: only its timestamp form. age(xid) shows how many transactions every
    tenant ran since; cast to timestamptz, an xid fails in the backend instead."""
    return (ast.TypeCast(arg=args[0], typeName=_expr("CAST(NULL AS pg_catalog.timestamptz)").typeName),)


def is_timestamp_age(args: AstNode) -> bool:
    if not args or len(args) != 1:
        return True  # age(a, b) exists for timestamps only
    cast = args[0]
    return isinstance(cast, ast.TypeCast) and type_names(cast) == ["pg_catalog", "timestamptz"]


def reads_masked_columns(stmt: AstNode) -> bool:
    """Could the statement read a masked column of a masked catalog relation? Conservatively yes
    when it names one anywhere, uses ``*`` in a query level that reads pg_class, a whole-row
    reference, renamed alias columns, NATURAL or USING joins (they compare columns without naming
    them) or copies a table. Otherwise the catalog is read as it is, so psql's ``\\d`` and driver
    metadata queries stay unchanged.

    >>> import pglast
    >>> reads = lambda sql: reads_masked_columns(pglast.parse_sql(sql)[0].stmt)
    >>> reads("SELECT c.oid, relname FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace")
    False
    >>> reads("SELECT count(*) FROM pg_class c, (SELECT * FROM orders) o")  # that * expands orders only
    False
    >>> [reads(q) for q in ("SELECT reltuples FROM pg_class", "SELECT c FROM pg_class c", "TABLE pg_class",
    ...  "SELECT row_to_json(pg_class) FROM pg_class", "SELECT 1 FROM pg_class AS c(a, b)",
    ...  "SELECT 1 FROM pg_class NATURAL JOIN x", "COPY pg_class TO STDOUT",
    ...  "SELECT x.* FROM pg_class c, LATERAL (SELECT c.*) x", "SELECT s.* FROM (SELECT * FROM pg_class) s",
    ...  "UPDATE orders SET note = '' FROM pg_class RETURNING *")]
    [True, True, True, True, True, True, True, True, True, True]
    """
    aliases = {"pg_class"}
    for node in walk_nodes(stmt):
        if isinstance(node, ast.RangeVar) and (node.schemaname, node.relname) in _MASKED_BY_NAME:
            aliases.add(str(node.relname))
            if node.alias is not None:
                if node.alias.colnames:
                    return True
                aliases.add(str(node.alias.aliasname))
    return _reads(stmt, None, frozenset(aliases))


_LEVELS = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def _reads(node: object, level: AstNode, aliases: frozenset[str]) -> bool:
    """reads_masked_columns below ``node``; ``level``: the query level it belongs to (what a bare
    ``*`` there expands)."""
    if isinstance(node, tuple | list):
        return any(_reads(item, level, aliases) for item in node)
    if not isinstance(node, ast.Node):
        return False
    if isinstance(node, _LEVELS):
        level = node
    if isinstance(node, ast.ColumnRef):
        fields = list(node.fields or ())
        names = [f.sval for f in fields if isinstance(f, ast.String)]
        if fields and isinstance(fields[-1], ast.A_Star):
            if not names:  # a bare *: this level's FROM items
                return any(isinstance(n, ast.RangeVar) and (n.schemaname, n.relname) in _MASKED_BY_NAME
                           for n in walk_nodes(level))
            return names[-1] in aliases
        return bool(names) and (names[-1] in MASKED_COLUMNS or (len(names) == 1 and names[0] in aliases))
    if isinstance(node, ast.A_Star):  # (row).* and the like
        return True
    if isinstance(node, ast.JoinExpr) and (node.isNatural or node.usingClause):
        return True
    if isinstance(node, ast.CopyStmt) and node.relation is not None:
        return True
    return any(_reads(getattr(node, field), level, aliases) for field in node_fields(node))


def null_size_args(name: str, args: tuple[AstNode, ...]) -> tuple[AstNode, ...]:
    """The arguments of a size function that make it answer NULL (strict: NULL in, NULL out)."""
    if not args:
        raise Refused("42501", f"{name}() needs the relation, database or tablespace it measures", "denied_function")
    return (_expr(f"CAST(NULL AS {SIZE_FUNCTIONS[name]})"), *args[1:])


def is_null_size(name: str, args: AstNode) -> bool:
    return bool(args) and deparse(args[0]) == deparse(_expr(f"CAST(NULL AS {SIZE_FUNCTIONS[name]})"))


def masked_select(rel: Relation) -> AstNode:
    """The derived table's query that replaces a masked catalog relation."""
    return pglast.parse_sql(_MASKED_SQL[(rel.schema, rel.name)])[0].stmt


def masked_range(rv: AstNode, rel: Relation) -> AstNode:
    """``pg_class c`` -> ``(SELECT oid, ..., CAST(-1 AS real) AS reltuples, ... FROM pg_catalog.pg_class) AS c``."""
    alias = rv.alias if rv.alias is not None else ast.Alias(aliasname=rv.relname)
    return ast.RangeSubselect(lateral=False, subquery=masked_select(rel), alias=alias)


def is_masked(subquery: AstNode) -> bool:
    """The exact masked query of a catalog relation (the verifier accepts nothing else around one)."""
    if not isinstance(subquery, ast.SelectStmt) or not subquery.fromClause or len(subquery.fromClause) != 1:
        return False
    rv: AstNode = subquery.fromClause[0]
    if not isinstance(rv, ast.RangeVar):
        return False
    key = (str(rv.schemaname), str(rv.relname))
    if key not in _MASKED_SQL:
        return False
    return deparse(subquery) == deparse(pglast.parse_sql(_MASKED_SQL[key])[0].stmt)


def own_relation_text(function: str, first: AstNode, home: str) -> None:
    """Schema tier: a sequence or relation named in a string must be the tenant's own.

    >>> first = lambda sql: pglast.parse_sql(sql)[0].stmt.targetList[0].val.args[0]
    >>> own_relation_text("nextval", first("SELECT nextval('orders_id_seq'::regclass)"), "t_acme")
    >>> try:
    ...     own_relation_text("nextval", first("SELECT nextval('t_bob.orders_id_seq')"), "t_acme")
    ... except Refused as err:
    ...     print(err.reason, err.message)
    other_schema nextval() names t_bob.orders_id_seq, outside this tenant's schema t_acme
    """
    if isinstance(first, ast.TypeCast):
        first = first.arg
    if not (isinstance(first, ast.A_Const) and isinstance(first.val, ast.String)):
        raise Refused("42501", f"{function}() needs a literal relation name in a schema-tier session", "other_schema")
    text = first.val.sval or ""
    try:
        select: AstNode = pglast.parser.parse_sql(f"SELECT * FROM {text}")[0].stmt
        names = select.fromClause[0]
    except (pglast.parser.ParseError, AttributeError, IndexError, TypeError):
        raise Refused("42501", f"{function}() names a relation tenantgate cannot read", "other_schema") from None
    schema = getattr(names, "schemaname", None)
    if not isinstance(names, ast.RangeVar) or names.catalogname is not None or (
        schema is not None and schema != home
    ):
        raise Refused("42501", f"{function}() names {text}, outside this tenant's schema {home}", "other_schema")
