"""JSON Lines file sink with size/time rotation, fsync and torn-tail repair.

The active file is `path`; rotation renames it to `<stem>.<first seq, 12 digits><suffix>`
(e.g. tenantgate.000000000001.jsonl) and starts a new `path` whose first record is a `rotate`
record naming the previous file and its last hash (the chain simply continues). A `<path>.lock`
file (flock) guarantees one writer per log. All blocking I/O runs in one dedicated thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import AuditUnavailable
from .lean import chain_value, ts_us
from .record import SealedRecord
from .segments import ZST, compress_segment, fsync_dir, open_lines, pending_compression, rotated_files
from .sink import Head, OpenResult

log = logging.getLogger("tenantgate.audit")


def _read_last_line(fd: int, size: int) -> tuple[bytes, int]:
    """Return (last complete line, bytes after it that form an incomplete line)."""
    chunk = 65536
    end = size
    buf = b""
    while end > 0:
        start = max(0, end - chunk)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        last_nl = buf.rfind(b"\n")
        if last_nl >= 0:
            prev_nl = buf.rfind(b"\n", 0, last_nl)
            if prev_nl >= 0 or end == 0:
                return buf[prev_nl + 1:last_nl + 1], len(buf) - last_nl - 1
    return b"", len(buf)


def _last_line_of(path: Path) -> bytes:
    if path.name.endswith(ZST):
        return deque(open_lines(path), maxlen=1)[0]  # compressed: streamed once (only after a crash)
    with open(path, "rb") as fh:
        return _read_last_line(fh.fileno(), os.fstat(fh.fileno()).st_size)[0]


def _head_of(line: bytes, where: Path) -> Head:
    try:
        rec = json.loads(line)
        return Head(int(rec["seq"]), chain_value(rec), str(rec["kind"]))
    except (ValueError, KeyError, TypeError):
        raise AuditUnavailable(f"{where}: last record is unreadable; run `tenantgate audit verify` "
                               "and move the damaged file away") from None


def _compress_quietly(plain: Path) -> None:
    """A failed compression leaves the plain segment (still complete and verifiable); retried on open."""
    try:
        compress_segment(plain)
    except OSError as exc:
        log.warning("audit segment %s not compressed: %s", plain, exc)


class FileSink:
    """Append-only JSON Lines sink (see module docstring)."""

    def __init__(self, path: Path, *, rotate_bytes: int = 0, rotate_seconds: int = 0, compress: bool = False) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tg-audit-file")
        # Compression has its own thread: writes never wait for it.
        self._compressor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tg-audit-zstd") if compress else None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self._first_seq: int | None = None
        self._first_time: float | None = None

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> OpenResult:
        result: OpenResult = await self._run(self._open)
        if self._compressor is not None:
            for plain in pending_compression(self.path):
                self._compressor.submit(_compress_quietly, plain)
        return result

    async def write(self, records: Sequence[SealedRecord]) -> None:
        await self._run(self._write, records)

    async def rotate(self) -> str:
        name: str = await self._run(self._rotate)
        if self._compressor is not None:
            self._compressor.submit(_compress_quietly, self.path.with_name(name))
        return name

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
        if self._compressor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._compressor.shutdown, True)

    def rotation_due(self) -> bool:
        if self._size == 0:
            return False
        if self._rotate_bytes and self._size >= self._rotate_bytes:
            return True
        return bool(self._rotate_seconds and self._first_time is not None
                    and time.time() - self._first_time >= self._rotate_seconds)

    # -- blocking parts, run in the sink's thread --

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditUnavailable(f"{self.path}: audit log is in use by another process") from None
        self._lock_fd = fd

    def _open(self) -> OpenResult:
        self._close_fd()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock()
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditUnavailable(f"{self.path}: cannot open audit log: {exc.strerror}") from exc
        try:
            if not existed:
                fsync_dir(self.path.parent)
            size = os.fstat(fd).st_size
            repaired = 0
            previous_file = None
            self._first_seq = self._first_time = None
            if size:
                last, repaired = _read_last_line(fd, size)
                if repaired:
                    # An incomplete line is a write that never finished (crash): it was never acknowledged.
                    size -= repaired
                    os.ftruncate(fd, size)
                    os.fsync(fd)
            if size:
                head: Head | None = _head_of(last, self.path)
                with open(self.path, "rb") as fh:
                    first = json.loads(fh.readline())
                self._first_seq = int(first["seq"])
                self._first_time = ts_us(first["ts"]) / 1e6
            else:
                older = rotated_files(self.path)
                head = None
                if older:
                    head = _head_of(_last_line_of(older[-1]), older[-1])
                    previous_file = older[-1].name
        except OSError as exc:
            os.close(fd)
            raise AuditUnavailable(f"{self.path}: cannot read audit log: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size = fd, size
        return OpenResult(head, repaired, previous_file)

    def _write(self, records: Sequence[SealedRecord]) -> None:
        if self._fd is None:
            raise AuditUnavailable(f"{self.path}: audit log is not open")
        data = b"".join(r.line for r in records)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fdatasync(self._fd)
        except OSError as exc:
            # Leave no partial line behind if we can; either way the writer reopens (and repairs) later.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            self._close_fd()
            raise AuditUnavailable(f"{self.path}: cannot write audit log: {exc.strerror}") from exc
        if self._first_seq is None and records:
            self._first_seq, self._first_time = records[0].seq, time.time()
        self._size += len(data)

    def _rotate(self) -> str:
        if self._fd is None or self._first_seq is None:
            raise AuditUnavailable(f"{self.path}: audit log is not open")
        target = self.path.with_name(f"{self.path.stem}.{self._first_seq:012d}{self.path.suffix}")
        try:
            if target.exists() or target.with_name(target.name + ZST).exists():
                raise AuditUnavailable(f"{target}: rotated file already exists")
            os.rename(self.path, target)
            self._close_fd()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self._close_fd()
            raise AuditUnavailable(f"{self.path}: cannot rotate audit log: {exc.strerror}") from exc
        self._fd, self._size, self._first_seq, self._first_time = fd, 0, None, None
        return target.name

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _close(self) -> None:
        self._close_fd()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
