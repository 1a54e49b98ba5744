"""The session settings a transaction-pooled backend must carry for one client, and what it may carry.

A pooled backend is handed from client to client, so every setting a client changes at session
level must either follow that client (re-applied on each hand-over, as its startup settings are)
or pin it to its backend. :class:`TrackedSettings` holds the session's own settings (startup
parameters and the proxy's: tenant, search_path, statement_timeout, ...) and, on top, the client's
acknowledged ``SET``/``RESET``/``set_config(..., false)`` changes (``Plan.settings``).

Two views, so that a mistake can only cost fidelity, never leak state to the next client:

- ``Backend.applied`` (what the backend may carry) is marked *dirty* for a setting as soon as a
  statement that may change it is sent: whoever gets the backend next sets or resets it.
- The client's own values change only when the statement is known to have taken effect: its cycle
  ended without error, outside a transaction block or in one that committed (a ROLLBACK, or a
  failed transaction, drops what it changed, as PostgreSQL does).

>>> t = TrackedSettings({"tenantgate.tenant": "acme", "DateStyle": "ISO"})
>>> t.change([("timezone", "'UTC'")], 1)
>>> t.desired()["timezone"], t.client
("'UTC'", {})
>>> t.cycle_done(1, failed=False, status="I")
>>> t.client
{'timezone': "'UTC'"}
>>> t.change([RESET_ALL], 2); t.cycle_done(2, failed=True, status="I"); t.client
{'timezone': "'UTC'"}
>>> t.change([RESET_ALL], 3); t.cycle_done(3, failed=False, status="I"); t.client, sorted(t.desired())
({}, ['datestyle', 'tenantgate.tenant'])
"""

from __future__ import annotations

from collections.abc import Iterable

from tenantgate.keyring.quoting import quote_literal_ascii

from .backend import Backend

Change = tuple[str, str | None]  # (lower-case name, SQL text after "SET name TO", or None: RESET)
RESET_ALL: Change = ("", None)  # RESET ALL / DISCARD ALL: every client change is gone
DIRTY = "\x00dirty"  # a Backend.applied value no setting has: set or reset on the next hand-over


def _apply(state: dict[str, str], changes: Iterable[Change]) -> None:
    for name, value in changes:
        if (name, value) == RESET_ALL:
            state.clear()
        elif value is None:
            state.pop(name, None)
        else:
            state[name] = value


class TrackedSettings:
    """One pooled session's settings: ``base`` (name -> value) and the client's changes (SQL text)."""

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.client: dict[str, str] = {}  # acknowledged: lower-case name -> SQL text
        self._transaction: list[Change] = []  # changes of the open transaction block, if it commits
        self._pending: dict[int, list[Change]] = {}  # changes of cycles still in flight
        self._removed: set[str] = set()  # reset by the proxy since the last point known to stick
        self._quoted: tuple[dict[str, str], dict[str, str]] = ({}, {})  # (base as seen, its SQL text)
        self._desired: dict[str, str] | None = None  # desired() until the next change

    def desired(self) -> dict[str, str]:
        """What a backend must carry for this session (name -> SQL text), counting the changes in
        flight: a resetting statement is followed by these settings again before anything else.
        Built again only when a change or ``base`` changed it (each hand-over asks two or three times);
        callers do not mutate it (mark_dirty copies a backend's before it marks)."""
        cached = self._desired
        if cached is not None and self._quoted[0] == self.base:
            return cached
        state = dict(self.client)
        _apply(state, self._transaction)
        for changes in self._pending.values():
            _apply(state, changes)
        self._desired = desired = self._quoted_base() | state
        return desired

    def _quoted_base(self) -> dict[str, str]:
        """``base`` as SQL text, quoted again only when it changed (every hand-over asks twice)."""
        seen, quoted = self._quoted
        if seen != self.base:
            quoted = {k.lower(): quote_literal_ascii(v) for k, v in self.base.items()}
            self._quoted = (dict(self.base), quoted)
        return quoted

    def resets_base(self, changes: Iterable[Change]) -> bool:
        """True when the changes put a setting the proxy applied back to the backend's default."""
        base = {k.lower() for k in self.base}
        return any(c == RESET_ALL or (c[1] is None and c[0] in base) for c in changes)

    def change(self, changes: list[Change], cycle: int, backend: Backend | None = None) -> None:
        """Statements that change ``changes`` were sent in ``cycle``."""
        if backend is not None:
            mark_dirty(backend, [name for name, _ in changes if name])
            if RESET_ALL in changes:
                mark_dirty(backend, list(backend.applied))
        self._pending.setdefault(cycle, []).extend(changes)
        self._desired = None

    def cycle_done(
        self, cycle: int, *, failed: bool, status: str, rolled_back: bool = False, backend: Backend | None = None
    ) -> None:
        """The cycle's ReadyForQuery: keep its changes if they took effect (or may still commit)."""
        changes = self._pending.pop(cycle, [])
        if changes or self._transaction:
            self._desired = None
        if failed or rolled_back:
            if (changes or self._transaction) and backend is not None:
                self.undone(backend)  # what the proxy re-applied in that transaction is undone with it
            self._transaction.clear()  # an error aborts the transaction: its SETs are undone
            return
        self._transaction += changes
        if status == "I":
            _apply(self.client, self._transaction)
            self._transaction.clear()
            self._removed.clear()

    def undone(self, backend: Backend) -> None:
        """A transaction with setting changes failed: no setting the proxy touched is certain now."""
        mark_dirty(backend, [*backend.applied, *self._removed])

    @property
    def in_doubt(self) -> bool:
        """Changes of an open transaction block a ROLLBACK TO SAVEPOINT may undo in part."""
        return bool(self._transaction) or any(self._pending.values())

    def setup_sql(self, backend: Backend) -> str:
        """SETs/RESETs that make ``backend`` carry exactly this session's settings."""
        desired = self.desired()
        applied = backend.applied
        if applied is desired and not backend.unknown_settings:
            return ""  # it carries this very view: nothing marked it dirty since (mark_dirty copies)
        parts = []
        if backend.unknown_settings:  # start from the backend's defaults, then apply everything
            backend.unknown_settings, applied = False, {}
            parts.append("RESET ALL")
        parts += [f"SET {k} TO {v}" for k, v in desired.items() if applied.get(k) != v]
        removed = [k for k in applied if k not in desired]
        parts += [f"RESET {k}" for k in removed]
        self._removed.update(removed)
        backend.applied = desired
        return "; ".join(parts)


def mark_dirty(backend: Backend, names: Iterable[str]) -> None:
    """The backend may carry another value of these settings than the proxy applied. A copy: the
    view it replaces may be a session's desired() (setup_sql hands that over without copying)."""
    applied = backend.applied = dict(backend.applied)
    for name in names:
        applied[name] = DIRTY
