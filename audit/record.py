"""Audit record format: fields, canonical JSON, the hash chain and the HMAC seal.

One record is one line: the canonical JSON of its body (keys sorted, no spaces, UTF-8, no NaN)
with the seal fields appended last in the order hash, hmac, sig, then a newline. Body fields
(absent when empty):

  v (format, 1; format 2 is in audit/lean.py), seq (1, 2, 3 ... across files and restarts), ts (UTC, microseconds,
  "2025-01-31T12:00:00.123456Z"), instance (proxy instance id), kind, tenant, user, client,
  session, database, sql (original, with encrypted literals masked), rewritten, decision
  ("allowed"|"refused"), reason, sqlstate, rows, duration_ms, params, encrypted_columns,
  details (kind-specific object), prev (the previous record's `hash`; 64 zeros for seq 1).
  Exception: a statement record always has encrypted_columns (`[]` when it accessed none), so a
  reader tells it from the records of releases that did not fill the field in (format 2 has
  no such releases: there an absent field means none).

Seal fields: hash = SHA-256 hex of the canonical body; hmac = HMAC-SHA256 hex of the canonical body
under the audit key; sig = Ed25519 signature (hex) of "tenantgate-audit-v1:" + hash, on marker
records (chain_start, chain_end, rotate, checkpoint, gap) when a signing key is configured.

>>> sealer = Sealer(b"k" * 32)
>>> rec = sealer.seal({"v": 1, "seq": 1, "ts": "2025-01-01T00:00:00.000000Z", "instance": "i",
...                    "kind": "chain_start", "prev": GENESIS})
>>> rec.line.startswith(b'{"instance":"i","kind":"chain_start","prev":"000') and rec.line.endswith(b'"}\\n')
True
>>> json.loads(rec.line) == rec.record
True
>>> redact_params(["a", "4111", None], frozenset({1}), "full", b"p" * 32)
['a', '***', None]
>>> redact_sql("SELECT 1 WHERE ssn = '123'", [(21, 26)])
"SELECT 1 WHERE ssn = '***'"
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .keys import Signer
from .lean import now_us, ts_text

FORMAT_VERSION = 1
GENESIS = "0" * 64
EVENT_KINDS = frozenset({"statement", "auth_ok", "auth_fail", "refusal", "admin", "reload", "key_event", "alert"})
MARKER_KINDS = frozenset({"chain_start", "chain_end", "rotate", "checkpoint", "gap"})
KINDS = EVENT_KINDS | MARKER_KINDS
SEAL_FIELDS = frozenset({"hash", "hmac", "sig"})
DECISIONS = frozenset({"allowed", "refused"})
MASK = "***"


def canonical(obj: object) -> bytes:
    """The one byte encoding that is hashed, MACed and written."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def encode_line(payload: bytes, digest: str, mac: str, sig: str | None) -> bytes:
    """The stored line: canonical body with the seal fields appended (hashing twice would cost more)."""
    tail = f',"hash":"{digest}","hmac":"{mac}"' + (f',"sig":"{sig}"' if sig is not None else "") + "}\n"
    return payload[:-1] + tail.encode("ascii", "backslashreplace")


def utc_timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="microseconds")[:-6] + "Z"


def param_hash_key(hmac_key: bytes) -> bytes:
    """Key for `log_parameters = "hash"`: keyed, so low-entropy values cannot be brute-forced from the log."""
    return hmac.new(hmac_key, b"tenantgate-audit-params", hashlib.sha256).digest()


def _param_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def redact_params(params: Sequence[object] | None, encrypted: Set[int], mode: str,
                  hash_key: bytes) -> list[object] | None:
    """Parameters as logged: none -> omitted; hash -> keyed HMAC; full -> values. Encrypted: always masked."""
    if params is None or mode == "none":
        return None
    out: list[object] = []
    for i, value in enumerate(params):
        if i in encrypted:
            out.append(MASK)
        elif value is None:
            out.append(None)
        elif mode == "hash":
            out.append("hmac-sha256:" + hmac.new(hash_key, _param_bytes(value), hashlib.sha256).hexdigest())
        elif isinstance(value, bytes | bytearray | memoryview):
            out.append("\\x" + bytes(value).hex())
        elif isinstance(value, bool | int | float | str):
            out.append(value)
        else:
            out.append(str(value))
    return out


def redact_sql(sql: str, spans: Sequence[tuple[int, int]]) -> str:
    """Replace each [start, end) span (a whole literal token bound to an encrypted column) by '***'."""
    for start, end in sorted(spans, reverse=True):
        sql = sql[:start] + f"'{MASK}'" + sql[end:]
    return sql


