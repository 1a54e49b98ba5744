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
6. The log must end with chain_end. A log without one is open, not failed, while its writer holds
   the log's lock ("verified through seq N at T, log open"; a torn last line is a write in progress
   and left out); once no writer holds it, a missing chain_end is a cut tail ("truncated"). `allow_open`
   accepts an open log only together with exported checkpoints (kept elsewhere): then the log must
   contain every exported marker, and records after the last exported one are reported as unanchored.
7. Exported checkpoints (always checked when given): each entry's signature is valid (with a public
   key) and the log holds a record with that seq and hash; an entry beyond the log's end means the
   tail was cut -- the only way to detect a cut exactly at a chain_end.
8. Format 2 (audit/lean.py; both formats may follow each other in one log): the mac chains each
   record to the previous one; a rotated segment ends with segment_end and nothing follows it in
   its file; every `plan` a record names was stored earlier in its segment, under its own digest.

Each source (segment) is verified on its own, in parallel worker processes when there are several:
a segment starts from the previous chain value its first record (chain_start / rotate) states, and
the ties between segments (seq, chain value, marker rules) are checked afterwards, in order.
`allow_expired` accepts a log whose oldest segments were deleted under retention: it may begin at a
rotate record (signed, when a public key is given).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import orjson

from .checkpoints import ExportedMarker
from .keys import Verifier
from .lean import MARKERS, PLAN_KIND, PREFIX, SEGMENT_END, LineError, check_mac, plan_digest, ts_text
from .reader import FileSource, LogSource, RawLine
from .record import GENESIS, KINDS, SEAL_FIELDS, canonical, encode_line
from .segments import writer_alive

_PARALLEL_BYTES = 8 << 20  # below this much log, worker processes cost more than they save


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
    open_through: tuple[int, str] | None = None  # (seq, time) of a live log's last record

    @property
    def status(self) -> str:
        if self.problem is not None:
            return f"VERIFICATION FAILED: {self.problem}"
        if self.open_through is not None:
            return f"verified through seq {self.open_through[0]} at {self.open_through[1]}, log open"
        return f"verified intact through seq {self.last_seq}"

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAILED: {self.problem}"
        lines = [f"OK: {self.records} records (seq {self.first_seq}..{self.last_seq}) in {self.files} "
                 f"file(s), {self.chains} chain run(s), {self.signatures_checked} signature(s) and "
                 f"{self.anchors_checked} exported checkpoint(s) checked"]
        if self.open_through is not None:
            lines.append(self.status + " (its writer holds the lock)")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


@dataclass(slots=True)
class _Edge:
    seq: int
    chain: str  # the chain value (format 1 hash, format 2 mac), hex
    kind: str
    ts: str
    line: int
    v: int
    prev: str = ""  # what the record links to (first record of a segment)
    details: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class _Segment:
    """What verifying one source on its own found (crosses the process boundary)."""

    source: str
    problem: Problem | None = None
    first: _Edge | None = None
    last: _Edge | None = None
    torn_line: int = 0  # line number of an incomplete last line (0: none)
    records: int = 0
    chains: int = 0
    signatures: int = 0
    unsigned: int = 0
    found: dict[int, str] = field(default_factory=dict)


