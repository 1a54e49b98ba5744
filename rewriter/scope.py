"""Which names are CTEs at a point of a statement: the one scope resolver of every rewriter walker
(scoper, verifier, both crosscheck readings).

Isolation depends on it: a table reference the resolver calls a CTE is not scoped, so it must
follow PostgreSQL's rules exactly (parse_cte.c, parserOpenTable):

- a WITH list is visible in its own statement and everything nested in it (subqueries, the
  bodies of later CTEs), never outside that statement;
- without RECURSIVE a CTE body sees only the CTEs *before* it; its own name (and any later
  one) inside its body is a table;
- with RECURSIVE every CTE of the list is visible in every body of it;
- an inner WITH shadows an outer one of the same name; leaving it un-shadows;
- only an unqualified name can be a CTE (``public.orders`` never is), and a write target
  (INSERT INTO / UPDATE / DELETE FROM / MERGE INTO) never is: callers resolve those as tables.

Walkers call :meth:`CteScope.enter` with a WITH list (name, body) and a function that walks one
body, and :meth:`CteScope.leave` with what ``enter`` returned when the statement is done.

>>> scope, seen = CteScope(), []
>>> def body(name):  # what is a CTE inside each body
...     seen.append((name, scope.is_cte("a"), scope.is_cte("b")))
>>> depth = scope.enter([("a", "a"), ("b", "b")], recursive=False, walk=body)
>>> seen, scope.is_cte("a"), scope.is_cte("b"), scope.is_cte("a", schema="public")
([('a', False, False), ('b', True, False)], True, True, False)
>>> scope.leave(depth); scope.is_cte("a")
False
>>> seen.clear(); depth = scope.enter([("a", "a"), ("b", "b")], recursive=True, walk=body); seen
[('a', True, True), ('b', True, True)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

Body = TypeVar("Body")


class CteScope:
    """The stack of CTE names visible at the walker's current point."""

    def __init__(self) -> None:
        self._frames: list[frozenset[str]] = []

    def enter(self, ctes: Iterable[tuple[str | None, Body]], *, recursive: bool,
              walk: Callable[[Body], None]) -> int:
        """Walk each CTE body with the names it sees, then leave all of them visible; returns the
        depth to :meth:`leave` at. A name of None (a CTE a reading could not name) hides nothing."""
        depth = len(self._frames)
        ctes = list(ctes)
        if recursive:
            self._frames.append(frozenset(name for name, _ in ctes if name is not None))
        for name, body in ctes:
            walk(body)
            if not recursive and name is not None:
                self._frames.append(frozenset({name}))
        return depth

    @property
    def depth(self) -> int:
        """What :meth:`enter` returns when there is nothing to enter."""
        return len(self._frames)

    def leave(self, depth: int) -> None:
        del self._frames[depth:]

    def is_cte(self, name: str, *, schema: str | None = None, catalog: str | None = None) -> bool:
        """An unqualified ``name`` that a visible WITH list defines."""
        return schema is None and catalog is None and any(name in frame for frame in self._frames)

    # -- pglast trees ---------------------------------------------------------------------------

    def enter_pg(self, clause: Any, walk: Callable[[Any], None]) -> int:
        """:meth:`enter` for a pglast WithClause (or None: nothing to enter); ``walk`` gets each
        CommonTableExpr."""
        if clause is None:
            return self.depth
        return self.enter(((cte.ctename, cte) for cte in clause.ctes), recursive=bool(clause.recursive), walk=walk)

    @contextmanager
    def within_pg(self, clause: Any, walk: Callable[[Any], None]) -> Iterator[None]:
        """:meth:`enter_pg` for the duration of a ``with`` block."""
        depth = self.enter_pg(clause, walk)
        try:
            yield
        finally:
            self.leave(depth)

    def is_cte_ref(self, rv: Any) -> bool:
        """A pglast RangeVar (read, not written) that names a visible CTE."""
        return self.is_cte(rv.relname, schema=rv.schemaname, catalog=rv.catalogname)
