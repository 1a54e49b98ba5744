"""Field-level encryption on the wire, for one tenant session (sans-IO), plus its startup pieces.

:class:`SessionCrypto` sees the client's messages in the order they go to the backend and the
backend's answers in the order they come back, and

- encrypts Bind values of parameters the rewriter bound to encrypted columns (``encrypt_params``),
  decoding them with their wire format and declared type, re-encoded as ``bytea`` in the same
  format; Parse gets ``bytea`` as those parameters' type;
- reports plaintext types: in ParameterDescription for those parameters and in RowDescription
  for fields whose (table OID, column number) is an encrypted column (the backend reports the
  origin of plain column references, also through subqueries, CTEs, RETURNING and cursors);
- decrypts those fields in DataRow, in the result format the client asked for; rows of results
  without encrypted fields pass untouched (not even decoded);
- encrypts literals for the rewriter (:meth:`SessionCrypto.encrypt_literal`);
- notes which encrypted columns each statement accessed, for its audit record: the columns of the
  values it decrypted for the client (:meth:`SessionCrypto.take_read`, at the statement's end) and
  of the values it encrypted (:meth:`SessionCrypto.take_written` at an Execute: the Bind's values
  and the statement's own literals; :meth:`SessionCrypto.sealed_literals` for a simple Query's
  literals). Only names, never values. A NULL is neither encrypted nor decrypted: not an access.

(Longer than ~600 lines: one state machine over both directions of the wire, plus its startup pieces.)

Which RowDescription applies to which DataRows is tracked with a FIFO of what the client asked
for: a simple Query (each statement's own RowDescription), Describe of a statement or portal,
Execute (rows use the portal's description, or its statement's with the Bind's result formats).
An Execute of a portal nobody described gets a Describe injected in front of it, whose answer
is dropped. A Parse changes the record of its statement only on its ParseComplete: a Parse the
backend rejected or skipped (an earlier error in its cycle) leaves the old record, as it leaves
the old statement.

A value that cannot be decrypted (tampered, copied from another tenant/table/column, key
destroyed) becomes an ErrorResponse with the keyring's SQLSTATE (XX001 data_corrupted for damaged
or misplaced ciphertext, 55000 when the key version is destroyed, unknown or not loaded); the rest
of that cycle's backend messages are dropped up to ReadyForQuery. If the backend is inside a
transaction block then, ReadyForQuery is reported as failed ('E') and :attr:`abort_pending` is set:
the session must make the backend's transaction fail too. Messages never carry plaintext or keys.
"""

from __future__ import annotations

import struct
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote

from tenantgate.keyring import (
    BY_OID,
    CodecError,
    DatabaseKeyStore,
    DecryptError,
    EncryptedColumn,
    EncryptionSettings,
    FileKeyStore,
    Keyring,
    KeyringError,
    KeyStore,
    PgType,
    provider_from_uri,
)
from tenantgate.keyring.pgtypes import BYTEA, IntType
from tenantgate.keyring.quoting import quote_literal, quote_qualified
from tenantgate.rewriter import Refused

from . import codec
from .backend import Backend, BackendTarget, simple_query
from .codec import Bind, Describe, Execute, FieldDescription, MsgType, Parse, ProtocolError, RowDescription

BYTEA_OID = 17
_INT2 = IntType("int2", 21, 2, "smallint")
_FLOATS = {700: struct.Struct("!f"), 701: struct.Struct("!d")}
_TEXT_LIKE = frozenset({18, 19, 25, 114, 705, 1042, 1043})  # char, name, text, json, unknown, bpchar, varchar

