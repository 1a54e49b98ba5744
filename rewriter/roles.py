"""Read-only sessions: which statements write, and the backend settings that lock writes a second time.

A session of a ``readonly`` user (config ``role`` or the token's role claim) may not run
INSERT/UPDATE/DELETE/MERGE at any level (top level, writable CTE, EXPLAIN, PREPARE, DECLARE,
COPY (...) TO), take row locks (SELECT ... FOR UPDATE/SHARE), or switch its read-only
transaction mode off (RESET ALL and DISCARD ALL keep it: it is the session's reset value,
or re-applied on a pooled backend). The backend session also starts with ``default_transaction_read_only``
on, so what the proxy cannot see (a function that writes, nextval) fails there.

>>> read_only_violation("SELECT 1", ("select",)) is None
True
>>> read_only_violation("UPDATE t SET a = 1", ("update",))
'UPDATE'
>>> read_only_violation("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ("select",))
'DELETE'
>>> read_only_violation("BEGIN READ WRITE", ("begin",))
'BEGIN READ WRITE'
"""

from __future__ import annotations

import functools
from typing import Any

from pglast import ast, enums, parser

__all__ = ["READ_ONLY_SETTINGS", "read_only_settings", "read_only_violation"]

READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
# "ddl": what a dedicated tenant's allow_ddl lets through unrewritten; never for a read-only user
_WRITE_KINDS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE", "merge": "MERGE", "ddl": "DDL"}
# kinds that cannot hold a write, a row lock or a read-only switch: no need to parse them again
_HARMLESS_KINDS = frozenset(
    {
        "show",
        "commit",
        "rollback",
        "savepoint",
        "release",
        "rollback_to",
        "fetch",
        "move",
        "close",
        "discard",
        "discard_all",
        "reset_all",
        "deallocate",
        "listen",
        "unlisten",
        "notify",
        "execute",
    }
)
_WRITE_NODES = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}
_LOCKS = {
    enums.LockClauseStrength.LCS_FORKEYSHARE: "SELECT FOR KEY SHARE",
    enums.LockClauseStrength.LCS_FORSHARE: "SELECT FOR SHARE",
    enums.LockClauseStrength.LCS_FORNOKEYUPDATE: "SELECT FOR NO KEY UPDATE",
    enums.LockClauseStrength.LCS_FORUPDATE: "SELECT FOR UPDATE",
}


def read_only_settings(settings: dict[str, str]) -> dict[str, str]:
    """The backend session settings of a read-only session: the client's, with writes locked off."""
    out = {k: v for k, v in settings.items() if k.lower() not in READ_ONLY_SETTINGS}
    out["default_transaction_read_only"] = "on"
    return out


def read_only_violation(sql: str, kinds: tuple[str, ...]) -> str | None:
    """What in ``sql`` a read-only session may not run ("UPDATE", "SELECT FOR UPDATE", ...), or None.

    ``kinds`` are the rewriter's statement kinds (empty when the session is not rewritten).
    """
    for kind in kinds:
        if kind in _WRITE_KINDS:
            return _WRITE_KINDS[kind]
    if kinds and _HARMLESS_KINDS.issuperset(kinds):
        return None
    return _scan(sql)


@functools.lru_cache(maxsize=1024)
def _scan(sql: str) -> str | None:
    try:
        stmts = parser.parse_sql(sql)
    except parser.ParseError:
        return "a statement that cannot be parsed"  # fail closed: what cannot be read cannot be judged
    stack: list[Any] = [stmts]
    while stack:  # every node of the tree, CTEs and subqueries included
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            found = _violation(item)
            if found is not None:
                return found
            stack.extend(getattr(item, member) for member in item)
    return None


def _violation(node: Any) -> str | None:
    name = type(node).__name__
    if name in _WRITE_NODES:
        return _WRITE_NODES[name]
    if name == "SelectStmt" and node.lockingClause:
        return _LOCKS.get(node.lockingClause[0].strength, "SELECT FOR UPDATE")
    if name == "VariableSetStmt":
        if node.name is not None and node.name.lower() in READ_ONLY_SETTINGS:
            verb = "RESET" if node.kind == enums.VariableSetKind.VAR_RESET else "SET"
            return f"{verb} {node.name.lower()}"
        if _read_write(node.args):
            return (
                "SET TRANSACTION READ WRITE" if node.name == "TRANSACTION" else "SET SESSION CHARACTERISTICS READ WRITE"
            )
    if name == "CopyStmt" and node.is_from:
        return "COPY FROM"
    if name == "TransactionStmt" and _read_write(node.options):
        return "BEGIN READ WRITE"
    if name == "FuncCall" and node.funcname[-1].sval == "set_config":
        first = node.args[0] if node.args else None
        setting = getattr(getattr(first, "val", None), "sval", None)
        if not isinstance(setting, str) or setting.lower() in READ_ONLY_SETTINGS:
            return "set_config() of a read-only setting"
    return None


def _read_write(options: Any) -> bool:
    """A transaction option list that asks for READ WRITE."""
    for opt in options or ():
        if type(opt).__name__ == "DefElem" and opt.defname == "transaction_read_only":
            value = getattr(getattr(opt.arg, "val", None), "ival", None)
            if value == 0:
                return True
    return False
