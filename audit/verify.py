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
   the log's lock -- the flock of a file log, the advisory lock of a PostgreSQL table (pgsink.py) --
   ("verified through seq N at T, log open"; a torn last line is a write in progress and left
   out); once no writer holds it, a missing chain_end is a cut tail ("truncated"). `allow_open`
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
import threading
from binascii import hexlify
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import orjson
from zstandard import ZstdError

from .checkpoints import ExportedMarker
from .keys import Verifier
from .lean import (
    LINE_END,
    MAC_FIELD,
    MARKERS,
    PLAN_KIND,
    PREFIX,
    SEGMENT_END,
    SIG_FIELD,
    LineError,
    mac_state,
    plan_digest,
    template_digest,
    ts_text,
)
from .reader import FileSource, LogSource
from .record import GENESIS, KINDS, SEAL_FIELDS, canonical, encode_line

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
    sizes = [_size(p) for p in files]
    size = sum(sizes)
    workers = min(jobs or os.cpu_count() or 1, len(sources))
    # fork: no re-import and no main-module guard needed; only from a single-threaded process (a
    # thread holding a lock at fork time would leave the child stuck), else in this process.
    if workers < 2 or len(files) != len(sources) or size < _PARALLEL_BYTES or threading.active_count() > 1:
        return [verify_segment(s, key, verifier, wanted) for s in sources]
    # Larger segments first keeps both workers busy to the end; results are put back in chain order.
    order = sorted(range(len(sources)), key=lambda i: -sizes[i])
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        futures = {i: pool.submit(verify_segment, sources[i], key, verifier, wanted) for i in order}
        return [futures[i].result() for i in range(len(sources))]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # compressed meanwhile: read under its new name (segments.open_lines)
        return 0


def verify_segment(source: LogSource, key: bytes, verifier: Verifier | None,
                   wanted: frozenset[int] = frozenset()) -> _Segment:
    """Verify one source from its own first record on (rules 1-5 and 8 inside it)."""
    seg = _Segment(source.name)
    try:
        _walk(source.data(), seg, key, verifier, wanted)
    except _Broken as broken:
        seg.problem = broken.problem
    return seg


_SEQ_AT = len(PREFIX) + len(b'"seq":')
_TS, _KIND, _PLAN = b',"ts":', b',"kind":"', b',"plan":"'
_HEX = 64  # a 32-byte mac in hex
_MALFORMED = "malformed record (v, seq, kind, ts or prev missing or invalid)"