# What field encryption looks at on the way back (its ``responses`` as a filter, proxy/filters.py).
_RESPONSES = frozenset(
    (MsgType.ROW_DESCRIPTION, MsgType.PARAMETER_DESCRIPTION, MsgType.DATA_ROW, MsgType.COMMAND_COMPLETE,
     MsgType.ERROR_RESPONSE, MsgType.READY_FOR_QUERY, MsgType.NO_DATA, MsgType.PORTAL_SUSPENDED,
     MsgType.EMPTY_QUERY_RESPONSE)
)  # not ParseComplete: the session tells it of the client's own (parsed), the proxy's re-prepares are not its
# Last forced key load per keyring and tenant, shared by the sessions of one process.
_loads: weakref.WeakKeyDictionary[Keyring, dict[str, float]] = weakref.WeakKeyDictionary()


class CryptoSetupError(Exception):
    """Encrypted columns cannot be served (missing or non-bytea column, unusable key store)."""


def column_name(col: EncryptedColumn) -> str:
    """How audit records name an encrypted column: ``table.column`` as configured."""
    return f"{col.table}.{col.column}"


def qualified(table: str) -> str:
    """``schema.table`` of a configured ``[schema.]table`` (unqualified means public, as the rewriter resolves)."""
    return table if "." in table else f"public.{table}"


# ----------------------------------------------------------------------------- per-session state


@dataclass(slots=True)
class _Statement:
    params: tuple[tuple[int, EncryptedColumn, int], ...] = ()  # (0-based index, column, declared type OID)
    encrypted: tuple[tuple[int, EncryptedColumn], ...] = ()  # encrypted result fields
    described: bool = False  # a Describe was asked for (its answer may still be on its way)
    literals: frozenset[str] = frozenset()  # columns of the literals encrypted into its text


@dataclass(slots=True)
class _Portal:
    statement: _Statement
    result_formats: tuple[int, ...]
    rows: tuple[tuple[int, EncryptedColumn, int], ...] | None = None  # from Describe portal
    described: bool = False
    written: frozenset[str] = frozenset()  # columns of the values it compares or stores, until its first Execute
    bound: str = ""  # the statement bound (backend name)


class _Described(NamedTuple):
    """What one RowDescription says of the encrypted columns (SessionCrypto._describe)."""

    encrypted: tuple[tuple[int, EncryptedColumn], ...]  # (field index, column)
    rows: tuple[tuple[int, EncryptedColumn, int], ...]  # ... and the field's format: how its rows decrypt
    replacement: bytes | None  # the description as the client sees it (plaintext types), None: unchanged


_DESCRIBED_MAX = 256  # distinct result shapes remembered per session


@dataclass(slots=True)
class _Expect:
    """One thing the backend will answer, in order."""

    kind: int  # Q, D (describe), E (execute), S (sync)
    statement: _Statement | None = None
    portal: _Portal | None = None
    injected: bool = False  # a Describe the proxy added: its answer goes to nobody


