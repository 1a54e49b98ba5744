"""Record format 2 ("lean"): one keyed chain value per record, integer timestamps, plans by digest.

Format 1 (audit/record.py) stores per record a SHA-256 `hash` of the canonical body, an `hmac` and
the previous hash (`prev`), the instance id and an ISO timestamp: ~680 bytes, and verifying means
re-encoding every body canonically. Format 2 keeps the same guarantees with less:

  {"v":2,"seq":N,"ts":MICROSECONDS,"kind":...,FIELDS...,"mac":"<64 hex>"}            event records
  {"v":2,...,"mac":"<64 hex>","sig":"<128 hex>"}                                      signed markers

- `mac` = keyed BLAKE2b-256 (RFC 7693's MAC mode; key = SHA-256("tenantgate-audit-v2" || audit
  key)) of the previous record's chain value (32 bytes) || the stored bytes of this line up to
  `,"mac"`. It is the record's chain value: the link, the content check and the key check in one,
  at about half HMAC-SHA256's cost. The MAC is over the exact stored bytes, so verify never
  re-encodes JSON, and seq/ts/kind/plan come first in a fixed order, so verify reads them by
  slicing; only non-statement records are parsed as JSON.
- `sig` (markers, with a signing key) is the Ed25519 signature of the mac, as for format 1's hash.
- No repeated constants: the instance id lives in chain_start/rotate details, the version is the
  line's first key (like Fernet's version byte), the rewritten SQL is stored once per distinct plan
  and segment in a `plan` record ({"digest", "sql"} in details) that later records name by `plan`.
  The first text of a shape (the text around its string and number literals) is stored whole, and
  stays so when it repeats (as a Parse's does); a later text of that shape names the shape's
  template plan ({"digest", "template"}) and its statement record carries the `literals` right
  after `plan` (the text is template[0] + literals[0] + template[1] + ...): the statements of one
  shape with other values (simple protocol) share one plan record rather than writing one each.
- Every rotated segment ends with a signed `segment_end` marker and the next begins with a signed
  `rotate` (previous seq and chain value): each segment verifies on its own, ties are checked after.

>>> sealer = LeanSealer(b"k" * 32)
>>> mac, line = sealer.seal({"seq": 1, "ts": 0, "kind": "chain_start"}, bytes(32))
>>> line.startswith(b'{"v":2,"seq":1,"ts":0,"kind":"chain_start","mac":"') and line.endswith(b'"}\\n')
True
>>> mac_function(b"k" * 32)(bytes(32), line[:line.rfind(MAC_FIELD)]) == mac
True
>>> ts_text(1_700_000_000_123_456), ts_us("2023-11-14T22:13:20.123456Z")
('2023-11-14T22:13:20.123456Z', 1700000000123456)
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from .keys import Signer

VERSION = 2
PREFIX = b'{"v":2,'
PLAN_KIND = "plan"
SEGMENT_END = "segment_end"
MARKERS = frozenset({"chain_start", "chain_end", "rotate", "checkpoint", "gap", SEGMENT_END})
MAC_FIELD = b',"mac":"'
SIG_FIELD = b'","sig":"'
LINE_END = b'"}\n'
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LineError(ValueError):
    """A stored line that does not check out; the message says what is wrong."""


def mac_state(hmac_key: bytes) -> hashlib.blake2b:
    """The keyed BLAKE2b state before any input: set up once, `.copy()` per record."""
    return hashlib.blake2b(key=hashlib.sha256(b"tenantgate-audit-v2" + hmac_key).digest(), digest_size=32)


def mac_function(hmac_key: bytes) -> Callable[[bytes, bytes], bytes]:
    """mac(prev, payload) under the audit key."""
    base = mac_state(hmac_key)

    def mac(prev: bytes, payload: bytes) -> bytes:
        h = base.copy()
        h.update(prev)
        h.update(payload)
        return h.digest()

    return mac


def now_us() -> int:
    """The event timestamp: integer microseconds since the epoch (formatted only when read)."""
    return time.time_ns() // 1000


def ts_text(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{micros:06d}Z"


def parse_timestamp(ts: int | str) -> datetime:
    """The moment of a format-2 integer or a format-1 ISO timestamp."""
    if isinstance(ts, int):
        return _EPOCH + timedelta(microseconds=ts)
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def ts_us(ts: int | str) -> int:
    """Microseconds since the epoch of an integer or a format-1 ISO timestamp."""
    if isinstance(ts, int):
        return ts
    moment = parse_timestamp(ts) - _EPOCH
    return (moment.days * 86_400 + moment.seconds) * 1_000_000 + moment.microseconds


def plan_digest(sql: str) -> str:
    """Name of a rewritten statement in its segment (64 bits: collisions are checked by verify)."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()[:16]


# What varies between statements of one shape: string literals and numbers. One branch that starts
# with a character class, so the scan skips to candidates in C (0.9 us for a pgbench statement; with
# lookarounds for names, 3.4). A digit in a name is split off too: harmless, as is any other cut, for
# the text is put back exactly whatever the split matched.
_VARYING = re.compile(r"(['0-9](?:(?<=')[^']*+(?:''[^']*+)*+'|[0-9]*+(?:\.[0-9]+)?+))")


def split_template(sql: str) -> tuple[list[str], list[str]] | None:
    """(template, literals) of a rewritten statement, None when nothing in it varies.

    >>> split_template("SELECT * FROM t WHERE tenant_id = 'a''b' AND aid = 42")
    (['SELECT * FROM t WHERE tenant_id = ', ' AND aid = ', ''], ["'a''b'", '42'])
    >>> fill_template(*split_template("SELECT 1.5, x2, $3")) == "SELECT 1.5, x2, $3"
    True
    """
    pieces = _VARYING.split(sql)
    return (pieces[0::2], pieces[1::2]) if len(pieces) > 1 else None


def template_digest(template: list[str]) -> str:
    """Name of a template plan (NUL, which no statement text holds, between its pieces)."""
    return plan_digest("\x00".join(template))


def fill_template(template: list[str], literals: list[str]) -> str:
    out = [template[0]]
    for literal, piece in zip(literals, template[1:], strict=True):
        out += (literal, piece)
    return "".join(out)


def dumps(obj: object) -> bytes:
    # default=str: a stray value type must not make the whole sink fail (format 1 coerced too)
    return orjson.dumps(obj, default=str)


class LeanSealer:
    """Seals format-2 bodies: the MAC over the stored bytes, chained on the previous chain value."""

    def __init__(self, hmac_key: bytes, signer: Signer | None = None) -> None:
        self._mac = mac_function(hmac_key)
        self._signer = signer

    def __repr__(self) -> str:
        return f"LeanSealer(signer={self._signer!r})"

    def seal(self, body: dict[str, object], prev: bytes) -> tuple[bytes, bytes]:
        """(chain value, stored line) of `body` (seq, ts, kind first, then fields) after `prev`."""
        payload = PREFIX + dumps(body)[1:-1]
        mac = self._mac(prev, payload)
        line = payload + MAC_FIELD + mac.hex().encode()
        if self._signer is not None and body["kind"] in MARKERS:
            line += SIG_FIELD + self._signer.sign(mac.hex()).encode()
        return mac, line + LINE_END


def chain_value(rec: dict[str, object]) -> str:
    """The value the next record links to: format 2's mac, format 1's hash."""
    return str(rec["mac"] if rec.get("v") == VERSION else rec["hash"])
