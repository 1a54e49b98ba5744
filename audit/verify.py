"""Verify an audit log: canonical form, hash, HMAC, chain links, markers, tail and anchors.

Rules (the first violation is reported with file, line, seq and what is wrong):
1. Every line is a complete (newline-terminated) JSON object in the exact stored form (canonical
   body, then hash, hmac, sig); any other byte sequence, even an equivalent JSON one, is rejected;
   a torn last line is reported as "truncated", never skipped.
2. Every record has `hash` (SHA-256 of its canonical body, recomputed) and `hmac` (HMAC-SHA256 under
   the audit key); a record without them is "unsigned" and rejected.
3. seq starts at 1 and grows by exactly 1; `prev` equals the previous record's hash (64 zeros for
   seq 1, which must be a chain_start). Deleted, inserted, replayed or swapped records break this.
4. chain_start appears first, after a chain_end, or (after a crash) with details.unclean = true; after
   chain_end only a chain_start may follow. A `rotate` record is only the first line of a file that
   continues another file, and every file but the first begins with rotate or chain_start.
5. With a public key, every marker (chain_start, chain_end, rotate, checkpoint, gap) must carry a
   valid Ed25519 signature `sig` over its hash.
6. The log must end with chain_end; otherwise it is "truncated or still open". `allow_open` accepts
   an open log only together with exported checkpoints (kept elsewhere): then the log must contain
   every exported marker, and records after the last exported one are reported as unanchored.
7. Exported checkpoints (always checked when given): each entry's signature is valid (with a public
   key) and the log holds a record with that seq and hash; an entry beyond the log's end means the
   tail was cut -- the only way to detect a cut exactly at a chain_end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .checkpoints import ExportedMarker
from .keys import Verifier
from .reader import LogSource
from .record import GENESIS, KINDS, MARKER_KINDS, SEAL_FIELDS, canonical, encode_line


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.source}:{self.line}:{seq}: {self.message}"


@dataclass(slots=True)
class VerifyResult:
    problem: Problem | None = None
    records: int = 0
    files: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    chains: int = 0
    signatures_checked: int = 0
    anchors_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAILED: {self.problem}"
        lines = [f"OK: {self.records} records (seq {self.first_seq}..{self.last_seq}) in {self.files} "
                 f"file(s), {self.chains} chain run(s), {self.signatures_checked} signature(s) and "
                 f"{self.anchors_checked} exported checkpoint(s) checked"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


class _Broken(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def verify_log(sources: Sequence[LogSource], *, hmac_key: bytes, verifier: Verifier | None = None,
               exported: Sequence[ExportedMarker] = (), allow_open: bool = False) -> VerifyResult:
    """Check `sources` (in chain order) against the rules in the module docstring."""
    if allow_open and not exported:
        raise ValueError("allow_open needs exported checkpoints: an open log's tail is otherwise unprovable")
    result = VerifyResult()
    try:
        _verify(sources, hmac_key, verifier, exported, allow_open, result)
    except _Broken as broken:
        result.problem = broken.problem
    return result


def _verify(sources: Sequence[LogSource], key: bytes, verifier: Verifier | None,
            exported: Sequence[ExportedMarker], allow_open: bool, result: VerifyResult) -> None:
    wanted = {m.seq: m for m in exported}
    found: dict[int, str] = {}
    last: dict[str, object] | None = None
    where = ("(no records)", 0)
    unsigned_markers = 0
    for index, source in enumerate(sources):
        result.files += 1
        for raw in source.lines():
            where = (raw.source, raw.line_no)

            def broken(msg: str, seq: object = None, raw_source: str = raw.source,
                       raw_line: int = raw.line_no) -> _Broken:
                return _Broken(Problem(raw_source, raw_line, seq if isinstance(seq, int) else None, msg))

            if not raw.data.endswith(b"\n"):
                raise broken("truncated: incomplete last line (torn write or cut file)")
            try:
                rec = json.loads(raw.data)
            except ValueError:
                raise broken("not a JSON record (line damaged or inserted)") from None
            if not isinstance(rec, dict):
                raise broken("not a JSON object")
            seq = rec.get("seq")
            if "hmac" not in rec or "hash" not in rec:
                raise broken("unsigned record (no hash/hmac)", seq)
            body = {k: v for k, v in rec.items() if k not in SEAL_FIELDS}
            payload = canonical(body)
            if not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), str(rec["hash"]).encode()):
                raise broken("content does not match its hash (record edited)", seq)
            mac = hmac.new(key, payload, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(mac.encode(), str(rec["hmac"]).encode()):
                raise broken("HMAC invalid (record forged, or wrong audit key)", seq)
            sig = rec.get("sig")
            if encode_line(payload, str(rec["hash"]), str(rec["hmac"]),
                           None if sig is None else str(sig)) != raw.data:
                raise broken("record bytes are not in canonical form (line edited)", seq)
            kind = rec.get("kind")
            if not isinstance(seq, int) or kind not in KINDS or rec.get("v") != 1 or \
                    not isinstance(rec.get("ts"), str) or not isinstance(rec.get("prev"), str):
                raise broken("malformed record (v, seq, kind, ts or prev missing or invalid)", seq)
            details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
            assert isinstance(details, dict)
            first_in_file = raw.line_no == 1
            if last is None:
                if kind == "rotate":
                    raise broken(f"log starts in the middle: continues {details.get('previous_file')!r} "
                                 "(pass the earlier files too)", seq)
                if kind != "chain_start" or seq != 1 or rec["prev"] != GENESIS:
                    raise broken("log does not start with chain_start seq 1 (earlier records missing)", seq)
            else:
                expected = int(str(last["seq"])) + 1
                if seq != expected:
                    what = ("seq jumps: records deleted or reordered" if seq > expected
                            else "seq goes back: records reordered or duplicated")
                    raise broken(f"{what} (expected seq {expected})", seq)
                if rec["prev"] != last["hash"]:
                    raise broken(f"chain broken: prev is not the hash of seq {last['seq']}", seq)
                if index > 0 and first_in_file and kind not in ("rotate", "chain_start"):
                    raise broken("file does not begin with a rotate or chain_start record", seq)
                if kind == "rotate" and not (first_in_file and index > 0):
                    raise broken("rotate record not at the start of a continuing file", seq)
                if last["kind"] == "chain_end" and kind != "chain_start":
                    raise broken("record after chain_end without a new chain_start", seq)
                if kind == "chain_start" and bool(details.get("unclean")) != (last["kind"] != "chain_end"):
                    raise broken("chain_start without a matching chain_end/unclean flag", seq)
            if kind == "chain_start":
                result.chains += 1
            if kind in MARKER_KINDS:
                if "sig" not in rec:
                    if verifier is not None:
                        raise broken("marker record not signed (no Ed25519 signature)", seq)
                    unsigned_markers += 1
                elif verifier is not None:
                    if not verifier.verify(str(rec["hash"]), str(rec["sig"])):
                        raise broken("Ed25519 signature invalid", seq)
                    result.signatures_checked += 1
            if seq in wanted:
                found[seq] = str(rec["hash"])
            if result.first_seq is None:
                result.first_seq = seq
            result.last_seq = seq
            result.records += 1
            last = rec
    if last is None:
        raise _Broken(Problem(where[0], where[1], None, "empty log: no records"))
    last_seq = int(str(last["seq"]))
    for marker in exported:
        anchor = Problem(marker.source, marker.line, marker.seq, "")
        if verifier is not None and (not marker.sig or not verifier.verify(marker.hash, marker.sig)):
            raise _Broken(_with(anchor, "exported checkpoint signature invalid or missing"))
        if marker.seq > last_seq:
            raise _Broken(_with(anchor, f"log ends at seq {last_seq} before this exported checkpoint "
                                        "(tail cut off)"))
        if found.get(marker.seq) != marker.hash:
            raise _Broken(_with(anchor, "log record differs from this exported checkpoint (history rewritten)"))
        result.anchors_checked += 1
    if last["kind"] != "chain_end":
        if not allow_open:
            raise _Broken(Problem(where[0], where[1], last_seq,
                                  f"log truncated or still open: last record is {last['kind']}, not chain_end"))
        anchored = max(m.seq for m in exported)
        result.notes.append(f"log is open: records after seq {anchored} are not anchored by an exported "
                            f"checkpoint ({last_seq - anchored} record(s))")
    if unsigned_markers:
        result.notes.append(f"{unsigned_markers} marker record(s) carry no Ed25519 signature")
    if verifier is None:
        result.notes.append("Ed25519 signatures not checked (no public key given)")


def _with(problem: Problem, message: str) -> Problem:
    return Problem(problem.source, problem.line, problem.seq, message)