@dataclass
class SessionCrypto:
    """Encryption state of one tenant session. ``columns``: (table OID, attnum) -> column."""

    keyring: Keyring
    tenant: str
    columns: Mapping[tuple[int, int], EncryptedColumn]
    timezone: Callable[[], str]
    on_op: Callable[[str, bool], None] | None = None  # metrics: (encrypt|decrypt, ok)
    home: str | None = None  # a schema-tier tenant's schema: its copies of the tables are encrypted too
    abort_pending: bool = False
    """Set when a decryption failure was reported inside a transaction block: the backend's
    transaction must be made to fail (the client was shown ReadyForQuery 'E'). Clear it after."""
    _by_name: dict[tuple[str, str], EncryptedColumn] = field(default_factory=dict)
    _statements: dict[str, _Statement] = field(default_factory=dict)
    _portals: dict[str, _Portal] = field(default_factory=dict)
    _expect: deque[_Expect] = field(default_factory=deque)
    # Parses sent and not yet acknowledged: (cycle, name, record), replacing the record on ParseComplete
    _parses: deque[tuple[int, str, _Statement]] = field(default_factory=deque)
    _cycles_sent: int = 0  # Sync/Query messages seen: each ends in one ReadyForQuery
    _cycles_done: int = 0
    _rows: tuple[tuple[int, EncryptedColumn, int], ...] | None = None  # how to decrypt the rows now arriving
    _rows_of: _Expect | None = None  # the expectation _rows belongs to
    _dropping: bool = False
    _stale: bool = False
    _read: set[str] = field(default_factory=set)  # columns decrypted since the last statement ended
    _literals: list[tuple[str, str]] = field(default_factory=list)  # (column, ciphertext hex) of the plan now made
    # RowDescription body -> what it says of the encrypted columns (a session reads the same few shapes)
    _described: dict[bytes, _Described] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {(qualified(c.table), c.column): c for c in self.columns.values()}
        if self.home is not None:  # the rewriter names them in the tenant's schema; keys and AAD keep the config's name
            for c in list(self.columns.values()):
                self._by_name[(f"{self.home}.{qualified(c.table).partition('.')[2]}", c.column)] = c

    def __repr__(self) -> str:
        return f"SessionCrypto(tenant={self.tenant!r}, columns={len(self.columns)})"

    @property
    def responses(self) -> frozenset[int]:
        return _RESPONSES

    # ------------------------------------------------------------------ keys

    def keys_fresh(self) -> bool:
        """False when :meth:`refresh` must be awaited before more statements are relayed (keys
        older than half the cache TTL, or a key version this process does not know was seen)."""
        loaded = _loads.get(self.keyring, {}).get(self.tenant)
        return not self._stale and loaded is not None and time.monotonic() - loaded < self.keyring.cache_ttl / 2

    async def refresh(self) -> None:
        """(Re)load the tenant's keys (creating version 1 on first use) unless fresh."""
        if self.keys_fresh():
            return
        await self.keyring.ensure_loaded(self.tenant, force=True)
        _loads.setdefault(self.keyring, {})[self.tenant] = time.monotonic()
        self._stale = False

    def _count(self, op: str, ok: bool) -> None:
        if self.on_op is not None:
            self.on_op(op, ok)

    # ------------------------------------------------------------------ encryption

    def _column(self, table: str, column: str) -> EncryptedColumn:
        col = self._by_name.get((table, column))
        if col is None:  # the rewriter's policy and this map come from one config: a mismatch is a bug
            raise Refused("55000", f"encrypted column {table}.{column} is not served", "encryption_unavailable")
        return col

    def _seal(self, col: EncryptedColumn, plaintext: bytes) -> bytes:
        try:
            ciphertext = self.keyring.encrypt(self.tenant, col.table, col.column, col.mode, plaintext)
        except KeyringError as exc:
            self._count("encrypt", False)
            raise Refused(exc.sqlstate, f"cannot encrypt a value for {col.table}.{col.column}: {exc}",
                          "encryption") from None
        self._count("encrypt", True)
        return ciphertext

    def encrypt_literal(self, table: str, column: str, text: str) -> bytes:
        """The rewriter's ``encrypt`` callback: a literal's text -> ciphertext for ``schema.table``.``column``."""
        col = self._column(table, column)
        try:
            canonical = col.type.from_text(text.encode(), timezone=self.timezone())
        except CodecError as exc:
            raise Refused(exc.sqlstate, f"{col.table}.{col.column}: {exc}", "encryption") from None
        ciphertext = self._seal(col, canonical)
        self._literals.append((column_name(col), ciphertext.hex()))
        return ciphertext

    def sealing(self) -> Callable[[str, str, str], bytes]:
        """The ``encrypt`` callback for the next plan: what an earlier (perhaps refused) plan
        encrypted is forgotten, so :meth:`sealed_literals` lists this plan's literals only."""
        self._literals.clear()
        return self.encrypt_literal

    def sealed_literals(self) -> tuple[tuple[str, str], ...]:
        """(column, ciphertext hex) of each literal the last plan encrypted: a simple Query's
        statement used a column when its text holds the ciphertext."""
        return tuple(self._literals)

    def take_written(self, portal: str, statement: str) -> frozenset[str]:
        """The columns whose encrypted values (the Bind's, the statement's literals) an Execute of
        ``portal`` uses: on its first Execute only (later ones fetch more rows of the same run).
        ``statement``: the one its last Bind named (a Bind this session did not see, e.g. of a
        statement no backend has, leaves an older record here: not this portal's)."""
        found = self._portals.get(portal)
        if found is None or found.bound != statement:
            return frozenset()
        written, found.written = found.written, frozenset()
        return written

    def take_read(self) -> frozenset[str]:
        """The columns decrypted for the client since the last call: the statement that just ended."""
        if not self._read:
            return frozenset()
        read = frozenset(self._read)
        self._read.clear()
        return read

    def _canonical(self, col: EncryptedColumn, declared: int, value: bytes, fmt: int) -> bytes:
        """A Bind value (declared type, wire format) -> canonical plaintext of the column's type."""
        ctype = col.type
        if fmt != 1 or declared in (0, ctype.oid):
            return ctype.to_canonical(value, fmt, timezone=self.timezone())
        dtype: PgType | None = BY_OID.get(declared) or (_INT2 if declared == _INT2.oid else None)
        if dtype is not None:
            text = dtype.from_binary(value)
        elif declared in _TEXT_LIKE:
            text = value
        elif declared in _FLOATS and len(value) == _FLOATS[declared].size:
            text = repr(_FLOATS[declared].unpack(value)[0]).encode()
        else:
            raise CodecError(f"binary parameters of type OID {declared} are not supported for encrypted columns",
                             "0A000")
        return ctype.from_text(text, timezone=self.timezone())

    def _statement(self, name: str) -> _Statement:
        """What the backend runs under ``name``: the latest Parse sent, if the backend gets to it
        (an error skips the rest of the cycle, Bind included), else the last one acknowledged."""
        for _cycle, parsed, pending in reversed(self._parses):
            if parsed == name:
                return pending
        statement = self._statements.get(name)
        return _Statement() if statement is None else statement  # unknown: nothing of ours to encrypt

    def parsed(self) -> None:
        """The backend acknowledged (ParseComplete) the oldest Parse this session was told of."""
        if self._parses:
            _cycle, name, statement = self._parses.popleft()
            self._statements[name] = statement

    def parse_again(self, name: str) -> None:
        """The proxy sends the statement ``name`` is about to be again (same text, same record)."""
        self._parses.append((self._cycles_sent + 1, name, self._statement(name)))

    def _bind(self, bind: Bind) -> bytes | None:
        statement = self._statement(bind.statement)
        portal = self._portals[bind.portal] = _Portal(statement, bind.result_formats, bound=bind.statement)
        if not statement.params:
            portal.written = statement.literals
            return None
        values = list(bind.params)
        written = set(statement.literals)
        for index, col, declared in statement.params:
            value = values[index] if index < len(values) else None
            if value is None:
                continue
            fmt = bind.param_format(index)
            try:
                canonical = self._canonical(col, declared, value, fmt)
            except CodecError as exc:
                raise Refused(exc.sqlstate, f"parameter ${index + 1} for {col.table}.{col.column}: {exc}",
                              "encryption") from None
            ciphertext = self._seal(col, canonical)
            values[index] = ciphertext if fmt == 1 else b"\\x" + ciphertext.hex().encode()
            written.add(column_name(col))
        portal.written = frozenset(written)
        return Bind(bind.portal, bind.statement, bind.param_formats, tuple(values), bind.result_formats).encode()

    def sealed_types(
        self, types: tuple[int, ...], encrypt_params: tuple[tuple[int, str, str, str], ...]
    ) -> tuple[tuple[int, ...], tuple[tuple[int, EncryptedColumn, int], ...]]:
        """(the parameter types the backend is told: bytea for encrypted ones, those parameters)."""
        sealed = list(types)
        params = []
        for number, table, column, _type in encrypt_params:
            col = self._column(table, column)
            index = number - 1
            if index >= len(sealed):
                sealed += [0] * (index + 1 - len(sealed))
            params.append((index, col, sealed[index]))
            sealed[index] = BYTEA_OID
        return tuple(sealed), tuple(params)

    def _parse(self, msg: Parse, encrypt_params: tuple[tuple[int, str, str, str], ...]) -> bytes | None:
        types, params = self.sealed_types(msg.param_types, encrypt_params)
        # the statement's record changes only once the backend acknowledges the Parse (ParseComplete)
        literals = frozenset(name for name, _ in self._literals)
        self._parses.append((self._cycles_sent + 1, msg.name, _Statement(params, literals=literals)))
        if not params:
            return None
        return Parse(msg.name, msg.sql, types).encode()

    # ------------------------------------------------------------------ client -> backend

    def on_request(
        self, mtype: int, msg: object, encrypt_params: tuple[tuple[int, str, str, str], ...] = ()
    ) -> bytes | None:
        """Note a message going to the backend (P B D E S Q C, under the names the backend sees;
        the proxy's own re-prepares excluded; their ParseComplete answers must not reach here);
        return bytes to send instead of it, or None to send it as is.

        ``encrypt_params`` (Parse only): the plan's. Raises Refused when a Bind value cannot be
        encrypted (refuse the Bind then).
        """
        if mtype == MsgType.BIND:
            assert isinstance(msg, Bind)
            return self._bind(msg)
        if mtype == MsgType.EXECUTE:
            assert isinstance(msg, Execute)
            return self._execute(msg)
        if mtype == MsgType.PARSE:
            assert isinstance(msg, Parse)
            return self._parse(msg, encrypt_params)
        if mtype == MsgType.DESCRIBE:
            assert isinstance(msg, Describe)
            if msg.kind == "S":
                statement = self._statement(msg.name)
                statement.described = True
                self._expect.append(_Expect(MsgType.DESCRIBE, statement=statement))
            else:
                portal = self._portals.get(msg.name)
                if portal is None:  # a cursor's portal, or an unknown one (the backend will say)
                    portal = self._portals[msg.name] = _Portal(_Statement(), ())
                portal.described = True
                self._expect.append(_Expect(MsgType.DESCRIBE, portal=portal))
        elif mtype in (MsgType.QUERY, MsgType.SYNC):
            self._cycles_sent += 1
            self._expect.append(_Expect(mtype))
        elif mtype == MsgType.CLOSE:
            assert isinstance(msg, codec.Close)
            # a statement's record stays: a Bind of a closed name fails on the backend, and the
            # content-addressed names of pooled sessions may be prepared again under the same name
            if msg.kind == "P":
                self._portals.pop(msg.name, None)
        return None

    def _execute(self, msg: Execute) -> bytes | None:
        portal = self._portals.get(msg.portal)
        if portal is None:  # a cursor (DECLARE): always described first
            portal = self._portals[msg.portal] = _Portal(_Statement(), ())
        injected = not (portal.described or portal.statement.described)
        if injected:
            portal.described = True
            self._expect.append(_Expect(MsgType.DESCRIBE, portal=portal, injected=True))
        self._expect.append(_Expect(MsgType.EXECUTE, portal=portal))
        return Describe("P", msg.portal).encode() + msg.encode() if injected else None

    # ------------------------------------------------------------------ backend -> client

    def on_response(self, mtype: int, body: bytes | memoryview) -> bytes | None:
        """A backend message (T t D C E Z n s I 1) on its way to the client: None relays it, bytes
        replace it (b"" drops it). Raises ProtocolError when the stream does not match what
        the client asked for (the session must end)."""
        if mtype == MsgType.DATA_ROW:
            if self._dropping:
                return b""
            head = self._expect[0] if self._expect else None
            if head is not self._rows_of:
                self._rows, self._rows_of = self._execute_rows(head), head
            rows = self._rows
            return None if rows is None else self._decrypt_row(body, rows)
        if mtype == MsgType.READY_FOR_QUERY:
            return self._ready(body)
        if mtype == MsgType.PARSE_COMPLETE:
            self.parsed()
            return None
        if self._dropping:
            return b""
        head = self._expect[0] if self._expect else None
        if mtype == MsgType.ROW_DESCRIPTION:
            return self._row_description(head, body)
        if mtype == MsgType.PARAMETER_DESCRIPTION:
            if head is None or head.kind != MsgType.DESCRIBE or head.statement is None:
                raise ProtocolError("server", "ParameterDescription without a Describe statement")
            return self._parameter_description(head.statement, body)
        if mtype == MsgType.NO_DATA:
            if head is None or head.kind != MsgType.DESCRIBE:
                raise ProtocolError("server", "NoData without a Describe")
            self._expect.popleft()
            if head.statement is not None:
                head.statement.encrypted = ()
            elif head.portal is not None:
                head.portal.rows = ()
            return b"" if head.injected else None
        if mtype in (MsgType.COMMAND_COMPLETE, MsgType.PORTAL_SUSPENDED, MsgType.EMPTY_QUERY_RESPONSE):
            if head is not None and head.kind == MsgType.EXECUTE:
                self._expect.popleft()
            self._rows = None  # a simple Query's next statement brings its own RowDescription
            return None
        if mtype == MsgType.ERROR_RESPONSE:  # the backend skips the rest: of the Query, or up to the next Sync
            self._rows = None
            failed = self._cycles_done + 1
            self._parses = deque(p for p in self._parses if p[0] != failed)
            while self._expect and self._expect[0].kind not in (MsgType.QUERY, MsgType.SYNC):
                self._expect.popleft()
        return None

    def _ready(self, body: bytes | memoryview) -> bytes | None:
        self._cycles_done += 1
        while self._parses and self._parses[0][0] <= self._cycles_done:
            self._parses.popleft()
        while self._expect:
            kind = self._expect.popleft().kind
            if kind in (MsgType.QUERY, MsgType.SYNC):
                break
        self._rows = None
        if not self._dropping:
            return None
        self._dropping = False
        if bytes(body[:1]) == RowDescription.TYPE:
            self.abort_pending = True
            return codec.ready("E")
        return None

    @staticmethod
    def _execute_rows(head: _Expect | None) -> tuple[tuple[int, EncryptedColumn, int], ...] | None:
        """How to decrypt the rows of the Execute at the head: its portal's description, or its
        statement's with the Bind's result formats (one for all, or one per column)."""
        if head is None or head.kind != MsgType.EXECUTE or head.portal is None:
            return None
        portal = head.portal
        if portal.rows is not None:
            return portal.rows or None
        formats = portal.result_formats
        rows = tuple(
            (i, col, formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0))
            for i, col in portal.statement.encrypted
        )
        return rows or None

    def _encrypted_fields(self, desc: RowDescription) -> tuple[tuple[int, EncryptedColumn], ...]:
        columns = self.columns
        return tuple(
            (i, columns[(f.table_oid, f.column)])
            for i, f in enumerate(desc.fields)
            if f.table_oid and f.type_oid == BYTEA_OID and (f.table_oid, f.column) in columns
        )

    def _describe(self, body: bytes | memoryview) -> _Described:
        """The encrypted fields of a RowDescription, how its rows decrypt, and the description the
        client gets (None: unchanged); decoded once per distinct body and session (the columns
        are fixed for the session's life, so the same bytes always say the same)."""
        key = bytes(body)
        known = self._described.get(key)
        if known is not None:
            return known
        desc = codec.decode_backend(MsgType.ROW_DESCRIPTION, body)
        assert isinstance(desc, RowDescription)
        encrypted = self._encrypted_fields(desc)
        rows = tuple((i, col, desc.fields[i].format) for i, col in encrypted)
        replacement = None
        if encrypted:
            fields = list(desc.fields)
            for i, col in encrypted:
                f = fields[i]
                fields[i] = FieldDescription(f.name, f.table_oid, f.column, col.type.oid, -1, -1, f.format)
            replacement = RowDescription(tuple(fields)).encode()
        if len(self._described) >= _DESCRIBED_MAX:  # an ad hoc workload: start over rather than grow
            self._described.clear()
        known = self._described[key] = _Described(encrypted, rows, replacement)
        return known

    def _row_description(self, head: _Expect | None, body: bytes | memoryview) -> bytes | None:
        described = self._describe(body)
        if head is not None and head.kind == MsgType.QUERY:
            self._rows = described.rows or None
            self._rows_of = head
        elif head is not None and head.kind == MsgType.DESCRIBE:
            self._expect.popleft()
            if head.statement is not None:
                head.statement.encrypted = described.encrypted
            elif head.portal is not None:
                head.portal.rows = described.rows
            if head.injected:
                return b""
        else:
            raise ProtocolError("server", "RowDescription without a Query or Describe")
        return described.replacement

    def _parameter_description(self, statement: _Statement, body: bytes | memoryview) -> bytes | None:
        if not statement.params:
            return None
        desc = codec.decode_backend(MsgType.PARAMETER_DESCRIPTION, body)
        assert isinstance(desc, codec.ParameterDescription)
        oids = list(desc.type_oids)
        for index, col, declared in statement.params:
            if index < len(oids):
                oids[index] = declared or col.type.oid
        return codec.ParameterDescription(tuple(oids)).encode()

    def _decrypt_row(self, body: bytes | memoryview, rows: tuple[tuple[int, EncryptedColumn, int], ...]) -> bytes:
        """The DataRow with the encrypted fields replaced: only they are read and re-encoded, the
        bytes between them are copied as they came."""
        spans = _field_spans(body, rows[-1][0])
        timezone = self.timezone()
        out = bytearray(b"D\x00\x00\x00\x00")
        mark = 0
        for index, col, fmt in rows:
            start, end = spans[index]
            if start == end and body[start - 4 : start] == _NULL:
                continue
            try:
                value = body[start:end]
                ciphertext = bytes(value) if fmt == 1 else BYTEA.from_text(bytes(value))
                plaintext = self.keyring.decrypt(self.tenant, col.table, col.column, ciphertext)
                value = col.type.from_canonical(plaintext, fmt, timezone=timezone)
            except (KeyringError, ValueError) as exc:
                self._count("decrypt", False)
                return self._fail(col, exc)
            self._count("decrypt", True)
            self._read.add(column_name(col))
            out += body[mark : start - 4]
            out += _I32.pack(len(value))
            out += value
            mark = end
        out += body[mark:]
        _I32.pack_into(out, 1, len(out) - 1)
        return bytes(out)

    def _fail(self, col: EncryptedColumn, exc: Exception) -> bytes:
        if isinstance(exc, DecryptError) and exc.reason in ("unknown_version", "not_loaded"):
            self._stale = True  # another process rotated, or the cache expired: reload before the next statement
        sqlstate = exc.sqlstate if isinstance(exc, KeyringError) else "XX001"
        self._dropping = True
        self._rows = None
        return codec.error(sqlstate, f"a value of encrypted column {col.table}.{col.column} cannot be "
                                     f"decrypted: {exc}").encode()


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_NULL = _I32.pack(-1)


