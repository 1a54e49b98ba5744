"""One session's traffic as audit records, matched with the backend's answers.

Each statement the backend will answer (every statement of a simple Query, every
Execute) becomes a pending entry; the answer that ends it (CommandComplete,
EmptyQueryResponse, PortalSuspended or ErrorResponse) turns it into a ``statement``
record with its SQLSTATE, row count and duration. Entries the backend skipped after an
earlier error in the same cycle are recorded as not executed at the ReadyForQuery.
Refusals are recorded when they are decided.

With ``durability = "strict"`` every statement is also recorded *before* it is sent
(``phase: start``, write-ahead): the session holds the statement until that record is
durable, so nothing runs on the backend unlogged even when the sink fails between two
statements; the completion record (``phase: end``) is durable before the result is
released.

Encrypted-column access (with field encryption on): each statement record names, in
``encrypted_columns``, the configured ``table.column`` s whose values the proxy decrypted for the
client (``details.encrypted_read``) or encrypted for the statement (``details.encrypted_written``:
Bind values and literals, whether stored or compared, e.g. ``WHERE ssn = '...'`` on a deterministic
column). Nothing is added when the statement touched none. A simple Query's statements are matched
one by one (a literal belongs to the statement whose rewritten text holds its ciphertext); an
Execute carries what its own rows decrypted, and its portal's encrypted values on the portal's first
Execute only (the later ones of a portal fetched in chunks continue the same run). A strict
``phase: start`` record can list only the written columns: nothing has been read yet.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from pglast import parser

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.remote import RemoteAuditLog
from tenantgate.audit.writer import AuditLog
from tenantgate.rewriter import statement_names

from .codec import Bind

if TYPE_CHECKING:
    from .crypto import SessionCrypto

_NONE: frozenset[str] = frozenset()
_NAMED_KINDS = frozenset({"prepare", "execute", "deallocate", "deallocate_all"})
# Command tags whose last word counts rows (INSERT's is "INSERT oid rows").
_ROW_TAGS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"})


def rows_of(tag: str) -> int | None:
    """
    >>> rows_of("INSERT 0 3"), rows_of("SELECT 12"), rows_of("BEGIN")
    (3, 12, None)
    """
    head, _, rest = tag.partition(" ")
    if head in _ROW_TAGS and rest:
        last = rest.rsplit(" ", 1)[-1]
        if last.isdigit():
            return int(last)
    return None


def split_statements(sql: str, count: int) -> list[str]:
    """The text of each statement, as PostgreSQL's scanner splits it (whole text if it cannot)."""
    if count == 1:
        return [sql]
    try:
        parts = [p for p in parser.split(sql) if p.strip()]
    except Exception:  # unparseable: the record keeps the whole text
        parts = []
    return parts if len(parts) == count else [sql] * count


def first_word(sql: str) -> str:
    word = sql.lstrip("( \t\r\n").split(None, 1)
    return word[0].lower().rstrip(";") if word else "empty"


class _Who(TypedDict):
    tenant: str | None
    user: str
    client: str
    session: str
    database: str


@dataclass(slots=True)
class _Pending:
    sql: str
    rewritten: str | None
    kind: str
    cycle: int
    started: float
    params: tuple[str | bytes | None, ...] | None = None
    written: frozenset[str] = _NONE  # encrypted columns whose values the proxy encrypted for it


