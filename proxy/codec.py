"""Sans-IO PostgreSQL v3 wire codec: framing plus (de)serialising of every message.

Longer than most modules on purpose: it is the protocol's one message catalogue (the MsgType enum,
every message's dataclass and both directions' decode tables) around one body reader and one set
of encoders; split by direction or into framing and messages, each part would import the other's
privates (_Reader, _cstr, _frame, ProtocolError) and importers would pick between two codecs.

No sockets here: the asyncio layer feeds bytes in and writes bytes out. Every decode
error is a :class:`ProtocolError` naming the side at fault, so the caller can answer
with an ErrorResponse (SQLSTATE 08P01) and close only that connection.

Messages are small frozen dataclasses with ``encode()``; :func:`decode_frontend` and
:func:`decode_backend` turn one framed message back into its dataclass. The hot path
mostly relays raw frames (see :class:`Framer`) and decodes only what it must.

>>> Query("SELECT 1").encode()
b'Q\\x00\\x00\\x00\\rSELECT 1\\x00'
>>> f = Framer("client")
>>> buf, frames = f.feed(Query("SELECT 1").encode() + Sync().encode())
>>> [(chr(t), decode_frontend(t, buf[s + 5 : e])) for t, s, e in frames]
[('Q', Query(sql='SELECT 1')), ('S', Sync())]
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final

from tenantgate.keyring.errors import SqlStateError

from .encoding import UTF8, ClientEncoding, EncodingError

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
MAX_STARTUP_PACKET = 10_000
DEFAULT_MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit (MaxAllocSize)

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!cI")
_EMPTY_BODY = b"\x00\x00\x00\x04"  # the length word of a message with no body


class MsgType:
    """Every v3 message type byte, by name: the one place the wire's type letters are spelled.

    Frontend and backend reuse letters ('D' is Describe from a client and DataRow from a server),
    so a backend name can be an alias of a frontend one; compare with the name of the direction
    you read. The names are plain ints, as a frame's type is: the relay loops compare every frame
    with several of them, and an IntEnum member costs 80-150 ns per lookup there against 20 ns for
    a class attribute (Python 3.11). :func:`type_byte` is the letter.

    >>> MsgType.DATA_ROW == ord("D") == MsgType.DESCRIBE, type_byte(MsgType.READY_FOR_QUERY)
    (True, b'Z')
    """

    # frontend
    QUERY: Final = ord("Q")
    PARSE: Final = ord("P")
    BIND: Final = ord("B")
    DESCRIBE: Final = ord("D")
    CLOSE: Final = ord("C")
    EXECUTE: Final = ord("E")
    SYNC: Final = ord("S")
    FLUSH: Final = ord("H")
    TERMINATE: Final = ord("X")
    COPY_DATA: Final = ord("d")
    COPY_DONE: Final = ord("c")
    COPY_FAIL: Final = ord("f")
    FUNCTION_CALL: Final = ord("F")
    PASSWORD: Final = ord("p")
    # backend
    AUTHENTICATION: Final = ord("R")
    PARAMETER_STATUS: Final = ord("S")
    BACKEND_KEY_DATA: Final = ord("K")
    READY_FOR_QUERY: Final = ord("Z")
    ROW_DESCRIPTION: Final = ord("T")
    DATA_ROW: Final = ord("D")
    COMMAND_COMPLETE: Final = ord("C")
    ERROR_RESPONSE: Final = ord("E")
    NOTICE_RESPONSE: Final = ord("N")
    NOTIFICATION_RESPONSE: Final = ord("A")
    PARAMETER_DESCRIPTION: Final = ord("t")
    COPY_IN_RESPONSE: Final = ord("G")
    COPY_OUT_RESPONSE: Final = ord("H")
    COPY_BOTH_RESPONSE: Final = ord("W")
    PARSE_COMPLETE: Final = ord("1")
    BIND_COMPLETE: Final = ord("2")
    CLOSE_COMPLETE: Final = ord("3")
    NO_DATA: Final = ord("n")
    PORTAL_SUSPENDED: Final = ord("s")
    EMPTY_QUERY_RESPONSE: Final = ord("I")
    NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")
    FUNCTION_CALL_RESPONSE: Final = ord("V")
    # the one-byte answers to SSLRequest and GSSENCRequest
    ACCEPT: Final = ord("S")
    REFUSE: Final = ord("N")



def type_byte(mtype: int) -> bytes:
    """The one-byte type letter of a message type."""
    return bytes((mtype,))


class ProtocolError(SqlStateError):
    """A malformed or oversized message; ``side`` is who sent it ("client" or "server"),
    ``detail`` what was wrong with it."""

    def __init__(self, side: str, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(sqlstate, f"protocol violation by {side}: {message}", "protocol")
        self.side = side
        self.detail = message


# --------------------------------------------------------------------------- reading


class _Reader:
    """Cursor over one message body; every overrun is a ProtocolError of ``side``.

    Strings are UTF-8 unless ``enc`` (a client session's encoding) says otherwise; text that does
    not split as PostgreSQL would split it raises its EncodingError (the statement is refused).
    """

    __slots__ = ("buf", "enc", "pos", "side")

    def __init__(self, buf: bytes | memoryview, side: str, enc: ClientEncoding | None = None) -> None:
        self.buf = bytes(buf)
        self.pos = 0
        self.side = side
        self.enc = enc

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(self.side, what)

    def int32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise self.fail("message too short for an Int32")
        (v,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def int16(self) -> int:
        if self.pos + 2 > len(self.buf):
            raise self.fail("message too short for an Int16")
        (v,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def byte(self) -> bytes:
        if self.pos + 1 > len(self.buf):
            raise self.fail("message too short for a Byte1")
        b = self.buf[self.pos : self.pos + 1]
        self.pos += 1
        return b

    def bytes_(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail("length field points past the end of the message")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise self.fail("unterminated string")
        raw = self.buf[self.pos : end]
        self.pos = end + 1
        if self.enc is not None:
            return self.enc.decode(raw)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8") from None

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise self.fail("negative count")
        return n

    def rest(self) -> bytes:
        b = self.buf[self.pos :]
        self.pos = len(self.buf)
        return b

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail("trailing bytes after the message")


def _cstr(s: str, enc: ClientEncoding = UTF8) -> bytes:
    b = enc.encode(s)
    if b"\x00" in b:
        raise ValueError("strings on the wire cannot contain NUL")
    return b + b"\x00"


def _frame(mtype: bytes, body: bytes) -> bytes:
    return _HDR.pack(mtype, len(body) + 4) + body


def _int16s(values: Iterable[int]) -> bytes:
    vals = list(values)
    return struct.pack(f"!h{len(vals)}h", len(vals), *vals)


def _values(values: Iterable[bytes | None]) -> bytes:
    out = bytearray()
    vals = list(values)
    out += _I16.pack(len(vals))
    for v in vals:
        if v is None:
            out += _I32.pack(-1)
        else:
            out += _I32.pack(len(v)) + v
    return bytes(out)


def _read_values(r: _Reader) -> tuple[bytes | None, ...]:
    out: list[bytes | None] = []
    for _ in range(r.count()):
        n = r.int32()
        out.append(None if n == -1 else r.bytes_(n))
    return tuple(out)


# --------------------------------------------------------------------------- framing


class Framer:
    """Splits a byte stream into typed messages ``(type, start, end)``.

    ``feed`` returns the buffer holding the complete messages and their offsets; the
    caller relays untouched runs by slicing, without re-encoding. A length outside
    [4, max_size] is a ProtocolError (an attacker must not make us buffer 4 GiB).
    """

    __slots__ = ("_buf", "max_size", "side")

    def __init__(self, side: str, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.side = side
        self.max_size = max_size
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        buf = self._buf + data if self._buf else bytes(data)
        n = len(buf)
        pos = 0
        frames: list[tuple[int, int, int]] = []
        unpack = _U32.unpack_from
        limit = self.max_size
        while n - pos >= 5:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > limit:
                raise ProtocolError(self.side, f"invalid message length {length} (limit {limit})")
            end = pos + 1 + length
            if end > n:
                break
            frames.append((buf[pos], pos, end))
            pos = end
        if pos == n:
            self._buf = b""
            return buf, frames
        self._buf = buf[pos:]
        return buf[:pos], frames


def peek_message(buf: bytes, side: str, limit: int = DEFAULT_MAX_MESSAGE) -> tuple[int, int] | None:
    """(type, end offset) of the complete typed message at the head of ``buf``, or None."""
    if len(buf) < 5:
        return None
    (length,) = _U32.unpack_from(buf, 1)
    if length < 4 or length > limit:
        raise ProtocolError(side, f"invalid message length {length} (limit {limit})")
    end = 1 + length
    return (buf[0], end) if len(buf) >= end else None


def read_startup(buf: bytes, side: str = "client", limit: int = MAX_STARTUP_PACKET) -> int | None:
    """Length of the complete untyped startup-phase packet at the head of ``buf``, or None."""
    if len(buf) < 4:
        return None
    (length,) = _U32.unpack_from(buf, 0)
    if length < 8 or length > limit:
        raise ProtocolError(side, f"invalid startup packet length {length} (limit {limit})")
    return length if len(buf) >= length else None


# --------------------------------------------------------------------------- startup phase


@dataclass(frozen=True, slots=True)
class StartupMessage:
    params: dict[str, str] = field(default_factory=dict)
    protocol: int = PROTOCOL_V3

    def encode(self) -> bytes:
        body = _I32.pack(self.protocol)
        for k, v in self.params.items():
            body += _cstr(k) + _cstr(v)
        body += b"\x00"
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return struct.pack("!ii", 8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: int

    def encode(self) -> bytes:
        return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, self.pid, self.secret)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def decode_startup(packet: bytes) -> StartupPacket:
    """Decode one complete startup-phase packet (length word included)."""
    r = _Reader(packet[4:], "client")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, secret = r.int32(), r.int32()
        r.end()
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolError("client", f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", "0A000")
    params: dict[str, str] = {}
    while True:
        key = r.cstring()
        if not key:
            break
        if key in params:
            raise ProtocolError("client", f"duplicate startup parameter {key!r}")
        params[key] = r.cstring()
    r.end()
    if "user" not in params or not params["user"]:
        raise ProtocolError("client", "no PostgreSQL user name specified in startup packet", "28000")
    return StartupMessage(params, code)


# --------------------------------------------------------------------------- frontend


@dataclass(frozen=True, slots=True)
class Query:
    TYPE: ClassVar[bytes] = type_byte(MsgType.QUERY)
    sql: str

    def encode(self, enc: ClientEncoding = UTF8) -> bytes:
        return _frame(self.TYPE, _cstr(self.sql, enc))


@dataclass(frozen=True, slots=True)
class Parse:
    TYPE: ClassVar[bytes] = type_byte(MsgType.PARSE)
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self, enc: ClientEncoding = UTF8) -> bytes:
        return parse_bytes(self.name, self.sql, self.param_types, enc)


@dataclass(frozen=True, slots=True)
class Bind:
    TYPE: ClassVar[bytes] = type_byte(MsgType.BIND)
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _frame(
            self.TYPE,
            _cstr(self.portal)
            + _cstr(self.statement)
            + _int16s(self.param_formats)
            + _values(self.params)
            + _int16s(self.result_formats),
        )

    def param_format(self, i: int) -> int:
        """Format code of parameter ``i`` (0-based): one code applies to all, none means text."""
        if not self.param_formats:
            return 0
        return self.param_formats[0] if len(self.param_formats) == 1 else self.param_formats[i]


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[bytes] = type_byte(MsgType.DESCRIBE)
    kind: str  # 'S' statement or 'P' portal
    name: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.kind.encode() + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[bytes] = type_byte(MsgType.CLOSE)
    kind: str
    name: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.kind.encode() + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    TYPE: ClassVar[bytes] = type_byte(MsgType.EXECUTE)
    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        return _frame(self.TYPE, _cstr(self.portal) + _I32.pack(self.max_rows))


class _NoBody:
    """A frontend message whose body is empty: its type byte and the length 4."""

    __slots__ = ()
    TYPE: ClassVar[bytes]

    def encode(self) -> bytes:
        return self.TYPE + _EMPTY_BODY


@dataclass(frozen=True, slots=True)
class Sync(_NoBody):
    TYPE: ClassVar[bytes] = type_byte(MsgType.SYNC)


@dataclass(frozen=True, slots=True)
class Flush(_NoBody):
    TYPE: ClassVar[bytes] = type_byte(MsgType.FLUSH)


@dataclass(frozen=True, slots=True)
class Terminate(_NoBody):
    TYPE: ClassVar[bytes] = type_byte(MsgType.TERMINATE)


@dataclass(frozen=True, slots=True)
class CopyData:
    TYPE: ClassVar[bytes] = type_byte(MsgType.COPY_DATA)
    data: bytes

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.data)


@dataclass(frozen=True, slots=True)
class CopyDone(_NoBody):
    TYPE: ClassVar[bytes] = type_byte(MsgType.COPY_DONE)


@dataclass(frozen=True, slots=True)
class CopyFail:
    TYPE: ClassVar[bytes] = type_byte(MsgType.COPY_FAIL)
    message: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, _cstr(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    TYPE: ClassVar[bytes] = type_byte(MsgType.FUNCTION_CALL)
    oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        return _frame(
            self.TYPE,
            _I32.pack(self.oid) + _int16s(self.arg_formats) + _values(self.args) + _I16.pack(self.result_format),
        )


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """Type 'p': a password, md5 response, or SASL message; the auth state says which."""

    TYPE: ClassVar[bytes] = type_byte(MsgType.PASSWORD)
    data: bytes

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.data)

    def password(self) -> bytes:
        if not self.data.endswith(b"\x00") or b"\x00" in self.data[:-1]:
            raise ProtocolError("client", "malformed password message")
        return self.data[:-1]

    def sasl_initial(self) -> tuple[str, bytes]:
        """(mechanism, initial response) of a SASLInitialResponse."""
        r = _Reader(self.data, "client")
        mech = r.cstring()
        n = r.int32()
        data = b"" if n == -1 else r.bytes_(n)
        r.end()
        return mech, data


def sasl_initial_response(mechanism: str, data: bytes) -> PasswordMessage:
    return PasswordMessage(_cstr(mechanism) + _I32.pack(len(data)) + data)


def _dec_parse(r: _Reader) -> Parse:
    name, sql = r.cstring(), r.cstring()
    n = r.count()
    oids = tuple(r.int32() & 0xFFFFFFFF for _ in range(n))
    return Parse(name, sql, oids)


def _dec_bind(r: _Reader) -> Bind:
    portal, stmt = r.cstring(), r.cstring()
    pf = tuple(r.int16() for _ in range(r.count()))
    params = _read_values(r)
    rf = tuple(r.int16() for _ in range(r.count()))
    if len(pf) not in (0, 1, len(params)):
        raise r.fail(f"bind message has {len(pf)} parameter formats but {len(params)} parameters")
    return Bind(portal, stmt, pf, params, rf)


def bind_statement(body: bytes, enc: ClientEncoding | None = None) -> str:
    """The prepared statement a Bind body names, without decoding its parameter values."""
    parts = body.split(b"\x00", 2)
    if len(parts) < 3:
        raise ProtocolError("client", "malformed Bind message")
    if enc is not None:
        return enc.decode(parts[1])
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        raise ProtocolError("client", "string is not valid UTF-8") from None


def rename_bind(body: bytes, statement: str) -> bytes:
    """A Bind message (header included) for another prepared statement, values untouched."""
    portal, _, rest = body.partition(b"\x00")
    _, _, rest = rest.partition(b"\x00")
    return _frame(Bind.TYPE, portal + b"\x00" + _cstr(statement) + rest)


def _dec_kind_name(r: _Reader, cls: type[Describe] | type[Close]) -> Describe | Close:
    kind = r.byte().decode("latin-1")
    if kind not in ("S", "P"):
        raise r.fail(f"invalid {cls.__name__} target type {kind!r}")
    return cls(kind, r.cstring())


def _dec_function_call(r: _Reader) -> FunctionCall:
    oid = r.int32()
    formats = tuple(r.int16() for _ in range(r.count()))
    args = _read_values(r)
    return FunctionCall(oid, formats, args, r.int16())


_FRONTEND: dict[int, Callable[[_Reader], object]] = {
    MsgType.QUERY: lambda r: Query(r.cstring()),
    MsgType.PARSE: _dec_parse,
    MsgType.BIND: _dec_bind,
    MsgType.DESCRIBE: lambda r: _dec_kind_name(r, Describe),
    MsgType.CLOSE: lambda r: _dec_kind_name(r, Close),
    MsgType.EXECUTE: lambda r: Execute(r.cstring(), r.int32()),
    MsgType.SYNC: lambda r: Sync(),
    MsgType.FLUSH: lambda r: Flush(),
    MsgType.TERMINATE: lambda r: Terminate(),
    MsgType.COPY_DATA: lambda r: CopyData(r.rest()),
    MsgType.COPY_DONE: lambda r: CopyDone(),
    MsgType.COPY_FAIL: lambda r: CopyFail(r.cstring()),
    MsgType.FUNCTION_CALL: _dec_function_call,
    MsgType.PASSWORD: lambda r: PasswordMessage(r.rest()),
}


def query_text(body: bytes, enc: ClientEncoding) -> str:
    """The text of a Query body, as ``decode_frontend(QUERY, body, enc).sql`` (the same errors): without
    the reader and the message object, since every simple-protocol statement comes through here.

    >>> query_text(b"SELECT 1\\x00", UTF8)
    'SELECT 1'
    >>> try:
    ...     query_text(b"SELECT 1\\x00\\x00", UTF8)
    ... except ProtocolError as exc:
    ...     print(exc)
    protocol violation by client: trailing bytes after the message
    >>> try:
    ...     query_text(b"", UTF8)
    ... except ProtocolError as exc:
    ...     print(exc)
    protocol violation by client: unterminated string
    """
    if not body or body.find(b"\x00") != len(body) - 1:  # empty, no NUL, or one before the last byte
        msg = decode_frontend(MsgType.QUERY, body, enc)
        assert isinstance(msg, Query)
        return msg.sql
    return enc.decode(body[:-1])


def query_bytes(sql: str, enc: ClientEncoding) -> bytes:
    """``Query(sql).encode(enc)`` without the message object."""
    return _frame(Query.TYPE, _cstr(sql, enc))


def parse_parts(body: bytes, enc: ClientEncoding) -> tuple[str, str, tuple[int, ...]]:
    """(name, text, parameter types) of a Parse body, as ``decode_frontend(PARSE, body, enc)`` gives
    them (the same errors): without the reader and the message object, for every extended statement.

    >>> parse_parts(b"s1\\x00SELECT $1\\x00\\x00\\x01\\x00\\x00\\x00\\x17", UTF8)
    ('s1', 'SELECT $1', (23,))
    >>> try:
    ...     parse_parts(b"\\x00SELECT 1\\x00\\x00\\x00\\x00", UTF8)
    ... except ProtocolError as exc:
    ...     print(exc)
    protocol violation by client: trailing bytes after the message
    """
    cut = body.find(b"\x00")
    end = body.find(b"\x00", cut + 1) if cut >= 0 else -1
    count = _I16.unpack_from(body, end + 1)[0] if 0 <= end <= len(body) - 3 else -1
    if count < 0 or len(body) != end + 3 + 4 * count:  # anything unusual: the reader says what is wrong
        msg = decode_frontend(MsgType.PARSE, body, enc)
        assert isinstance(msg, Parse)
        return msg.name, msg.sql, msg.param_types
    name, sql = enc.decode(body[:cut]), enc.decode(body[cut + 1 : end])  # in the reader's order
    return name, sql, struct.unpack_from(f"!{count}I", body, end + 3) if count else ()


def parse_bytes(name: str, sql: str, param_types: tuple[int, ...], enc: ClientEncoding) -> bytes:
    """``Parse(name, sql, param_types).encode(enc)`` without the message object."""
    types = struct.pack(f"!h{len(param_types)}I", len(param_types), *param_types)
    return _frame(Parse.TYPE, _cstr(name, enc) + _cstr(sql, enc) + types)


def decode_frontend(mtype: int, body: bytes | memoryview, enc: ClientEncoding | None = None) -> object:
    """Decode one frontend message body (without its 5-byte header); strings in ``enc`` if given."""
    dec = _FRONTEND.get(mtype)
    if dec is None:
        raise ProtocolError("client", f"invalid frontend message type {chr(mtype)!r}")
    r = _Reader(body, "client", enc)
    msg = dec(r)
    r.end()
    return msg


# --------------------------------------------------------------------------- backend

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


@dataclass(frozen=True, slots=True)
class Authentication:
    TYPE: ClassVar[bytes] = type_byte(MsgType.AUTHENTICATION)
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return _frame(self.TYPE, _I32.pack(self.code) + self.data)

    def mechanisms(self) -> list[str]:
        """Mechanisms of an AuthenticationSASL message."""
        return [m.decode(errors="replace") for m in self.data.split(b"\x00") if m]


def auth_sasl(mechanisms: Iterable[str]) -> Authentication:
    return Authentication(AUTH_SASL, b"".join(_cstr(m) for m in mechanisms) + b"\x00")


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TYPE: ClassVar[bytes] = type_byte(MsgType.PARAMETER_STATUS)
    name: str
    value: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, _cstr(self.name) + _cstr(self.value))


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    TYPE: ClassVar[bytes] = type_byte(MsgType.BACKEND_KEY_DATA)
    pid: int
    secret: int

    def encode(self) -> bytes:
        return _frame(self.TYPE, _I32.pack(self.pid) + _I32.pack(self.secret))


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    TYPE: ClassVar[bytes] = type_byte(MsgType.READY_FOR_QUERY)
    status: str  # 'I' idle, 'T' in transaction, 'E' failed transaction

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.status.encode())


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_mod: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    TYPE: ClassVar[bytes] = type_byte(MsgType.ROW_DESCRIPTION)
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        body = bytearray(_I16.pack(len(self.fields)))
        for f in self.fields:
            body += _cstr(f.name) + struct.pack(
                "!IhIhih", f.table_oid, f.column, f.type_oid, f.type_size, f.type_mod, f.format
            )
        return _frame(self.TYPE, bytes(body))


@dataclass(frozen=True, slots=True)
class DataRow:
    TYPE: ClassVar[bytes] = type_byte(MsgType.DATA_ROW)
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return _frame(self.TYPE, _values(self.values))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    TYPE: ClassVar[bytes] = type_byte(MsgType.COMMAND_COMPLETE)
    tag: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, _cstr(self.tag))


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    TYPE: ClassVar[bytes] = type_byte(MsgType.ERROR_RESPONSE)
    fields: tuple[tuple[str, str], ...]

    def encode(self, enc: ClientEncoding = UTF8) -> bytes:
        return _frame(self.TYPE, b"".join(k.encode("latin-1") + _cstr(v, enc) for k, v in self.fields) + b"\x00")

    def get(self, code: str, default: str = "") -> str:
        for k, v in self.fields:
            if k == code:
                return v
        return default

    @property
    def sqlstate(self) -> str:
        return self.get("C")

    @property
    def message(self) -> str:
        return self.get("M")


@dataclass(frozen=True, slots=True)
class NoticeResponse(ErrorResponse):
    TYPE: ClassVar[bytes] = type_byte(MsgType.NOTICE_RESPONSE)


def error(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str = "", hint: str = "",
          position: int | None = None) -> ErrorResponse:
    """An ErrorResponse as PostgreSQL would build it (both severity fields, its field order)."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    if position is not None:
        fields.append(("P", str(position)))
    return ErrorResponse(tuple(fields))


def with_error_field(body: bytes, code: str, value: str | None) -> bytes:
    """The ErrorResponse frame of ``body`` with field ``code`` set to the ASCII ``value`` (or left
    out when None); every other field's bytes stay as the backend sent them, in its encoding.

    >>> body = b"SERROR\\x00C42703\\x00Mno\\x00P30\\x00\\x00"
    >>> with_error_field(body, "P", "8")[5:], with_error_field(body, "P", None)[5:]
    (b'SERROR\\x00C42703\\x00Mno\\x00P8\\x00\\x00', b'SERROR\\x00C42703\\x00Mno\\x00\\x00')
    """
    new = None if value is None else value.encode("ascii")
    fields = [(k, new if k == code else v) for k, v in raw_fields(body)]
    out = b"".join(k.encode("latin-1") + v + b"\x00" for k, v in fields if v is not None)
    return _frame(b"E", out + b"\x00")


def raw_fields(body: bytes) -> list[tuple[str, bytes]]:
    """The (code, undecoded value) fields of an ErrorResponse/NoticeResponse body.

    >>> raw_fields(b"SERROR\\x00P7\\x00\\x00")
    [('S', b'ERROR'), ('P', b'7')]
    """
    out: list[tuple[str, bytes]] = []
    i = 0
    while i < len(body) and body[i] != 0:
        end = body.index(b"\x00", i + 1)
        out.append((chr(body[i]), body[i + 1 : end]))
        i = end + 1
    return out


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    TYPE: ClassVar[bytes] = type_byte(MsgType.NOTIFICATION_RESPONSE)
    pid: int
    channel: str
    payload: str

    def encode(self, enc: ClientEncoding = UTF8) -> bytes:
        return _frame(self.TYPE, _I32.pack(self.pid) + _cstr(self.channel, enc) + _cstr(self.payload, enc))


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TYPE: ClassVar[bytes] = type_byte(MsgType.PARAMETER_DESCRIPTION)
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        oids = list(self.type_oids)
        return _frame(self.TYPE, struct.pack(f"!h{len(oids)}I", len(oids), *oids))


@dataclass(frozen=True, slots=True)
class CopyResponse:
    """CopyInResponse 'G', CopyOutResponse 'H' or CopyBothResponse 'W'."""

    kind: bytes
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        return _frame(self.kind, struct.pack("!b", self.format) + _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class Simple:
    """A backend message with an empty body: ParseComplete '1', BindComplete '2',
    CloseComplete '3', NoData 'n', PortalSuspended 's', EmptyQueryResponse 'I', CopyDone 'c'."""

    kind: bytes

    def encode(self) -> bytes:
        return self.kind + _EMPTY_BODY


@dataclass(frozen=True, slots=True)
class BackendCopyData:
    data: bytes

    def encode(self) -> bytes:
        return _frame(type_byte(MsgType.COPY_DATA), self.data)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    TYPE: ClassVar[bytes] = type_byte(MsgType.NEGOTIATE_PROTOCOL_VERSION)
    newest_minor: int
    unrecognized: tuple[str, ...]

    def encode(self) -> bytes:
        body = _I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized))
        return _frame(self.TYPE, body + b"".join(_cstr(o) for o in self.unrecognized))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    TYPE: ClassVar[bytes] = type_byte(MsgType.FUNCTION_CALL_RESPONSE)
    value: bytes | None

    def encode(self) -> bytes:
        v = self.value
        return _frame(self.TYPE, _I32.pack(-1) if v is None else _I32.pack(len(v)) + v)


