"""Typed plaintexts: PostgreSQL text and binary formats <-> canonical plaintext bytes.

Longer than most modules on purpose: one table of per-type codecs (text and binary form of each
supported type) whose date/time types share the calendar arithmetic and range checks.

Stays in keyring/ (layer 1): the canonical bytes are what the keyring seals, so the keyring
owns them; the proxy imports this codec downward to decode DataRow fields, never the reverse.

An encrypted column is stored as ``bytea`` but presented to clients as its
plaintext type. What gets encrypted is the value's *canonical* bytes, so that a
text-format client and a binary-format client, or ``'00042'`` and ``42``, produce
the same plaintext (and, in deterministic mode, the same ciphertext):

=============  ====  ========================================================
type           OID   canonical plaintext (UTF-8 unless noted)
=============  ====  ========================================================
text           25    the string itself (valid UTF-8, no NUL)
bytea          17    the raw bytes
int4 / int     23    decimal, no sign for positives, no leading zeros
int8 / bigint  20    same
numeric        1700  PostgreSQL's output form, display scale kept
                     (``1.50`` and ``1.5`` are distinct values), NaN,
                     Infinity, -Infinity
date           1082  ISO ``YYYY-MM-DD`` (`` BC`` suffix), infinity, -infinity
timestamptz    1184  UTC, ISO: ``YYYY-MM-DD HH:MM:SS[.ffffff]+00`` (`` BC``)
jsonb          3802  PostgreSQL's jsonb output (keys ordered and deduplicated,
                     numbers as numeric, ``{"a": 1, "b": [2, 3]}``)
=============  ====  ========================================================

Text input follows PostgreSQL 15's input functions for these types, except that
date/timestamptz accept only ISO dates (``YYYY-MM-DD``, 4+ digit years); text
output is what PostgreSQL prints with ``DateStyle=ISO`` and ``bytea_output=hex``.
timestamptz text without an explicit zone is read in the session's ``TimeZone``
(the ``timezone`` argument) and printed in it. Binary formats are PostgreSQL's
send/recv formats. Errors are :class:`CodecError` with PostgreSQL's SQLSTATE and
never include the value.
"""

from __future__ import annotations

import json
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import CodecError

_SPACE = b" \t\n\r\v\f"
TEXT_FORMAT = 0
BINARY_FORMAT = 1


class PgType(ABC):
    """Conversions of one PostgreSQL type between its wire formats and canonical plaintext."""

    name: str
    oid: int

    def __repr__(self) -> str:
        return f"<PgType {self.name} oid={self.oid}>"

    @abstractmethod
    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        ...

    @abstractmethod
    def from_binary(self, data: bytes) -> bytes:
        ...

    def to_text(self, canonical: bytes, *, timezone: str = "UTC") -> bytes:
        return canonical

    @abstractmethod
    def to_binary(self, canonical: bytes) -> bytes:
        ...

    def to_canonical(self, data: bytes, fmt: int = TEXT_FORMAT, *, timezone: str = "UTC") -> bytes:
        """Client value (wire format code ``fmt``) -> canonical plaintext."""
        return self.from_binary(data) if fmt == BINARY_FORMAT else self.from_text(data, timezone=timezone)

    def from_canonical(self, canonical: bytes, fmt: int = TEXT_FORMAT, *, timezone: str = "UTC") -> bytes:
        """Canonical plaintext -> value in wire format code ``fmt``."""
        return self.to_binary(canonical) if fmt == BINARY_FORMAT else self.to_text(canonical, timezone=timezone)


def _utf8(data: bytes, type_name: str) -> str:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError(f'invalid byte sequence for encoding "UTF8" in a {type_name} value', "22021") from None
    if "\x00" in text:
        raise CodecError(f"{type_name} values cannot contain NUL (0x00) characters", "22021")
    return text


def _need_len(data: bytes, size: int, type_name: str) -> None:
    if len(data) != size:
        raise CodecError(f"incorrect binary data format for {type_name}: expected {size} bytes", "22P03")


