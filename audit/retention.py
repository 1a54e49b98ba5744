"""`[audit.retention]`: ship rotated segments to an archive, verify each copy there, then expire.

The archive is a directory (ideally on another volume) or a table in a PostgreSQL database
(audit/pgarchive.py); both are an `Archive` below. `ship()` (`tenantgate audit ship`, run from
cron/a systemd timer or by hand):

1. Every closed segment of the log (rotated, compressed once compression is on) is copied to the
   archive: as `NAME.part`, fsynced, renamed to `NAME`, the directory fsynced; or inserted as one
   row in one transaction.
2. The archived copy is read back from the archive and verified on its own (audit/verify.py: MACs,
   chain inside it, signed markers with a public key, ends with its signed segment_end) and
   compared with the hot copy (SHA-256 of the stored lines). Only then is it listed as verified: a
   line in the directory's `MANIFEST.ndjson`, or the row's `verified_at` (with seq range, last
   chain value and time).
3. A hot segment older than `hot_days` (by its last record's time) is deleted only when its
   archived copy is listed AND verifies again now, and matches the hot copy byte for byte.
4. An archived segment older than `archive_days` (0: never) is deleted once no hot copy is left;
   the listing keeps an `expired` entry for it.

A crash at any point loses and duplicates nothing: a `.part` file is dropped and copied again (a
row is all or nothing), a complete copy not yet listed is verified and listed (not copied twice),
a copy that differs from the hot one is reported and never overwritten, and hot files go only
after step 3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import orjson

from .keys import Verifier
from .lean import SEGMENT_END
from .pgarchive import PgArchive
from .reader import ArchivedSegment, FileSource, LogSource, PostgresSource, configured_files, open_sources
from .segments import ZST, fsync_dir, private_copy, rotated_files
from .settings import AuditSettings, RetentionSettings
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


class Archive(Protocol):
    """Where segments are shipped: a directory or a PostgreSQL table."""

    name: str

    def listing(self) -> dict[str, dict[str, object]]:
        """segment -> its entry (with `sha256` once verified, `expired` once expired)."""

    def copy_of(self, name: str) -> LogSource | None:
        """The archived copy (complete, listed or not), None when there is none."""

    def store(self, hot: Path) -> LogSource:
        """Copy `hot` into the archive durably (no partial copy survives a crash)."""

    def listed(self, name: str, entry: dict[str, object], now: datetime) -> None:
        """Record that the copy verified (the entry as `listing` will return it)."""

    def expire(self, name: str, now: datetime) -> None:
        """Delete the archived copy, keeping an `expired` entry."""

    def sources(self) -> list[LogSource]:
        """The archived segments still held, for `audit verify` over hot and archived ones."""


class DirectoryArchive:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = str(directory)

    def listing(self) -> dict[str, dict[str, object]]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _cut_torn_entry(self.directory)
        for part in self.directory.glob("*.part"):
            part.unlink()  # a copy a crash interrupted: copied again
        return read_manifest(self.directory)

    def copy_of(self, name: str) -> LogSource | None:
        target = self.directory / name
        return FileSource(target) if target.exists() else None

    def store(self, hot: Path) -> LogSource:
        part, target = self.directory / (hot.name + ".part"), self.directory / hot.name
        private_copy(hot, part)
        os.replace(part, target)
        fsync_dir(self.directory)
        return FileSource(target)

    def listed(self, name: str, entry: dict[str, object], now: datetime) -> None:
        _append(self.directory, entry)

    def expire(self, name: str, now: datetime) -> None:
        target = self.directory / name
        target.unlink()
        fsync_dir(self.directory)
        _append(self.directory, {"segment": name, "expired": _iso(now)})

    def sources(self) -> list[LogSource]:
        return [FileSource(p) for p in archived_files(self.directory)] if self.directory.is_dir() else []


class TableArchive:
    def __init__(self, table: PgArchive) -> None:
        self.table = table
        self.name = table.name

    def listing(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, row in self.table.entries().items():
            if row["expired_at"] is not None:
                out[name] = {"segment": name, "expired": _iso(row["expired_at"])}  # type: ignore[arg-type]
            elif row["verified_at"] is not None:
                out[name] = {"segment": name, "sha256": row["sha256"], "first_seq": row["first_seq"],
                             "last_seq": row["last_seq"], "last_mac": row["last_mac"], "last_ts": row["last_ts"],
                             "verified_at": _iso(row["verified_at"])}  # type: ignore[arg-type]
        return out

    def copy_of(self, name: str) -> LogSource | None:
        row = self.table.entries().get(name)
        return ArchivedSegment(self.table, name, -1) if row is not None and row["present"] else None

    def store(self, hot: Path) -> LogSource:
        data = hot.read_bytes()
        self.table.put(hot.name, data, _sha256(FileSource(hot)))
        return ArchivedSegment(self.table, hot.name, -1)

    def listed(self, name: str, entry: dict[str, object], now: datetime) -> None:
        self.table.mark_verified(name, entry, now)

    def expire(self, name: str, now: datetime) -> None:
        self.table.expire(name, now)

    def sources(self) -> list[LogSource]:
        return [ArchivedSegment(self.table, name, int(str(e["first_seq"])))
                for name, e in sorted(self.table.entries().items())
                if e["present"] and e["verified_at"] is not None]


def archive_of(retention: RetentionSettings) -> Archive:
    if retention.archive is not None:
        return DirectoryArchive(retention.archive)
    assert retention.dsn is not None
    return TableArchive(PgArchive(retention.dsn, retention.table))


def _sha256(source: LogSource) -> str:
    """SHA-256 of a segment's stored (decompressed) lines."""
    digest = hashlib.sha256()
    for line in source.data():
        digest.update(line)
    return digest.hexdigest()