def _walk(lines: Iterable[bytes], seg: _Segment, key: bytes, verifier: Verifier | None,
          wanted: frozenset[int]) -> None:
    """The per-record loop. Format 2 statements, nearly every record at volume, take the fast path:
    find/startswith on the line's bytes (no slicing where a comparison in place will do), one MAC
    (keyed state copied, two updates), no JSON parse, no call but the hash's own."""
    fresh = mac_state(key).copy
    # the hot path's constants as locals (a global lookup and a len() call per use otherwise)
    prefix, ts_key, kind_key, plan_key = PREFIX, _TS, _KIND, _PLAN
    mac_key, line_end, sig_key = MAC_FIELD, LINE_END, SIG_FIELD
    seq_at, ts_len, kind_len, mac_at, plan_at = _SEQ_AT, len(_TS), len(_KIND), len(MAC_FIELD), 1 + len(_PLAN)
    plain_end, signed_end = len(MAC_FIELD) + _HEX + len(LINE_END), len(MAC_FIELD) + _HEX + len(SIG_FIELD) + 131
    name = seg.source
    prev = b""
    last_seq = 0
    last_kind = ""
    last_line = b""
    plans: set[bytes] = set()
    no = records = 0
    torn = started = False
    try:
        for data in lines:
            no += 1
            if torn:  # an incomplete line that is not the last one: damage, not a write in progress
                raise _Broken(Problem(name, no - 1, None, "truncated: incomplete line (torn write or cut file)"))
            if data[-1:] != b"\n":
                torn = True
                seg.torn_line = no
                continue
            seq: int | None = None
            try:
                if data.startswith(prefix):
                    c1 = data.find(b",", seq_at)
                    c2 = data.find(b",", c1 + ts_len)
                    c3 = data.find(b'"', c2 + kind_len)
                    if c1 < 0 or c2 < 0 or c3 < 0 or not data.startswith(ts_key, c1) \
                            or not data.startswith(kind_key, c2):
                        raise LineError(_MALFORMED)
                    try:
                        seq = int(data[seq_at:c1])
                    except ValueError:
                        raise LineError(_MALFORMED) from None
                    cut = data.rfind(mac_key)
                    if cut < 0 or not data.endswith(line_end):
                        raise LineError("format 2 record without its mac (line damaged or cut)")
                    statement = data.startswith(b'statement"', c2 + kind_len)
                    kind = "statement" if statement else data[c2 + kind_len:c3].decode("utf-8", "replace")
                    if started:
                        if seq != last_seq + 1 or last_kind == SEGMENT_END:
                            _next(seq, last_seq, last_kind)
                    else:
                        rec = _parse(data)
                        details = _details(rec)
                        link = str(details.get("previous_hash", ""))
                        if kind not in ("chain_start", "rotate"):
                            raise LineError("segment does not begin with a chain_start or rotate record")
                        try:
                            prev = bytes.fromhex(link)
                        except ValueError:
                            raise LineError("previous_hash of the segment's first record is not hex") from None
                    h = fresh()
                    h.update(prev)
                    h.update(data[:cut])
                    mac = h.digest()
                    if not data.startswith(hexlify(mac), cut + mac_at):
                        raise LineError("MAC invalid: content does not match its keyed hash (record edited or "
                                        "forged, the chain broken before it, or the wrong key)")
                    size = len(data) - cut
                    if size != plain_end and not (size == signed_end and data.startswith(sig_key, cut + mac_at + _HEX)):
                        raise LineError("bytes after the mac are not a signature (line edited)")
                    prev = mac
                    if statement:
                        if data.startswith(plan_key, c3 + 1) and data[c3 + plan_at:c3 + plan_at + 16] not in plans:
                            raise LineError("the plan it names is not stored earlier in this segment")
                    else:
                        rec = _parse(data)
                        details = _details(rec)
                        if kind not in KINDS and kind not in (PLAN_KIND, SEGMENT_END):
                            raise LineError("malformed record (unknown kind)")
                        _rules(rec, kind, details, seg, verifier, plans, last_kind, not started, 2)
                    if not started:
                        seg.first = _Edge(seq, prev.hex(), kind, "", no, 2, link, details)
                else:
                    rec = _parse(data)
                    seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None  # type: ignore[assignment]
                    chain_hex, prev_hex = _v1_check(rec, data, key)
                    kind = str(rec.get("kind"))
                    if seq is None or kind not in KINDS:
                        raise LineError(_MALFORMED)
                    details = _details(rec)
                    if started:
                        _next(seq, last_seq, last_kind)
                        if prev_hex != prev.hex():
                            raise LineError(f"chain broken: prev is not the hash of seq {last_seq}")
                    prev = bytes.fromhex(chain_hex)
                    if kind != "statement":
                        _rules(rec, kind, details, seg, verifier, plans, last_kind, not started, 1)
                    if not started:
                        seg.first = _Edge(seq, chain_hex, kind, "", no, 1, prev_hex, details)
            except LineError as exc:
                raise _Broken(Problem(name, no, seq, str(exc))) from None
            if wanted and seq in wanted:
                seg.found[seq] = prev.hex()
            started = True
            last_seq, last_kind, last_line = seq, kind, data
            records += 1
    except (OSError, ZstdError) as exc:  # a damaged compressed frame, an unreadable file
        raise _Broken(Problem(name, no + 1, None, f"segment unreadable after line {no}: "
                                                  f"{type(exc).__name__}: {exc} (file damaged or edited)")) from None
    finally:
        seg.records = records
    if started:
        # a torn last line is not a record: the last complete one stands
        seg.last = _Edge(last_seq, prev.hex(), last_kind, _ts(_parse(last_line)), no - 1 if torn else no, 0)


def _next(seq: int, last_seq: int, last_kind: str) -> None:
    if seq != last_seq + 1:
        what = ("seq jumps: records deleted or reordered" if seq > last_seq + 1
                else "seq goes back: records reordered or duplicated")
        raise LineError(f"{what} (expected seq {last_seq + 1})")
    if last_kind == SEGMENT_END:
        raise LineError("record after segment_end in the same file")


def _details(rec: dict[str, object]) -> dict[str, object]:
    details = rec.get("details")
    return details if isinstance(details, dict) else {}


def _parse(data: bytes) -> dict[str, object]:
    try:
        rec = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LineError("not a JSON record (line damaged or inserted)") from None
    if type(rec) is not dict:
        raise LineError("not a JSON object")
    return rec


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
           verifier: Verifier | None, plans: set[bytes], last_kind: str, first: bool, v: int) -> None:
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
        sql, template, digest = details.get("sql"), details.get("template"), details.get("digest")
        if isinstance(template, list) and len(template) > 1 and all(isinstance(t, str) for t in template):
            if sql is not None or digest != template_digest(template):
                raise LineError("plan record's digest does not match its template")
        elif not isinstance(sql, str) or digest != plan_digest(sql):
            raise LineError("plan record's digest does not match its statement")
        plans.add(str(digest).encode())
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
    live = bool(sources) and sources[-1].writer_alive()
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
