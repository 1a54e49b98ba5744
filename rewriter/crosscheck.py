"""Two parsers: sqlglot reads the client's ORIGINAL statement on its own, and the relations it finds
must be the relations PostgreSQL's parser (pglast) found.

The scoper and the verifier both trust pglast's reading of the text. A statement whose text two
independent parsers read differently (lexing tricks with quotes, comments, escapes) is refused
rather than trusted. Relations are compared schema-qualified, resolved as the backend resolves them
(search_path pinned to public, pg_catalog first), without CTE names.

>>> from .policy import Policy
>>> policy = Policy(scoped={("public", "orders"): "tenant_id"})
>>> sorted(relations("WITH o AS (SELECT * FROM orders) SELECT * FROM o, pg_class", policy))
['pg_catalog.pg_class', 'public.orders']
>>> crosscheck("SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id", policy)
>>> crosscheck('SELECT count(*) FROM U&"\\\\006Frders"', policy)  # sqlglot only after normalising
>>> crosscheck("SELECT t.typname FROM pg_type t WHERE t.oid = any($1::oid[])", policy)  # catalog only
>>> def refusal(sql):
...     try:
...         crosscheck(sql, policy)
...     except Refused as err:
...         return err.reason, err.sqlstate, err.message
>>> crosscheck("SELECT * FROM orders, localtime, current_date", policy)  # sqlglot's "tables" are functions
>>> crosscheck("COPY orders (id) TO STDOUT (FORMAT csv, FORCE_QUOTE (id))", policy)  # options sqlglot cannot read
>>> sorted(_sqlglot_relations('SELECT * FROM "localtime", public.localtime', policy))  # quoted or qualified: tables
['public.localtime']
>>> refusal("SELECT @ -1 FROM orders")[:2]
('unparseable_secondary', '42501')
>>> normalised('SELECT /* c */ U&"!0041b" UESCAPE \\'!\\' FROM t')
'SELECT "Ab" FROM t'
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pglast
import sqlglot
from pglast import ast, parser
from sqlglot import exp

from .catalog import CATALOG_SCHEMAS, function_denial
from .errors import Refused
from .policy import Policy
from .scope import CteScope
from .transforms import deparse, node_fields

# sqlglot logs the text of statements it falls back on; statements may carry tenants' values.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

AstNode = Any

# Statements whose relations sqlglot must confirm; EXPLAIN/PREPARE/DECLARE, COPY (query) and
# EXECUTE's arguments are checked through the query they wrap.
CHECKED = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"})
WRAPPERS = frozenset({"ExplainStmt", "PrepareStmt", "DeclareCursorStmt"})
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
# Tokens an inner query of EXPLAIN/PREPARE/DECLARE can start with ('(' is ASCII_40).
_QUERY_STARTS = frozenset({"SELECT", "WITH", "WITH_LA", "INSERT", "UPDATE", "DELETE_P", "MERGE", "VALUES",
                           "TABLE", "ASCII_40", "EXECUTE", "DECLARE"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def crosscheck(sql: str, policy: Policy) -> None:
    """Raise Refused unless sqlglot finds, in every statement of ``sql``, the relations pglast finds.

    reason ``parser_disagreement``: the two sets differ; ``unparseable_secondary``: sqlglot cannot
    read a statement that touches more than catalog relations, even after normalising its tokens.
    """
    try:
        for raw in pglast.parse_sql(sql):
            start = raw.stmt_location or 0
            end = start + raw.stmt_len if raw.stmt_len else len(sql)
            _statement(sql[start:end], raw.stmt, policy)
    except Refused:
        raise
    except parser.ParseError as exc:
        raise Refused("42601", str(exc), "unparseable") from None
    except Exception:  # fail closed: what could not be cross-checked does not run
        raise Refused("42501", "the statement could not be cross-checked by tenantgate", "internal") from None


def relations(sql: str, policy: Policy) -> frozenset[str]:
    """The relations pglast finds in ``sql`` (every statement), as 'schema.name'."""
    found: set[str] = set()
    for raw in pglast.parse_sql(sql):
        found |= _pg_relations(raw.stmt, policy)
    return frozenset(found)


def _statement(text: str, stmt: AstNode, policy: Policy) -> None:
    inner = _inner(text, stmt)
    if inner is not None:
        _statement(*inner, policy)
        return
    name = type(stmt).__name__
    ours = _pg_relations(stmt, policy)
    if name not in CHECKED and not ours:
        return  # SET, SHOW, BEGIN, LISTEN, FETCH, EXECUTE ...: nothing to compare
    theirs = _sqlglot_relations(text, policy)
    if theirs is None:
        if _catalog_only(ours) and _functions_allowed(stmt):
            return
        retry = normalised(text)
        theirs = None if retry is None else _sqlglot_relations(retry, policy)
        if theirs is None:
            raise Refused("42501", "the statement cannot be read by tenantgate's second SQL "
                          "parser (sqlglot), so its table references cannot be confirmed", "unparseable_secondary")
    # sqlglot misreads some drivers' catalog queries: tolerated where neither side names a user table
    if theirs != ours and not (_catalog_only(ours) and _catalog_only(theirs) and _functions_allowed(stmt)):
        raise Refused("42501", "two SQL parsers read the statement differently: PostgreSQL's "
                      f"parser found tables {_names(ours)}, sqlglot found {_names(theirs)}", "parser_disagreement")


def _names(found: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(found)) + "}"


def _catalog_only(found: Iterable[str]) -> bool:
    return all(name.split(".")[0] in CATALOG_SCHEMAS for name in found)


def _key(policy: Policy, catalog: str | None, schema: str | None, name: str) -> str:
    """'schema.name' the way the backend resolves it ('db.schema.name' when a database is named)."""
    rel = policy.resolve(schema, name)
    return f"{catalog}.{rel.schema}.{rel.name}" if catalog else f"{rel.schema}.{rel.name}"


# -- pglast side --------------------------------------------------------------------------------


def _pg_relations(stmt: AstNode, policy: Policy) -> frozenset[str]:
    walker = _PgRelations(policy)
    walker.walk(stmt)
    return frozenset(walker.found)


class _PgRelations:
    """RangeVar nodes minus CTE references, with PostgreSQL's CTE visibility rules."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.found: set[str] = set()
        self.ctes = CteScope()

    def walk(self, node: object) -> None:
        if isinstance(node, tuple | list):
            for item in node:
                self.walk(item)
            return
        if not isinstance(node, ast.Node) or isinstance(node, ast.LockingClause):
            return  # FOR UPDATE OF names FROM items (aliases), never tables
        if isinstance(node, ast.RangeVar):
            self.add(node, cte_visible=True)
            return
        if isinstance(node, (ast.SelectStmt, *_WRITES)):
            depth = self.ctes.enter_pg(node.withClause, lambda cte: self.walk(cte.ctequery))
            target = getattr(node, "relation", None)
            if target is not None:  # a write target is never a CTE
                self.add(target, cte_visible=False)
            for field in node_fields(node):
                if field not in ("withClause", "relation"):
                    self.walk(getattr(node, field))
            self.ctes.leave(depth)
            return
        for field in node_fields(node):
            self.walk(getattr(node, field))

    def add(self, rv: AstNode, *, cte_visible: bool) -> None:
        if cte_visible and self.ctes.is_cte_ref(rv):
            return
        self.found.add(_key(self.policy, rv.catalogname, rv.schemaname, rv.relname))