class _Broken(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def verify_log(sources: Sequence[LogSource], *, hmac_key: bytes, verifier: Verifier | None = None,
               exported: Sequence[ExportedMarker] = (), allow_open: bool = False,
               allow_expired: bool = False, jobs: int | None = None) -> VerifyResult:
    """Check `sources` (in chain order) against the rules in the module docstring."""
    if allow_open and not exported:
        raise ValueError("allow_open needs exported checkpoints: an open log's tail is otherwise unprovable")
    result = VerifyResult()
    wanted = frozenset(m.seq for m in exported)
    try:
        segments = _verify_all(sources, hmac_key, verifier, wanted, jobs)
        _tie(sources, segments, verifier, exported, allow_open, allow_expired, result)
    except _Broken as broken:
        result.problem = broken.problem
    return result


def _verify_all(sources: Sequence[LogSource], key: bytes, verifier: Verifier | None, wanted: frozenset[int],
                jobs: int | None) -> list[_Segment]:
    files = [s.path for s in sources if isinstance(s, FileSource)]
    size = sum(p.stat().st_size for p in files if p.exists())
    workers = min(jobs or os.cpu_count() or 1, len(sources))
    if workers < 2 or len(files) != len(sources) or size < _PARALLEL_BYTES:
        return [verify_segment(s, key, verifier, wanted) for s in sources]
    # Larger segments first keeps both workers busy to the end; results are put back in chain order.
    order = sorted(range(len(sources)), key=lambda i: -files[i].stat().st_size)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {i: pool.submit(verify_segment, sources[i], key, verifier, wanted) for i in order}
        return [futures[i].result() for i in range(len(sources))]


def verify_segment(source: LogSource, key: bytes, verifier: Verifier | None,
                   wanted: frozenset[int] = frozenset()) -> _Segment:
    """Verify one source from its own first record on (rules 1-5 and 8 inside it)."""
    seg = _Segment(source.name)
    try:
        _walk(source.lines(), seg, key, verifier, wanted)
    except _Broken as broken:
        seg.problem = broken.problem
    return seg


def _walk(lines: Iterable[RawLine], seg: _Segment, key: bytes, verifier: Verifier | None,
          wanted: frozenset[int]) -> None:
    loads = orjson.loads
    name = seg.source
    prev = b""
    last_seq = 0
    last_kind = ""
    plans: set[str] = set()
    no = 0
    rec: dict[str, object] = {}
    torn = b""
    for raw in lines:
        if torn:  # an incomplete line that is not the last one: damage, not a write in progress
            raise _Broken(Problem(name, no, None, "truncated: incomplete line (torn write or cut file)"))
        data = raw.data
        no = raw.line_no
        seq = None
        if not data.endswith(b"\n"):
            torn = data
            seg.torn_line = no
            continue
        try:
            try:
                rec = loads(data)
            except orjson.JSONDecodeError:
                raise LineError("not a JSON record (line damaged or inserted)") from None
            if type(rec) is not dict:
                raise LineError("not a JSON object")
            seq = rec.get("seq")
            if data.startswith(PREFIX):
                v = 2
            else:
                chain_hex, prev_hex = _v1_check(rec, data, key)
                v = 1
            kind = rec.get("kind")
            if not isinstance(seq, int) or not isinstance(kind, str) or (kind not in KINDS and (
                    v == 1 or kind not in (PLAN_KIND, SEGMENT_END))):
                raise LineError("malformed record (v, seq, kind, ts or prev missing or invalid)")
            details = rec.get("details")
            if not isinstance(details, dict):
                details = {}
            if seg.first is None:
                link = prev_hex if v == 1 else str(details.get("previous_hash", ""))
                if v == 2 and kind not in ("chain_start", "rotate"):
                    raise LineError("segment does not begin with a chain_start or rotate record")
            else:
                if seq != last_seq + 1:
                    what = ("seq jumps: records deleted or reordered" if seq > last_seq + 1
                            else "seq goes back: records reordered or duplicated")
                    raise LineError(f"{what} (expected seq {last_seq + 1})")
                if last_kind == SEGMENT_END:
                    raise LineError("record after segment_end in the same file")
                link = ""
            if v == 2:
                try:
                    chain = check_mac(data, bytes.fromhex(link) if seg.first is None else prev, key)
                except ValueError as exc:
                    raise LineError(str(exc) if isinstance(exc, LineError) else "previous_hash is not hex") from None
                chain_hex = ""
                prev = chain
            else:
                if seg.first is not None and prev_hex != prev.hex():
                    raise LineError(f"chain broken: prev is not the hash of seq {last_seq}")
                prev = bytes.fromhex(chain_hex)
            if kind != "statement":
                _rules(rec, kind, details, seg, verifier, plans, last_kind, seg.first is None, v)
        except LineError as exc:
            raise _Broken(Problem(name, no, seq if isinstance(seq, int) else None, str(exc))) from None
        if seq in wanted:
            seg.found[seq] = prev.hex()
        elif v == 2 and "plan" in rec and rec["plan"] not in plans:
            raise _Broken(Problem(name, no, seq, f"plan {rec['plan']} not stored earlier in this segment"))
        if seg.first is None:
            seg.first = _Edge(seq, prev.hex(), kind, _ts(rec), no, v, link, details)
        last_seq, last_kind = seq, kind
        seg.records += 1
    if seg.first is not None:
        # a torn last line is not a record: the last complete one stands
        seg.last = _Edge(last_seq, prev.hex(), last_kind, _ts(rec), no - 1 if torn else no, 0)


def _ts(rec: dict[str, object]) -> str:
    ts = rec.get("ts")
    return ts_text(ts) if isinstance(ts, int) else str(ts)


def _v1_check(rec: dict[str, object], data: bytes, key: bytes) -> tuple[str, str]:
    """(hash, prev) of a format-1 record after checking its hash, HMAC and canonical bytes."""
    if "hmac" not in rec or "hash" not in rec:
        raise LineError("unsigned record (no hash/hmac)")
    body = {k: v for k, v in rec.items() if k not in SEAL_FIELDS}
    payload = canonical(body)
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), str(rec["hash"]).encode()):
        raise LineError("content does not match its hash (record edited)")
    mac = hmac.digest(key, payload, "sha256").hex()
    if not hmac.compare_digest(mac.encode(), str(rec["hmac"]).encode()):
        raise LineError("HMAC invalid (record forged, or wrong audit key)")
    sig = rec.get("sig")
    if encode_line(payload, str(rec["hash"]), str(rec["hmac"]), None if sig is None else str(sig)) != data:
        raise LineError("record bytes are not in canonical form (line edited)")
    if rec.get("v") != 1 or not isinstance(rec.get("ts"), str) or not isinstance(rec.get("prev"), str):
        raise LineError("malformed record (v, seq, kind, ts or prev missing or invalid)")
    return str(rec["hash"]), str(rec["prev"])