def _field_spans(body: bytes | memoryview, last: int) -> list[tuple[int, int]]:
    """(start, end) of each field of a DataRow body up to field ``last`` (a NULL is an empty span
    after a -1 length word).

    >>> _field_spans(codec.DataRow((b"ab", None, b"c")).encode()[5:], 2)
    [(6, 8), (12, 12), (16, 17)]
    >>> try:
    ...     _field_spans(codec.DataRow((b"ab",)).encode()[5:], 1)
    ... except ProtocolError as exc:
    ...     print(exc)
    protocol violation by server: DataRow has fewer fields than its RowDescription
    """
    (count,) = _I16.unpack_from(body, 0)
    if last >= count:
        raise ProtocolError("server", "DataRow has fewer fields than its RowDescription")
    spans = []
    pos = 2
    for _ in range(last + 1):
        if pos + 4 > len(body):
            raise ProtocolError("server", "DataRow ends inside a field")
        (n,) = _I32.unpack_from(body, pos)
        pos += 4
        end = pos if n == -1 else pos + n
        if n < -1 or end > len(body):
            raise ProtocolError("server", "DataRow has a field length outside the message")
        spans.append((pos, end))
        pos = end
    return spans


# ----------------------------------------------------------------------------- startup


def _quote_table(table: str, home: str | None = None) -> str:
    """The table as a quoted name; ``home``: a schema-tier tenant's copy of it, in its own schema."""
    schema, _, name = qualified(table).partition(".")
    return quote_qualified(home or schema, name)


