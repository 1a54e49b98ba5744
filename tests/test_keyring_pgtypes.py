"""Typed plaintext codecs checked against a real PostgreSQL (text and binary formats)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantgate.keyring.errors import CodecError
from tenantgate.keyring.pgtypes import BY_OID, DATE, INT4, INT8, JSONB, NUMERIC, TIMESTAMPTZ, TYPES, PgType

T = TypeVar("T")
RAW_TYPES = ("text", "bytea", "int4", "int8", "numeric", "date", "timestamptz", "jsonb")


class Db:
    """One asyncpg connection whose codecs pass every tested type through as raw binary bytes."""

    def __init__(self, dsn: str) -> None:
        self._runner = asyncio.Runner()
        self.conn: asyncpg.Connection = self.run(lambda: asyncpg.connect(dsn, statement_cache_size=0))
        async def raw_codecs() -> None:
            for name in RAW_TYPES:
                await self.conn.set_type_codec(name, schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")

        self.run(raw_codecs)

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def go() -> T:
            return await make()

        return self._runner.run(go())

    def value(self, sql: str, *args: Any) -> Any:
        return self.run(lambda: self.conn.fetchval(sql, *args))

    def close(self) -> None:
        self.run(self.conn.close)
        self._runner.close()


@pytest.fixture(scope="module")
def db(pg: Any) -> Iterator[Db]:
    handle = Db(pg.dsn(dbname="postgres"))
    handle.value("SET TimeZone = 'UTC'")
    handle.value("SET DateStyle = 'ISO, MDY'")
    yield handle
    handle.close()


def check_against_pg(db: Db, t: PgType, text_input: bytes, timezone: str = "UTC") -> bytes:
    """Our canonical form, text output and binary form all agree with PostgreSQL's."""
    canonical = t.from_text(text_input, timezone=timezone)
    pg_binary = db.value(f"SELECT $1::text::{t.name}", text_input)
    assert t.to_binary(canonical) == pg_binary
    assert t.from_binary(pg_binary) == canonical
    # Binary in (our encoding) -> PostgreSQL's text out.
    assert db.value(f"SELECT $1::{t.name}::text", t.to_binary(canonical)) == t.to_text(canonical, timezone=timezone)
    assert t.to_canonical(pg_binary, 1) == t.to_canonical(text_input, 0, timezone=timezone)
    return canonical


def pg_sqlstate(db: Db, t: PgType, text_input: bytes) -> str | None:
    try:
        db.value(f"SELECT $1::text::{t.name}", text_input)
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    return None


CASES: dict[str, list[bytes]] = {
    "text": [b"", b"hello", "h\u00e9llo \u2603 \U0001f600".encode(), b"  spaced  ", b"quote'\"\\"],
    "bytea": [b"\\x", b"\\x00ff10", b"\\x0A0b", b"abc", b"a\\\\b\\000c", b"\\x de ad", b"\\001\\377"],
    "int4": [b"0", b"42", b" 00042 ", b"-2147483648", b"2147483647", b"+7", b"\t-0\n"],
    "int8": [b"0", b"-9223372036854775808", b"9223372036854775807", b" 0012 "],
    "numeric": [
        b"0", b"1.50", b"-1.50", b" 001.2300 ", b"1e3", b"1.5E+3", b"1.234e1", b"1e-3", b"-0", b"-0.000", b".5",
        b"5.", b"123456789012345678901234567890.123456789", b"0.0001", b"10000", b"99999999", b"100000000.00000001",
        b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"-inf", b"+inf", b"0.00012345e2", b"12e-10",
    ],
    "date": [
        b"2024-02-29", b"1999-12-31", b"2000-01-01", b"0001-01-01", b"0001-01-01 BC", b"4713-11-24 BC",
        b"5874897-12-31", b"infinity", b"-infinity", b" 2024-1-5 ", b"10000-01-01", b"1600-02-29",
        b"0005-02-29 BC", b"0001-02-29 BC",
    ],
    "timestamptz": [
        b"2024-03-01 12:30:00+01", b"2024-03-01T12:30:00.25+01:00", b"2024-03-01 12:30:00.123456Z",
        b"2024-03-01 12:30", b"2024-03-01", b"1999-12-31 23:59:59.999999-05:30", b"2000-01-01 00:00:00+00",
        b"0001-01-01 00:00:00+00 BC", b"2024-06-30 23:59:60+00", b"2024-01-01 24:00:00+00", b"infinity",
        b"-infinity", b"2024-07-01 12:00:00 Europe/Berlin", b"2024-07-01 12:00:00 UTC", b"1900-01-01 00:00:00+0530",
        b"2024-03-01 12:30:00.1234565+00", b"294276-12-31 23:59:59.999999+00", b"1883-11-18 12:00:00+00:53:28",
    ],
    "jsonb": [
        b'{"b": 1, "a": 2}', b'{"aa": 1, "b": 2}', b'{"a": 1, "a": 2}', b"[1.0, 1e2, -0, 0.1E1, 1e-2]",
        b'"str\\u0001\\n\\u00e9\\ud83d\\ude00/"', b"  null ", b"true", b"[]", b"{}", b'{"x": {"y": [false, null]}}',
        '{"\u00e9": 1, "z": 2, "\u20ac\u20ac": 3}'.encode(), b"123456789012345678901234567890", b'"\x7f"',
    ],
}