def _functions_allowed(stmt: AstNode) -> bool:
    """Every function call is a built-in tenants may call (the scoper checks too; this is the
    condition under which a catalog-only statement may skip the second parser)."""
    stack: list[object] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            if isinstance(node, ast.FuncCall):
                names = [s.sval for s in node.funcname or ()]
                if len(names) > 2 or function_denial(*(names if len(names) == 2 else [None, names[0]])):
                    return False
            stack.extend(getattr(node, field) for field in node_fields(node))
    return True


def _inner(text: str, stmt: AstNode) -> tuple[str, AstNode] | None:
    """The text (and PostgreSQL's tree of it) of what a wrapper statement runs, so that sqlglot reads
    a query rather than a command it does not know; None when ``stmt`` wraps nothing or it cannot
    be located. A candidate counts only when PostgreSQL parses it into the very same tree."""
    name = type(stmt).__name__
    if name == "CopyStmt" and stmt.relation is not None and stmt.options:
        return _copy_without_options(text, stmt)
    if name not in WRAPPERS and not (name == "CopyStmt" and stmt.query is not None) and not (
            name == "ExecuteStmt" and stmt.params):
        return None
    try:
        tokens = parser.scan(text)
        if name == "ExecuteStmt":  # EXECUTE p(args): the arguments, read as a select list
            arguments = tuple(deparse(p) for p in stmt.params)
            for group in _paren_groups(text, tokens):
                candidate = "SELECT " + group
                parsed = _parse_one(candidate)
                if parsed is not None and tuple(deparse(t.val) for t in parsed.targetList or ()) == arguments:
                    return candidate, parsed
            return None
        want = deparse(stmt.query)
        if name == "CopyStmt":  # COPY (query) TO ...
            candidates = list(_paren_groups(text, tokens))
        else:  # EXPLAIN/PREPARE/DECLARE end with their query
            candidates = [text[t.start:] for t in _top_level(tokens[1:]) if t.name in _QUERY_STARTS]
        for candidate in candidates:
            parsed = _parse_one(candidate)
            if parsed is not None and deparse(parsed) == want:
                return candidate, parsed
    except Exception:  # fail closed: the caller checks the whole statement instead
        return None
    return None


