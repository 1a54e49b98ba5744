"""Segment files of a file log: names, zstd compression of rotated segments, reading, liveness.

A log `dir/NAME.jsonl` is the active file plus rotated segments `dir/NAME.<first seq, 12 digits>.jsonl`,
each compressed after rotation to `....jsonl.zst` (one zstd frame of the exact stored lines). The
plain file is removed only after the compressed copy was read back and matched it byte for byte
(SHA-256), so a crash at any point leaves at least one complete copy; leftovers are finished on the
next open. Compressed segments are verified and reported by streaming decompression (no temporary
files). The writer holds an flock on `NAME.jsonl.lock`: `writer_alive` tells a live log from a
closed one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

ZST = ".zst"
_CHUNK = 1 << 20


def lock_path(active: Path) -> Path:
    return active.with_name(active.name + ".lock")


def writer_alive(active: Path) -> bool:
    """True while a writer holds the log's lock (another process, or another open in this one)."""
    try:
        fd = os.open(lock_path(active), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def rotated_files(path: Path) -> list[Path]:
    """Rotated segments of the active file `path`, oldest first (a compressed copy stands in for
    its plain file only once the plain one is gone)."""
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{12})" + re.escape(path.suffix) + "(" + re.escape(ZST) + ")?$")
    if not path.parent.is_dir():
        return []
    found: dict[str, Path] = {}
    for p in path.parent.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(1) not in found or not m.group(2)):
            found[m.group(1)] = p
    return [found[k] for k in sorted(found)]


def open_lines(path: Path, compressed: bool | None = None) -> Iterator[bytes]:
    """The stored lines of a plain or zstd-compressed (by default: named .zst) segment, streamed.
    A plain segment compressed meanwhile (a live log rotates while it is read) is read compressed."""
    if compressed is None and not path.name.endswith(ZST) and not path.exists() and \
            path.with_name(path.name + ZST).exists():
        path = path.with_name(path.name + ZST)
    with open(path, "rb") as raw:
        yield from stream_lines(raw, path.name.endswith(ZST) if compressed is None else compressed)


def stream_lines(raw: BinaryIO, compressed: bool) -> Iterator[bytes]:
    """The lines of a segment's bytes read from `raw` (a file, or an archived copy in memory)."""
    if compressed:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK)
        yield from io.BufferedReader(reader, _CHUNK)  # type: ignore[arg-type]
    else:
        yield from raw


def segment_digest(path: Path, compressed: bool | None = None) -> tuple[str, int]:
    """SHA-256 and size of a segment's stored (decompressed) bytes."""
    digest, size = hashlib.sha256(), 0
    for line in open_lines(path, compressed):
        digest.update(line)
        size += len(line)
    return digest.hexdigest(), size


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_copy(src: Path, dst: Path) -> None:
    """Copy `src` to a new file `dst` (mode 0600: audit logs are private) and fsync it."""
    with open(src, "rb") as fin, open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def compress_segment(plain: Path, level: int = 1) -> Path:
    """Compress a rotated segment to `plain` + ".zst", check the copy, then remove `plain`.

    Level 1: on audit records (repetitive JSON lines) it packs as tightly as 9 (7.5x against 6.9x on
    ``bench audit-volume``'s segments) at 9x the speed (960 against 107 MB/s, 0.4 against 3.9 us a
    record), and that time is the proxy's CPU.
    """
    target = plain.with_name(plain.name + ZST)
    tmp = plain.with_name(plain.name + ZST + ".tmp")
    digest = hashlib.sha256()
    with open(plain, "rb") as src, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
        with zstandard.ZstdCompressor(level=level).stream_writer(dst, closefd=False) as out:
            while block := src.read(_CHUNK):
                digest.update(block)
                out.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    if segment_digest(tmp, compressed=True)[0] != digest.hexdigest():
        tmp.unlink()
        raise OSError(f"{tmp}: compressed copy does not read back as {plain.name}")
    os.replace(tmp, target)
    fsync_dir(plain.parent)
    plain.unlink()
    fsync_dir(plain.parent)
    return target


def pending_compression(active: Path) -> list[Path]:
    """Rotated plain segments still to compress (after a crash or with compression just enabled);
    a half-written .tmp is dropped (its plain file is still there)."""
    for tmp in active.parent.glob(f"{active.stem}.*{active.suffix}{ZST}.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    return [p for p in rotated_files(active) if not p.name.endswith(ZST)]
