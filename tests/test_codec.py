"""PostgreSQL v3 wire codec (tenantgate.proxy.codec): round trips, framing, size caps, fuzzing.

Every decodable message type has a hypothesis strategy; the coverage tests fail when a type is
added to the decoder tables without one here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.proxy import codec
from tenantgate.proxy.codec import (
    MAX_STARTUP_PACKET,
    Framer,
    MsgType,
    ProtocolError,
    decode_backend,
    decode_frontend,
    decode_startup,
    peek_message,
    read_startup,
)
from tenantgate.proxy.encoding import EncodingError, client_encoding

Decoder = Callable[[int, bytes], object]

I16 = st.integers(-(2**15), 2**15 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
U32 = st.integers(0, 2**32 - 1)
VALUES = st.lists(st.none() | st.binary(max_size=24), max_size=5).map(tuple)


def text(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    """Wire strings: any Unicode scalar except NUL (the terminator)."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=min_size, max_size=max_size)


def int16s(max_size: int = 5) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(I16, max_size=max_size).map(tuple)


@st.composite
def binds(draw: st.DrawFn) -> codec.Bind:
    params = draw(VALUES)
    # PostgreSQL accepts no format codes, one for all parameters, or one per parameter.
    n_formats = draw(st.sampled_from(sorted({0, 1, len(params)})))
    formats = tuple(draw(st.lists(I16, min_size=n_formats, max_size=n_formats)))
    return codec.Bind(draw(text()), draw(text()), formats, params, draw(int16s()))


# ASCII field codes: a code is one byte on the wire (see test_error_field_code_byte_round_trips).
ERROR_FIELDS = st.lists(st.tuples(st.characters(min_codepoint=1, max_codepoint=0x7F), text()), max_size=6).map(tuple)

FIELD_DESCRIPTIONS = st.builds(codec.FieldDescription, text(), U32, I16, U32, I16, I32, I16)

FRONTEND: dict[str, st.SearchStrategy[object]] = {
    "Query": st.builds(codec.Query, text()),
    "Parse": st.builds(codec.Parse, text(), text(), st.lists(U32, max_size=6).map(tuple)),
    "Bind": binds(),
    "Describe": st.builds(codec.Describe, st.sampled_from("SP"), text()),
    "Close": st.builds(codec.Close, st.sampled_from("SP"), text()),
    "Execute": st.builds(codec.Execute, text(), I32),
    "Sync": st.just(codec.Sync()),
    "Flush": st.just(codec.Flush()),
    "Terminate": st.just(codec.Terminate()),
    "CopyData": st.builds(codec.CopyData, st.binary(max_size=64)),
    "CopyDone": st.just(codec.CopyDone()),
    "CopyFail": st.builds(codec.CopyFail, text()),
    "FunctionCall": st.builds(codec.FunctionCall, I32, int16s(), VALUES, I16),
    "PasswordMessage": st.builds(codec.PasswordMessage, st.binary(max_size=64)),
}

BACKEND: dict[str, st.SearchStrategy[object]] = {
    "Authentication": st.builds(codec.Authentication, I32, st.binary(max_size=40)),
    "ParameterStatus": st.builds(codec.ParameterStatus, text(), text()),
    "BackendKeyData": st.builds(codec.BackendKeyData, I32, I32),
    "ReadyForQuery": st.builds(codec.ReadyForQuery, st.sampled_from("ITE")),
    "RowDescription": st.builds(codec.RowDescription, st.lists(FIELD_DESCRIPTIONS, max_size=4).map(tuple)),
    "DataRow": st.builds(codec.DataRow, VALUES),
    "CommandComplete": st.builds(codec.CommandComplete, text()),
    "ErrorResponse": st.builds(codec.ErrorResponse, ERROR_FIELDS),
    "NoticeResponse": st.builds(codec.NoticeResponse, ERROR_FIELDS),
    "NotificationResponse": st.builds(codec.NotificationResponse, I32, text(), text()),
    "ParameterDescription": st.builds(codec.ParameterDescription, st.lists(U32, max_size=6).map(tuple)),
    # Format is an Int8 whose meaningful values are 0 and 1 (see test_copy_response_high_format_byte_*).
    "CopyResponse": st.builds(codec.CopyResponse, st.sampled_from([b"G", b"H", b"W"]), st.integers(0, 127), int16s()),
    "Simple": st.builds(codec.Simple, st.sampled_from([bytes([c]) for c in b"123nsIc"])),
    "BackendCopyData": st.builds(codec.BackendCopyData, st.binary(max_size=64)),
    "NegotiateProtocolVersion": st.builds(codec.NegotiateProtocolVersion, I32, st.lists(text(), max_size=4).map(tuple)),
    "FunctionCallResponse": st.builds(codec.FunctionCallResponse, st.none() | st.binary(max_size=40)),
}