@pytest.mark.parametrize(("type_name", "text_input"), [(k, v) for k, vs in CASES.items() for v in vs])
def test_codec_agrees_with_postgres(db: Db, type_name: str, text_input: bytes) -> None:
    check_against_pg(db, TYPES[type_name], text_input)


INVALID: dict[str, list[bytes]] = {
    "int4": [b"", b"abc", b"1.5", b"2147483648", b"-2147483649", b"1 2", b"99999999999999999999999999"],
    "int8": [b"9223372036854775808", b"0x10"],
    "numeric": [b"", b"abc", b"1..2", b"1e", b"--1", b"1e99999999999", b". ", b"1.5.2"],
    "date": [b"2023-02-29", b"0004-02-29 BC", b"2024-13-01", b"0000-01-01", b"4714-11-23 BC", b"2024-01-32"],
    "timestamptz": [b"2024-02-30 00:00:00+00", b"2024-01-01 25:00:00+00", b"2024-01-01 00:00:00+16", b"nonsense"],
    "jsonb": [b"", b"{", b"NaN", b"[1,]", b'"\\u0000"', b"01", b'{"a" 1}', b'"\\ud800"'],
    "bytea": [b"\\x0", b"\\xzz", b"\\q"],
    "text": [b"a\x00b"],
}


@pytest.mark.parametrize(("type_name", "text_input"), [(k, v) for k, vs in INVALID.items() for v in vs])
def test_invalid_text_input_is_refused_like_postgres(db: Db, type_name: str, text_input: bytes) -> None:
    t = TYPES[type_name]
    with pytest.raises(CodecError) as caught:
        t.from_text(text_input)
    if b"\x00" not in text_input:  # PostgreSQL cannot even receive a NUL inside a text parameter
        assert pg_sqlstate(db, t, text_input) is not None
    if len(text_input.strip()) >= 3:  # the value itself never appears in the message
        assert text_input.decode(errors="replace").strip() not in str(caught.value)


def test_equal_values_from_text_and_binary_clients_share_a_plaintext() -> None:
    assert INT4.from_text(b"00042") == INT4.from_binary((42).to_bytes(4, "big")) == b"42"
    assert INT8.from_text(b" -7") == INT8.from_binary((-7).to_bytes(8, "big", signed=True))
    assert NUMERIC.from_text(b"1.5e1") == NUMERIC.from_text(b"15")
    assert TIMESTAMPTZ.from_text(b"2024-01-01 01:00:00+01") == TIMESTAMPTZ.from_text(b"2024-01-01 00:00:00Z")
    assert JSONB.from_text(b'{"b":1,"a":2}') == JSONB.from_binary(b'\x01{"a": 2, "b": 1}')