def _rules(rec: dict[str, object], kind: str, details: dict[str, object], seg: _Segment,
           verifier: Verifier | None, plans: set[str], last_kind: str, first: bool, v: int) -> None:
    """Rules for the non-statement kinds that need no other segment."""
    if not first:
        if kind == "rotate":
            raise LineError("rotate record not at the start of a continuing file")
        if last_kind == "chain_end" and kind != "chain_start":
            raise LineError("record after chain_end without a new chain_start")
        if kind == "chain_start" and bool(details.get("unclean")) != (last_kind != "chain_end"):
            raise LineError("chain_start without a matching chain_end/unclean flag")
    if kind == "chain_start":
        seg.chains += 1
    if kind == PLAN_KIND:
        sql, digest = details.get("sql"), details.get("digest")
        if not isinstance(sql, str) or digest != plan_digest(sql):
            raise LineError("plan record's digest does not match its statement")
        plans.add(digest)
    elif kind in MARKERS:
        chain = str(rec["mac"] if v == 2 else rec["hash"])
        if "sig" not in rec:
            if verifier is not None:
                raise LineError("marker record not signed (no Ed25519 signature)")
            seg.unsigned += 1
        elif verifier is not None:
            if not verifier.verify(chain, str(rec["sig"])):
                raise LineError("Ed25519 signature invalid")
            seg.signatures += 1


