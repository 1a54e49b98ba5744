"""Encrypted columns in SQL: where they may appear, and which literals and $n get encrypted.

Longer than most modules on purpose: one walker (Analyzer) whose statement, FROM-item and
expression handlers share its state (the FROM items in scope, the CTEs, the seals it collects); the
small helpers before it are what the rewriter calls around that walk.

Runs on a statement after the scoper (scoped tables are then derived tables
``(SELECT * FROM schema.t WHERE ...) AS t``, whose output columns carry the table's encrypted
columns outwards). Column references are resolved by name against the FROM items in scope,
without a catalog: an unqualified name that is an encrypted column of any table in scope is taken
to be that column (fail closed). Allowed uses, anything else is refused with SQLSTATE 0A000:

- a plain reference in a select list or RETURNING (also ``*``): the proxy decrypts it, since
  PostgreSQL reports the column's table and number in RowDescription;
- ``col = v``, ``col <> v``, ``col [NOT] IN (v, ...)`` where v is a literal, a $n or NULL, for
  deterministic columns (equal plaintexts have equal ciphertexts within one key version);
- ``col IS [NOT] NULL`` for every mode;
- ``INSERT (.., col, ..) VALUES (v, ...)``, ``UPDATE SET col = v`` (v may also be DEFAULT) and
  ``ON CONFLICT DO UPDATE SET col = EXCLUDED.col``; a unique index on a deterministic column works
  as an ON CONFLICT target.

Refused: functions, casts, other operators (LIKE, <, BETWEEN, ||, ...), ORDER BY, GROUP BY and
DISTINCT (ciphertext order and, across key versions, ciphertext equality mean nothing), comparisons
between two columns, set operations and scalar/IN subqueries returning an encrypted column (the
result loses its column origin), INSERT ... SELECT and COPY involving encrypted columns, MERGE on
tables with encrypted columns, whole-row references, and SQL-level PREPARE parameters bound to an
encrypted column (EXECUTE's values could not be encrypted).

Literals to encrypt are returned as :class:`Seal` s; the rewriter renders each as
``'\\x<hex>'::bytea``. Bind parameters to encrypt are returned by number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast, enums, parser

from tenantgate.keyring.quoting import unquote_literal

from .errors import Refused
from .literals import Template
from .policy import Policy
from .transforms import node_fields

AstNode = Any
Encrypt = Callable[[str, str, str], bytes]
"""``encrypt(schema_table, column, literal_text) -> ciphertext``; raises Refused on bad input."""

_DETERMINISTIC = "deterministic"
_EQUALITY = frozenset({"=", "<>"})
_LITERAL_TOKENS = frozenset({"SCONST", "ICONST", "FCONST"})
_KIND_NAMES = {
    enums.A_Expr_Kind.AEXPR_LIKE: "LIKE", enums.A_Expr_Kind.AEXPR_ILIKE: "ILIKE",
    enums.A_Expr_Kind.AEXPR_SIMILAR: "SIMILAR TO", enums.A_Expr_Kind.AEXPR_BETWEEN: "BETWEEN",
    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN: "NOT BETWEEN", enums.A_Expr_Kind.AEXPR_BETWEEN_SYM: "BETWEEN SYMMETRIC",
    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM: "NOT BETWEEN SYMMETRIC", enums.A_Expr_Kind.AEXPR_DISTINCT:
    "IS DISTINCT FROM", enums.A_Expr_Kind.AEXPR_NOT_DISTINCT: "IS NOT DISTINCT FROM",
    enums.A_Expr_Kind.AEXPR_NULLIF: "NULLIF", enums.A_Expr_Kind.AEXPR_IN: "IN",
}
_NODE_NAMES = {
    "TypeCast": "a cast", "CaseExpr": "CASE", "CoalesceExpr": "COALESCE", "MinMaxExpr": "GREATEST/LEAST",
    "RowExpr": "a row constructor", "A_ArrayExpr": "an ARRAY constructor", "BoolExpr": "a boolean condition",
    "BooleanTest": "IS TRUE/FALSE", "A_Indirection": "a subscript or field selection", "CollateClause": "COLLATE",
    "SortBy": "ORDER BY", "WindowDef": "a window definition", "XmlExpr": "an XML function",
    "GroupingFunc": "GROUPING()", "GroupingSet": "GROUP BY",
}


@dataclass(frozen=True, slots=True)
class EncryptedRef:
    """An encrypted column: ``table`` is ``schema.table``."""

    table: str
    column: str
    mode: str
    type: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class Seal:
    """A literal bound to an encrypted column.

    ``value``: the literal's text. ``marker``: the string token standing in for it in the plan's
    SQL until it is encrypted. ``slot``: in a template probe, the index of the lifted literal
    (None when the literal is not one of the probe's sentinels).
    """

    ref: EncryptedRef
    value: str
    marker: str = ""
    slot: int | None = None


def bytea_literal(ciphertext: bytes) -> str:
    r"""
    >>> bytea_literal(b"\xe1\x02")
    "'\\xe102'::bytea"
    """
    return "'\\x" + ciphertext.hex() + "'::bytea"


def seal_sql(sql: str, seals: tuple[Seal, ...], encrypt: Encrypt | None) -> str:
    """Replace each seal's marker in ``sql`` by its freshly encrypted value."""
    if not seals:
        return sql
    if encrypt is None:
        raise Refused("55000", f"a value for encrypted column {seals[0].ref} cannot be encrypted in this session",
                      "encryption_unavailable")
    for seal in seals:
        sql = sql.replace(seal.marker, bytea_literal(encrypt(seal.ref.table, seal.ref.column, seal.value)), 1)
    return sql


def fill_sealed(template: Template, literals: tuple[str, ...], sealed: Mapping[int, EncryptedRef],
                encrypt: Encrypt | None) -> str:
    """Template.fill, with the literals of ``sealed`` slots encrypted for their columns."""
    if encrypt is None:
        raise Refused("55000", "encrypted values cannot be encrypted in this session", "encryption_unavailable")
    out = [template.parts[0]]
    for i, (slot, part) in enumerate(zip(template.slots, template.parts[1:], strict=True)):
        ref = sealed.get(slot)
        if ref is None:
            out.append(template.literal(i, literals[slot]))  # canonical, never the client's token text
        else:
            out.append(bytea_literal(encrypt(ref.table, ref.column, literal_value(literals[slot]))))
        out.append(part)
    return "".join(out)


def literal_value(token: str) -> str:
    """The value of one literal token, as the A_Const PostgreSQL's parser makes of it.

    >>> literal_value("'it''s'"), literal_value("0042"), literal_value("1.50"), literal_value("E'a\\\\tb'")
    ("it's", '42', '1.50', 'a\\tb')
    >>> literal_value("'a'\\n'b'")
    'ab'
    """
    plain = unquote_literal(token)
    if plain is not None:
        return plain
    if token.isdigit():
        return str(int(token))
    if token[:1].isdigit() or token[:1] == ".":
        return token
    select: AstNode = pglast.parse_sql("SELECT " + token)[0].stmt
    value = const_text(select.targetList[0].val)
    if value is None:
        raise Refused("0A000", "this kind of literal cannot be stored in an encrypted column", "encrypted_column")
    return value


def const_text(node: AstNode) -> str | None:
    """Text of a string or numeric constant node, None for anything else."""
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.String):
        return str(val.sval)
    if isinstance(val, ast.Integer):
        return str(val.ival)
    if isinstance(val, ast.Float):
        return str(val.fval)
    return None