@dataclass(slots=True)
class AuditEvent:
    """One thing that happened, as the proxy reports it. Not mutated once submitted; not frozen because
    a frozen dataclass's __init__ is one object.__setattr__ call per field, 19 on every statement.

    `encrypted_params` are indexes of `params` bound to encrypted columns and
    `sql_redactions` are [start, end) spans of `sql` holding literals of encrypted columns:
    both are masked whatever `log_parameters` says.
    """

    kind: str
    tenant: str | None = None
    user: str | None = None
    client: str | None = None
    session: str | None = None
    database: str | None = None
    sql: str | None = None
    rewritten: str | None = None
    decision: str | None = None
    reason: str | None = None
    sqlstate: str | None = None
    rows: int | None = None
    duration_ms: float | None = None
    params: Sequence[object] | None = None
    encrypted_params: Set[int] = frozenset()
    sql_redactions: Sequence[tuple[int, int]] = ()
    encrypted_columns: Sequence[str] = ()
    details: Mapping[str, object] | None = None
    # integer microseconds (formatted where records are sealed); an ISO string is accepted too
    ts: int | str = field(default_factory=now_us)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"audit event kind must be one of {sorted(EVENT_KINDS)}, not {self.kind!r}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(f"audit decision must be 'allowed' or 'refused', not {self.decision!r}")

    def body(self, log_parameters: str, hash_key: bytes) -> dict[str, object]:
        """The format-1 record body without seq/instance/prev (the writer adds those)."""
        ts = self.ts if isinstance(self.ts, str) else ts_text(self.ts)
        body = {"v": FORMAT_VERSION, "ts": ts, **self.fields(log_parameters, hash_key)}
        if self.kind == "statement":
            body.setdefault("encrypted_columns", [])  # exact (none), not "unknown": see the module docstring
        return body

    def fields(self, log_parameters: str, hash_key: bytes) -> dict[str, object]:
        """kind and the non-empty event fields, as logged (redacted), in a fixed order."""
        return self.put_fields({"kind": self.kind}, log_parameters, hash_key, rewritten=True)

    def put_fields(self, body: dict[str, object], log_parameters: str, hash_key: bytes, *,
                   rewritten: bool) -> dict[str, object]:
        """``body`` with the non-empty event fields after kind added, as logged, in a fixed order;
        ``rewritten`` False leaves the rewritten SQL out (format 2 names its plan instead). One
        test per field, no table of pairs: the sealer runs this for every statement."""
        if self.tenant is not None:
            body["tenant"] = self.tenant
        if self.user is not None:
            body["user"] = self.user
        if self.client is not None:
            body["client"] = self.client
        if self.session is not None:
            body["session"] = self.session
        if self.database is not None:
            body["database"] = self.database
        if self.sql is not None:
            body["sql"] = redact_sql(self.sql, self.sql_redactions) if self.sql_redactions else self.sql
        if rewritten and self.rewritten is not None:
            body["rewritten"] = self.rewritten
        if self.decision is not None:
            body["decision"] = self.decision
        if self.reason is not None:
            body["reason"] = self.reason
        if self.sqlstate is not None:
            body["sqlstate"] = self.sqlstate
        if self.rows is not None:
            body["rows"] = self.rows
        if self.duration_ms is not None:
            body["duration_ms"] = self.duration_ms
        if self.params is not None:
            params = redact_params(self.params, self.encrypted_params, log_parameters, hash_key)
            if params is not None:
                body["params"] = params
        if self.encrypted_columns:
            body["encrypted_columns"] = list(self.encrypted_columns)
        if self.details:
            body["details"] = dict(self.details)
        return body


@dataclass(slots=True)  # one per record the sealer writes: not frozen, for the same reason as AuditEvent
class SealedRecord:
    seq: int
    hash: str
    kind: str
    record: dict[str, object]
    line: bytes


class Sealer:
    """Computes hash, HMAC and (for markers) the Ed25519 signature of a complete body."""

    def __init__(self, hmac_key: bytes, signer: Signer | None = None) -> None:
        self._key = hmac_key
        self._signer = signer

    def __repr__(self) -> str:
        return f"Sealer(signer={self._signer!r})"

    def mac(self, payload: bytes) -> str:
        return hmac.digest(self._key, payload, "sha256").hex()  # the one-shot C path: no HMAC object per record

    def seal(self, body: dict[str, object]) -> SealedRecord:
        payload = canonical(body)
        digest = hashlib.sha256(payload).hexdigest()
        mac = self.mac(payload)
        record = dict(body, hash=digest, hmac=mac)
        sig = None
        if self._signer is not None and body["kind"] in MARKER_KINDS:
            sig = record["sig"] = self._signer.sign(digest)
        seq = body["seq"]
        assert isinstance(seq, int)
        return SealedRecord(seq, digest, str(body["kind"]), record, encode_line(payload, digest, mac, sig))