async def resolve_columns(
    backend: Backend, settings: EncryptionSettings, home: str | None = None
) -> dict[tuple[int, int], EncryptedColumn]:
    """(table OID, attnum) of every configured encrypted column; each must exist and be bytea.

    ``home``: resolve the copies in a schema-tier tenant's schema instead."""
    if not settings.columns:
        return {}
    rows_sql = ", ".join(
        f"({i}, {quote_literal(_quote_table(c.table, home))}, {quote_literal(c.column)})"
        for i, c in enumerate(settings.columns)
    )
    rows = await simple_query(
        backend,
        "SELECT v.i, a.attrelid::oid, a.attnum, a.atttypid::oid FROM (VALUES " + rows_sql + ") AS v(i, t, c) "
        "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(v.t) AND a.attname = v.c "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY v.i",
    )
    found: dict[tuple[int, int], EncryptedColumn] = {}
    problems = []
    for (_, oid, attnum, type_oid), col in zip(rows, settings.columns, strict=True):
        if oid is None or attnum is None:
            problems.append(f"{col.table}.{col.column} does not exist in the backend database")
        elif type_oid != str(BYTEA_OID):
            problems.append(f"{col.table}.{col.column} is not bytea (run `tenantgate keys encrypt-column` first)")
        else:
            found[(int(oid), int(attnum))] = col
    if problems:
        raise CryptoSetupError(f"{settings.source}: encryption.columns: " + "; ".join(problems))
    return found


