"""What the backend still owes a session, in the order it will answer (sans-IO: no sockets, no loop).

A *cycle* is what one ReadyForQuery ends: a simple Query (all of its statements), or the
extended-protocol messages up to and including a Sync. Cycles are numbered from 1 in the order
they are sent; the backend answers them in that order, so the cycle being answered is always
``done + 1`` and the cycle the extended messages not yet synced belong to is ``sent + 1``. The
proxy's own queries (a pooled backend's settings on hand-over, the statement that fails a
transaction after a decryption error) are cycles too, marked *injected*: their answers go to
nobody, and some of them may fail (``may_fail``) without that being the session's end.

PostgreSQL's rules, kept here so that the session does not count by hand:

- every Query and every Sync gets exactly one ReadyForQuery, in order (extended messages sent
  without a Sync leave the backend busy: :attr:`Pipeline.unsynced`);
- an ErrorResponse fails the cycle being answered: the backend skips what remains of it (the rest
  of a simple Query's statements, or every message up to the Sync) and still sends the
  ReadyForQuery, which reports the failure once (:meth:`Pipeline.ready`).

>>> p = Pipeline()
>>> p.inject(may_fail=False), p.query(), p.next
(1, 2, 3)
>>> p.extended(); p.quiet, p.unsynced
(False, True)
>>> p.answering, p.answering_injected()
(1, False)
>>> p.ready()
(1, False)
>>> p.answering_injected() is None  # cycle 2 is the client's
True
>>> p.error(); p.ready()
(2, True)
>>> p.sync(), p.ready(), p.quiet
(3, (3, False), True)
"""

from __future__ import annotations


class Pipeline:
    """Cycle numbers sent and answered, which of them the proxy injected, and the failure of the one answered."""

    __slots__ = ("_failed", "_injected", "done", "sent", "unsynced")

    def __init__(self) -> None:
        self.sent = 0  # Query/Sync messages sent (client's and injected): each ends in one ReadyForQuery
        self.done = 0  # ReadyForQuery messages received
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self._failed = False  # an ErrorResponse answered the cycle being answered
        self._injected: dict[int, bool] = {}  # cycle -> may fail, for the proxy's own cycles

    # ------------------------------------------------------------------ requests

    def query(self) -> int:
        """A client's Query (or FunctionCall) goes to the backend: its cycle."""
        self.sent += 1
        return self.sent

    def extended(self) -> None:
        """Parse, Bind, Describe, Execute, Close or Flush: answered up to the next Sync."""
        self.unsynced = True

    def sync(self) -> int:
        """A Sync ends the extended messages before it: their cycle."""
        self.unsynced = False
        self.sent += 1
        return self.sent

    def inject(self, *, may_fail: bool) -> int:
        """A query of the proxy's own, answered to nobody (``may_fail``: its error is expected)."""
        self.sent += 1
        self._injected[self.sent] = may_fail
        return self.sent

    # ------------------------------------------------------------------ answers

    @property
    def next(self) -> int:
        """The cycle extended messages sent now belong to (ended by the next Sync)."""
        return self.sent + 1

    @property
    def answering(self) -> int:
        """The cycle the backend's messages answer now."""
        return self.done + 1

    def answering_injected(self) -> bool | None:
        """None when the cycle answered now is the client's, else whether it may fail."""
        return self._injected.get(self.done + 1) if self._injected else None

    def error(self) -> None:
        """An ErrorResponse: the backend skips the rest of the cycle being answered."""
        self._failed = True

    def ready(self) -> tuple[int, bool]:
        """A ReadyForQuery: the cycle it ended and whether an error failed it."""
        self.done += 1
        self._injected.pop(self.done, None)
        failed, self._failed = self._failed, False
        return self.done, failed

    @property
    def answered_all(self) -> bool:
        """Every cycle sent has its ReadyForQuery (extended messages not yet synced aside)."""
        return self.done >= self.sent

    @property
    def quiet(self) -> bool:
        """Nothing sent is unanswered, and no extended message waits for its Sync."""
        return self.done == self.sent and not self.unsynced