# -- text, bytea -------------------------------------------------------------------------------


class TextType(PgType):
    name = "text"
    oid = 25

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        _utf8(data, "text")
        return bytes(data)

    def from_binary(self, data: bytes) -> bytes:
        return self.from_text(data)

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


_HEX_SPACE = b" \t\n\r"


class ByteaType(PgType):
    r"""bytea; text input in hex (``\x0a0b``) or escape format, output in hex.

    >>> ByteaType().from_text(rb"\x41 42") == ByteaType().from_text(rb"A\102")
    True
    """

    name = "bytea"
    oid = 17

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        data = bytes(data)
        if data[:2] == b"\\x":
            digits = data[2:].translate(None, _HEX_SPACE)
            if len(digits) % 2:
                raise CodecError("invalid hexadecimal data: odd number of digits", "22023")
            try:
                return bytes.fromhex(digits.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise CodecError("invalid hexadecimal digit in a bytea value", "22023") from None
        out = bytearray()
        i = 0
        while i < len(data):
            b = data[i]
            if b != 0x5C:
                out.append(b)
                i += 1
            elif data[i + 1 : i + 2] == b"\\":
                out.append(0x5C)
                i += 2
            elif re.fullmatch(rb"[0-3][0-7][0-7]", data[i + 1 : i + 4]):
                out.append(int(data[i + 1 : i + 4], 8))
                i += 4
            else:
                raise CodecError('invalid input syntax for type bytea', "22P02")
        return bytes(out)

    def from_binary(self, data: bytes) -> bytes:
        return bytes(data)

    def to_text(self, canonical: bytes, *, timezone: str = "UTC") -> bytes:
        return b"\\x" + canonical.hex().encode()

    def to_binary(self, canonical: bytes) -> bytes:
        return canonical


# -- integers ----------------------------------------------------------------------------------

_INT_RE = re.compile(rb"[ \t\n\r\v\f]*([+-]?[0-9]+)[ \t\n\r\v\f]*")


class IntType(PgType):
    """int4/int8: text accepts surrounding whitespace, a sign and decimal digits.

    >>> INT4.from_text(b" 00042 "), INT4.to_binary(b"42")
    (b'42', b'\\x00\\x00\\x00*')
    """

    def __init__(self, name: str, oid: int, size: int, label: str) -> None:
        self.name, self.oid, self.size, self.label = name, oid, size, label
        self._lo, self._hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1

    def _check(self, value: int) -> bytes:
        if not self._lo <= value <= self._hi:
            raise CodecError(f"value is out of range for type {self.label}", "22003")
        return str(value).encode()

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        m = _INT_RE.fullmatch(bytes(data))
        if m is None:
            raise CodecError(f"invalid input syntax for type {self.label}", "22P02")
        digits = m.group(1)
        if len(digits.lstrip(b"+-0")) > 20:
            raise CodecError(f"value is out of range for type {self.label}", "22003")
        return self._check(int(digits))

    def from_binary(self, data: bytes) -> bytes:
        _need_len(data, self.size, self.label)
        return str(int.from_bytes(data, "big", signed=True)).encode()

    def to_binary(self, canonical: bytes) -> bytes:
        return int(canonical).to_bytes(self.size, "big", signed=True)


# -- numeric -----------------------------------------------------------------------------------

_NUMERIC_RE = re.compile(rb"([+-]?)(?:([0-9]+)(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?[0-9]+))?")
_NUMERIC_SPECIAL = {
    b"nan": "NaN", b"infinity": "Infinity", b"+infinity": "Infinity", b"inf": "Infinity", b"+inf": "Infinity",
    b"-infinity": "-Infinity", b"-inf": "-Infinity",
}
_NUMERIC_MAX_INT_DIGITS = 131072
_NUMERIC_MAX_DSCALE = 0x3FFF
_NUMERIC_POS, _NUMERIC_NEG, _NUMERIC_NAN, _NUMERIC_PINF, _NUMERIC_NINF = 0x0000, 0x4000, 0xC000, 0xD000, 0xF000
_SPECIAL_SIGN = {"NaN": _NUMERIC_NAN, "Infinity": _NUMERIC_PINF, "-Infinity": _NUMERIC_NINF}
_SIGN_SPECIAL = {v: k for k, v in _SPECIAL_SIGN.items()}
_NUMERIC_HEAD = struct.Struct(">hhHH")


def _overflow() -> CodecError:
    return CodecError("value overflows numeric format", "22003")


def _digits_to_numeric(negative: bool, digits: str, point: int, dscale: int) -> str:
    """Decimal text of ``0.<digits> * 10**point`` shown with ``dscale`` fraction digits (truncating)."""
    if dscale > _NUMERIC_MAX_DSCALE:
        raise _overflow()
    first = next((i for i, ch in enumerate(digits) if ch != "0"), None)
    if first is None or first >= point + dscale:
        return "0" + ("." + "0" * dscale if dscale else "")
    if point - first > _NUMERIC_MAX_INT_DIGITS:
        raise _overflow()
    if point <= 0:
        int_part, frac = "", "0" * -point + digits
    elif point >= len(digits):
        int_part, frac = digits + "0" * (point - len(digits)), ""
    else:
        int_part, frac = digits[:point], digits[point:]
    int_part = int_part.lstrip("0") or "0"
    frac = frac[:dscale].ljust(dscale, "0")
    if int_part == "0" and not frac.strip("0"):
        negative = False
    return ("-" if negative else "") + int_part + ("." + frac if dscale else "")


def numeric_canonical(data: bytes) -> str:
    """PostgreSQL's numeric_out(numeric_in(data)).

    >>> [numeric_canonical(s) for s in (b" 001.50", b"1.5e3", b"-0.00", b".5", b"1e-3", b"-inf")]
    ['1.50', '1500', '0.00', '0.5', '0.001', '-Infinity']
    """
    t = bytes(data).strip(_SPACE)
    special = _NUMERIC_SPECIAL.get(t.lower())
    if special is not None:
        return special
    m = _NUMERIC_RE.fullmatch(t)
    if m is None:
        raise CodecError("invalid input syntax for type numeric", "22P02")
    sign, int_part, frac, frac_only, exp_text = m.groups()
    if frac_only is not None:
        int_part, frac = b"", frac_only
    frac = frac or b""
    if exp_text and len(exp_text.lstrip(b"+-0")) > 9:
        raise _overflow()
    exp = int(exp_text) if exp_text else 0
    return _digits_to_numeric(
        sign == b"-", (int_part + frac).decode(), len(int_part) + exp, max(0, len(frac) - exp)
    )


class NumericType(PgType):
    name = "numeric"
    oid = 1700

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        return numeric_canonical(data).encode()

    def from_binary(self, data: bytes) -> bytes:
        if len(data) < _NUMERIC_HEAD.size:
            raise CodecError("insufficient data for a binary numeric", "22P03")
        ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(data)
        if ndigits < 0 or len(data) != _NUMERIC_HEAD.size + 2 * ndigits:
            raise CodecError("incorrect binary data format for numeric", "22P03")
        if sign in _SIGN_SPECIAL:
            return _SIGN_SPECIAL[sign].encode()
        if sign not in (_NUMERIC_POS, _NUMERIC_NEG):
            raise CodecError("invalid sign in external numeric value", "22P03")
        if dscale > _NUMERIC_MAX_DSCALE:
            raise CodecError("invalid scale in external numeric value", "22P03")
        groups = struct.unpack_from(f">{ndigits}h", data, _NUMERIC_HEAD.size)
        if any(not 0 <= g <= 9999 for g in groups):
            raise CodecError("invalid digit in external numeric value", "22P03")
        digits = "".join(f"{g:04d}" for g in groups)
        return _digits_to_numeric(sign == _NUMERIC_NEG, digits, 4 * (weight + 1), dscale).encode()

    def to_binary(self, canonical: bytes) -> bytes:
        text = canonical.decode()
        if text in _SPECIAL_SIGN:
            # PostgreSQL's numeric_send reports dscale 32 for the infinities (bits of its short header).
            return _NUMERIC_HEAD.pack(0, 0, _SPECIAL_SIGN[text], 0 if text == "NaN" else 32)
        negative = text.startswith("-")
        int_part, _, frac = text.lstrip("-").partition(".")
        int_part = int_part.lstrip("0")
        int_part = "0" * (-len(int_part) % 4) + int_part
        padded = frac + "0" * (-len(frac) % 4)
        groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
        groups += [int(padded[i : i + 4]) for i in range(0, len(padded), 4)]
        weight = len(int_part) // 4 - 1
        lead = next((i for i, g in enumerate(groups) if g), len(groups))
        groups, weight = groups[lead:], weight - lead
        while groups and groups[-1] == 0:
            groups.pop()
        if not groups:
            weight, negative = 0, False
        return _NUMERIC_HEAD.pack(len(groups), weight, _NUMERIC_NEG if negative else _NUMERIC_POS, len(frac)) + (
            struct.pack(f">{len(groups)}h", *groups)
        )


# -- date / timestamptz ------------------------------------------------------------------------

_EPOCH_JDATE = 2451545  # date2j(2000, 1, 1)
_DATE_END_JDATE = 2147483494  # date2j(5874898, 1, 1)
_USECS_PER_DAY = 86_400_000_000
_MIN_TIMESTAMP = -211813488000000000  # 4714-11-24 00:00:00 UTC BC
_END_TIMESTAMP = 9224318016000000000  # 294277-01-01 00:00:00 UTC
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# PostgreSQL's binary infinities are the extreme values of the type's integer.
_DATE_INFINITY = {_INT32_MAX: b"infinity", _INT32_MIN: b"-infinity"}
_TIMESTAMP_INFINITY = {_INT64_MAX: b"infinity", _INT64_MIN: b"-infinity"}
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def date2j(year: int, month: int, day: int) -> int:
    """Julian day number as PostgreSQL computes it (year 0 = 1 BC)."""
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = year // 100
    return year * 365 - 32167 + year // 4 - century + century // 4 + 7834 * month // 256 + day


def j2date(jd: int) -> tuple[int, int, int]:
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    return y - 4800, (quad + 10) % 12 + 1, julian - 7834 * quad // 256


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _ymd(year_text: bytes, month: int, day: int, bc: bool, type_name: str) -> int:
    """Validated Julian day of an AD/BC date."""
    year = int(year_text)
    if year <= 0:
        raise CodecError(f"date/time field value out of range in a {type_name} value", "22008")
    if bc:
        year = 1 - year
    if not 1 <= month <= 12:
        raise CodecError(f"date/time field value out of range in a {type_name} value", "22008")
    limit = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= limit:
        raise CodecError(f"date/time field value out of range in a {type_name} value", "22008")
    if (year, month, day) < (-4713, 11, 24) or year >= 5874898:
        raise CodecError(f"{type_name} out of range", "22008")
    return date2j(year, month, day)


def _format_date(jd: int) -> tuple[str, bool]:
    year, month, day = j2date(jd)
    bc = year <= 0
    return f"{(1 - year) if bc else year:04d}-{month:02d}-{day:02d}", bc


_BC_RE = re.compile(rb"(.*?)(?:[ \t\n\r\v\f]+(BC|AD))?[ \t\n\r\v\f]*", re.IGNORECASE | re.DOTALL)
_DATE_RE = re.compile(rb"([0-9]{4,})-([0-9]{1,2})-([0-9]{1,2})")


def _split_era(data: bytes) -> tuple[bytes, bool]:
    m = _BC_RE.fullmatch(bytes(data).lstrip(_SPACE))
    assert m is not None  # the pattern matches any input
    era = m.group(2)
    return m.group(1), era is not None and era.upper() == b"BC"


class DateType(PgType):
    """date: binary is int32 days since 2000-01-01.

    >>> DATE.from_text(b"1999-12-31"), DATE.to_binary(b"1999-12-31"), DATE.from_binary(b"\\x7f\\xff\\xff\\xff")
    (b'1999-12-31', b'\\xff\\xff\\xff\\xff', b'infinity')
    """

    name = "date"
    oid = 1082

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        low = bytes(data).strip(_SPACE).lower()
        if low in (b"infinity", b"+infinity", b"-infinity"):
            return low.lstrip(b"+")
        body, bc = _split_era(data)
        m = _DATE_RE.fullmatch(body)
        if m is None:
            raise CodecError("invalid input syntax for type date (use ISO YYYY-MM-DD)", "22007")
        jd = _ymd(m.group(1), int(m.group(2)), int(m.group(3)), bc, "date")
        text, bc = _format_date(jd)
        return (text + (" BC" if bc else "")).encode()

    def from_binary(self, data: bytes) -> bytes:
        _need_len(data, 4, "date")
        days = int.from_bytes(data, "big", signed=True)
        if days in _DATE_INFINITY:
            return _DATE_INFINITY[days]
        jd = days + _EPOCH_JDATE
        if not 0 <= jd < _DATE_END_JDATE:
            raise CodecError("date out of range", "22008")
        text, bc = _format_date(jd)
        return (text + (" BC" if bc else "")).encode()

    def to_binary(self, canonical: bytes) -> bytes:
        if canonical in (b"infinity", b"-infinity"):
            return struct.pack(">i", _INT32_MAX if canonical == b"infinity" else _INT32_MIN)
        body, bc = _split_era(canonical)
        m = _DATE_RE.fullmatch(body)
        if m is None:
            raise CodecError("corrupt canonical date", "XX001")
        jd = _ymd(m.group(1), int(m.group(2)), int(m.group(3)), bc, "date")
        return struct.pack(">i", jd - _EPOCH_JDATE)


_TS_RE = re.compile(
    rb"([0-9]{4,})-([0-9]{1,2})-([0-9]{1,2})"
    rb"(?:(?:[Tt]|[ \t\n\r\v\f]+)([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?)?"
    rb"[ \t\n\r\v\f]*(?:([zZ])|([+-])([0-9]{1,2})(?::?([0-9]{2}))?(?::?([0-9]{2}))?|([A-Za-z][A-Za-z0-9_/+-]*))?"
)
_MAX_TZ_DISP = 15 * 3600 + 59 * 60 + 59


def zone(name: str) -> tzinfo:
    """A session TimeZone / zone name as a tzinfo (UTC, GMT, Z, IANA names)."""
    if name.upper() in ("UTC", "GMT", "Z", "ZULU", "UCT"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CodecError(f'time zone "{name}" not recognized', "22023") from None


def _local_offset(tz: tzinfo, jd: int, secs: int) -> int:
    """UTC offset (seconds) of a local time in ``tz``; PostgreSQL picks the smaller one at transitions."""
    if tz is UTC:
        return 0
    year, month, day = j2date(jd)
    if not 1 <= year <= 9999:
        raise CodecError("timestamp out of range for a named time zone", "22008")
    local = datetime(year, month, day) + timedelta(seconds=secs)
    offsets = [tz.utcoffset(local.replace(fold=f)) for f in (0, 1)]
    return int(min(o or timedelta(0) for o in offsets).total_seconds())


def _format_offset(offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    minutes, sec = divmod(abs(offset), 60)
    hours, minutes = divmod(minutes, 60)
    if sec:
        return f"{sign}{hours:02d}:{minutes:02d}:{sec:02d}"
    if minutes:
        return f"{sign}{hours:02d}:{minutes:02d}"
    return f"{sign}{hours:02d}"


def _format_timestamp(local_us: int, offset: int) -> str:
    days, rem = divmod(local_us, _USECS_PER_DAY)
    date_text, bc = _format_date(days + _EPOCH_JDATE)
    secs, frac = divmod(rem, 1_000_000)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    text = f"{date_text} {hours:02d}:{minutes:02d}:{secs:02d}"
    if frac:
        text += f".{frac:06d}".rstrip("0")
    return text + _format_offset(offset) + (" BC" if bc else "")


class TimestamptzType(PgType):
    """timestamptz: canonical in UTC; binary is int64 microseconds since 2000-01-01 UTC.

    >>> TIMESTAMPTZ.from_text(b"2024-03-01T12:30:00.250+01:00")
    b'2024-03-01 11:30:00.25+00'
    >>> TIMESTAMPTZ.to_text(b"2024-07-01 10:00:00+00", timezone="Europe/Berlin")
    b'2024-07-01 12:00:00+02'
    """

    name = "timestamptz"
    oid = 1184

    def _parse(self, data: bytes, timezone: str) -> int:
        """Microseconds since 2000-01-01 UTC of a finite timestamp (callers handle ±infinity)."""
        body, bc = _split_era(data)
        m = _TS_RE.fullmatch(body)
        if m is None:
            raise CodecError("invalid input syntax for type timestamp with time zone (use ISO 8601)", "22007")
        year, month, day, hour, minute, sec, frac, z, sign, tzh, tzm, tzs, zone_name = m.groups()
        jd = _ymd(year, int(month), int(day), bc, "timestamp with time zone")
        h, mi, s = int(hour or 0), int(minute or 0), int(sec or 0)
        usec = round(float(b"0." + frac) * 1_000_000) if frac else 0
        if h > 24 or mi > 59 or s > 60 or (h == 24 and (mi or s or usec)):
            raise CodecError("date/time field value out of range in a timestamp with time zone value", "22008")
        secs = h * 3600 + mi * 60 + s
        if z:
            offset = 0
        elif sign:
            offset = int(tzh) * 3600 + int(tzm or 0) * 60 + int(tzs or 0)
            if int(tzh) > 15 or int(tzm or 0) > 59 or int(tzs or 0) > 59 or offset > _MAX_TZ_DISP:
                raise CodecError("time zone displacement out of range", "22009")
            offset = -offset if sign == b"-" else offset
        else:
            offset = _local_offset(zone(zone_name.decode() if zone_name else timezone), jd, secs)
        us = ((jd - _EPOCH_JDATE) * 86400 + secs - offset) * 1_000_000 + usec
        if not _MIN_TIMESTAMP <= us < _END_TIMESTAMP:
            raise CodecError("timestamp out of range", "22008")
        return us

    def _format(self, us: int, timezone: str) -> bytes:
        tz = zone(timezone)
        offset = 0
        if tz is not UTC:
            try:
                moment = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
                offset = int((moment.astimezone(tz).utcoffset() or timedelta(0)).total_seconds())
            except OverflowError:
                raise CodecError("timestamp out of range for a named time zone", "22008") from None
        return _format_timestamp(us + offset * 1_000_000, offset).encode()

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        low = bytes(data).strip(_SPACE).lower()
        if low in (b"infinity", b"+infinity", b"-infinity"):
            return low.lstrip(b"+")
        return self._format(self._parse(data, timezone), "UTC")

    def from_binary(self, data: bytes) -> bytes:
        _need_len(data, 8, "timestamp with time zone")
        us = int.from_bytes(data, "big", signed=True)
        if us in _TIMESTAMP_INFINITY:
            return _TIMESTAMP_INFINITY[us]
        if not _MIN_TIMESTAMP <= us < _END_TIMESTAMP:
            raise CodecError("timestamp out of range", "22008")
        return self._format(us, "UTC")

    def to_text(self, canonical: bytes, *, timezone: str = "UTC") -> bytes:
        if canonical in (b"infinity", b"-infinity") or zone(timezone) is UTC:
            return canonical
        return self._format(self._parse(canonical, "UTC"), timezone)

    def to_binary(self, canonical: bytes) -> bytes:
        if canonical in (b"infinity", b"-infinity"):
            return struct.pack(">q", _INT64_MAX if canonical == b"infinity" else _INT64_MIN)
        return struct.pack(">q", self._parse(canonical, "UTC"))


# -- jsonb -------------------------------------------------------------------------------------


class _JsonNumber(str):
    """A JSON number already in numeric's canonical text."""


def _reject_constant(name: str) -> Any:
    raise CodecError("invalid input syntax for type json", "22P02")


def _json_number(text: str) -> _JsonNumber:
    return _JsonNumber(numeric_canonical(text.encode()))


_JSON_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
_JSON_ESCAPE_RE = re.compile(r'[\x00-\x1f"\\]')


def _json_string(s: str, out: list[str]) -> None:
    if "\x00" in s:
        raise CodecError("unsupported Unicode escape sequence: \\u0000 cannot be converted to text", "22P05")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError("invalid Unicode surrogate in a json string", "22P05") from None
    out.append('"')
    out.append(_JSON_ESCAPE_RE.sub(lambda m: _JSON_ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), s))
    out.append('"')


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8", "surrogatepass")  # lone surrogates are rejected when written
    return len(raw), raw


def _json_out(value: Any, out: list[str]) -> None:
    if isinstance(value, _JsonNumber):
        out.append(value)
    elif isinstance(value, str):
        _json_string(value, out)
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _json_out(item, out)
        out.append("]")
    else:
        out.append("{")
        # jsonb orders keys by length, then bytewise.
        for i, key in enumerate(sorted(value, key=_jsonb_key_order)):
            if i:
                out.append(", ")
            _json_string(key, out)
            out.append(": ")
            _json_out(value[key], out)
        out.append("}")


def jsonb_canonical(text: str) -> str:
    """PostgreSQL's jsonb_out(jsonb_in(text)).

    >>> jsonb_canonical('{"bb": 1.0, "a": [1e2, -0], "bb": "x\\\\u0001"}')
    '{"a": [100, 0], "bb": "x\\\\u0001"}'
    """
    try:
        value = json.loads(
            text, parse_int=_json_number, parse_float=_json_number, parse_constant=_reject_constant,
            object_pairs_hook=dict,
        )
        out: list[str] = []
        _json_out(value, out)
    except RecursionError:
        raise CodecError("stack depth limit exceeded in a jsonb value", "54001") from None
    except ValueError as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError("invalid input syntax for type json", "22P02") from None
    return "".join(out)


class JsonbType(PgType):
    """jsonb: binary is a version byte 0x01 followed by the text form."""

    name = "jsonb"
    oid = 3802

    def from_text(self, data: bytes, *, timezone: str = "UTC") -> bytes:
        return jsonb_canonical(_utf8(data, "jsonb")).encode()

    def from_binary(self, data: bytes) -> bytes:
        if data[:1] != b"\x01":
            raise CodecError("unsupported jsonb version number", "22P03")
        return self.from_text(data[1:])

    def to_binary(self, canonical: bytes) -> bytes:
        return b"\x01" + canonical


TEXT = TextType()
BYTEA = ByteaType()
INT4 = IntType("int4", 23, 4, "integer")
INT8 = IntType("int8", 20, 8, "bigint")
NUMERIC = NumericType()
DATE = DateType()
TIMESTAMPTZ = TimestamptzType()
JSONB = JsonbType()

TYPES: Mapping[str, PgType] = MappingProxyType({
    "text": TEXT, "bytea": BYTEA, "int4": INT4, "int": INT4, "integer": INT4, "int8": INT8, "bigint": INT8,
    "numeric": NUMERIC, "date": DATE, "timestamptz": TIMESTAMPTZ, "jsonb": JSONB,
})
"""Type names accepted in ``[[encryption.columns]] type``."""

BY_OID: Mapping[int, PgType] = MappingProxyType({t.oid: t for t in TYPES.values()})