def slot_spans(gaps: tuple[str, ...], literals: tuple[str, ...], slots: list[int]) -> tuple[tuple[int, int], ...]:
    """[start, end) of the lifted literals ``slots`` in the original text.

    >>> slot_spans(("a = ", " AND b = ", ""), ("1", "'x'"), [1])
    ((14, 17),)
    """
    starts, pos = [], 0
    for gap, literal in zip(gaps, literals, strict=False):
        pos += len(gap)
        starts.append(pos)
        pos += len(literal)
    return tuple(sorted((starts[i], starts[i] + len(literals[i])) for i in slots))


def literal_redactions(sql: str, values: list[str]) -> tuple[tuple[int, int], ...]:
    """[start, end) spans of the literal tokens of ``sql`` holding one of ``values``; all literal
    spans when some value cannot be matched to a token (strings split over lines, ...)."""
    wanted = set(values)
    every: list[tuple[int, int]] = []
    spans: list[tuple[int, int]] = []
    found: set[str] = set()
    previous = None
    for token in parser.scan(sql):
        if token.name in _LITERAL_TOKENS:
            span = (token.start, token.end + 1)
            every.append(span)
            value = literal_value(sql[span[0]:span[1]])
            negated = "-" + value if previous is not None and previous.name == "ASCII_45" else None
            for candidate in (value, negated):
                if candidate in wanted:
                    found.add(candidate)
                    spans.append((previous.start, span[1]) if candidate is negated and previous else span)
        previous = token
    return tuple(spans) if found == wanted else tuple(every)