@pytest.mark.parametrize(
    ("tz", "local"),
    [
        ("Europe/Berlin", b"2024-07-01 12:00:00"),
        ("Europe/Berlin", b"2024-03-31 02:30:00"),  # spring-forward gap
        ("Europe/Berlin", b"2024-10-27 02:30:00"),  # fall-back overlap
        ("America/St_Johns", b"2024-01-15 08:00:00.5"),
        ("Asia/Kolkata", b"1990-05-05 00:00:00"),
        ("Europe/Amsterdam", b"1900-01-01 00:00:00"),  # LMT offset with seconds
    ],
)
def test_timestamptz_follows_the_session_timezone(db: Db, tz: str, local: bytes) -> None:
    db.value(f"SET TimeZone = '{tz}'")
    try:
        canonical = check_against_pg(db, TIMESTAMPTZ, local, timezone=tz)
        assert canonical.endswith(b"+00")
        assert db.value("SELECT $1::text::timestamptz::text", local) == TIMESTAMPTZ.to_text(canonical, timezone=tz)
    finally:
        db.value("SET TimeZone = 'UTC'")


@pytest.mark.parametrize(
    ("type_name", "raw"),
    [
        ("int4", b"\x00\x00\x01"),
        ("int8", b"\x00" * 9),
        ("date", b"\x00\x00"),
        ("timestamptz", b"\x00" * 7),
        ("numeric", b"\x00\x01\x00\x00\x00\x00\x00\x00"),  # one digit announced, none sent
        ("numeric", b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10"),  # digit 10000
        ("numeric", b"\x00\x00\x00\x00\x12\x34\x00\x00"),  # bad sign
        ("jsonb", b"\x02{}"),
    ],
)
def test_invalid_binary_input_is_refused_like_postgres(db: Db, type_name: str, raw: bytes) -> None:
    t = TYPES[type_name]
    with pytest.raises(CodecError):
        t.from_binary(raw)
    with pytest.raises(asyncpg.PostgresError):
        db.value(f"SELECT $1::{type_name}::text", raw)


def test_numeric_binary_recv_truncates_hidden_digits(db: Db) -> None:
    # weight 0, digits [1, 5678], dscale 2 -> PostgreSQL keeps 1.56
    raw = b"\x00\x02\x00\x00\x00\x00\x00\x02\x00\x01\x16\x2e"
    assert NUMERIC.from_binary(raw) == db.value("SELECT $1::numeric::text", raw) == b"1.56"


def test_type_registry() -> None:
    assert {t.oid for t in TYPES.values()} == {25, 17, 23, 20, 1700, 1082, 1184, 3802}
    assert BY_OID[1700] is NUMERIC and TYPES["int"] is INT4 and TYPES["bigint"] is INT8


# -- property tests against PostgreSQL -----------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numeric_text = st.builds(
    lambda sign, ip, fp, exp: sign + ip + ("." + fp if fp is not None else "") + (f"e{exp}" if exp is not None else ""),
    st.sampled_from(["", "-", "+"]),
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.none() | st.from_regex(r"[0-9]{0,20}", fullmatch=True),
    st.none() | st.integers(-40, 40),
)


@PROPERTY
@given(numeric_text)
def test_numeric_property(db: Db, text: str) -> None:
    check_against_pg(db, NUMERIC, text.encode())


@PROPERTY
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_numeric_decimal_property(db: Db, value: Decimal) -> None:
    check_against_pg(db, NUMERIC, str(value).encode())


@PROPERTY
@given(st.integers(-(2**63), 2**63 - 1))
def test_int8_property(db: Db, value: int) -> None:
    check_against_pg(db, INT8, f" {value:+d} ".encode())


@PROPERTY
@given(st.dates())
def test_date_property(db: Db, value: date) -> None:
    check_against_pg(db, DATE, value.isoformat().encode())


@PROPERTY
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-15 * 60, 15 * 60),
)
def test_timestamptz_property(db: Db, value: datetime, offset_minutes: int) -> None:
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = f"{value.isoformat(sep=' ')}{sign}{hours:02d}:{minutes:02d}"
    check_against_pg(db, TIMESTAMPTZ, text.encode())


json_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(json_values)
def test_jsonb_property(db: Db, value: object) -> None:
    check_against_pg(db, JSONB, json.dumps(value).encode())


@PROPERTY
@given(st.binary(max_size=64))
def test_bytea_and_text_property(db: Db, value: bytes) -> None:
    check_against_pg(db, TYPES["bytea"], b"\\x" + value.hex().encode())
    text = value.decode("utf-8", errors="ignore").replace("\x00", "")
    check_against_pg(db, TYPES["text"], text.encode())