def backend_url(target: BackendTarget, database: str) -> str:
    """A ``postgresql://`` URL for the key store, from the proxy's backend settings."""
    auth = quote(target.user, safe="") + (":" + quote(target.password, safe="") if target.password else "")
    host = f"[{target.host}]" if ":" in target.host else target.host
    query = f"sslmode={target.sslmode}" + (f"&sslrootcert={quote(target.sslrootcert)}" if target.sslrootcert else "")
    return f"postgresql://{auth}@{host}:{target.port}/{quote(database, safe='')}?{query}"


def build_keyring(
    settings: EncryptionSettings,
    target: BackendTarget,
    database: str | None,
    *,
    on_event: Callable[..., None] | None = None,
) -> Keyring:
    """The proxy's Keyring: the configured KEK provider and key store (``store = "database"``
    uses table tenantgate.keys in ``database``, reached as the backend role)."""
    try:
        kek = provider_from_uri(settings.kek)
    except KeyringError as exc:
        raise CryptoSetupError(f"{settings.source}: encryption.kek: {exc}") from None
    store: KeyStore
    if settings.store == "file":
        assert settings.store_path is not None
        store = FileKeyStore(settings.store_path)
    else:
        if not database:
            raise CryptoSetupError(f"{settings.source}: encryption.store = \"database\" needs backend.database")
        store = DatabaseKeyStore(backend_url(target, database))
    return Keyring(kek, store, cache_ttl=settings.cache_ttl, on_event=on_event)


__all__ = [
    "CryptoSetupError",
    "SessionCrypto",
    "backend_url",
    "build_keyring",
    "qualified",
    "resolve_columns",
]