def _names(ref: AstNode) -> list[str]:
    """The name parts of a ColumnRef (a trailing * is left out)."""
    return [str(f.sval) for f in ref.fields or () if isinstance(f, ast.String)]


def _is_star(node: AstNode) -> bool:
    return isinstance(node, ast.ColumnRef) and isinstance((node.fields or (None,))[-1], ast.A_Star)


def refuse(ref: EncryptedRef, what: str) -> Refused:
    return Refused("0A000", f"encrypted column {ref} is not supported in {what}: encrypted columns "
                   "allow plain selection, =, <>, IN with literals or parameters, IS [NOT] NULL and "
                   "assignment of a literal, parameter or NULL", "encrypted_column")


def _unsupported(message: str) -> Refused:
    return Refused("0A000", message, "encrypted_column")


@dataclass(slots=True)
class _Entry:
    """A FROM item visible by name, with the encrypted columns it exposes."""

    name: str | None
    columns: Mapping[str, EncryptedRef]


@dataclass(frozen=True, slots=True)
class _Out:
    """One select-list item: a named column (``ref`` when encrypted) or a star's encrypted columns."""

    name: str | None
    ref: EncryptedRef | None = None
    star: Mapping[str, EncryptedRef] | None = None

    @property
    def encrypted(self) -> EncryptedRef | None:
        return self.ref or (next(iter(self.star.values())) if self.star else None)


