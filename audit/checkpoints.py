"""Exported checkpoints: the signed markers of a log, copied somewhere the proxy cannot rewrite.

File format: JSON Lines, one object per marker record (chain_start, checkpoint, rotate, gap,
chain_end): {"seq", "kind", "ts", "instance", "hash", "sig"}. `verify --checkpoints FILE` checks the
log still holds every exported marker unchanged, which also catches a tail cut exactly at a
chain_end (undetectable from the log alone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import AuditConfigError
from .lean import chain_value
from .reader import LogSource, iter_records
from .record import MARKER_KINDS, canonical


@dataclass(frozen=True, slots=True)
class ExportedMarker:
    seq: int
    hash: str
    sig: str | None
    source: str
    line: int


def export_checkpoints(sources: Sequence[LogSource], out: Path) -> int:
    """Write the markers of `sources` to `out` (replaced atomically); return how many."""
    count = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        for _raw, rec in iter_records(sources):
            if rec is None or rec.get("kind") not in MARKER_KINDS:
                continue
            entry = {k: rec.get(k) for k in ("seq", "kind", "ts", "instance", "sig")}
            entry["hash"] = chain_value(rec)  # format 2: the mac is the chain value (and what is signed)
            fh.write(canonical(entry) + b"\n")
            count += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return count


def load_checkpoints(path: Path) -> list[ExportedMarker]:
    markers: list[ExportedMarker] = []
    with open(path, "rb") as fh:
        for no, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
                markers.append(ExportedMarker(int(entry["seq"]), str(entry["hash"]),
                                              entry.get("sig"), str(path), no))
            except (ValueError, KeyError, TypeError):
                raise AuditConfigError(f"{path}:{no}: not an exported checkpoint entry") from None
    if not markers:
        raise AuditConfigError(f"{path}: no exported checkpoints")
    return markers
