"""`audit tail`: print records in a readable one-line form, optionally following the file."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .lean import ts_text
from .segments import open_lines, rotated_files

_SQL_WIDTH = 200


def format_record(rec: dict[str, object]) -> str:
    """One line per record.

    >>> format_record({"ts": "2025-01-01T00:00:00.000001Z", "seq": 7, "kind": "statement",
    ...   "tenant": "acme", "user": "alice", "decision": "allowed", "rows": 3, "duration_ms": 1.5,
    ...   "sql": "SELECT *\\n FROM t"})
    '2025-01-01T00:00:00.000001Z #7 statement acme/alice allowed rows=3 1.500ms SELECT *  FROM t'
    """
    ts = rec.get("ts")
    parts = [ts_text(ts) if isinstance(ts, int) else str(ts), f"#{rec.get('seq')}", str(rec.get("kind"))]
    if rec.get("tenant") is not None or rec.get("user") is not None:
        parts.append(f"{rec.get('tenant') or '-'}/{rec.get('user') or '-'}")
    for name in ("client", "decision", "sqlstate"):
        if rec.get(name) is not None:
            parts.append(str(rec[name]))
    if rec.get("rows") is not None:
        parts.append(f"rows={rec['rows']}")
    duration = rec.get("duration_ms")
    if isinstance(duration, int | float):
        parts.append(f"{duration:.3f}ms")
    if rec.get("reason") is not None:
        parts.append(f"reason={rec['reason']!s}")
    if rec.get("sql") is not None:
        sql = str(rec["sql"]).replace("\n", " ")
        parts.append(sql if len(sql) <= _SQL_WIDTH else sql[:_SQL_WIDTH] + "...")
    elif isinstance(rec.get("details"), dict):
        parts.append(json.dumps(rec["details"], sort_keys=True))
    return " ".join(parts)


def _format_line(line: bytes) -> tuple[str, int | None]:
    try:
        rec = json.loads(line)
    except ValueError:
        return "(unreadable line) " + line.decode("utf-8", "replace").rstrip("\n"), None
    if not isinstance(rec, dict):
        return "(not a record)", None
    seq = rec.get("seq")
    return format_record(rec), seq if isinstance(seq, int) else None


def _first_seq(path: Path) -> int:
    try:
        return int(json.loads(next(open_lines(path), b""))["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _next_file(path: Path, last_seq: int) -> Path:
    """The file that continues after `last_seq`: rotated files may have come and gone meanwhile."""
    for candidate in rotated_files(path):
        if _first_seq(candidate) > last_seq:
            return candidate
    return path


def tail(path: Path, out: TextIO, *, lines: int = 20, follow: bool = False, poll: float = 0.5,
         stop: Callable[[], bool] = lambda: False) -> None:
    """Print the last `lines` records; with `follow`, keep printing new ones (across rotations)."""
    last_seq = -1

    def emit(line: bytes) -> None:
        nonlocal last_seq
        text, seq = _format_line(line)
        out.write(text + "\n")
        if seq is not None:
            last_seq = seq

    fh = open(path, "rb")  # noqa: SIM115 -- replaced on rotation below
    try:
        last = deque(fh, maxlen=lines)
        # A torn last line may still be being written: keep it until its newline arrives.
        pending = last.pop() if last and not last[-1].endswith(b"\n") else b""
        for line in last:
            emit(line)
        out.flush()
        if not follow:
            return
        while not stop():
            chunk = fh.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    emit(pending)
                    out.flush()
                    pending = b""
                continue
            try:
                moved = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                moved = False
            if not moved:
                time.sleep(poll)
                continue
            # The file was complete before the rename became visible: finish it, then continue in
            # whichever file holds the next record.
            for line in fh:
                pending += line
                if pending.endswith(b"\n"):
                    emit(pending)
                    pending = b""
            out.flush()
            fh.close()
            pending = b""
            while True:
                current = _next_file(path, last_seq)
                try:
                    if current == path:
                        fh = open(current, "rb")  # noqa: SIM115
                        break
                    # rotated meanwhile, and complete (perhaps compressed already): printed whole
                    for line in open_lines(current):
                        emit(line)
                    out.flush()
                except FileNotFoundError:  # between the rename and the new file's creation
                    if stop():
                        return
                    time.sleep(poll)
    finally:
        fh.close()