def _copy_without_options(text: str, stmt: AstNode) -> tuple[str, AstNode] | None:
    """``COPY t [(cols)] TO STDOUT``, the text before the option list (many forms of which sqlglot
    cannot read), when PostgreSQL reads the same table and columns from it. The options name no
    relation, and the scoper always renders COPY afresh from PostgreSQL's tree."""
    try:
        ends = [t.end for t in _top_level(parser.scan(text)) if t.name in ("STDOUT", "STDIN")]
    except Exception:  # fail closed: the caller checks the whole statement instead
        return None
    if len(ends) != 1:
        return None
    candidate = text[:ends[0] + 1]
    parsed = _parse_one(candidate)
    def names(copy: AstNode) -> tuple[str, str]:
        return deparse(copy.relation), deparse(copy.attlist or ())

    if not (isinstance(parsed, ast.CopyStmt) and not parsed.options and parsed.is_from == stmt.is_from
            and names(parsed) == names(stmt)):
        return None
    return candidate, parsed


def _parse_one(text: str) -> AstNode | None:
    try:
        parsed = pglast.parse_sql(text)
    except parser.ParseError:
        return None
    return parsed[0].stmt if len(parsed) == 1 else None


def _top_level(tokens: Iterable[Any]) -> Iterable[Any]:
    """The tokens outside any parentheses (an opening one included)."""
    depth = 0
    for token in tokens:
        if depth == 0:
            yield token
        if token.name == "ASCII_40":
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1


def _paren_groups(text: str, tokens: list[Any]) -> Iterable[str]:
    """The text inside each top-level pair of parentheses."""
    depth = 0
    start = 0
    for token in tokens:
        if token.name == "ASCII_40":
            if depth == 0:
                start = token.end + 1
            depth += 1
        elif token.name == "ASCII_41":
            depth -= 1
            if depth == 0:
                yield text[start:token.start]


# -- sqlglot side -------------------------------------------------------------------------------


def _sqlglot_relations(text: str, policy: Policy) -> frozenset[str] | None:
    """The relations sqlglot finds in ``text``, or None when it cannot parse it."""
    try:
        trees = [t for t in sqlglot.parse(text, read="postgres") if t is not None]
        if any(isinstance(t, exp.Command) for t in trees):
            return None  # sqlglot's fallback for syntax it does not know: no tree to compare
        walker = _SqlglotRelations(policy)
        for tree in trees:
            walker.walk(tree)
    except Exception:  # sqlglot's ParseError/TokenError, and whatever else it raises on odd input
        return None
    return frozenset(walker.found)


def _ident(node: exp.Expr | None) -> str | None:
    """An identifier as PostgreSQL stores it: unquoted names fold to lower case (ASCII only) and
    every name is cut to 63 bytes."""
    if node is None:
        return None
    if not isinstance(node, exp.Identifier):
        raise ValueError(f"unexpected name node {type(node).__name__}")
    name: str = node.this if node.quoted else node.this.translate(_ASCII_LOWER)
    return name.encode()[:63].decode(errors="ignore")


