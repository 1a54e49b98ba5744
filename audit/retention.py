"""`[audit.retention]`: ship rotated segments to an archive directory, verify each copy, then expire.

`ship()` (the `tenantgate audit ship` command, run from cron/a systemd timer or by hand):

1. Every closed segment of the log (rotated, compressed once compression is on) is copied to the
   archive directory as `NAME.part`, fsynced, renamed to `NAME`, and the directory fsynced.
2. The archived copy is verified on its own (audit/verify.py: MACs, chain inside it, signed
   markers with a public key, ends with its signed segment_end) and compared with the hot copy
   (SHA-256 of the stored lines). Only then is a line appended to `MANIFEST.jsonl` in the archive
   (segment, sha256, seq range, last chain value, when verified).
3. A hot segment older than `hot_days` (by its last record's time) is deleted only when its
   archived copy is in the manifest AND verifies again now, and matches the hot copy byte for byte.
4. An archived segment older than `archive_days` (0: never) is deleted once no hot copy is left;
   the manifest keeps an `expired` line for it.

A crash at any point loses and duplicates nothing: a `.part` file is dropped and copied again, a
complete copy missing from the manifest is verified and listed (not copied twice), a copy that
differs from the hot one is reported and never overwritten, and hot files go only after step 3.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from .keys import Verifier
from .lean import SEGMENT_END
from .reader import FileSource, LogSource, PostgresSource, configured_files, open_sources
from .segments import ZST, fsync_dir, private_copy, rotated_files, segment_digest
from .settings import AuditSettings
from .verify import verify_segment

MANIFEST = "MANIFEST.ndjson"  # not *.jsonl: the archive directory is also a log source


@dataclass(slots=True)
class ShipReport:
    shipped: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)  # already archived, listed now (after a crash)
    deleted_hot: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"shipped and verified: {name}" for name in self.shipped]
        out += [f"already archived, verified and listed: {name}" for name in self.verified]
        out += [f"hot copy deleted (archived copy verified): {name}" for name in self.deleted_hot]
        out += [f"archived copy expired: {name}" for name in self.expired]
        out += [f"PROBLEM: {p}" for p in self.problems]
        return out or ["nothing to do"]


def read_manifest(archive: Path) -> dict[str, dict[str, object]]:
    """segment name -> its latest manifest entry."""
    entries: dict[str, dict[str, object]] = {}
    with contextlib.suppress(FileNotFoundError), open(archive / MANIFEST, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):  # a torn last line is an entry never completed
                entry = orjson.loads(line)
                entries[str(entry["segment"])] = entry
    return entries


def _cut_torn_entry(archive: Path) -> None:
    """Drop an entry a crash left without its newline (its segment is verified and listed again)."""
    with contextlib.suppress(FileNotFoundError), open(archive / MANIFEST, "r+b") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
            os.fsync(fh.fileno())


def _append(archive: Path, entry: dict[str, object]) -> None:
    with open(archive / MANIFEST, "ab") as fh:
        fh.write(orjson.dumps(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _closed_segments(settings: AuditSettings) -> list[Path]:
    """Rotated segments in their final form (a plain one still waiting for compression is skipped)."""
    segments = rotated_files(settings.path)
    return [p for p in segments if settings.compress != "zstd" or p.name.endswith(ZST)]


def _check(path: Path, key: bytes, verifier: Verifier | None) -> tuple[str | None, dict[str, object]]:
    """(problem, facts) of one segment verified on its own."""
    seg = verify_segment(FileSource(path), key, verifier)
    if seg.problem is not None:
        return str(seg.problem), {}
    if seg.torn_line:
        return f"{path}: incomplete last line", {}
    if seg.first is None or seg.last is None:
        return f"{path}: empty segment", {}
    if seg.last.kind not in (SEGMENT_END, "chain_end") and seg.first.v == 2:
        return f"{path}: segment does not end with its signed segment_end marker", {}
    return None, {"first_seq": seg.first.seq, "last_seq": seg.last.seq, "last_mac": seg.last.chain,
                  "last_ts": seg.last.ts}


def ship(settings: AuditSettings, key: bytes, *, verifier: Verifier | None = None,
         now: datetime | None = None) -> ShipReport:
    """Ship, verify, then expire (see the module docstring)."""
    retention = settings.retention
    if retention is None:
        raise ValueError("[audit.retention] is not configured")
    now = now or datetime.now(UTC)
    archive = retention.archive
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = ShipReport()
    _cut_torn_entry(archive)
    manifest = read_manifest(archive)
    for part in archive.glob("*.part"):
        part.unlink()  # a copy a crash interrupted: copied again below
    for hot in _closed_segments(settings):
        name = hot.name
        target = archive / name
        if name in manifest and target.exists():
            continue
        digest = segment_digest(hot)[0]
        if target.exists():
            if segment_digest(target)[0] != digest:
                report.problems.append(f"{target}: differs from the hot copy {hot} (left as it is)")
                continue
            listed = report.verified
        else:
            part = archive / (name + ".part")
            private_copy(hot, part)
            os.replace(part, target)
            fsync_dir(archive)
            listed = report.shipped
        problem, facts = _check(target, key, verifier)
        if problem is not None or segment_digest(target)[0] != digest:
            report.problems.append(f"archived copy {target} does not verify: {problem or 'content differs'}")
            continue
        entry: dict[str, object] = {"segment": name, "sha256": digest, **facts, "verified_at": _iso(now)}
        _append(archive, entry)
        manifest[name] = entry
        listed.append(name)
    _expire_hot(settings, key, verifier, now, manifest, report)
    _expire_archive(settings, now, manifest, report)
    return report


def _expire_hot(settings: AuditSettings, key: bytes, verifier: Verifier | None, now: datetime,
                manifest: dict[str, dict[str, object]], report: ShipReport) -> None:
    assert settings.retention is not None
    archive, limit = settings.retention.archive, timedelta(days=settings.retention.hot_days)
    for hot in _closed_segments(settings):
        entry = manifest.get(hot.name)
        if entry is None or "sha256" not in entry or now - _time(str(entry["last_ts"])) < limit:
            continue
        target = archive / hot.name
        problem, _facts = _check(target, key, verifier) if target.exists() else (f"{target}: missing", {})
        if problem is not None or segment_digest(target)[0] != entry["sha256"] \
                or segment_digest(hot)[0] != entry["sha256"]:
            report.problems.append(f"hot {hot} kept: archived copy does not verify now ({problem or 'differs'})")
            continue
        hot.unlink()
        fsync_dir(hot.parent)
        report.deleted_hot.append(hot.name)


def _expire_archive(settings: AuditSettings, now: datetime, manifest: dict[str, dict[str, object]],
                    report: ShipReport) -> None:
    assert settings.retention is not None
    days = settings.retention.archive_days
    if not days:
        return
    hot_names = {p.name for p in rotated_files(settings.path)}
    for name, entry in sorted(manifest.items()):
        target = settings.retention.archive / name
        if "sha256" not in entry or name in hot_names or not target.exists():
            continue
        if now - _time(str(entry["last_ts"])) >= timedelta(days=days):
            target.unlink()
            fsync_dir(target.parent)
            _append(settings.retention.archive, {"segment": name, "expired": _iso(now)})
            report.expired.append(name)


def archived_files(archive: Path) -> Iterable[Path]:
    """The archive's segments, for `audit verify` over a mix of hot and archived segments."""
    return sorted(p for p in archive.iterdir() if p.name != MANIFEST and not p.name.endswith(".part"))


def configured_sources(settings: AuditSettings) -> list[LogSource]:
    """The configured log in chain order: the PostgreSQL sink's table, or the hot files followed by
    the archived ones (a segment shipped and still hot is read from its hot copy). Empty when nothing
    was written yet."""
    if settings.sink == "postgres":
        assert settings.dsn is not None
        return [PostgresSource(settings.dsn, settings.table)]
    names = configured_files(settings.path)
    if settings.retention is not None and settings.retention.archive.is_dir():
        names += [str(p) for p in archived_files(settings.retention.archive)]
    return open_sources(names) if names else []


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
