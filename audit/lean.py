"""Record format 2 ("lean"): one keyed chain value per record, integer timestamps, plans by digest.

Format 1 (audit/record.py) stores per record a SHA-256 `hash` of the canonical body, an `hmac` and
the previous hash (`prev`), the instance id and an ISO timestamp: ~680 bytes, and verifying means
re-encoding every body canonically. Format 2 keeps the same guarantees with less:

  {"v":2,"seq":N,"ts":MICROSECONDS,"kind":...,FIELDS...,"mac":"<64 hex>"}            event records
  {"v":2,...,"mac":"<64 hex>","sig":"<128 hex>"}                                      signed markers

- `mac` = HMAC-SHA256(audit key, previous record's chain value (32 bytes) || the stored bytes of
  this line up to `,"mac"`). It is the record's chain value: the link, the content check and the
  key check in one. The MAC is over the exact stored bytes, so verify never re-encodes JSON.
- `sig` (markers, with a signing key) is the Ed25519 signature of the mac, as for format 1's hash.
- No repeated constants: the instance id lives in chain_start/rotate details, the version is the
  line's first key (like Fernet's version byte), the rewritten SQL is stored once per distinct plan
  and segment in a `plan` record ({"digest", "sql"} in details) that later records name by `plan`.
- Every rotated segment ends with a signed `segment_end` marker and the next begins with a signed
  `rotate` (previous seq and chain value): each segment verifies on its own, ties are checked after.

>>> sealer = LeanSealer(b"k" * 32)
>>> mac, line = sealer.seal({"seq": 1, "ts": 0, "kind": "chain_start"}, bytes(32))
>>> line.startswith(b'{"v":2,"seq":1,"ts":0,"kind":"chain_start","mac":"') and line.endswith(b'"}\\n')
True
>>> check_line(line, bytes(32), b"k" * 32)[0]["seq"], check_line(line, bytes(32), b"k" * 32)[1] == mac
(1, True)
>>> ts_text(1_700_000_000_123_456), ts_us("2023-11-14T22:13:20.123456Z")
('2023-11-14T22:13:20.123456Z', 1700000000123456)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime

import orjson

from .keys import Signer

VERSION = 2
PREFIX = b'{"v":2,'
PLAN_KIND = "plan"
SEGMENT_END = "segment_end"
MARKERS = frozenset({"chain_start", "chain_end", "rotate", "checkpoint", "gap", SEGMENT_END})
_MAC = b',"mac":"'
_SIG = b'","sig":"'
_END = b'"}\n'
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LineError(ValueError):
    """A format-2 line that does not check out; the message says what is wrong."""


def now_us() -> int:
    """The event timestamp: integer microseconds since the epoch (formatted only when read)."""
    return time.time_ns() // 1000


def ts_text(us: int) -> str:
    seconds, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{micros:06d}Z"


def ts_us(ts: int | str) -> int:
    """Microseconds since the epoch of an integer or a format-1 ISO timestamp."""
    if isinstance(ts, int):
        return ts
    moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) - _EPOCH
    return (moment.days * 86_400 + moment.seconds) * 1_000_000 + moment.microseconds


def plan_digest(sql: str) -> str:
    """Name of a rewritten statement in its segment (64 bits: collisions are checked by verify)."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()[:16]


def dumps(obj: object) -> bytes:
    # default=str: a stray value type must not make the whole sink fail (format 1 coerced too)
    return orjson.dumps(obj, default=str)


class LeanSealer:
    """Seals format-2 bodies: the MAC over the stored bytes, chained on the previous chain value."""

    def __init__(self, hmac_key: bytes, signer: Signer | None = None) -> None:
        self._key = hmac_key
        self._signer = signer

    def __repr__(self) -> str:
        return f"LeanSealer(signer={self._signer!r})"

    def seal(self, body: dict[str, object], prev: bytes) -> tuple[bytes, bytes]:
        """(chain value, stored line) of `body` (seq, ts, kind first, then fields) after `prev`."""
        payload = PREFIX + dumps(body)[1:-1]
        mac = hmac.digest(self._key, prev + payload, "sha256")
        line = payload + _MAC + mac.hex().encode()
        if self._signer is not None and body["kind"] in MARKERS:
            line += _SIG + self._signer.sign(mac.hex()).encode()
        return mac, line + _END


def check_line(data: bytes, prev: bytes, key: bytes) -> tuple[dict[str, object], bytes]:
    """(record, chain value) of one stored format-2 line whose previous chain value is `prev`."""
    rec = parse_line(data)
    return rec, check_mac(data, prev, key)


def parse_line(data: bytes) -> dict[str, object]:
    try:
        rec = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LineError("not a JSON record (line damaged or inserted)") from None
    if not isinstance(rec, dict):
        raise LineError("not a JSON object")
    return rec


def check_mac(data: bytes, prev: bytes, key: bytes) -> bytes:
    """The line's chain value, once its mac matches the key, `prev` and its stored bytes."""
    cut = data.rfind(_MAC)
    if cut < 0 or not data.endswith(_END):
        raise LineError("format 2 record without its mac (line damaged or cut)")
    mac = hmac.digest(key, prev + data[:cut], "sha256")
    if not hmac.compare_digest(mac.hex().encode(), data[cut + len(_MAC):cut + len(_MAC) + 64]):
        raise LineError("HMAC invalid: content does not match its keyed hash (record edited or forged, "
                        "the chain broken before it, or the wrong key)")
    tail = data[cut + len(_MAC) + 64:]
    if tail != _END and not (tail.startswith(_SIG) and len(tail) == len(_SIG) + 128 + len(_END)):
        raise LineError("bytes after the mac are not a signature (line edited)")
    return mac


def chain_value(rec: dict[str, object]) -> str:
    """The value the next record links to: format 2's mac, format 1's hash."""
    return str(rec["mac"] if rec.get("v") == VERSION else rec["hash"])
