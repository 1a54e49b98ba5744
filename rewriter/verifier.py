"""Independent check of rewritten SQL, parsed again by PostgreSQL's parser before it is used.

It does not trust the scoper: it re-derives every relation reference from the output text and
accepts a scoped table only in one of its scoped forms: a schema-qualified reference whose
tenant predicate ``alias.col = 'tenant'`` is a top-level conjunct of the condition that filters
its rows (its query level's WHERE when only inner joins lie between them, the ON of the outer
join whose nullable side it is on), the derived table ``(SELECT * FROM schema.t WHERE t.col =
'tenant')``, or a write target whose WHERE/ON starts with the tenant predicate and whose tenant
column gets the proxy's own value. Anything else fails verification.

>>> verify("SELECT o.xmin FROM public.orders o LEFT JOIN public.orders p ON p.tenant_id = 'acme' AND p.id = o.id"
...        " WHERE o.tenant_id = 'acme'", Policy(scoped={("public", "orders"): "tenant_id"}), "acme", frozenset())
1

>>> from .policy import Policy
>>> policy = Policy(scoped={("public", "orders"): "tenant_id"})
>>> verify("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'acme') AS o",
...        policy, "acme", frozenset())
1
>>> try:
...     verify("SELECT * FROM orders", policy, "acme", frozenset())
... except Refused as err:
...     print(err.reason, err.message)
verification_failed rewritten SQL failed verification: public.orders is read unscoped
"""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast, enums

from . import sidechannels as side
from .catalog import function_denial, operator_denial
from .channels import channel_prefix
from .errors import Refused
from .guards import fence_subquery
from .policy import Policy, Relation
from .scope import CteScope
from .settings import Changes
from .transforms import (
    conjuncts,
    copy_row_check,
    deparse,
    exposed_name,
    forced_value,
    guarded_value,
    injectable,
    is_star,
    node_fields,
    param_tenant_value,
    scoped_select,
    tenant_predicate,
)

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any

ALLOWED_STATEMENTS = frozenset({
    "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "VariableSetStmt",
    "VariableShowStmt", "ConstraintsSetStmt", "DiscardStmt", "TransactionStmt", "ExplainStmt",
    "PrepareStmt", "ExecuteStmt", "DeallocateStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
    "ListenStmt", "UnlistenStmt", "NotifyStmt", "CopyStmt",
})
_TWO_PHASE = frozenset({enums.TransactionStmtKind.TRANS_STMT_PREPARE,
                        enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                        enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED})


class VerificationError(Exception):
    pass


def verify(sql: str, policy: Policy, tenant: str, tenant_params: frozenset[int]) -> int:
    """Raise Refused (reason verification_failed) unless ``sql`` is provably scoped for ``tenant``;
    return the number of statements in it."""
    try:
        stmts = pglast.parse_sql(sql)
        for raw in stmts:
            _Checker(policy, tenant, tenant_params).statement(raw.stmt)
        return len(stmts)
    except VerificationError as exc:
        raise Refused("42501", f"rewritten SQL failed verification: {exc}", "verification_failed") from None
    except pglast.parser.ParseError as exc:
        raise Refused("42501", f"rewritten SQL does not parse: {exc}", "verification_failed") from None


