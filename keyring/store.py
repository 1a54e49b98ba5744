"""Where wrapped DEKs live: the record type and the async store interface.

Two implementations share :class:`KeyStore`: a table in the backend database
(:class:`~tenantgate.keyring.store_db.DatabaseKeyStore`, the default) and a JSON
key file (:class:`~tenantgate.keyring.store_file.FileKeyStore`). Stores only
ever see wrapped DEKs; a shredded version keeps a tombstone (``wrapped`` None,
``destroyed_at`` set) so its number is never reused and the erasure is on record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyRecord:
    tenant: str
    version: int
    wrapped: bytes | None
    kek_id: str
    created_at: datetime
    destroyed_at: datetime | None = None

    def __repr__(self) -> str:
        state = "destroyed" if self.destroyed_at else "active"
        return f"KeyRecord(tenant={self.tenant!r}, version={self.version}, kek_id={self.kek_id!r}, {state})"

    @property
    def destroyed(self) -> bool:
        return self.destroyed_at is not None


class KeyStore(Protocol):
    async def initialize(self) -> None:
        """Create the table / key file if missing (idempotent)."""

    async def load(self, tenant: str) -> list[KeyRecord]:
        """All versions of one tenant, tombstones included, ascending."""

    async def list_all(self) -> list[KeyRecord]:
        """Every record of every tenant, ordered by tenant and version."""

    async def insert(self, record: KeyRecord) -> bool:
        """Add a version; False if (tenant, version) already exists (a concurrent writer won)."""

    async def update_wrapped(self, records: Sequence[KeyRecord]) -> None:
        """Replace ``wrapped``/``kek_id`` of these live versions, all or nothing."""

    async def destroy(self, tenant: str, when: datetime) -> list[int]:
        """Drop the wrapped material of every live version; return the versions destroyed."""

    async def resurrect(self, record: KeyRecord) -> None:
        """Put a live version back over its tombstone (``keys restore --force`` only)."""

    async def close(self) -> None: ...