def _dec_fields(r: _Reader) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    while True:
        code = r.byte()
        if code == b"\x00":
            return tuple(out)
        out.append((code.decode("latin-1"), r.cstring()))


def _dec_row_description(r: _Reader) -> RowDescription:
    fields = []
    for _ in range(r.count()):
        name = r.cstring()
        table_oid = r.int32() & 0xFFFFFFFF
        column = r.int16()
        type_oid = r.int32() & 0xFFFFFFFF
        fields.append(FieldDescription(name, table_oid, column, type_oid, r.int16(), r.int32(), r.int16()))
    return RowDescription(tuple(fields))


def _dec_copy_response(kind: bytes) -> Callable[[_Reader], CopyResponse]:
    def dec(r: _Reader) -> CopyResponse:
        (fmt,) = struct.unpack("!b", r.byte())
        return CopyResponse(kind, fmt, tuple(r.int16() for _ in range(r.count())))

    return dec


def _dec_function_result(r: _Reader) -> FunctionCallResponse:
    n = r.int32()
    return FunctionCallResponse(None if n == -1 else r.bytes_(n))


def _dec_negotiate(r: _Reader) -> NegotiateProtocolVersion:
    minor = r.int32()
    count = r.int32()
    if count < 0:
        raise r.fail("negative count")
    return NegotiateProtocolVersion(minor, tuple(r.cstring() for _ in range(count)))