class SessionAudit:
    def __init__(
        self, log: AuditLog | RemoteAuditLog, *, tenant: str | None, user: str, client: str, session: str,
        database: str, crypto: SessionCrypto | None = None
    ) -> None:
        self.log = log
        self.crypto = crypto  # the session's field encryption: which encrypted columns each statement accessed
        self.tenant = tenant
        self.user = user
        self.client = client
        self.session = session
        self.database = database
        self.pending: deque[_Pending] = deque()
        self._identity: _Who = {  # the same on every record of the session
            "tenant": tenant,
            "user": user,
            "client": client,
            "session": session,
            "database": database,
        }
        self._statements: dict[str, tuple[str, str | None, str]] = {}
        self._portals: dict[str, tuple[str, tuple[str | bytes | None, ...]]] = {}
        self._prepared: dict[str, frozenset[str]] = {}  # SQL-level PREPARE name -> columns of its encrypted literals
        self._log_params = log.settings.log_parameters != "none"
        self.strict = log.settings.durability == "strict"
        self.intents: list[asyncio.Future[int | None]] = []  # strict: write-ahead records not yet durable

    @property
    def accepting(self) -> bool:
        return self.log.accepting

    # ------------------------------------------------------------------ client side

    def query(self, sql: str, rewritten: str, kinds: tuple[str, ...], cycle: int) -> None:
        count = max(len(kinds), 1)
        originals = split_statements(sql, count)
        outputs = split_statements(rewritten, count) if rewritten != sql else [None] * count
        literals = self.crypto.sealed_literals() if self.crypto is not None else ()
        named = statement_names(sql) if self.crypto is not None and not _NAMED_KINDS.isdisjoint(kinds) else []
        now = time.monotonic()
        for i in range(count):
            original = originals[i]
            kind = kinds[i] if kinds else first_word(original)
            # a literal was encrypted for the statement whose text holds its (unguessable) ciphertext
            text = outputs[i] or ""
            written = frozenset(name for name, hexed in literals if hexed in text) if literals else _NONE
            if len(named) == count:
                written = self._sql_prepared(*named[i], written)
            self._started(_Pending(original, outputs[i], kind, cycle, now, written=written))

    def _sql_prepared(self, what: str, name: str, written: frozenset[str]) -> frozenset[str]:
        """A PREPARE's encrypted literals are compared or stored by each of its EXECUTEs, not by it
        (as a Parse's are by each Execute)."""
        if what == "prepare":
            self._prepared[name] = written
            return _NONE
        if what == "execute":
            return written | self._prepared.get(name, _NONE)
        if what == "deallocate":
            self._prepared.pop(name, None)
        elif what == "deallocate_all":
            self._prepared.clear()
        return written

    def parse(self, name: str, sql: str, rewritten: str, kind: str) -> None:
        self._statements[name] = (sql, rewritten if rewritten != sql else None, kind)

    def bind(self, bind: Bind) -> None:
        params: tuple[str | bytes | None, ...] = ()
        if self._log_params:  # text-format values are logged as text, binary ones as bytes
            params = tuple(
                v if v is None or bind.param_format(i) else v.decode("utf-8", "replace")
                for i, v in enumerate(bind.params)
            )
        self._portals[bind.portal] = (bind.statement, params)

    def execute(self, portal: str, cycle: int) -> None:
        statement, params = self._portals.get(portal, ("", ()))
        sql, rewritten, kind = self._statements.get(statement, ("", None, "unknown"))
        written = self.crypto.take_written(portal, statement) if self.crypto is not None else _NONE
        self._started(_Pending(sql, rewritten, kind, cycle, time.monotonic(), params, written))

    def _started(self, p: _Pending) -> None:
        self.pending.append(p)
        if self.strict:
            columns, details = _access(_NONE, p.written, {"statement": p.kind, "phase": "start"})
            event = AuditEvent(
                kind="statement",
                decision="allowed",
                sql=p.sql,
                rewritten=p.rewritten,
                params=p.params,
                encrypted_columns=columns,
                details=details,
                **self._who(),
            )
            future = self._submit(event)
            if future is not None:
                self.intents.append(future)

    def refused(self, sql: str, sqlstate: str, reason: str, message: str) -> None:
        self._submit(
            AuditEvent(
                kind="refusal",
                decision="refused",
                sql=sql,
                sqlstate=sqlstate,
                reason=f"{reason}: {message}",
                **self._who(),
            )
        )

    # ------------------------------------------------------------------ backend side

    def complete(self, tag: str | None, sqlstate: str | None) -> asyncio.Future[int | None] | None:
        """The head statement ended; returns the durability future in strict mode."""
        read = self._read()
        if not self.pending:
            return None
        p = self.pending.popleft()
        return self._submit(self._event(p, read, sqlstate=sqlstate, rows=rows_of(tag) if tag else None))

    def cycle_done(self, cycle: int) -> None:
        pending = self.pending
        read = self._read()  # rows decrypted before a decryption failure ended the statement early
        while pending and pending[0].cycle <= cycle:
            p = pending.popleft()
            # what the backend skipped compared and stored nothing: only rows it had sent count
            p.written = _NONE
            self._submit(self._event(p, read, reason="not executed: an earlier statement of the same request failed"))
            read = _NONE

    # ------------------------------------------------------------------ records

    def _who(self) -> _Who:
        return self._identity

    def _read(self) -> frozenset[str]:
        return self.crypto.take_read() if self.crypto is not None else _NONE

    def _event(
        self, p: _Pending, read: frozenset[str], *, sqlstate: str | None = None, rows: int | None = None,
        reason: str | None = None
    ) -> AuditEvent:
        details: dict[str, object] = {"statement": p.kind, "phase": "end"} if self.strict else {"statement": p.kind}
        columns: tuple[str, ...] = ()
        if read or p.written:
            columns, details = _access(read, p.written, details)
        return AuditEvent(  # keywords spelled out: a ** of the identity costs a dict merge per statement
            kind="statement", tenant=self.tenant, user=self.user, client=self.client, session=self.session,
            database=self.database, sql=p.sql, rewritten=p.rewritten, decision="allowed", reason=reason,
            sqlstate=sqlstate, rows=rows, duration_ms=round((time.monotonic() - p.started) * 1000, 3),
            params=p.params, encrypted_columns=columns, details=details,
        )

    def _submit(self, event: AuditEvent) -> asyncio.Future[int | None] | None:
        """Queue the record; in strict mode a failure comes back as a failed future, so the
        session withholds the result instead of releasing it unlogged."""
        try:
            return self.log.submit(event)
        except AuditUnavailable as exc:
            if self.log.settings.durability != "strict":
                return None
            failed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed


def _access(read: frozenset[str], written: frozenset[str], details: dict[str, object]
            ) -> tuple[tuple[str, ...], dict[str, object]]:
    """(encrypted_columns, details) of a statement record: the union, and read/written apart
    (an auditor asks who read card numbers); nothing added when both are empty.

    >>> _access(frozenset({"c.ssn"}), frozenset({"c.ssn", "c.note"}), {"statement": "select"})[0]
    ('c.note', 'c.ssn')
    >>> _access(frozenset({"c.ssn"}), frozenset({"c.ssn", "c.note"}), {"statement": "select"})[1]
    {'statement': 'select', 'encrypted_read': ['c.ssn'], 'encrypted_written': ['c.note', 'c.ssn']}
    >>> _access(frozenset(), frozenset(), {"statement": "select"})
    ((), {'statement': 'select'})
    """
    if not (read or written):
        return (), details
    if read:
        details["encrypted_read"] = sorted(read)
    if written:
        details["encrypted_written"] = sorted(written)
    return tuple(sorted(read | written)), details
