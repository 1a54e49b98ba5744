"""The `Sink` protocol: where sealed records go (JSON Lines files, a PostgreSQL table, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .record import SealedRecord


@dataclass(frozen=True, slots=True)
class Head:
    """The last durable record of the log: the writer continues the chain from it."""

    seq: int
    hash: str
    kind: str


@dataclass(frozen=True, slots=True)
class OpenResult:
    head: Head | None
    # Bytes of an incomplete last record (a torn write) removed on open; recorded in the chain.
    repaired_bytes: int = 0
    # Set when the current file is new and continues an earlier file: the writer starts it with `rotate`.
    previous_file: str | None = None


class Sink(Protocol):
    """Durable storage for sealed records. One writer per sink (the AuditLog)."""

    name: str

    async def open(self) -> OpenResult:
        """Open (or reopen after a failure) and report where the chain stands on storage."""

    async def write(self, records: Sequence[SealedRecord]) -> None:
        """Store all records in order; return only once they are durable, else raise."""

    def rotation_due(self) -> bool:
        """True when the next batch should start a new file (file sinks)."""

    async def rotate(self) -> str:
        """Close the current unit and start a new one; return the closed unit's name."""

    async def close(self) -> None: ...
