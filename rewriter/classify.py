"""Statement classification: the kind of each allowed statement, a reason for each refused one
(SET and RESET: settings.py).

>>> import pglast
>>> refusal(pglast.parse_sql("TRUNCATE orders")[0].stmt).reason
'truncate'
>>> refusal(pglast.parse_sql("CREATE TABLE t (a int)")[0].stmt).message
'CREATE TABLE is not allowed for tenants'
"""

from __future__ import annotations

import re
from typing import Any

import pglast
from pglast import enums

from .errors import Refused

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any

# Statement node -> (reason, what PostgreSQL calls it) for refusals that are not plain DDL.
_REFUSED = {
    "TruncateStmt": ("truncate", "TRUNCATE"),
    "LockStmt": ("lock", "LOCK"),
    "GrantStmt": ("grant", "GRANT/REVOKE"),
    "GrantRoleStmt": ("grant", "GRANT/REVOKE of a role"),
    "DoStmt": ("do", "DO"),
    "CallStmt": ("call", "CALL"),
    "VacuumStmt": ("maintenance", "VACUUM/ANALYZE"),
    "ClusterStmt": ("maintenance", "CLUSTER"),
    "ReindexStmt": ("maintenance", "REINDEX"),
    "CheckPointStmt": ("maintenance", "CHECKPOINT"),
    "LoadStmt": ("load", "LOAD"),
    "AlterSystemStmt": ("alter_system", "ALTER SYSTEM"),
    "CreateStmt": ("ddl", "CREATE TABLE"),
    "CreateTableAsStmt": ("ddl", "CREATE TABLE AS"),
    "IndexStmt": ("ddl", "CREATE INDEX"),
    "ViewStmt": ("ddl", "CREATE VIEW"),
    "RuleStmt": ("ddl", "CREATE RULE"),
    "DefineStmt": ("ddl", "CREATE"),
    "DropStmt": ("ddl", "DROP"),
    "RenameStmt": ("ddl", "ALTER ... RENAME"),
    "CommentStmt": ("ddl", "COMMENT"),
}


def _label(node_name: str) -> str:
    """CreateExtensionStmt -> CREATE EXTENSION."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", node_name.removesuffix("Stmt")).upper()


def refusal(stmt: AstNode) -> Refused:
    """The refusal for a statement type no handler accepts (DDL unless known otherwise)."""
    name = type(stmt).__name__
    reason, label = _REFUSED.get(name, ("ddl", _label(name)))
    return Refused("42501", f"{label} is not allowed for tenants", reason)


def transaction_kind(stmt: AstNode) -> str:
    """begin/commit/rollback/savepoint/release/rollback_to; two-phase commit is refused."""
    k = enums.TransactionStmtKind
    kinds = {
        k.TRANS_STMT_BEGIN: "begin", k.TRANS_STMT_START: "begin", k.TRANS_STMT_COMMIT: "commit",
        k.TRANS_STMT_ROLLBACK: "rollback", k.TRANS_STMT_SAVEPOINT: "savepoint",
        k.TRANS_STMT_RELEASE: "release", k.TRANS_STMT_ROLLBACK_TO: "rollback_to",
    }
    kind = kinds.get(stmt.kind)
    if kind is None:  # PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED act on shared state
        raise Refused("42501", "two-phase commit statements are not allowed for tenants", "two_phase")
    return kind


def discard_kind(stmt: AstNode) -> str:
    return "discard_all" if stmt.target == enums.DiscardMode.DISCARD_ALL else "discard"


_NAMED_STATEMENTS = {"PrepareStmt": "prepare", "ExecuteStmt": "execute", "DeallocateStmt": "deallocate"}


def statement_names(sql: str) -> list[tuple[str, str]]:
    """(kind, name) of each statement of ``sql`` that names a prepared statement ("" for the
    others, "deallocate_all" for DEALLOCATE ALL); [] when it does not parse (the backend says why).

    >>> statement_names("PREPARE Q1 AS SELECT 1; SELECT 2; EXECUTE q1; DEALLOCATE PREPARE \\"Q1\\"; DEALLOCATE ALL")
    [('prepare', 'q1'), ('', ''), ('execute', 'q1'), ('deallocate', 'Q1'), ('deallocate_all', '')]
    """
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return []
    names: list[tuple[str, str]] = []
    for raw in stmts:
        stmt: AstNode = raw.stmt
        kind = _NAMED_STATEMENTS.get(type(stmt).__name__, "")
        if kind == "deallocate" and stmt.isall:
            names.append(("deallocate_all", ""))
        else:
            names.append((kind, str(stmt.name) if kind else ""))
    return names