def _closed_segments(settings: AuditSettings) -> list[Path]:
    """Rotated segments in their final form (a plain one still waiting for compression is skipped)."""
    segments = rotated_files(settings.path)
    return [p for p in segments if settings.compress != "zstd" or p.name.endswith(ZST)]


def _check(source: LogSource, key: bytes, verifier: Verifier | None) -> tuple[str | None, dict[str, object]]:
    """(problem, facts) of one segment verified on its own."""
    seg = verify_segment(source, key, verifier)
    if seg.problem is not None:
        return str(seg.problem), {}
    if seg.torn_line:
        return f"{source.name}: incomplete last line", {}
    if seg.first is None or seg.last is None:
        return f"{source.name}: empty segment", {}
    if seg.last.kind not in (SEGMENT_END, "chain_end") and seg.first.v == 2:
        return f"{source.name}: segment does not end with its signed segment_end marker", {}
    return None, {"first_seq": seg.first.seq, "last_seq": seg.last.seq, "last_mac": seg.last.chain,
                  "last_ts": seg.last.ts}


def ship(settings: AuditSettings, key: bytes, *, verifier: Verifier | None = None,
         now: datetime | None = None) -> ShipReport:
    """Ship, verify, then expire (see the module docstring)."""
    if settings.retention is None:
        raise ValueError("[audit.retention] is not configured")
    now = now or datetime.now(UTC)
    archive = archive_of(settings.retention)
    report = ShipReport()
    manifest = archive.listing()
    for hot in _closed_segments(settings):
        name = hot.name
        copy = archive.copy_of(name)
        if name in manifest and copy is not None:
            continue
        digest = _sha256(FileSource(hot))
        if copy is not None:
            if _sha256(copy) != digest:
                report.problems.append(f"{copy.name}: differs from the hot copy {hot} (left as it is)")
                continue
            listed = report.verified
        else:
            copy = archive.store(hot)
            listed = report.shipped
        problem, facts = _check(copy, key, verifier)
        if problem is not None or _sha256(copy) != digest:
            report.problems.append(f"archived copy {copy.name} does not verify: {problem or 'content differs'}")
            continue
        entry: dict[str, object] = {"segment": name, "sha256": digest, **facts, "verified_at": _iso(now)}
        archive.listed(name, entry, now)
        manifest[name] = entry
        listed.append(name)
    _expire_hot(settings, archive, key, verifier, now, manifest, report)
    _expire_archive(settings, archive, now, manifest, report)
    return report


def _expire_hot(settings: AuditSettings, archive: Archive, key: bytes, verifier: Verifier | None, now: datetime,
                manifest: dict[str, dict[str, object]], report: ShipReport) -> None:
    assert settings.retention is not None
    limit = timedelta(days=settings.retention.hot_days)
    for hot in _closed_segments(settings):
        entry = manifest.get(hot.name)
        if entry is None or "sha256" not in entry or now - _time(str(entry["last_ts"])) < limit:
            continue
        copy = archive.copy_of(hot.name)
        problem, _facts = _check(copy, key, verifier) if copy is not None else (f"{hot.name}: missing", {})
        if problem is not None or copy is None or _sha256(copy) != entry["sha256"] \
                or _sha256(FileSource(hot)) != entry["sha256"]:
            report.problems.append(f"hot {hot} kept: archived copy does not verify now ({problem or 'differs'})")
            continue
        hot.unlink()
        fsync_dir(hot.parent)
        report.deleted_hot.append(hot.name)


def _expire_archive(settings: AuditSettings, archive: Archive, now: datetime,
                    manifest: dict[str, dict[str, object]], report: ShipReport) -> None:
    assert settings.retention is not None
    days = settings.retention.archive_days
    if not days:
        return
    hot_names = {p.name for p in rotated_files(settings.path)}
    for name, entry in sorted(manifest.items()):
        if "sha256" not in entry or name in hot_names or archive.copy_of(name) is None:
            continue
        if now - _time(str(entry["last_ts"])) >= timedelta(days=days):
            archive.expire(name, now)
            report.expired.append(name)


def archived_files(archive: Path) -> Iterable[Path]:
    """The archive directory's segments."""
    return sorted(p for p in archive.iterdir() if p.name != MANIFEST and not p.name.endswith(".part"))


def configured_sources(settings: AuditSettings) -> list[LogSource]:
    """The configured log in chain order: the PostgreSQL sink's table, or the hot files followed by
    the archived ones (a segment shipped and still hot is read from its hot copy). Empty when nothing
    was written yet."""
    if settings.sink == "postgres":
        assert settings.dsn is not None
        return [PostgresSource(settings.dsn, settings.table)]
    hot = open_sources(configured_files(settings.path))
    archived = archive_of(settings.retention).sources() if settings.retention is not None else []
    held = {_segment_name(s).removesuffix(ZST) for s in hot}
    hot += [s for s in archived if _segment_name(s).removesuffix(ZST) not in held]
    return sorted(hot, key=lambda s: (s.first_seq(), s.name))


def _segment_name(source: LogSource) -> str:
    return source.segment if isinstance(source, ArchivedSegment) else Path(source.name).name


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
