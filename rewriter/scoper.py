"""Walk one parsed statement, apply the transforms where scoped tables appear, refuse the rest.

Fail closed: a node type the walker does not know is refused (0A000), so a construct added to the
grammar later cannot carry a table reference past it.

Longer than most modules on purpose: one walker whose statement, query-level, FROM-item and
write-target handlers share its state (CTE visibility, tenant parameters, the predicates a
query level collects); the pure rewrites it applies live in transforms.py.

>>> import pglast
>>> from .policy import Policy
>>> policy = Policy(scoped={("public", "orders"): "tenant_id"})
>>> s = Scoper(policy, "acme", extended=False)
>>> stmt = pglast.parse_sql("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders")[0].stmt
>>> s.statement(stmt)
'select'
>>> deparse(stmt)  # doctest: +NORMALIZE_WHITESPACE
"WITH orders AS (SELECT * FROM public.orders WHERE orders.tenant_id = 'acme') SELECT * FROM orders"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pglast import ast, enums

from . import channels, guards
from . import sidechannels as side
from .catalog import function_denial, operator_denial
from .classify import discard_kind, refusal, transaction_kind
from .errors import Refused
from .policy import Policy, Relation
from .scope import CteScope
from .settings import Changes
from .transforms import (
    add_tenant_column,
    and_predicate,
    and_predicates,
    conjuncts,
    copy_row_check,
    deparse,
    exposed_name,
    forced_value,
    injectable,
    is_plain_values,
    is_star,
    node_fields,
    param_tenant_value,
    prefix_channel,
    qualify,
    scope_range_var,
    select_with_tenant,
    tenant_predicate,
    value_core,
)

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any

# Expression-level nodes that hold no table reference of their own: walked field by field.
GENERIC_NODES = frozenset({
    "A_Const", "A_Expr", "A_ArrayExpr", "A_Indices", "A_Indirection", "A_Star", "Alias", "BitString",
    "Boolean", "BooleanTest", "BoolExpr", "CaseExpr", "CaseWhen", "CoalesceExpr", "CollateClause",
    "ColumnDef", "ColumnRef", "CTECycleClause", "CTESearchClause", "Float", "GroupingFunc",
    "GroupingSet", "IndexElem", "InferClause", "Integer", "MinMaxExpr", "MultiAssignRef",
    "NamedArgExpr", "NullTest", "ParamRef", "RangeTableFuncCol", "ResTarget", "ReturningClause",
    "RowExpr", "SetToDefault", "SortBy", "SQLValueFunction", "String", "TypeCast", "TypeName",
    "WindowDef", "XmlExpr", "XmlSerialize",
})
# Built-ins that take a relation by name as text: a schema-tier tenant may only name its own.
RELATION_TEXT_FUNCTIONS = frozenset({
    "nextval", "pg_relation_size", "pg_total_relation_size", "pg_table_size", "pg_indexes_size",
    "has_table_privilege", "has_sequence_privilege", "has_column_privilege", "has_any_column_privilege",
    "pg_get_serial_sequence", "to_regclass",
})
# Operators named by A_Expr kinds other than these are fixed by the grammar (LIKE, BETWEEN ...).
_CHECKED_OPERATOR_KINDS = frozenset({enums.A_Expr_Kind.AEXPR_OP, enums.A_Expr_Kind.AEXPR_OP_ANY,
                                     enums.A_Expr_Kind.AEXPR_OP_ALL})
# Functions whose arguments the rewriter reads or rewrites by position.
_POSITIONAL = frozenset({"set_config", "pg_notify", "age", *side.SIZE_FUNCTIONS}) | side.KEYED_LOCKS
DML = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")


def _is_plain_select(select: AstNode) -> bool:
    return select.op == enums.SetOperation.SETOP_NONE and not select.valuesLists


def unsupported(what: str) -> Refused:
    return Refused("0A000", f"{what} is not supported by tenantgate", "unsupported")


class Scoper:
    """Scopes the statements of one message for one tenant (create one per rewrite).

    After ``statement()``: ``modified`` says whether the statement must be deparsed,
    ``tenant_params`` holds $n numbers that must equal the tenant at Bind time and
    ``value_dependent`` says a decision depended on a literal's value (no literal lifting);
    ``relations`` holds every (schema, table) referenced (encrypted-column analysis needs it);
    ``changes`` the session settings and pins of all statements so far (settings.Changes).
    """

    def __init__(self, policy: Policy, tenant: str, *, extended: bool) -> None:
        self.policy = policy
        self.tenant = tenant
        self.extended = extended
        self.tenant_params: set[int] = set()
        self.value_dependent = False
        self.modified = False
        self.relations: set[tuple[str, str]] = set()
        self._ctes = CteScope()
        self._in_prepare = False
        self._deferred = False  # inside PREPARE or DECLARE: functions run later, at EXECUTE or FETCH
        self.changes = Changes(policy.search_path)
        self._mask = False  # the statement may read masked catalog columns (sidechannels.reads_masked_columns)
        self._fence = False  # derived tables and CTEs holding scoped tables are fenced (guards.needs_fence)
        self._scoped = 0  # scoped table references resolved so far (did a subquery hold one?)
        # predicates in the ONs of this query level's outer joins (their tables are nullable here)
        self._nullable: list[AstNode] = []

    # -- statements ---------------------------------------------------------------------------

    def statement(self, stmt: AstNode) -> str:
        """Scope one top-level statement in place; return its kind or raise Refused."""
        self.modified = False
        self.changes.begin()
        self._mask = side.reads_masked_columns(stmt)
        self._fence = guards.needs_fence(stmt)
        name = type(stmt).__name__
        if name in DML:
            self.dml(stmt)
            return name.removesuffix("Stmt").lower()
        handler = getattr(self, f"_stmt_{name}", None)
        if handler is None:
            raise refusal(stmt)
        kind: str = handler(stmt)
        return kind

    def dml(self, stmt: AstNode) -> None:
        """SELECT/INSERT/UPDATE/DELETE/MERGE at any level (top, CTE, EXPLAIN, PREPARE, COPY)."""
        name = type(stmt).__name__
        if name == "SelectStmt":
            self.select(stmt)
        elif name == "InsertStmt":
            self.insert(stmt)
        elif name == "UpdateStmt":
            self.update(stmt)
        elif name == "DeleteStmt":
            self.delete(stmt)
        elif name == "MergeStmt":
            self.merge(stmt)
        else:
            raise refusal(stmt)

    def _stmt_VariableSetStmt(self, stmt: AstNode) -> str:
        self.value_dependent = True
        return self.changes.set_statement(stmt)

    def _stmt_VariableShowStmt(self, stmt: AstNode) -> str:
        return "show"

    def _stmt_ConstraintsSetStmt(self, stmt: AstNode) -> str:
        return "set"

    def _stmt_DiscardStmt(self, stmt: AstNode) -> str:
        return discard_kind(stmt)

    def _stmt_TransactionStmt(self, stmt: AstNode) -> str:
        return transaction_kind(stmt)

    def _stmt_ExplainStmt(self, stmt: AstNode) -> str:
        refused = side.explain_refusal(stmt.options, self.policy.allow_explain)
        if refused is not None:
            raise refused
        inner = type(stmt.query).__name__
        if inner in DML:
            self.dml(stmt.query)
        elif inner in ("ExecuteStmt", "DeclareCursorStmt"):
            getattr(self, f"_stmt_{inner}")(stmt.query)
        else:
            raise refusal(stmt.query)
        return "explain"

    @contextmanager
    def _later(self) -> Iterator[None]:
        """The body of PREPARE or DECLARE: it runs when EXECUTE or FETCH says so."""
        outer = self._deferred
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = outer

    def _stmt_PrepareStmt(self, stmt: AstNode) -> str:
        side.refuse_reserved_name(stmt.name, "PREPARE")
        self.expr(stmt.argtypes)
        self._in_prepare = True
        try:
            with self._later():
                self.dml(stmt.query)
        finally:
            self._in_prepare = False
        return "prepare"

    def _stmt_ExecuteStmt(self, stmt: AstNode) -> str:
        side.refuse_reserved_name(stmt.name, "EXECUTE")
        self.expr(stmt.params)
        return "execute"

    def _stmt_DeallocateStmt(self, stmt: AstNode) -> str:
        if stmt.isall:  # the proxy clears what it tracks of the backend's statements
            return "deallocate_all"
        side.refuse_reserved_name(stmt.name, "DEALLOCATE")
        return "deallocate"

    def _stmt_DeclareCursorStmt(self, stmt: AstNode) -> str:
        side.refuse_reserved_name(stmt.portalname, "DECLARE")
        with self._later():
            self.dml(stmt.query)
        return "declare"

    def _stmt_FetchStmt(self, stmt: AstNode) -> str:
        side.refuse_reserved_name(stmt.portalname, "MOVE" if stmt.ismove else "FETCH")
        return "move" if stmt.ismove else "fetch"

    def _stmt_ClosePortalStmt(self, stmt: AstNode) -> str:
        side.refuse_reserved_name(stmt.portalname, "CLOSE")
        return "close"

    def _stmt_ListenStmt(self, stmt: AstNode) -> str:
        self._namespace_channel(stmt)
        return "listen"

    def _stmt_UnlistenStmt(self, stmt: AstNode) -> str:
        if stmt.conditionname is not None:  # UNLISTEN * only concerns this session
            self._namespace_channel(stmt)
        return "unlisten"

    def _stmt_NotifyStmt(self, stmt: AstNode) -> str:
        self._namespace_channel(stmt)
        return "notify"

    def _namespace_channel(self, stmt: AstNode) -> None:
        """LISTEN/UNLISTEN/NOTIFY name the tenant's own channel; the text then depends on the tenant."""
        stmt.conditionname = channels.namespaced(self.tenant, stmt.conditionname)
        self.modified = self.value_dependent = True

    def _stmt_CopyStmt(self, stmt: AstNode) -> str:
        if stmt.filename is not None or stmt.is_program:
            raise Refused("42501", "COPY to a server file or program is not allowed for tenants", "copy_file")
        if stmt.is_from:
            return self._copy_from(stmt)
        if stmt.query is not None:
            self.dml(stmt.query)
            return "copy"
        # COPY table TO STDOUT reads that table only (no inheritance children): the same as a query.
        columns = [ast.ColumnRef(fields=(col,)) for col in stmt.attlist or ()] or [
            ast.ColumnRef(fields=(ast.A_Star(),))]
        query = ast.SelectStmt(
            targetList=tuple(ast.ResTarget(val=c) for c in columns),
            fromClause=(ast.RangeVar(schemaname=stmt.relation.schemaname, relname=stmt.relation.relname,
                                     inh=False, relpersistence="p", alias=stmt.relation.alias),),
            limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT, op=enums.SetOperation.SETOP_NONE)
        if stmt.relation.catalogname is not None:
            raise unsupported("a database-qualified table name")
        self.select(query)
        stmt.relation, stmt.attlist, stmt.query = None, None, query
        self.modified = True
        return "copy"

    def _copy_from(self, stmt: AstNode) -> str:
        """COPY t [(cols)] FROM STDIN: every row's tenant column (sent, or the table's default,
        which the proxy cannot trust) is checked per row by a WHERE the proxy adds: a row for
        another tenant aborts the COPY (nothing of it is stored). The client's own WHERE comes
        first: a row it skips is not inserted, so it need not pass the check."""
        rel, _ = self.target(stmt.relation, "COPY FROM")
        self.expr(stmt.whereClause)
        if rel.kind == "scoped":
            check = copy_row_check(str(rel.column), self.tenant)
            stmt.whereClause = check if stmt.whereClause is None else ast.BoolExpr(
                boolop=enums.BoolExprType.AND_EXPR, args=(*conjuncts(stmt.whereClause), check))
        return "copy"

    # -- query levels ---------------------------------------------------------------------------

    @contextmanager
    def with_clause(self, clause: AstNode) -> Iterator[None]:
        """Scope CTE bodies and make their names visible as PostgreSQL does (scope.CteScope)."""
        with self._ctes.within_pg(clause, self._cte_body):
            yield

    def _cte_body(self, cte: AstNode) -> None:
        before = self._scoped
        self.dml(cte.ctequery)
        if self._fence and self._scoped > before:
            guards.fence_cte(cte)
        self.expr(cte.search_clause)
        self.expr(cte.cycle_clause)

    def is_cte(self, rv: AstNode) -> bool:
        return self._ctes.is_cte_ref(rv)

    def select(self, sel: AstNode) -> None:
        if sel.intoClause is not None:
            raise Refused("42501", "SELECT INTO is not allowed for tenants", "ddl")
        with self.with_clause(sel.withClause):
            if sel.op != enums.SetOperation.SETOP_NONE:
                self.select(sel.larg)
                self.select(sel.rarg)
            predicates: list[AstNode] = []
            before, outer, self._nullable = self._scoped, self._nullable, []
            if sel.fromClause:
                sel.fromClause = tuple(self.from_item(item, predicates) for item in sel.fromClause)
            guard = [*predicates, *map(guards.or_null, self._nullable)]
            self._nullable = outer
            for part in (sel.valuesLists, sel.targetList, sel.whereClause, sel.groupClause,
                         sel.havingClause, sel.windowClause, sel.sortClause, sel.limitOffset,
                         sel.limitCount, sel.distinctClause):
                self.expr(part)
            sel.whereClause = and_predicates(predicates, guards.guarded(sel.whereClause, guard))
            if self._scoped > before:
                sel.havingClause = guards.guarded_having(sel.havingClause)
            # FOR UPDATE OF names FROM items (aliases), never tables: nothing to scope there.
            for clause in sel.lockingClause or ():
                if not isinstance(clause, ast.LockingClause):
                    raise unsupported(type(clause).__name__)

    def from_item(self, item: AstNode, where: list[AstNode] | None) -> AstNode:
        """Scope one FROM item. ``where`` collects the tenant predicates of the scoped tables
        whose rows the condition it belongs to filters (the query level's WHERE, or a join's
        ON); None where no condition can (the sides of a FULL JOIN, ...): they are wrapped."""
        if isinstance(item, ast.RangeVar):
            return self.range_var(item, where)
        if isinstance(item, ast.JoinExpr):
            left, right, on = self._join_targets(item, where)
            mark, nullable, before = (len(where) if where is not None else 0), len(self._nullable), self._scoped
            item.larg = self.from_item(item.larg, left)
            item.rarg = self.from_item(item.rarg, right)
            self.expr(item.quals)
            # the ON runs where the predicates of this join's tables hold (the outer ones further up)
            guard = [*(where[mark:] if where is not None else ()), *on,
                     *map(guards.or_null, self._nullable[nullable:])]
            item.quals = and_predicates(on, guards.guarded(item.quals, guard))
            if item.alias is not None:  # its tables are hidden from the level behind the alias
                del self._nullable[nullable:]
                if self._fence and self._scoped > before:  # no guard can name them: fence them
                    return guards.fence_join(item)
            else:
                self._nullable.extend(on)
            return item
        if isinstance(item, ast.RangeSubselect):
            before = self._scoped
            self.dml(item.subquery)
            if self._fence and self._scoped > before:
                guards.fence_subquery(item.subquery)
            return item
        if isinstance(item, ast.RangeFunction):
            self.expr(item.functions)
            self.expr(item.coldeflist)
            return item
        if isinstance(item, ast.RangeTableSample):
            self.expr(item.args)
            self.expr(item.repeatable)
            rv = item.relation
            if isinstance(rv, ast.RangeVar) and not self.is_cte(rv):
                relation = self.relation(rv)
                if relation.kind == "scoped":
                    self.modified = True
                    if where is None or not injectable(rv):
                        return self._wrapped(scope_range_var(rv, relation, self.tenant, sample=item))
                    where.append(tenant_predicate(exposed_name(rv), str(relation.column), self.tenant))
                    qualify(rv, relation.schema)
                    return item
            item.relation = self.from_item(rv, where)
            return item
        if isinstance(item, ast.RangeTableFunc):
            self.expr(item.docexpr)
            self.expr(item.rowexpr)
            self.expr(item.namespaces)
            self.expr(item.columns)
            return item
        raise unsupported(f"{type(item).__name__} in FROM")

    @staticmethod
    def _join_targets(join: AstNode, where: list[AstNode] | None
                      ) -> tuple[list[AstNode] | None, list[AstNode] | None, list[AstNode]]:
        """Where the predicates of each side of a join go: (left, right, this join's ON).

        An inner join passes the outer condition down to both sides; the nullable side of a
        LEFT/RIGHT join is filtered in the join's own ON (the preserved side further up); a
        join with an alias hides its tables from the outer condition (its own ON, when it is
        an inner join with one, takes their predicates); USING/NATURAL joins have no ON."""
        on: list[AstNode] = []
        has_on = join.quals is not None
        if join.alias is not None:
            where = on if join.jointype == enums.JoinType.JOIN_INNER and has_on else None
        own = on if has_on else None
        kind = join.jointype
        if kind == enums.JoinType.JOIN_INNER:
            return where, where, on
        if kind == enums.JoinType.JOIN_LEFT:
            return where, own, on
        if kind == enums.JoinType.JOIN_RIGHT:
            return own, where, on
        if kind == enums.JoinType.JOIN_FULL:
            return None, None, on
        raise unsupported(f"join type {kind.name}")

    def relation(self, rv: AstNode) -> Relation:
        """Resolve a table reference that is not a CTE; refuse unlisted and denied relations."""
        if rv.catalogname is not None:
            raise unsupported("a database-qualified table name")
        rel = self.policy.resolve(rv.schemaname, rv.relname)
        self.relations.add((rel.schema, rel.name))
        self._scoped += rel.kind == "scoped"
        if rel.kind == "foreign":
            raise Refused("42501", f"table {rel.schema}.{rel.name} is outside this tenant's schema "
                          f"{self.policy.home}", "other_schema")
        if rel.kind == "unlisted":
            raise Refused("42501", f"table {rel.schema}.{rel.name} is not available to tenants", "unlisted_table")
        if rel.kind == "catalog" and rel.denial is not None:
            raise Refused("42501", f"catalog relation {rel.schema}.{rel.name} is not available to tenants", rel.denial)
        return rel

    def range_var(self, rv: AstNode, where: list[AstNode] | None) -> AstNode:
        if self.is_cte(rv):
            return rv
        rel = self.relation(rv)
        if rel.kind == "scoped":
            self.modified = True
            if where is None or not injectable(rv):
                return self._wrapped(scope_range_var(rv, rel, self.tenant))
            where.append(tenant_predicate(exposed_name(rv), str(rel.column), self.tenant))
            return qualify(rv, rel.schema)
        if rel.masked and self._mask:  # catalog columns counting other tenants' rows are masked
            self.modified = True
            return side.masked_range(rv, rel)
        if rel.kind in ("reference", "owned") and rv.schemaname is None:
            self.modified = True
            return qualify(rv, rel.schema)
        return rv

    def _wrapped(self, wrapper: AstNode) -> AstNode:
        if self._fence:
            guards.fence_subquery(wrapper.subquery)
        return wrapper

    def target(self, rv: AstNode, verb: str) -> tuple[Relation, str]:
        """The table an INSERT/UPDATE/DELETE/MERGE writes (never a CTE): must be scoped."""
        rel = self.relation(rv)
        if rel.kind == "reference":
            raise Refused("42501", f"{verb} on reference table {rel.schema}.{rel.name} is not "
                          "allowed: reference tables are read-only for tenants", "reference_write")
        if rel.kind not in ("scoped", "owned"):
            raise Refused("42501", f"{verb} on catalog relation {rel.schema}.{rel.name} is not allowed", "catalog")
        qualify(rv, rel.schema)
        self.modified = True
        return rel, rv.alias.aliasname if rv.alias else rv.relname

    def _tenant_assignments(self, targets: AstNode, rel: Relation) -> AstNode:
        """UPDATE SET / ON CONFLICT DO UPDATE / MERGE UPDATE: the tenant column may only be set to
        the session's tenant (a no-op, ORMs' save() does it), and then gets the proxy's value."""
        if rel.kind == "owned" or not targets:
            return targets
        out = []
        for t in targets:
            if t.name == rel.column:
                if t.indirection or isinstance(t.val, ast.MultiAssignRef):
                    raise Refused("42501", f"the tenant column {rel.column} of {rel.schema}.{rel.name} "
                                  "can only be set to the session's tenant, by a plain value", "tenant_column")
                t = ast.ResTarget(name=t.name, val=self.tenant_value(t.val, rel, "UPDATE"))
            out.append(t)
        return tuple(out)

    def update(self, stmt: AstNode) -> None:
        with self.with_clause(stmt.withClause):
            rel, qualifier = self.target(stmt.relation, "UPDATE")
            self.expr(stmt.targetList)
            stmt.targetList = self._tenant_assignments(stmt.targetList, rel)
            stmt.fromClause = self._scoped_rest(stmt, stmt.fromClause, rel, qualifier)

    def delete(self, stmt: AstNode) -> None:
        with self.with_clause(stmt.withClause):
            rel, qualifier = self.target(stmt.relation, "DELETE")
            stmt.usingClause = self._scoped_rest(stmt, stmt.usingClause, rel, qualifier)

    def _scoped_rest(
        self, stmt: AstNode, items: tuple[AstNode, ...] | None, rel: Relation, qualifier: str
    ) -> tuple[AstNode, ...] | None:
        """UPDATE's FROM or DELETE's USING items scoped (in order, before WHERE and RETURNING are
        walked), and the WHERE given the target's tenant predicate and the items' predicates."""
        predicates: list[AstNode] = []
        outer, self._nullable = self._nullable, []
        scoped = tuple(self.from_item(item, predicates) for item in items) if items else items
        guard = [*predicates, *map(guards.or_null, self._nullable), *self._own_predicate(rel, qualifier)]
        self._nullable = outer
        self.expr(stmt.whereClause)
        self.expr(stmt.returningClause)
        where = and_predicates(predicates, guards.guarded(stmt.whereClause, guard))
        stmt.whereClause = self._scoped_where(where, rel, qualifier)
        return scoped

    def _own_predicate(self, rel: Relation, qualifier: str) -> list[AstNode]:
        return [] if rel.kind == "owned" else [tenant_predicate(qualifier, str(rel.column), self.tenant)]

    def _scoped_where(self, where: AstNode, rel: Relation, qualifier: str) -> AstNode:
        """WHERE (or ON) with the tenant predicate first; a schema-tier tenant's own table needs none."""
        if rel.kind == "owned":
            return where
        return and_predicate(where, tenant_predicate(qualifier, str(rel.column), self.tenant))

    def insert(self, stmt: AstNode) -> None:
        with self.with_clause(stmt.withClause):
            rel, qualifier = self.target(stmt.relation, "INSERT")
            column = str(rel.column)
            source = stmt.selectStmt
            if source is not None:
                self.dml(source)
            if rel.kind == "owned":
                self._on_conflict(stmt.onConflictClause, rel, qualifier)
                self.expr(stmt.returningClause)
                return
            names = [c.name for c in stmt.cols or ()]
            if source is not None and not names:
                names = self._all_columns(stmt, rel)
            if column not in names:
                add_tenant_column(stmt, column, self.tenant)
            else:
                index = names.index(column)
                if names.count(column) > 1 or stmt.cols[index].indirection:
                    raise Refused("42501", f"INSERT names the tenant column {column} in an "
                                  "unsupported way", "tenant_column")
                if is_plain_values(source):
                    source.valuesLists = tuple(self._values_row(row, index, rel) for row in source.valuesLists)
                elif not self._select_tenant_literal(source, index, rel):
                    stmt.selectStmt = select_with_tenant(source, index, len(names), self.tenant)
            self._on_conflict(stmt.onConflictClause, rel, qualifier)
            self.expr(stmt.returningClause)

    def _all_columns(self, stmt: AstNode, rel: Relation) -> list[str]:
        """INSERT without a column list: name the table's columns, in order, from the catalog."""
        columns = self.policy.columns.get((rel.schema, rel.name))
        if columns is None:
            raise unsupported(f"INSERT into {rel.schema}.{rel.name} without a column list (its columns are "
                              "unknown to tenantgate)")
        source = stmt.selectStmt
        if is_plain_values(source):
            width = max(len(row) for row in source.valuesLists)
        elif _is_plain_select(source) and source.targetList and not any(is_star(t) for t in source.targetList):
            width = len(source.targetList)
        else:
            width = len(columns)
        stmt.cols = tuple(ast.ResTarget(name=c) for c in columns[:width])
        self.modified = True
        return list(columns[:width])

    def _values_row(self, row: AstNode, index: int, rel: Relation) -> tuple[ast.Node, ...]:
        if index >= len(row):
            raise Refused("42601", "INSERT has more target columns than expressions", "syntax")
        value = self.tenant_value(row[index], rel, "INSERT")
        return (*row[:index], value, *row[index + 1:])

    def _select_tenant_literal(self, source: AstNode, index: int, rel: Relation) -> bool:
        """INSERT ... SELECT naming the tenant column: a literal or $n there is checked like a
        VALUES entry and replaced by the proxy's value; any other expression is guarded at
        run time (False)."""
        targets = source.targetList
        if (not _is_plain_select(source) or not targets or index >= len(targets)
                or any(is_star(t) for t in targets[:index + 1])):
            return False
        value = targets[index].val
        while isinstance(value, ast.TypeCast | ast.CollateClause):
            value = value.arg
        if not isinstance(value, ast.A_Const | ast.ParamRef):
            return False
        source.targetList = (*targets[:index], ast.ResTarget(val=self.tenant_value(targets[index].val, rel,
                                                                                     "INSERT")),
                             *targets[index + 1:])
        return True

    def tenant_value(self, value: AstNode, rel: Relation, verb: str) -> AstNode:
        """The value a statement gives the tenant column, replaced by the proxy's own: DEFAULT or
        the tenant literal (under casts that keep it unchanged) become the tenant literal; a $n
        (checked at Bind time) becomes a value that does not depend on what is bound. Anything
        else, a cast that may change the value included, is refused."""
        self.modified = self.value_dependent = True
        if isinstance(value, ast.SetToDefault) and verb == "INSERT":  # UPDATE's DEFAULT is the column's
            return forced_value(self.tenant)
        core = value_core(value, len(self.tenant))
        if isinstance(core, ast.A_Const) and isinstance(core.val, ast.String) and core.val.sval == self.tenant:
            return forced_value(self.tenant)
        if isinstance(core, ast.ParamRef) and self.extended and not self._in_prepare:
            self.tenant_params.add(core.number or 0)
            return param_tenant_value(core.number or 0, self.tenant)
        target = f"{verb} {'into' if verb == 'INSERT' else 'of'} {rel.schema}.{rel.name}"
        raise Refused("42501", f"{target} may only set {rel.column} to the session's tenant", "tenant_column")

    def _on_conflict(self, clause: AstNode, rel: Relation, qualifier: str) -> None:
        if clause is None:
            return
        self.expr(clause.infer)
        if clause.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            self.expr(clause.targetList)
            clause.targetList = self._tenant_assignments(clause.targetList, rel)
            self.expr(clause.whereClause)
            # DO UPDATE may meet another tenant's row (a unique key without the tenant column).
            where = guards.guarded(clause.whereClause, self._own_predicate(rel, qualifier))
            clause.whereClause = self._scoped_where(where, rel, qualifier)

    def merge(self, stmt: AstNode) -> None:
        with self.with_clause(stmt.withClause):
            rel, qualifier = self.target(stmt.relation, "MERGE")
            column = str(rel.column)
            # the source's unmatched rows are inserted: no condition may filter them, only a wrapper
            stmt.sourceRelation = self.from_item(stmt.sourceRelation, None)
            self.expr(stmt.joinCondition)
            if rel.kind == "owned":
                for clause in stmt.mergeWhenClauses:
                    self.expr((clause.condition, clause.targetList, clause.values))
                self.expr(stmt.returningClause)
                return
            predicate = tenant_predicate(qualifier, column, self.tenant)
            stmt.joinCondition = and_predicate(guards.guarded(stmt.joinCondition, [predicate]), predicate)
            kinds = enums.MergeMatchKind
            for clause in stmt.mergeWhenClauses:
                self.expr(clause.condition)
                if clause.matchKind == kinds.MERGE_WHEN_NOT_MATCHED_BY_SOURCE:
                    # other tenants' rows never match the scoped ON: keep them out of this branch
                    clause.condition = and_predicate(clause.condition,
                                                     tenant_predicate(qualifier, column, self.tenant))
                if clause.commandType == enums.CmdType.CMD_UPDATE:
                    self.expr(clause.targetList)
                    clause.targetList = self._tenant_assignments(clause.targetList, rel)
                elif clause.commandType == enums.CmdType.CMD_INSERT:
                    self._merge_insert(clause, rel)
            self.expr(stmt.returningClause)

    def _merge_insert(self, clause: AstNode, rel: Relation) -> None:
        column = str(rel.column)
        names = [t.name for t in clause.targetList or ()]
        if clause.values is None and not names:  # INSERT DEFAULT VALUES
            clause.targetList, clause.values = (ast.ResTarget(name=column),), (forced_value(self.tenant),)
            return
        self.expr(clause.values)
        if not names:
            known = self.policy.columns.get((rel.schema, rel.name))
            if known is None:
                raise unsupported(f"MERGE ... INSERT into {rel.schema}.{rel.name} without a column list (its "
                                  "columns are unknown to tenantgate)")
            names = list(known[:len(clause.values)])
            clause.targetList = tuple(ast.ResTarget(name=n) for n in names)
        if column in names:
            clause.values = self._values_row(tuple(clause.values), names.index(column), rel)
        else:
            clause.targetList = (*clause.targetList, ast.ResTarget(name=column))
            clause.values = (*clause.values, forced_value(self.tenant))

    # -- expressions ----------------------------------------------------------------------------

    def expr(self, node: object) -> None:
        """Walk an expression tree: scope subqueries, check functions and operators."""
        if isinstance(node, tuple | list):
            for item in node:
                self.expr(item)
            return
        if not isinstance(node, ast.Node):
            return
        name = type(node).__name__
        handler = getattr(self, f"_x_{name}", None)
        if handler is not None:
            handler(node)
            return
        if name not in GENERIC_NODES:
            raise unsupported(f"the construct {name}")
        for field in node_fields(node):
            self.expr(getattr(node, field))

    def _x_SubLink(self, node: AstNode) -> None:
        self.expr(node.testexpr)
        self.dml(node.subselect)

    def _x_SelectStmt(self, node: AstNode) -> None:
        self.select(node)

    def _x_CurrentOfExpr(self, node: AstNode) -> None:
        raise unsupported("WHERE CURRENT OF")

    def _x_A_Expr(self, node: AstNode) -> None:
        if node.kind in _CHECKED_OPERATOR_KINDS:
            names = [s.sval for s in node.name]
            schema = names[-2] if len(names) > 1 else None
            reason = operator_denial(schema, names[-1])
            if reason is not None or len(names) > 2:
                raise Refused("42501", f"operator {'.'.join(names)} is not available to tenants", "unlisted_operator")
        self.expr(node.lexpr)
        self.expr(node.rexpr)

    def _x_FuncCall(self, node: AstNode) -> None:
        names = [s.sval for s in node.funcname]
        if len(names) > 2:
            raise unsupported("a database-qualified function name")
        schema, name = (names[0], names[1]) if len(names) == 2 else (None, names[0])
        reason = function_denial(schema, name)
        if reason is not None:
            raise Refused("42501", f"function {'.'.join(names)}() is not allowed for tenants", reason)
        if self.policy.home is not None and name in RELATION_TEXT_FUNCTIONS:
            side.own_relation_text(name, (node.args or (None,))[0], self.policy.home)
            self.value_dependent = True
        args = tuple(node.args or ())
        if name in _POSITIONAL and (node.func_variadic or any(isinstance(a, ast.NamedArgExpr) for a in args)):
            raise Refused("42501", f"{name}() must be called with positional arguments", "denied_function")
        if name == "set_config":
            self.value_dependent = True
            sent = self.changes.set_config(args, deferred=self._deferred)
            if sent != args:
                node.args, self.modified = sent, True
        elif name == "pg_notify" and args:
            node.args = (prefix_channel(args[0], channels.channel_prefix(self.tenant)), *args[1:])
            self.modified = True
        self.expr(node.args)
        self.expr(node.agg_order)
        self.expr(node.agg_filter)
        self.expr(node.over)
        rewritten = side.rewrite_call(name, args, self.tenant)  # (any other schema was refused above)
        if rewritten is not None:
            node.args, self.modified = rewritten, True
        if name in side.SESSION_STATE_FUNCTIONS:
            self.changes.pin("advisory_lock")


__all__ = ["DML", "GENERIC_NODES", "Scoper", "deparse", "unsupported"]