class _Checker:
    def __init__(self, policy: Policy, tenant: str, tenant_params: frozenset[int]) -> None:
        self.policy = policy
        self.tenant = tenant
        self.tenant_params = tenant_params
        self.ctes = CteScope()
        self.in_prepare = False
        self.mask = False

    def fail(self, why: str) -> VerificationError:
        return VerificationError(why)

    def _checked(self, check: Any, *, returns: bool = False) -> None:
        """Run one of the rewriter's statement-level checks on the output: a refusal fails here too
        (``returns``: the check returns its refusal instead of raising it)."""
        try:
            refused = check()
        except Refused as err:
            raise self.fail(err.message) from None
        if returns and refused is not None:
            raise self.fail(refused.message)

    def statement(self, stmt: AstNode) -> None:
        name = type(stmt).__name__
        if name not in ALLOWED_STATEMENTS:
            raise self.fail(f"{name} is not an allowed statement")
        if isinstance(stmt, ast.VariableSetStmt):
            self._checked(lambda: Changes(self.policy.search_path).set_statement(stmt))
            return
        if isinstance(stmt, ast.ExplainStmt):
            self._checked(lambda: side.explain_refusal(stmt.options, self.policy.allow_explain), returns=True)
        names = {ast.PrepareStmt: "name", ast.ExecuteStmt: "name", ast.DeallocateStmt: "name",
                 ast.DeclareCursorStmt: "portalname", ast.FetchStmt: "portalname", ast.ClosePortalStmt: "portalname"}
        for node in (stmt, getattr(stmt, "query", None)):  # EXPLAIN EXECUTE, EXPLAIN DECLARE ...
            field = names.get(type(node))  # type: ignore[call-overload]
            if field is not None:
                self._checked(lambda n=node, f=field: side.refuse_reserved_name(getattr(n, f), type(n).__name__))
        if isinstance(stmt, ast.TransactionStmt) and stmt.kind in _TWO_PHASE:
            raise self.fail("two-phase commit")
        if isinstance(stmt, ast.ListenStmt | ast.NotifyStmt | ast.UnlistenStmt):
            if stmt.conditionname is not None and not stmt.conditionname.startswith(channel_prefix(self.tenant)):
                raise self.fail("channel without the tenant prefix")
            return
        if isinstance(stmt, ast.CopyStmt) and (stmt.is_program or stmt.filename is not None
                                               or (stmt.relation is not None) != bool(stmt.is_from)):
            raise self.fail("COPY must be a query to STDOUT or a checked COPY FROM STDIN")
        if isinstance(stmt, ast.PrepareStmt):
            self.in_prepare = True
        self.mask = side.reads_masked_columns(stmt)
        self.walk(stmt)

    # -- generic walk with hooks ------------------------------------------------------------------

    def walk(self, node: object) -> None:
        if isinstance(node, tuple | list):
            for item in node:
                self.walk(item)
            return
        if not isinstance(node, ast.Node):
            return
        hook = getattr(self, f"_v_{type(node).__name__}", None)
        if hook is not None:
            hook(node)
            return
        for field in node_fields(node):
            self.walk(getattr(node, field))

    def _with(self, clause: AstNode) -> int:
        return self.ctes.enter_pg(clause, lambda cte: self.walk(cte.ctequery))

    def _v_SelectStmt(self, node: AstNode) -> None:
        if node.intoClause is not None:
            raise self.fail("SELECT INTO")
        depth = self._with(node.withClause)
        self._from_list(node.fromClause, node.whereClause)
        for field in node_fields(node):
            if field not in ("withClause", "lockingClause", "fromClause"):
                self.walk(getattr(node, field))
        self.ctes.leave(depth)

    # -- FROM items: where each scoped reference's predicate must be ---------------------------------

    def _from_list(self, items: AstNode, where: AstNode) -> None:
        terms = self._terms(where)
        for item in items or ():
            self._from_item(item, terms)

    def _terms(self, condition: AstNode) -> frozenset[str]:
        return frozenset(deparse(term) for term in conjuncts(condition))

    def _from_item(self, item: AstNode, terms: frozenset[str] | None) -> None:
        """``terms``: the conjuncts of the condition that filters this item's rows (None: no
        condition may, only the derived-table form scopes a table here)."""
        if isinstance(item, ast.JoinExpr):
            on = self._terms(item.quals)
            has_on = item.quals is not None
            if item.alias is not None:  # its tables are hidden from the outer condition
                terms = on if item.jointype == enums.JoinType.JOIN_INNER and has_on else None
            own = on if has_on else None
            sides = {enums.JoinType.JOIN_INNER: (terms, terms), enums.JoinType.JOIN_LEFT: (terms, own),
                     enums.JoinType.JOIN_RIGHT: (own, terms), enums.JoinType.JOIN_FULL: (None, None)}
            if item.jointype not in sides:
                raise self.fail(f"join type {item.jointype}")
            left, right = sides[item.jointype]
            self._from_item(item.larg, left)
            self._from_item(item.rarg, right)
            self.walk((item.usingClause, item.quals, item.alias, item.join_using_alias))
            return
        sample = item if isinstance(item, ast.RangeTableSample) else None
        rv = sample.relation if sample is not None else item
        if isinstance(rv, ast.RangeVar) and self._scoped_in_place(rv, terms):
            self.walk((sample.args, sample.repeatable) if sample is not None else ())
            return
        self.walk(item)

    def _scoped_in_place(self, rv: AstNode, terms: frozenset[str] | None) -> bool:
        """A scoped table referenced directly, with its predicate among ``terms``; fails for a
        scoped table without it. False for any other relation (checked as a plain RangeVar)."""
        if self.ctes.is_cte_ref(rv):
            return False
        rel = self._resolve(rv)
        if rel.kind != "scoped":
            return False
        predicate = deparse(tenant_predicate(exposed_name(rv), str(rel.column), self.tenant))
        if terms is None or rv.schemaname is None or not injectable(rv) or predicate not in terms:
            raise self.fail(f"{rel.schema}.{rel.name} is read unscoped")
        return True

    def _v_RangeSubselect(self, node: AstNode) -> None:
        if side.is_masked(node.subquery):  # R2: a masked catalog relation
            return
        if not self._is_scope_wrapper(node.subquery):
            self.walk(node.subquery)

    def _is_scope_wrapper(self, sub: AstNode) -> bool:
        """The exact derived table the scoper builds around a scoped table (nothing else in it)."""
        if not isinstance(sub, ast.SelectStmt) or not sub.fromClause or len(sub.fromClause) != 1:
            return False
        item = sub.fromClause[0]
        sample = item if isinstance(item, ast.RangeTableSample) else None
        rv = sample.relation if sample is not None else item
        if not isinstance(rv, ast.RangeVar) or rv.schemaname is None or rv.alias is not None:
            return False
        rel = self.policy.resolve(rv.schemaname, str(rv.relname))
        if rel.kind != "scoped":
            return False
        if sample is not None:
            self.walk((sample.args, sample.repeatable))
        form = scoped_select(rel, self.tenant, inherit=bool(rv.inh), sample=sample)
        if sub.limitOffset is not None:  # fenced (guards.fence_subquery): the same rows
            fence_subquery(form)
        return deparse(sub) == deparse(form)

    def _v_RangeVar(self, node: AstNode) -> None:
        """A relation outside any scoped form: only CTEs, reference tables and allowed catalogs."""
        if self.ctes.is_cte_ref(node):
            return
        rel = self._resolve(node)
        if rel.kind == "scoped":
            raise self.fail(f"{rel.schema}.{rel.name} is read unscoped")
        if rel.masked and self.mask:  # R2
            raise self.fail(f"{rel.schema}.{rel.name} is read unmasked")
        if rel.kind in ("reference", "owned") and node.schemaname is None:
            raise self.fail(f"{rel.schema}.{rel.name} is not schema-qualified")

    def _resolve(self, node: AstNode) -> Relation:
        if node.catalogname is not None:
            raise self.fail("database-qualified name")
        rel = self.policy.resolve(node.schemaname, node.relname)
        if rel.kind in ("unlisted", "foreign") or rel.denial is not None:
            raise self.fail(f"{rel.schema}.{rel.name} is not available")
        return rel

    def _v_CopyStmt(self, node: AstNode) -> None:
        if node.is_from:
            rel, _ = self._target(node.relation)
            check = deparse(copy_row_check(str(rel.column), self.tenant)) if rel.kind == "scoped" else None
            if check is not None and check not in self._terms(node.whereClause):
                raise self.fail(f"COPY FROM into {rel.name} without the row check")
        self.walk((node.query, node.whereClause))

    def _v_LockingClause(self, node: AstNode) -> None:
        """FOR UPDATE OF lists FROM-item names, not tables."""

    def _v_CurrentOfExpr(self, node: AstNode) -> None:
        raise self.fail("WHERE CURRENT OF")

    def _v_A_Expr(self, node: AstNode) -> None:
        if node.kind in (enums.A_Expr_Kind.AEXPR_OP, enums.A_Expr_Kind.AEXPR_OP_ANY,
                         enums.A_Expr_Kind.AEXPR_OP_ALL):
            names = [s.sval for s in node.name]
            if len(names) > 2 or operator_denial(names[-2] if len(names) == 2 else None, names[-1]):
                raise self.fail(f"operator {'.'.join(names)}")
        self.walk((node.lexpr, node.rexpr))

    def _v_FuncCall(self, node: AstNode) -> None:
        names = [s.sval for s in node.funcname]
        if len(names) > 2 or function_denial(names[0] if len(names) == 2 else None, names[-1]):
            raise self.fail(f"function {'.'.join(names)}")
        args = node.args or ()
        if names[-1] == "set_config":
            self._checked(lambda: Changes(self.policy.search_path).set_config(tuple(args), deferred=self.in_prepare))
        if names[-1] in side.KEYED_LOCKS and not side.lock_args_namespaced(args, self.tenant):
            raise self.fail(f"advisory lock {names[-1]} outside the tenant's namespace")
        if names[-1] in side.SIZE_FUNCTIONS and not side.is_null_size(names[-1], args):
            raise self.fail(f"{names[-1]}() of a real relation")
        if names[-1] == "age" and not side.is_timestamp_age(args):
            raise self.fail("age() of something that is not a timestamp")
        if names[-1] == "pg_notify":
            first = args[0] if args else None
            prefix = channel_prefix(self.tenant)
            if not (isinstance(first, ast.A_Expr) and isinstance(first.lexpr, ast.A_Const)
                    and isinstance(first.lexpr.val, ast.String) and first.lexpr.val.sval == prefix
                    and [s.sval for s in first.name or ()] == ["||"]):
                raise self.fail("pg_notify channel without the tenant prefix")
        self.walk((node.args, node.agg_order, node.agg_filter, node.over))

    # -- write targets --------------------------------------------------------------------------

    def _target(self, rv: AstNode) -> tuple[Relation, str]:
        rel = self._resolve(rv)
        if rel.kind not in ("scoped", "owned") or rv.schemaname is None:
            raise self.fail(f"write to {rel.schema}.{rel.name}")
        return rel, rv.alias.aliasname if rv.alias else rv.relname

    def _starts_with_predicate(self, where: AstNode, rel: Relation, qualifier: str) -> bool:
        """True for a schema-tier tenant's own table (its rows are all its own)."""
        if rel.kind == "owned":
            return True
        if where is None:
            return False
        first = (where.args or (None,))[0] if (isinstance(where, ast.BoolExpr)
                                  and where.boolop == enums.BoolExprType.AND_EXPR) else where
        return deparse(first) == deparse(tenant_predicate(qualifier, str(rel.column), self.tenant))

    def _tenant_assignments(self, targets: AstNode, rel: Relation) -> None:
        """SET of the tenant column: only to the proxy's own value."""
        for t in targets or ():
            if rel.kind != "owned" and t.name == rel.column and (t.indirection or not self._tenant_value_ok(t.val)):
                raise self.fail(f"assignment to the tenant column of {rel.name}")

    def _v_UpdateStmt(self, node: AstNode) -> None:
        depth = self._with(node.withClause)
        rel, qualifier = self._target(node.relation)
        if not self._starts_with_predicate(node.whereClause, rel, qualifier):
            raise self.fail(f"UPDATE of {rel.name} without the tenant predicate")
        self._tenant_assignments(node.targetList, rel)
        self._from_list(node.fromClause, node.whereClause)
        self.walk((node.targetList, node.whereClause, node.returningClause))
        self.ctes.leave(depth)

    def _v_DeleteStmt(self, node: AstNode) -> None:
        depth = self._with(node.withClause)
        rel, qualifier = self._target(node.relation)
        if not self._starts_with_predicate(node.whereClause, rel, qualifier):
            raise self.fail(f"DELETE from {rel.name} without the tenant predicate")
        self._from_list(node.usingClause, node.whereClause)
        self.walk((node.whereClause, node.returningClause))
        self.ctes.leave(depth)

    def _tenant_value_ok(self, value: AstNode, *, guarded: bool = False) -> bool:
        """The proxy's own tenant value: its bare literal, its ``$n`` form (whatever is bound,
        the literal is stored), or (``guarded``: INSERT ... SELECT) its run-time check of a
        computed value."""
        text = deparse(value)
        if text == deparse(forced_value(self.tenant)):
            return True
        param = _case_param(value)
        if param is not None and text == deparse(param_tenant_value(param, self.tenant)):
            return True
        computed = _case_operand(value) if guarded else None
        return computed is not None and text == deparse(guarded_value(computed, self.tenant))

    def _v_InsertStmt(self, node: AstNode) -> None:
        depth = self._with(node.withClause)
        rel, qualifier = self._target(node.relation)
        if rel.kind == "owned":
            self.walk((node.selectStmt, node.onConflictClause, node.returningClause))
            self.ctes.leave(depth)
            return
        names = [c.name for c in node.cols or ()]
        if names.count(rel.column) != 1 or node.selectStmt is None:
            raise self.fail(f"INSERT into {rel.name} without the tenant column")
        index = names.index(str(rel.column))
        source = node.selectStmt
        if source.valuesLists:
            rows_ok = all(index < len(row) and self._tenant_value_ok(row[index]) for row in source.valuesLists)
        else:
            targets = source.targetList or ()
            rows_ok = (source.op == enums.SetOperation.SETOP_NONE and index < len(targets)
                       and not any(is_star(t) for t in targets[:index + 1])
                       and self._tenant_value_ok(targets[index].val, guarded=True))
        if not rows_ok:
            raise self.fail(f"INSERT into {rel.name} does not force the tenant column")
        clause = node.onConflictClause
        if clause is not None and clause.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            self._tenant_assignments(clause.targetList, rel)
            if not self._starts_with_predicate(clause.whereClause, rel, qualifier):
                raise self.fail(f"ON CONFLICT DO UPDATE of {rel.name} without the tenant predicate")
        self.walk((source, clause, node.returningClause))
        self.ctes.leave(depth)

    def _v_MergeStmt(self, node: AstNode) -> None:
        depth = self._with(node.withClause)
        rel, qualifier = self._target(node.relation)
        if not self._starts_with_predicate(node.joinCondition, rel, qualifier):
            raise self.fail(f"MERGE into {rel.name} without the tenant predicate")
        for clause in node.mergeWhenClauses:
            if (clause.matchKind == enums.MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_SOURCE
                    and not self._starts_with_predicate(clause.condition, rel, qualifier)):
                raise self.fail("MERGE ... NOT MATCHED BY SOURCE without the tenant predicate")
            if clause.commandType == enums.CmdType.CMD_UPDATE:
                self._tenant_assignments(clause.targetList, rel)
            if clause.commandType == enums.CmdType.CMD_INSERT and rel.kind != "owned":
                names = [t.name for t in clause.targetList or ()]
                if names.count(rel.column) != 1 or not self._tenant_value_ok(
                        clause.values[names.index(str(rel.column))]):
                    raise self.fail("MERGE ... INSERT does not force the tenant column")
            self.walk((clause.condition, clause.targetList, clause.values))
        self._from_item(node.sourceRelation, None)  # unmatched source rows are inserted: no ON filters them
        self.walk((node.joinCondition, node.returningClause))
        self.ctes.leave(depth)


def _case_param(value: AstNode) -> int | None:
    """The n of ``CASE WHEN $n::text IS NULL ...``, else None."""
    test = value.args[0].expr if isinstance(value, ast.CaseExpr) and value.args else None
    cast = test.arg if isinstance(test, ast.NullTest) else None
    param = cast.arg if isinstance(cast, ast.TypeCast) else None
    return param.number if isinstance(param, ast.ParamRef) else None


def _case_operand(value: AstNode) -> AstNode:
    """The x of ``CASE WHEN x::text = ...``, else None."""
    test = value.args[0].expr if isinstance(value, ast.CaseExpr) and value.args else None
    cast = test.lexpr if isinstance(test, ast.A_Expr) else None
    return cast.arg if isinstance(cast, ast.TypeCast) else None
