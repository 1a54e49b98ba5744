"""JSON key file store: for deployments without write access to the backend database.

Format (written atomically: temp file + rename, mode 0600; an ``flock`` on
``PATH.lock`` serialises concurrent processes)::

    {"format": "tenantgate-keys/1",
     "keys": [{"tenant": "acme", "version": 1, "wrapped": "<base64>|null",
               "kek_id": "kek:…", "created_at": "ISO-8601", "destroyed_at": null}]}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .errors import KeyStoreError
from .store import KeyRecord

FORMAT = "tenantgate-keys/1"
T = TypeVar("T")


class FileKeyStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"{lock_path}: cannot open lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[KeyRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"{self.path}: key file missing; run `tenantgate keys init`") from None
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read key file: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise KeyStoreError(f"{self.path}: format: expected {FORMAT!r}")
            return [_record(entry) for entry in doc["keys"]]
        except KeyStoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise KeyStoreError(f"{self.path}: not a valid tenantgate key file") from None

    def _write(self, records: list[KeyRecord]) -> None:
        records = sorted(records, key=lambda r: (r.tenant, r.version))
        doc = {"format": FORMAT, "keys": [_entry(r) for r in records]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _update(self, change: Callable[[list[KeyRecord]], T]) -> T:
        with self._locked():
            records = self._read()
            result = change(records)
            self._write(records)
            return result

    async def initialize(self) -> None:
        def run() -> None:
            with self._locked():
                if not self.path.exists():
                    self._write([])
                else:
                    self._read()

        await asyncio.to_thread(run)

    async def load(self, tenant: str) -> list[KeyRecord]:
        records = await asyncio.to_thread(self._read)
        return sorted((r for r in records if r.tenant == tenant), key=lambda r: r.version)

    async def list_all(self) -> list[KeyRecord]:
        records = await asyncio.to_thread(self._read)
        return sorted(records, key=lambda r: (r.tenant, r.version))

    async def insert(self, record: KeyRecord) -> bool:
        def change(records: list[KeyRecord]) -> bool:
            if any(r.tenant == record.tenant and r.version == record.version for r in records):
                return False
            records.append(record)
            return True

        return await asyncio.to_thread(self._update, change)

    async def update_wrapped(self, updates: Sequence[KeyRecord]) -> None:
        wanted = {(u.tenant, u.version): u for u in updates}

        def change(records: list[KeyRecord]) -> None:
            for i, r in enumerate(records):
                u = wanted.pop((r.tenant, r.version), None)
                if u is None:
                    continue
                if r.destroyed:
                    raise KeyStoreError(f"{self.path}: {r.tenant} v{r.version} was destroyed meanwhile")
                records[i] = KeyRecord(r.tenant, r.version, u.wrapped, u.kek_id, r.created_at)
            if wanted:
                tenant, version = next(iter(wanted))
                raise KeyStoreError(f"{self.path}: {tenant} v{version} not found")

        await asyncio.to_thread(self._update, change)

    async def destroy(self, tenant: str, when: datetime) -> list[int]:
        def change(records: list[KeyRecord]) -> list[int]:
            destroyed = []
            for i, r in enumerate(records):
                if r.tenant == tenant and not r.destroyed:
                    records[i] = KeyRecord(r.tenant, r.version, None, r.kek_id, r.created_at, when)
                    destroyed.append(r.version)
            return sorted(destroyed)

        return await asyncio.to_thread(self._update, change)

    async def resurrect(self, record: KeyRecord) -> None:
        def change(records: list[KeyRecord]) -> None:
            for i, r in enumerate(records):
                if (r.tenant, r.version) == (record.tenant, record.version) and r.destroyed:
                    records[i] = record

        await asyncio.to_thread(self._update, change)

    async def close(self) -> None:
        return None


def _entry(r: KeyRecord) -> dict[str, Any]:
    return {
        "tenant": r.tenant,
        "version": r.version,
        "wrapped": base64.b64encode(r.wrapped).decode() if r.wrapped is not None else None,
        "kek_id": r.kek_id,
        "created_at": r.created_at.isoformat(),
        "destroyed_at": r.destroyed_at.isoformat() if r.destroyed_at else None,
    }


def _record(e: dict[str, Any]) -> KeyRecord:
    if not isinstance(e["tenant"], str) or type(e["version"]) is not int or not isinstance(e["kek_id"], str):
        raise TypeError("bad key entry")
    return KeyRecord(
        tenant=e["tenant"],
        version=e["version"],
        wrapped=base64.b64decode(e["wrapped"], validate=True) if e["wrapped"] is not None else None,
        kek_id=e["kek_id"],
        created_at=datetime.fromisoformat(e["created_at"]),
        destroyed_at=datetime.fromisoformat(e["destroyed_at"]) if e["destroyed_at"] else None,
    )