# SQL value functions: unquoted and unqualified, PostgreSQL never reads these names as a relation
_VALUE_FUNCTIONS = frozenset({"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp",
                              "current_role", "current_user", "session_user", "user", "current_catalog",
                              "current_schema", "system_user"})
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _SqlglotRelations:
    """exp.Table nodes naming a relation, minus CTE references (same visibility rules as above)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.found: set[str] = set()
        self.ctes = CteScope()

    def walk(self, node: exp.Expr) -> None:
        if isinstance(node, exp.Lock):
            return
        if isinstance(node, exp.Table):
            self.table(node, cte_visible=True)
            return
        depth = self.with_clause(node.args.get("with_"))
        target = node.this if isinstance(node, exp.Insert | exp.Update | exp.Delete | exp.Merge) else None
        if isinstance(target, exp.Schema):
            target = target.this
        if isinstance(target, exp.Table):
            self.table(target, cte_visible=False)
        for key, value in node.args.items():
            if key == "with_":
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expr) and child is not target:
                    self.walk(child)
        self.ctes.leave(depth)

    def with_clause(self, clause: exp.Expr | None) -> int:
        if clause is None:
            return self.ctes.depth
        ctes = [(_ident(cte.args["alias"].this), cte.this) for cte in clause.expressions]
        return self.ctes.enter(ctes, recursive=bool(clause.args.get("recursive")), walk=self.walk)

    def table(self, node: exp.Table, *, cte_visible: bool) -> None:
        for key, value in node.args.items():
            if key in ("db", "catalog") or (key == "this" and isinstance(value, exp.Identifier)):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expr):
                    self.walk(child)
        if not isinstance(node.this, exp.Identifier):
            return  # a function in FROM (generate_series(...), xmltable(...)), not a relation
        name = _ident(node.this)
        schema = _ident(node.args.get("db"))
        catalog = _ident(node.args.get("catalog"))
        assert name is not None
        if not node.this.quoted and schema is None and catalog is None and name in _VALUE_FUNCTIONS:
            return  # a reserved word PostgreSQL reads as a function (FROM t, localtime)
        if cte_visible and self.ctes.is_cte(name, schema=schema, catalog=catalog):
            return
        self.found.add(_key(self.policy, catalog, schema, name))


# -- token normalisation --------------------------------------------------------------------------


def normalised(text: str) -> str | None:
    """``text`` re-joined from PostgreSQL's own tokens with single spaces, comments dropped and
    U&"..."/U&'...' rendered as plain quoted identifiers/strings; None if it cannot be done."""
    try:
        tokens = [t for t in parser.scan(text) if t.name not in _COMMENTS]
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            piece = text[token.start:token.end + 1]
            if token.name in ("UIDENT", "USCONST"):
                escape = "\\"
                if i + 2 < len(tokens) and tokens[i + 1].name == "UESCAPE" and tokens[i + 2].name == "SCONST":
                    escape = text[tokens[i + 2].start + 1:tokens[i + 2].end]
                    i += 2
                quote = '"' if token.name == "UIDENT" else "'"
                value = _unescape(piece[3:-1].replace(quote * 2, quote), escape)
                piece = quote + value.replace(quote, quote * 2) + quote
            out.append(piece)
            i += 1
    except Exception:  # fail closed: no normalised text, the caller refuses
        return None
    return " ".join(out)


def _unescape(body: str, escape: str) -> str:
    """Resolve Unicode escapes (\\XXXX, \\+XXXXXX, doubled escape) as PostgreSQL does."""
    if len(escape) != 1:
        raise ValueError("invalid Unicode escape character")
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != escape:
            out.append(char)
            i += 1
        elif body[i + 1:i + 2] == escape:
            out.append(escape)
            i += 2
        elif body[i + 1:i + 2] == "+":
            out.append(chr(int(body[i + 2:i + 8], 16)))
            i += 8
        else:
            out.append(chr(int(body[i + 1:i + 5], 16)))
            i += 5
    # surrogate pairs written as two escapes combine into one character
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")