_BACKEND: dict[int, Callable[[_Reader], object]] = {
    MsgType.AUTHENTICATION: lambda r: Authentication(r.int32(), r.rest()),
    MsgType.PARAMETER_STATUS: lambda r: ParameterStatus(r.cstring(), r.cstring()),
    MsgType.BACKEND_KEY_DATA: lambda r: BackendKeyData(r.int32(), r.int32()),
    MsgType.READY_FOR_QUERY: lambda r: ReadyForQuery(r.byte().decode("latin-1")),
    MsgType.ROW_DESCRIPTION: _dec_row_description,
    MsgType.DATA_ROW: lambda r: DataRow(_read_values(r)),
    MsgType.COMMAND_COMPLETE: lambda r: CommandComplete(r.cstring()),
    MsgType.ERROR_RESPONSE: lambda r: ErrorResponse(_dec_fields(r)),
    MsgType.NOTICE_RESPONSE: lambda r: NoticeResponse(_dec_fields(r)),
    MsgType.NOTIFICATION_RESPONSE: lambda r: NotificationResponse(r.int32(), r.cstring(), r.cstring()),
    MsgType.PARAMETER_DESCRIPTION: lambda r: ParameterDescription(
        tuple(r.int32() & 0xFFFFFFFF for _ in range(r.count()))
    ),
    MsgType.COPY_IN_RESPONSE: _dec_copy_response(type_byte(MsgType.COPY_IN_RESPONSE)),
    MsgType.COPY_OUT_RESPONSE: _dec_copy_response(type_byte(MsgType.COPY_OUT_RESPONSE)),
    MsgType.COPY_BOTH_RESPONSE: _dec_copy_response(type_byte(MsgType.COPY_BOTH_RESPONSE)),
    MsgType.COPY_DATA: lambda r: BackendCopyData(r.rest()),
    MsgType.COPY_DONE: lambda r: Simple(type_byte(MsgType.COPY_DONE)),
    MsgType.PARSE_COMPLETE: lambda r: Simple(type_byte(MsgType.PARSE_COMPLETE)),
    MsgType.BIND_COMPLETE: lambda r: Simple(type_byte(MsgType.BIND_COMPLETE)),
    MsgType.CLOSE_COMPLETE: lambda r: Simple(type_byte(MsgType.CLOSE_COMPLETE)),
    MsgType.NO_DATA: lambda r: Simple(type_byte(MsgType.NO_DATA)),
    MsgType.PORTAL_SUSPENDED: lambda r: Simple(type_byte(MsgType.PORTAL_SUSPENDED)),
    MsgType.EMPTY_QUERY_RESPONSE: lambda r: Simple(type_byte(MsgType.EMPTY_QUERY_RESPONSE)),
    MsgType.NEGOTIATE_PROTOCOL_VERSION: _dec_negotiate,
    MsgType.FUNCTION_CALL_RESPONSE: _dec_function_result,
}


def decode_backend(mtype: int, body: bytes | memoryview, enc: ClientEncoding | None = None) -> object:
    """Decode one backend message body (without its 5-byte header); strings in the client
    encoding ``enc`` if given (what a backend sends a client session is in its encoding)."""
    dec = _BACKEND.get(mtype)
    if dec is None:
        raise ProtocolError("server", f"invalid backend message type {chr(mtype)!r}")
    r = _Reader(body, "server", enc)
    try:
        msg = dec(r)
    except EncodingError as exc:
        raise ProtocolError("server", str(exc)) from None
    if mtype == MsgType.READY_FOR_QUERY and msg.status not in ("I", "T", "E"):  # type: ignore[attr-defined]
        raise r.fail("invalid transaction status in ReadyForQuery")
    r.end()
    return msg


def ready(status: str) -> bytes:
    return ReadyForQuery.TYPE + b"\x00\x00\x00\x05" + status.encode()