def _tie(sources: Sequence[LogSource], segments: list[_Segment], verifier: Verifier | None,
         exported: Sequence[ExportedMarker], allow_open: bool, allow_expired: bool, result: VerifyResult) -> None:
    """Rules across segments, in chain order, then the tail (rule 6) and exported checkpoints (7)."""
    last: _Edge | None = None
    found: dict[int, str] = {}
    unsigned = 0
    live = bool(sources) and isinstance(sources[-1], FileSource) and writer_alive(Path(sources[-1].name))
    for index, seg in enumerate(segments):
        result.files += 1
        final = index == len(segments) - 1
        if seg.problem is not None:
            raise _Broken(seg.problem)
        if seg.torn_line and not (final and live):
            raise _Broken(Problem(seg.source, seg.torn_line, None,
                                  "truncated: incomplete last line (torn write or cut file)"))
        first = seg.first
        if first is None:
            continue
        if last is None:
            if first.kind == "rotate" and not allow_expired:
                raise _Broken(Problem(seg.source, 1, first.seq,
                                      f"log starts in the middle: continues {first.details.get('previous_file')!r} "
                                      "(pass the earlier files too)"))
            if first.kind == "rotate" and verifier is None:
                result.notes.append("log begins at a rotate record whose signature was not checked")
            elif first.kind == "rotate":
                result.notes.append(f"log begins at seq {first.seq}: earlier segments expired "
                                    "(signed rotate record checked)")
            elif first.kind != "chain_start" or first.seq != 1 or first.prev != GENESIS:
                raise _Broken(Problem(seg.source, 1, first.seq,
                                      "log does not start with chain_start seq 1 (earlier records missing)"))
        else:
            def broken(msg: str, where: _Segment = seg, edge: _Edge = first) -> _Broken:
                return _Broken(Problem(where.source, edge.line, edge.seq, msg))

            if first.seq != last.seq + 1:
                what = ("seq jumps: records deleted or reordered" if first.seq > last.seq + 1
                        else "seq goes back: records reordered or duplicated")
                raise broken(f"{what} (expected seq {last.seq + 1})")
            if first.prev != last.chain:
                raise broken(f"chain broken: prev is not the hash of seq {last.seq}")
            if first.kind not in ("rotate", "chain_start"):
                raise broken("file does not begin with a rotate or chain_start record")
            if last.kind == "chain_end" and first.kind != "chain_start":
                raise broken("record after chain_end without a new chain_start")
            if first.kind == "chain_start" and bool(first.details.get("unclean")) != (last.kind != "chain_end"):
                raise broken("chain_start without a matching chain_end/unclean flag")
        assert seg.last is not None
        if not final and seg.last.kind not in (SEGMENT_END, "chain_end") and _is_lean(seg):
            raise _Broken(Problem(seg.source, seg.last.line, seg.last.seq,
                                  "segment cut: it ends without its signed segment_end marker"))
        if result.first_seq is None:
            result.first_seq = first.seq
        result.records += seg.records
        result.chains += seg.chains
        result.signatures_checked += seg.signatures
        unsigned += seg.unsigned
        found.update(seg.found)
        last = seg.last
    if last is None:
        where = segments[-1].source if segments else "(no records)"
        raise _Broken(Problem(where, 0, None, "empty log: no records"))
    result.last_seq = last.seq
    for marker in exported:
        anchor = Problem(marker.source, marker.line, marker.seq, "")
        if verifier is not None and (not marker.sig or not verifier.verify(marker.hash, marker.sig)):
            raise _Broken(_with(anchor, "exported checkpoint signature invalid or missing"))
        if marker.seq > last.seq:
            raise _Broken(_with(anchor, f"log ends at seq {last.seq} before this exported checkpoint "
                                        "(tail cut off)"))
        if found.get(marker.seq) != marker.hash:
            raise _Broken(_with(anchor, "log record differs from this exported checkpoint (history rewritten)"))
        result.anchors_checked += 1
    if last.kind != "chain_end":
        if live:
            result.open_through = (last.seq, last.ts)
        elif not allow_open:
            raise _Broken(Problem(segments[-1].source, last.line, last.seq,
                                  f"log truncated or still open: last record is {last.kind}, not chain_end, "
                                  "and no writer holds the log (crashed, or its tail was cut)"))
        else:
            anchored = max(m.seq for m in exported)
            result.notes.append(f"log is open: records after seq {anchored} are not anchored by an exported "
                                f"checkpoint ({last.seq - anchored} record(s))")
    if unsigned:
        result.notes.append(f"{unsigned} marker record(s) carry no Ed25519 signature")
    if verifier is None:
        result.notes.append("Ed25519 signatures not checked (no public key given)")


def _is_lean(seg: _Segment) -> bool:
    return seg.first is not None and seg.first.v == 2


def _with(problem: Problem, message: str) -> Problem:
    return Problem(problem.source, problem.line, problem.seq, message)