@dataclass
class Analyzer:
    """Checks the statements of one message; collects literals (``seals``) and parameters to encrypt.

    ``sentinels`` (template probes): literal token text -> index of the lifted literal.
    """

    policy: Policy
    extended: bool
    sentinels: Mapping[str, int] | None = None
    seals: list[tuple[AstNode, Seal]] = field(default_factory=list)
    params: dict[int, EncryptedRef] = field(default_factory=dict)
    _levels: list[list[_Entry]] = field(default_factory=list)
    _ctes: list[dict[str, Mapping[str, EncryptedRef]]] = field(default_factory=list)
    _in_prepare: bool = False

    def table_columns(self, schema: str | None, name: str) -> dict[str, EncryptedRef]:
        key = (schema or "public", name)
        return {column: EncryptedRef(f"{key[0]}.{key[1]}", column, mode, type_name)
                for column, (mode, type_name) in self.policy.encrypted_tables.get(key, {}).items()}

    # -- statements -------------------------------------------------------------------------

    def statement(self, stmt: AstNode) -> None:
        name = type(stmt).__name__
        if name in ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            self.dml(stmt, "top")
        elif name in ("ExplainStmt", "DeclareCursorStmt"):
            self.statement(stmt.query)
        elif name == "PrepareStmt":
            self._in_prepare = True
            try:
                self.dml(stmt.query, "top")
            finally:
                self._in_prepare = False
        elif name == "CopyStmt" and stmt.query is not None:
            self.dml(stmt.query, "COPY")
        elif name == "ExecuteStmt":
            self.expr(stmt.params, "EXECUTE")

    def dml(self, stmt: AstNode, mode: str) -> list[_Out]:
        """Check one query; ``mode`` is "top" or "derived" when encrypted outputs may leave it,
        else the construct to name when refusing them."""
        if isinstance(stmt, ast.SelectStmt):
            return self.select(stmt, mode)
        if isinstance(stmt, ast.InsertStmt):
            return self.insert(stmt, mode)
        if isinstance(stmt, ast.UpdateStmt):
            return self.update(stmt, mode)
        if isinstance(stmt, ast.DeleteStmt):
            return self.delete(stmt, mode)
        if isinstance(stmt, ast.MergeStmt):
            return self.merge(stmt)
        raise Refused("42501", f"{type(stmt).__name__} cannot be analysed for encrypted columns", "internal")

    @contextmanager
    def level(self, entries: list[_Entry]) -> Iterator[list[_Entry]]:
        self._levels.append(entries)
        try:
            yield entries
        finally:
            self._levels.pop()

    @contextmanager
    def with_clause(self, clause: AstNode) -> Iterator[None]:
        if clause is None:
            yield
            return
        scope: dict[str, Mapping[str, EncryptedRef]] = {}
        self._ctes.append(scope)
        try:
            if clause.recursive:  # a recursive reference exposes nothing (set operations refuse them)
                scope.update({cte.ctename: {} for cte in clause.ctes})
            for cte in clause.ctes:
                outs = self.dml(cte.ctequery, "derived")
                scope[cte.ctename] = self.columns_of(outs, cte.aliascolnames, f"WITH query {cte.ctename}")
                self.expr((cte.search_clause, cte.cycle_clause), "SEARCH/CYCLE")
            yield
        finally:
            self._ctes.pop()

    def columns_of(self, outs: list[_Out], colnames: AstNode, what: str) -> dict[str, EncryptedRef]:
        """The encrypted columns a derived table exposes, renamed by an alias column list."""
        names = [c.sval for c in colnames or ()]
        columns: dict[str, EncryptedRef] = {}
        for i, out in enumerate(outs):
            if out.star:
                if names:
                    raise refuse(next(iter(out.star.values())), f"{what} with a column alias list over * "
                                 "(list the columns)")
                columns.update(out.star)
            elif out.ref is not None:
                name = names[i] if i < len(names) else out.name
                if name is not None:
                    columns[name] = out.ref
        return columns

    def check_outputs(self, outs: list[_Out], mode: str) -> None:
        if mode in ("top", "derived"):
            return
        for out in outs:
            ref = out.encrypted
            if ref is not None:
                raise refuse(ref, mode)

    def select(self, sel: AstNode, mode: str) -> list[_Out]:
        with self.with_clause(sel.withClause):
            if sel.op != enums.SetOperation.SETOP_NONE:
                self.select(sel.larg, "UNION/INTERSECT/EXCEPT")
                self.select(sel.rarg, "UNION/INTERSECT/EXCEPT")
                with self.level([]):
                    self.expr((sel.sortClause, sel.limitOffset, sel.limitCount), "ORDER BY/LIMIT")
                return []
            if sel.valuesLists:
                for row in sel.valuesLists:
                    self.expr(row, "VALUES")
                return [_Out(None)] * len(sel.valuesLists[0])
            with self.level([]) as entries:
                for item in sel.fromClause or ():
                    self.from_item(item, entries)
                outs = self.targets(sel.targetList, "the select list")
                self.expr(sel.whereClause, "WHERE")
                self.ordering(sel.groupClause, outs, "GROUP BY")
                self.expr(sel.havingClause, "HAVING")
                self.expr(sel.windowClause, "a window definition")
                self.ordering(sel.sortClause, outs, "ORDER BY")
                self.expr((sel.limitOffset, sel.limitCount), "LIMIT/OFFSET")
                if sel.distinctClause == (None,):
                    self.check_outputs(outs, "DISTINCT")
                else:
                    self.ordering(sel.distinctClause, outs, "DISTINCT ON")
            self.check_outputs(outs, mode)
            return outs

    def ordering(self, items: AstNode, outs: list[_Out], what: str) -> None:
        """ORDER BY / GROUP BY / DISTINCT ON may also name output columns by alias or position."""
        by_name = {out.name: out.ref for out in outs if out.ref is not None and out.name is not None}
        for item in items or ():
            node: AstNode = item.node if isinstance(item, ast.SortBy) else item
            if isinstance(node, ast.ColumnRef) and not _is_star(node) and len(_names(node)) == 1:
                ref = by_name.get(_names(node)[0])
                if ref is not None:
                    raise refuse(ref, what)
            if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
                position = int(node.val.ival or 0)
                for out in outs[:position]:
                    if out.star:
                        raise refuse(next(iter(out.star.values())), f"{what} by position after * (list the columns)")
                chosen = outs[position - 1].ref if 0 < position <= len(outs) else None
                if chosen is not None:
                    raise refuse(chosen, what)
            self.expr(item, what)

    def targets(self, targets: AstNode, what: str) -> list[_Out]:
        outs: list[_Out] = []
        for target in targets or ():
            val: AstNode = target.val
            if _is_star(val):
                outs.append(_Out(None, star=self.star(val)))
            elif isinstance(val, ast.ColumnRef):
                names = _names(val)
                outs.append(_Out(target.name or (names[-1] if names else None), self.resolve(val)))
            else:
                self.expr(val, what)
                outs.append(_Out(target.name))
        return outs

    # -- FROM ---------------------------------------------------------------------------------

    def from_item(self, item: AstNode, entries: list[_Entry]) -> None:
        if isinstance(item, ast.RangeVar):
            entries.append(self.range_var(item))
        elif isinstance(item, ast.RangeSubselect):
            outs = self.dml(item.subquery, "derived")
            alias = item.alias
            columns = self.columns_of(outs, alias.colnames if alias else None, "a subquery in FROM")
            entries.append(_Entry(alias.aliasname if alias else None, columns))
        elif isinstance(item, ast.JoinExpr):
            first = len(entries)
            self.from_item(item.larg, entries)
            split = len(entries)
            self.from_item(item.rarg, entries)
            left = [c for e in entries[first:split] for c in e.columns.values()]
            right = [c for e in entries[split:] for c in e.columns.values()]
            if (item.isNatural or item.alias is not None) and (left or right):
                raise refuse((left or right)[0], "NATURAL JOIN or an aliased join")
            for name in item.usingClause or ():
                for ref in left + right:
                    if ref.column == name.sval:
                        raise refuse(ref, "JOIN ... USING")
            self.expr(item.quals, "JOIN ... ON")
        elif isinstance(item, ast.RangeTableSample):
            self.from_item(item.relation, entries)
            self.expr((item.args, item.repeatable), "TABLESAMPLE")
        elif isinstance(item, ast.RangeFunction | ast.RangeTableFunc):
            self.expr(tuple(getattr(item, f) for f in node_fields(item) if f != "alias"), "a function in FROM")
            entries.append(_Entry(item.alias.aliasname if item.alias else None, {}))
        else:
            raise Refused("42501", f"{type(item).__name__} in FROM cannot be analysed for encrypted columns",
                          "internal")

    def range_var(self, rv: AstNode) -> _Entry:
        name = rv.alias.aliasname if rv.alias else rv.relname
        if rv.schemaname is None:
            for scope in reversed(self._ctes):
                if rv.relname in scope:
                    return _Entry(name, scope[rv.relname])
        columns = self.table_columns(rv.schemaname, rv.relname)
        if columns and rv.alias is not None and rv.alias.colnames:
            raise refuse(next(iter(columns.values())), "a table alias with a column list")
        return _Entry(name, columns)

    # -- names --------------------------------------------------------------------------------

    def resolve(self, ref: AstNode) -> EncryptedRef | None:
        """The encrypted column a (non-star) ColumnRef names, or None."""
        names = _names(ref)
        if not names or len(names) != len(ref.fields):
            return None
        if len(names) == 1:
            column = names[0]
            for entries in reversed(self._levels):
                found = [e.columns[column] for e in entries if column in e.columns]
                if len(found) > 1:
                    raise _unsupported(f"column reference {column} is ambiguous between encrypted columns "
                                       f"{found[0]} and {found[1]}; qualify it")
                if found:
                    return found[0]
            for entries in reversed(self._levels):
                for e in entries:
                    if e.name == column and e.columns:
                        raise refuse(next(iter(e.columns.values())), "a whole-row reference")
            return None
        qualifier, column = names[-2], names[-1]
        for entries in reversed(self._levels):
            for e in entries:
                if e.name == qualifier:
                    return e.columns.get(column)
        if len(names) == 2:
            inner = self.resolve(ast.ColumnRef(fields=(ast.String(sval=qualifier),)))
            if inner is not None:
                raise refuse(inner, "a field selection")
        return None

    def star(self, ref: AstNode) -> dict[str, EncryptedRef]:
        """Encrypted columns a ``*`` or ``alias.*`` expands to."""
        names = _names(ref)
        if not names:
            entries = self._levels[-1] if self._levels else []
            return {k: v for e in entries for k, v in e.columns.items()}
        qualifier = names[-1]
        for entries in reversed(self._levels):
            for e in entries:
                if e.name == qualifier:
                    return dict(e.columns)
        return {}

    def encrypted(self, node: AstNode) -> EncryptedRef | None:
        if isinstance(node, ast.ColumnRef) and not _is_star(node):
            return self.resolve(node)
        return None

    # -- values bound to encrypted columns ----------------------------------------------------

    def value(self, node: AstNode, ref: EncryptedRef, *, assignment: bool = False) -> None:
        """A literal, $n or NULL compared with or stored in ``ref``; anything else is refused."""
        if isinstance(node, ast.A_Const):
            if node.isnull:
                return
            text = const_text(node)
            if text is None:
                raise _unsupported(f"encrypted column {ref} takes only string or numeric literals")
            slot = None
            if self.sentinels is not None:
                slot = self.sentinels.get(f"'{text}'" if isinstance(node.val, ast.String) else text)
            self.seals.append((node, Seal(ref, text, slot=slot)))
        elif isinstance(node, ast.ParamRef):
            if not self.extended or self._in_prepare:
                raise _unsupported(f"a parameter bound to encrypted column {ref} is only supported in the "
                                   "extended protocol (Parse/Bind), not in PREPARE: EXECUTE's values could not "
                                   "be encrypted")
            number = node.number or 0
            if self.params.setdefault(number, ref) != ref:
                raise _unsupported(f"parameter ${number} is bound to two encrypted columns "
                                   f"({self.params[number]} and {ref})")
        elif assignment and isinstance(node, ast.SetToDefault):
            return
        else:
            raise _unsupported(f"encrypted column {ref} can only be compared with or set to a literal, a "
                               "parameter or NULL (without a cast)")

    # -- writes -------------------------------------------------------------------------------

    def target(self, rv: AstNode) -> _Entry:
        return _Entry(rv.alias.aliasname if rv.alias else rv.relname, self.table_columns(rv.schemaname, rv.relname))

    def returning(self, clause: AstNode, entries: list[_Entry], mode: str) -> list[_Out]:
        """RETURNING sees the target and the FROM/USING items in ``entries``."""
        if clause is None:
            return []
        if clause.options:
            raise _unsupported("RETURNING WITH (OLD/NEW ...) is not supported by the backend")
        with self.level(entries):
            outs = self.targets(clause.exprs, "RETURNING")
        self.check_outputs(outs, mode)
        return outs

    def insert(self, stmt: AstNode, mode: str) -> list[_Out]:
        with self.with_clause(stmt.withClause):
            target = self.target(stmt.relation)
            columns = target.columns
            names = [c.name for c in stmt.cols or ()]
            for col in stmt.cols or ():
                if col.name in columns and col.indirection:
                    raise refuse(columns[col.name], "an INSERT target with a subscript or field")
            source = stmt.selectStmt
            bound = {i: columns[n] for i, n in enumerate(names) if n in columns}
            if source is not None and columns and not names:
                raise refuse(next(iter(columns.values())), "an INSERT without a column list")
            if source is not None and _plain_values(source):
                with self.level([]):
                    for row in source.valuesLists:
                        for i, item in enumerate(row):
                            if i in bound:
                                self.value(item, bound[i], assignment=True)
                            else:
                                self.expr(item, "VALUES")
            elif source is not None:
                if bound:
                    raise refuse(next(iter(bound.values())), "INSERT ... SELECT")
                self.dml(source, "INSERT ... SELECT")
            self.on_conflict(stmt.onConflictClause, target)
            return self.returning(stmt.returningClause, [target], mode)

    def on_conflict(self, clause: AstNode, target: _Entry) -> None:
        if clause is None:
            return
        excluded = _Entry("excluded", target.columns)
        with self.level([target, excluded]):
            infer = clause.infer
            if infer is not None:
                for elem in infer.indexElems or ():
                    self.expr((elem.expr, elem.collation, elem.opclass), "an ON CONFLICT index expression")
                self.expr(infer.whereClause, "ON CONFLICT ... WHERE")
            self.assignments(clause.targetList, target.columns, excluded_ok=True)
            self.expr(clause.whereClause, "ON CONFLICT DO UPDATE ... WHERE")

    def assignments(self, targets: AstNode, columns: Mapping[str, EncryptedRef], *, excluded_ok: bool) -> None:
        done: set[int] = set()
        for target in targets or ():
            ref = columns.get(target.name)
            val = target.val
            if isinstance(val, ast.MultiAssignRef):
                if ref is not None:
                    raise refuse(ref, "a multiple-column assignment")
                if id(val.source) not in done:
                    done.add(id(val.source))
                    self.expr(val.source, "SET")
                continue
            if ref is None:
                self.expr(val, "SET")
                continue
            if target.indirection:
                raise refuse(ref, "an assignment with a subscript or field")
            if excluded_ok and isinstance(val, ast.ColumnRef) and _names(val)[:1] == ["excluded"] and \
                    self.resolve(val) == ref:
                continue
            self.value(val, ref, assignment=True)

    def update(self, stmt: AstNode, mode: str) -> list[_Out]:
        with self.with_clause(stmt.withClause):
            target = self.target(stmt.relation)
            with self.level([target]) as entries:
                for item in stmt.fromClause or ():
                    self.from_item(item, entries)
                self.assignments(stmt.targetList, target.columns, excluded_ok=False)
                self.expr(stmt.whereClause, "WHERE")
            return self.returning(stmt.returningClause, entries, mode)

    def delete(self, stmt: AstNode, mode: str) -> list[_Out]:
        with self.with_clause(stmt.withClause):
            target = self.target(stmt.relation)
            with self.level([target]) as entries:
                for item in stmt.usingClause or ():
                    self.from_item(item, entries)
                self.expr(stmt.whereClause, "WHERE")
            return self.returning(stmt.returningClause, entries, mode)

    def merge(self, stmt: AstNode) -> list[_Out]:
        with self.with_clause(stmt.withClause):
            target = self.target(stmt.relation)
            with self.level([target]) as entries:
                self.from_item(stmt.sourceRelation, entries)
                for entry in entries:
                    if entry.columns:
                        raise refuse(next(iter(entry.columns.values())), "MERGE")
                self.expr((stmt.joinCondition, stmt.mergeWhenClauses, stmt.returningClause), "MERGE")
        return []

    # -- expressions --------------------------------------------------------------------------

    def expr(self, node: object, what: str) -> None:
        """Walk an expression in which encrypted columns may only appear in the allowed tests."""
        if isinstance(node, tuple | list):
            for item in node:
                self.expr(item, what)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.ColumnRef):
            if _is_star(node):
                refs = self.star(node)
                if refs:
                    raise refuse(next(iter(refs.values())), what)
                return
            ref = self.resolve(node)
            if ref is not None:
                raise refuse(ref, what)
            return
        if isinstance(node, ast.A_Expr):
            self.a_expr(node)
            return
        if isinstance(node, ast.NullTest):
            if self.encrypted(node.arg) is None:
                self.expr(node.arg, "IS NULL")
            return
        if isinstance(node, ast.SubLink):
            if node.subLinkType == enums.SubLinkType.EXISTS_SUBLINK:
                self.dml(node.subselect, "derived")
            else:
                self.dml(node.subselect, "a subquery result")
                self.expr(node.testexpr, "a comparison with a subquery")
            return
        if isinstance(node, ast.SelectStmt):
            self.dml(node, "a subquery result")
            return
        if isinstance(node, ast.FuncCall):
            what = f"function {'.'.join(str(s.sval) for s in node.funcname or ())}()"
        else:
            what = _NODE_NAMES.get(type(node).__name__, what)
        for name in node_fields(node):
            self.expr(getattr(node, name), what)

    def a_expr(self, node: AstNode) -> None:
        op = node.name[-1].sval if node.name else ""
        kind = node.kind
        if kind == enums.A_Expr_Kind.AEXPR_OP and op in _EQUALITY:
            left, right = self.encrypted(node.lexpr), self.encrypted(node.rexpr)
            if left is not None and right is not None:
                raise refuse(left, "a comparison between two columns")
            ref, other = (left, node.rexpr) if left is not None else (right, node.lexpr)
            if ref is not None:
                self.deterministic(ref, f"operator {op}")
                self.value(other, ref)
                return
        elif kind == enums.A_Expr_Kind.AEXPR_IN:
            ref = self.encrypted(node.lexpr)
            if ref is not None:
                self.deterministic(ref, "IN")
                for item in node.rexpr:
                    self.value(item, ref)
                return
        if kind in (enums.A_Expr_Kind.AEXPR_OP, enums.A_Expr_Kind.AEXPR_OP_ANY, enums.A_Expr_Kind.AEXPR_OP_ALL):
            what = f"operator {op}" + {enums.A_Expr_Kind.AEXPR_OP_ANY: " ANY", enums.A_Expr_Kind.AEXPR_OP_ALL:
                                       " ALL"}.get(kind, "")
        else:
            what = _KIND_NAMES.get(kind, f"operator {op}")
        self.expr((node.lexpr, node.rexpr), what)

    def deterministic(self, ref: EncryptedRef, what: str) -> None:
        if ref.mode != _DETERMINISTIC:
            raise _unsupported(f"encrypted column {ref} is randomized: {what} is not supported, only IS [NOT] "
                               "NULL (equality search needs mode = deterministic)")


def _plain_values(source: AstNode) -> bool:
    """INSERT ... VALUES without ORDER BY/LIMIT/WITH around it."""
    return bool(source.valuesLists) and not any(
        (source.sortClause, source.limitCount, source.limitOffset, source.withClause, source.lockingClause))


__all__ = ["Analyzer", "Encrypt", "EncryptedRef", "Seal", "fill_sealed", "literal_redactions", "literal_value",
           "seal_sql", "slot_spans"]