@st.composite
def startup_messages(draw: st.DrawFn) -> codec.StartupMessage:
    params = draw(st.dictionaries(text(min_size=1, max_size=12), text(), max_size=5))
    params["user"] = draw(text(min_size=1, max_size=12))
    return codec.StartupMessage(params, draw(st.integers(3 << 16, (3 << 16) | 0xFFFF)))


STARTUP: dict[str, st.SearchStrategy[codec.StartupPacket]] = {
    "StartupMessage": startup_messages(),
    "SSLRequest": st.just(codec.SSLRequest()),
    "GSSENCRequest": st.just(codec.GSSENCRequest()),
    "CancelRequest": st.builds(codec.CancelRequest, I32, I32),
}

ANY_FRONTEND = st.one_of(*FRONTEND.values())
ANY_BACKEND = st.one_of(*BACKEND.values())


def encode(msg: object) -> bytes:
    return msg.encode()  # type: ignore[attr-defined,no-any-return]


def frames_of(framer: Framer, data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each complete message ``feed`` returns."""
    buf, frames = framer.feed(data)
    return [(mtype, buf[start + 5 : end]) for mtype, start, end in frames]


def decode_chunks(side: str, chunks: list[bytes], decode: Decoder) -> list[object]:
    framer = Framer(side)
    out = [decode(t, body) for chunk in chunks for t, body in frames_of(framer, chunk)]
    assert framer.pending == 0
    return out


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=24)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def header(mtype: bytes, length: int) -> bytes:
    return mtype + struct.pack("!I", length)


# ----------------------------------------------------------------------------- round trips


# Which message type letters each strategy produces; checked against the codec's decoder tables.
FRONTEND_TYPES = {
    "Query": "Q", "Parse": "P", "Bind": "B", "Describe": "D", "Close": "C", "Execute": "E", "Sync": "S",
    "Flush": "H", "Terminate": "X", "CopyData": "d", "CopyDone": "c", "CopyFail": "f", "FunctionCall": "F",
    "PasswordMessage": "p",
}  # fmt: skip
BACKEND_TYPES = {
    "Authentication": "R", "ParameterStatus": "S", "BackendKeyData": "K", "ReadyForQuery": "Z",
    "RowDescription": "T", "DataRow": "D", "CommandComplete": "C", "ErrorResponse": "E", "NoticeResponse": "N",
    "NotificationResponse": "A", "ParameterDescription": "t", "CopyResponse": "GHW", "Simple": "123nsIc",
    "BackendCopyData": "d", "NegotiateProtocolVersion": "v", "FunctionCallResponse": "V",
}  # fmt: skip


@pytest.mark.parametrize(
    ("types", "strategies", "table"),
    [(FRONTEND_TYPES, FRONTEND, codec._FRONTEND), (BACKEND_TYPES, BACKEND, codec._BACKEND)],
    ids=["frontend", "backend"],
)
def test_every_decodable_type_has_a_strategy(
    types: dict[str, str], strategies: dict[str, object], table: dict[int, object]
) -> None:
    assert types.keys() == strategies.keys()
    assert {ord(c) for letters in types.values() for c in letters} == set(table)


@pytest.mark.parametrize("name", list(FRONTEND))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_frontend_round_trip(name: str, data: st.DataObject) -> None:
    msg = data.draw(FRONTEND[name])
    wire = encode(msg)
    [(mtype, body)] = frames_of(Framer("client"), wire)
    assert chr(mtype) in FRONTEND_TYPES[name]
    decoded = decode_frontend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert encode(decoded) == wire


@pytest.mark.parametrize("name", list(BACKEND))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_backend_round_trip(name: str, data: st.DataObject) -> None:
    msg = data.draw(BACKEND[name])
    wire = encode(msg)
    [(mtype, body)] = frames_of(Framer("server"), wire)
    assert chr(mtype) in BACKEND_TYPES[name]
    decoded = decode_backend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)  # a NoticeResponse must not come back as an ErrorResponse
    assert encode(decoded) == wire


@pytest.mark.parametrize("name", list(STARTUP))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_startup_round_trip(name: str, data: st.DataObject) -> None:
    msg = data.draw(STARTUP[name])
    wire = msg.encode()
    assert read_startup(wire) == len(wire)
    assert read_startup(wire[:-1]) is None
    decoded = decode_startup(wire)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


def test_known_encodings() -> None:
    assert codec.SSLRequest().encode() == bytes.fromhex("0000000804d2162f")
    assert codec.GSSENCRequest().encode() == bytes.fromhex("0000000804d21630")
    assert codec.CancelRequest(7, -1).encode() == bytes.fromhex("0000001004d2162e00000007ffffffff")
    assert codec.StartupMessage({"user": "u"}).encode() == b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"
    assert codec.ready("I") == codec.ReadyForQuery("I").encode() == b"Z\x00\x00\x00\x05I"
    assert codec.Execute().encode() == b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
    assert codec.FunctionCallResponse(None).encode() == b"V\x00\x00\x00\x08\xff\xff\xff\xff"


def test_nul_in_a_wire_string_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="NUL"):
        codec.Query("SELECT 1\x00; DROP TABLE t").encode()


def test_sasl_helpers_round_trip() -> None:
    auth = decode_backend(ord("R"), codec.auth_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]).encode()[5:])
    assert isinstance(auth, codec.Authentication)
    assert auth.code == codec.AUTH_SASL
    assert auth.mechanisms() == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    msg = decode_frontend(ord("p"), codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc").encode()[5:])
    assert isinstance(msg, codec.PasswordMessage)
    assert msg.sasl_initial() == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert codec.PasswordMessage(b"SCRAM-SHA-256\x00\xff\xff\xff\xff").sasl_initial() == ("SCRAM-SHA-256", b"")


@pytest.mark.parametrize(
    "data", [b"SCRAM-SHA-256", b"SCRAM-SHA-256\x00\x00\x00", b"M\x00\x00\x00\x00\x05abc", b"M\x00\xff\xff\xff\xfe"]
)
def test_malformed_sasl_initial_is_a_client_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as exc:
        codec.PasswordMessage(data).sasl_initial()
    assert exc.value.side == "client"


def test_password_message_password() -> None:
    assert codec.PasswordMessage(b"secret\x00").password() == b"secret"
    for bad in (b"secret", b"sec\x00ret\x00", b""):
        with pytest.raises(ProtocolError, match="malformed password message"):
            codec.PasswordMessage(bad).password()


def test_bind_param_format() -> None:
    assert codec.Bind("", "", (), (b"1", b"2")).param_format(1) == 0
    assert codec.Bind("", "", (1,), (b"1", b"2")).param_format(1) == 1
    assert codec.Bind("", "", (0, 1), (b"1", b"2")).param_format(1) == 1


# ----------------------------------------------------------------------------- streams


@st.composite
def frontend_streams(draw: st.DrawFn) -> tuple[codec.StartupMessage, list[object], list[bytes]]:
    startup = draw(startup_messages())
    msgs = draw(st.lists(ANY_FRONTEND, max_size=12))
    wire = startup.encode() + b"".join(encode(m) for m in msgs)
    return startup, msgs, draw(splits(wire))


@settings(max_examples=200, deadline=None)
@given(frontend_streams())
def test_client_stream_in_arbitrary_splits(stream: tuple[codec.StartupMessage, list[object], list[bytes]]) -> None:
    """Startup packet then typed messages, as conn.py reads a client: the order and content survive."""
    startup, msgs, chunks = stream
    pending = b""
    framer = Framer("client")
    got_startup = None
    got: list[object] = []
    for chunk in chunks:
        if got_startup is None:
            pending += chunk
            n = read_startup(pending)
            if n is None:
                continue
            got_startup = decode_startup(pending[:n])
            chunk = pending[n:]
        got += [decode_frontend(t, body) for t, body in frames_of(framer, chunk)]
    assert got_startup == startup
    assert got == msgs
    assert framer.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY_BACKEND, max_size=12).flatmap(lambda ms: st.tuples(st.just(ms), splits(b"".join(map(encode, ms))))))
def test_server_stream_in_arbitrary_splits(case: tuple[list[object], list[bytes]]) -> None:
    msgs, chunks = case
    assert decode_chunks("server", chunks, decode_backend) == msgs


@settings(max_examples=60, deadline=None)
@given(st.lists(ANY_FRONTEND, max_size=6), st.lists(ANY_BACKEND, max_size=6))
def test_byte_at_a_time(frontend: list[object], backend: list[object]) -> None:
    for side, msgs, decode in (("client", frontend, decode_frontend), ("server", backend, decode_backend)):
        wire = b"".join(map(encode, msgs))
        assert decode_chunks(side, [wire[i : i + 1] for i in range(len(wire))], decode) == msgs


def test_framer_returns_complete_run_and_keeps_the_tail() -> None:
    framer = Framer("client")
    wire = codec.Query("SELECT 1").encode() + codec.Sync().encode()
    buf, frames = framer.feed(wire + b"Q\x00\x00")
    assert buf == wire  # relayable as is, without the partial message
    assert [(chr(t), s, e) for t, s, e in frames] == [("Q", 0, 14), ("S", 14, 19)]
    assert framer.pending == 3
    buf, frames = framer.feed(b"\x00\x05")
    assert (buf, frames) == (b"", [])
    assert framer.pending == 5
    buf, frames = framer.feed(b"\x00")
    assert buf == b"Q\x00\x00\x00\x05\x00"
    assert frames == [(ord("Q"), 0, 6)]
    assert framer.pending == 0


# ----------------------------------------------------------------------------- size caps

SIDES = ["client", "server"]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("length", [0, 3, 101, 2**31, 2**32 - 1])
def test_framer_rejects_bad_length_as_soon_as_the_header_arrives(side: str, length: int) -> None:
    framer = Framer(side, max_size=100)
    framer.feed(header(b"d", length)[:3])
    with pytest.raises(ProtocolError) as exc:
        framer.feed(header(b"d", length)[3:])
    assert exc.value.side == side
    assert exc.value.sqlstate == "08P01"
    assert str(exc.value).startswith(f"protocol violation by {side}:")
    assert f"invalid message length {length}" in str(exc.value)


@pytest.mark.parametrize("side", SIDES)
def test_framer_default_limit_is_postgresql_max_alloc(side: str) -> None:
    framer = Framer(side)
    assert framer.feed(header(b"d", codec.DEFAULT_MAX_MESSAGE)) == (b"", [])
    with pytest.raises(ProtocolError, match=f"by {side}"):
        Framer(side).feed(header(b"d", codec.DEFAULT_MAX_MESSAGE + 1))


@pytest.mark.parametrize("side", SIDES)
def test_framer_accepts_the_limits_exactly(side: str) -> None:
    framer = Framer(side, max_size=100)
    wire = header(b"d", 100) + bytes(96) + header(b"c", 4)
    assert [t for t, _ in frames_of(framer, wire)] == [ord("d"), ord("c")]


@pytest.mark.parametrize("side", SIDES)
def test_peek_message(side: str) -> None:
    wire = codec.Query("SELECT 1").encode()
    assert peek_message(wire[:4], side) is None
    assert peek_message(wire[:-1], side) is None
    assert peek_message(wire + b"Sxx", side) == (ord("Q"), len(wire))
    assert peek_message(header(b"S", 4), side, limit=4) == (ord("S"), 5)
    for length, limit in ((3, 100), (101, 100), (2**32 - 1, codec.DEFAULT_MAX_MESSAGE)):
        with pytest.raises(ProtocolError) as exc:
            peek_message(header(b"Q", length), side, limit=limit)
        assert exc.value.side == side
        assert f"invalid message length {length}" in exc.value.detail


@pytest.mark.parametrize("side", SIDES)
def test_read_startup_caps(side: str) -> None:
    ok = struct.pack("!I", MAX_STARTUP_PACKET) + bytes(MAX_STARTUP_PACKET - 4)
    assert read_startup(ok, side) == MAX_STARTUP_PACKET
    assert read_startup(ok[:-1], side) is None
    assert read_startup(b"\x00\x00\x00", side) is None
    assert read_startup(struct.pack("!I", 8), side) is None
    for length in (0, 7, MAX_STARTUP_PACKET + 1, 2**32 - 1):
        with pytest.raises(ProtocolError) as exc:
            read_startup(struct.pack("!I", length), side)
        assert exc.value.side == side
        assert exc.value.sqlstate == "08P01"
        assert f"invalid startup packet length {length}" in exc.value.detail
    assert read_startup(struct.pack("!I", 20) + bytes(16), side, limit=20) == 20
    with pytest.raises(ProtocolError):
        read_startup(struct.pack("!I", 21), side, limit=20)


def test_read_startup_defaults_to_client_side() -> None:
    with pytest.raises(ProtocolError) as exc:
        read_startup(struct.pack("!I", 4))
    assert exc.value.side == "client"


# ----------------------------------------------------------------------------- decode errors


@pytest.mark.parametrize(
    ("packet", "sqlstate", "detail"),
    [
        (struct.pack("!ii", 8, 2 << 16), "0A000", "unsupported frontend protocol 2.0"),
        (struct.pack("!ii", 8, -1), "0A000", "unsupported frontend protocol"),
        (codec.StartupMessage({"database": "d"}).encode(), "28000", "no PostgreSQL user name"),
        (codec.StartupMessage({"user": ""}).encode(), "28000", "no PostgreSQL user name"),
        (struct.pack("!ii", 8, codec.PROTOCOL_V3) + b"user\x00a\x00user\x00b\x00\x00", "08P01", "duplicate"),
        (struct.pack("!ii", 8, codec.PROTOCOL_V3) + b"user\x00a\x00\x00x", "08P01", "trailing bytes"),
        (struct.pack("!ii", 8, codec.PROTOCOL_V3) + b"user\x00a", "08P01", "unterminated string"),
        (struct.pack("!ii", 8, codec.PROTOCOL_V3) + b"user\x00\xff\x00\x00", "08P01", "not valid UTF-8"),
        (codec.SSLRequest().encode() + b"\x00", "08P01", "trailing bytes"),
        (codec.GSSENCRequest().encode() + b"\x00", "08P01", "trailing bytes"),
        (codec.CancelRequest(1, 2).encode()[:-1], "08P01", "too short"),
        (b"\x00\x00\x00\x06\x00\x03", "08P01", "too short"),
    ],
)
def test_decode_startup_errors(packet: bytes, sqlstate: str, detail: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_startup(packet)
    assert exc.value.side == "client"
    assert exc.value.sqlstate == sqlstate
    assert detail in exc.value.detail


@pytest.mark.parametrize(
    ("mtype", "body", "detail"),
    [
        ("x", b"", "invalid frontend message type 'x'"),
        ("Q", b"SELECT 1", "unterminated string"),
        ("Q", b"SELECT 1\x00\x00", "trailing bytes"),
        ("S", b"\x00", "trailing bytes"),
        ("D", b"X\x00", "invalid Describe target type 'X'"),
        ("C", b"", "too short for a Byte1"),
        ("P", b"\x00\x00\xff\xff", "negative count"),
        (
            "B",
            b"\x00\x00" + struct.pack("!3h", 2, 0, 0) + struct.pack("!h3i", 3, 0, 0, 0) + struct.pack("!h", 0),
            "2 parameter formats but 3 parameters",
        ),
        ("B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", "past the end"),
        ("E", b"\x00\x00\x00", "too short for an Int32"),
        ("F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00", "too short for an Int16"),
    ],
)
def test_decode_frontend_errors(mtype: str, body: bytes, detail: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_frontend(ord(mtype), body)
    assert exc.value.side == "client"
    assert detail in exc.value.detail


@pytest.mark.parametrize(
    ("mtype", "body", "detail"),
    [
        ("Q", b"", "invalid backend message type 'Q'"),
        ("Z", b"X", "invalid transaction status"),
        ("Z", b"II", "trailing bytes"),
        ("E", b"Mno terminator", "unterminated string"),
        ("E", b"Mok\x00", "too short for a Byte1"),
        ("D", b"\x00\x01\x00\x00\x00\x05abc", "past the end"),
        ("V", b"\xff\xff\xff\xfe", "past the end"),
        ("K", b"\x00\x00\x00\x01", "too short for an Int32"),
        ("1", b"x", "trailing bytes"),
    ],
)
def test_decode_backend_errors(mtype: str, body: bytes, detail: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_backend(ord(mtype), body)
    assert exc.value.side == "server"
    assert exc.value.sqlstate == "08P01"
    assert detail in exc.value.detail


# ----------------------------------------------------------------------------- fuzzing

ALL_TYPES = sorted(set(codec._FRONTEND) | set(codec._BACKEND))


@st.composite
def framed_garbage(draw: st.DrawFn) -> bytes:
    """Well-framed messages of (mostly) known types with random bodies: reaches the body decoders."""
    parts = draw(
        st.lists(
            st.tuples(st.sampled_from(ALL_TYPES) | st.integers(0, 255), st.binary(max_size=48)),
            max_size=8,
        )
    )
    return b"".join(header(bytes([t]), len(body) + 4) + body for t, body in parts)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[object]) -> bytes:
    """A valid message whose body is truncated, extended or has bytes overwritten; length kept right."""
    wire = encode(draw(messages))
    body = bytearray(wire[5:])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        i = draw(st.integers(0, len(body)))
        if op == "cut":
            del body[i:]
        elif op == "insert":
            body[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif i < len(body):
            body[i] = draw(st.integers(0, 255))
    return header(wire[:1], len(body) + 4) + bytes(body)


def decode_or_protocol_error(decode: Decoder, side: str, mtype: int, body: bytes) -> None:
    try:
        decode(mtype, body)
    except ProtocolError as exc:
        assert exc.side == side
        assert exc.sqlstate == "08P01"


def consume(side: str, chunks: list[bytes], max_size: int) -> None:
    """Frame ``chunks`` and decode every frame both ways; only ProtocolError may escape."""
    framer = Framer(side, max_size=max_size)
    for chunk in chunks:
        try:
            frames = frames_of(framer, chunk)
        except ProtocolError as exc:
            assert exc.side == side
            return
        for mtype, body in frames:
            assert 0 <= len(body) <= max_size - 4
            decode_or_protocol_error(decode_frontend, "client", mtype, body)
            decode_or_protocol_error(decode_backend, "server", mtype, body)


ANY_STREAM = st.one_of(
    st.binary(max_size=300),
    framed_garbage(),
    st.lists(mutated(ANY_FRONTEND) | mutated(ANY_BACKEND), max_size=6).map(b"".join),
)


@settings(max_examples=300, deadline=None)
@given(ANY_STREAM.flatmap(splits), st.sampled_from(SIDES), st.integers(4, 200) | st.just(codec.DEFAULT_MAX_MESSAGE))
def test_any_stream_decodes_or_raises_protocol_error(chunks: list[bytes], side: str, max_size: int) -> None:
    consume(side, chunks, max_size)


@settings(max_examples=50, deadline=None)
@given(ANY_STREAM, st.sampled_from(SIDES))
def test_any_stream_byte_at_a_time(data: bytes, side: str) -> None:
    consume(side, [data[i : i + 1] for i in range(len(data))], codec.DEFAULT_MAX_MESSAGE)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_TYPES) | st.integers(0, 255), st.binary(max_size=64))
def test_any_body_decodes_or_raises_protocol_error(mtype: int, body: bytes) -> None:
    decode_or_protocol_error(decode_frontend, "client", mtype, body)
    decode_or_protocol_error(decode_backend, "server", mtype, body)


@st.composite
def mutated_startup(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(st.one_of(*STARTUP.values())).encode())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(4, len(wire)))
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "cut":
            del wire[i:]
        elif op == "insert":
            wire[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif i < len(wire):
            wire[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        wire[:4] = struct.pack("!I", len(wire))
    return bytes(wire)


@settings(max_examples=300, deadline=None)
@given((st.binary(max_size=64) | mutated_startup()).flatmap(splits))
def test_any_startup_bytes_decode_or_raise_protocol_error(chunks: list[bytes]) -> None:
    pending = b""
    for chunk in chunks:
        pending += chunk
        try:
            n = read_startup(pending)
            if n is not None:
                decode_startup(pending[:n])
                return
        except ProtocolError as exc:
            assert exc.side == "client"
            return


# ----------------------------------------------------------------------------- errors


def test_error_helper_builds_postgresql_fields() -> None:
    err = codec.error("42P01", 'relation "t" does not exist', detail="d", hint="h")
    assert err.fields == (
        ("S", "ERROR"),
        ("V", "ERROR"),
        ("C", "42P01"),
        ("M", 'relation "t" does not exist'),
        ("D", "d"),
        ("H", "h"),
    )
    assert err.sqlstate == "42P01"
    assert err.message == 'relation "t" does not exist'
    assert err.get("H") == "h"
    assert err.get("W") == ""
    assert err.get("W", "none") == "none"
    decoded = decode_backend(ord("E"), err.encode()[5:])
    assert decoded == err
    assert decoded.sqlstate == "42P01"  # type: ignore[attr-defined]


def test_error_helper_without_optional_fields() -> None:
    err = codec.error("28P01", "nope", severity="FATAL")
    assert err.fields == (("S", "FATAL"), ("V", "FATAL"), ("C", "28P01"), ("M", "nope"))
    assert err.encode() == b"E\x00\x00\x00\x20SFATAL\x00VFATAL\x00C28P01\x00Mnope\x00\x00"


def test_error_response_without_code_or_message() -> None:
    err = decode_backend(ord("E"), b"\x00")
    assert isinstance(err, codec.ErrorResponse)
    assert (err.fields, err.sqlstate, err.message) == ((), "", "")


def test_notice_is_not_an_error_response_equal() -> None:
    notice = decode_backend(ord("N"), codec.NoticeResponse((("C", "01000"), ("M", "hi"))).encode()[5:])
    assert isinstance(notice, codec.NoticeResponse)
    assert notice.message == "hi"
    assert notice != codec.ErrorResponse((("C", "01000"), ("M", "hi")))


# ----------------------------------------------------------------------------- known defects


def test_copy_response_high_format_byte_round_trips() -> None:
    body = b"\xff\x00\x00"
    assert encode(decode_backend(ord("G"), body)) == header(b"G", 7) + body


def test_error_field_code_byte_round_trips() -> None:
    body = b"\xc3x\x00\x00"
    assert encode(decode_backend(ord("E"), body)) == header(b"E", 8) + body


def test_negotiate_negative_option_count_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_backend(ord("v"), b"\x00\x00\x00\x00\xff\xff\xff\xff")


def _outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", fn()
    except (codec.ProtocolError, EncodingError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=24) | st.lists(st.sampled_from([b"\x00", b"a", b"\xe3\x81\x82", b"\x81", b"\x5c"]),
                                         max_size=8).map(b"".join),
       st.sampled_from(["UTF8", "SJIS", "LATIN1"]))
def test_query_text_is_decode_frontend(body: bytes, name: str) -> None:
    # the session's fast path for a simple Query must accept, refuse and fail exactly as the full decoder
    enc = client_encoding(name)
    full = _outcome(lambda: decode_frontend(MsgType.QUERY, body, enc).sql)  # type: ignore[attr-defined]
    assert _outcome(lambda: codec.query_text(body, enc)) == full
    if full[0] == "ok":
        assert codec.query_bytes(str(full[1]), enc) == codec.Query(str(full[1])).encode(enc)


_PARSE_PIECES = [b"\x00", b"a", b"\xe3\x81\x82", b"\x81", b"\x5c", b"\x00\x00", b"\x00\x01", b"\xff\xff",
                 b"\x00\x00\x00\x17", b"\xff\xff\xff\xff"]


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=32) | st.lists(st.sampled_from(_PARSE_PIECES), max_size=10).map(b"".join),
       st.sampled_from(["UTF8", "SJIS", "LATIN1"]))
def test_parse_parts_is_decode_frontend(body: bytes, name: str) -> None:
    # the session's fast path for a Parse must accept, refuse and fail exactly as the full decoder
    enc = client_encoding(name)

    def full_parts() -> tuple[str, str, tuple[int, ...]]:
        msg = decode_frontend(MsgType.PARSE, body, enc)
        assert isinstance(msg, codec.Parse)
        return msg.name, msg.sql, msg.param_types

    full = _outcome(full_parts)
    assert _outcome(lambda: codec.parse_parts(body, enc)) == full
    if full[0] == "ok":
        parsed = codec.Parse(*full[1])  # type: ignore[misc]
        assert codec.parse_bytes(parsed.name, parsed.sql, parsed.param_types, enc) == parsed.encode(enc)
        assert parsed.encode(enc) == header(b"P", 4 + len(body)) + body  # what came in goes out, byte for byte


def test_parse_parts_reads_well_formed_bodies() -> None:
    body = codec.Parse("s", "SELECT $1, $2", (23, 4294967295)).encode()[5:]
    assert codec.parse_parts(body, client_encoding("UTF8")) == ("s", "SELECT $1, $2", (23, 4294967295))
