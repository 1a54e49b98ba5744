"""The Keyring: per-tenant DEKs, cached in memory, and the hot-path encrypt/decrypt.

The proxy awaits :meth:`Keyring.ensure_loaded` for a tenant (cheap while the
cache is fresh), then calls the synchronous :meth:`Keyring.encrypt` and
:meth:`Keyring.decrypt` per field. Cached keys expire after ``cache_ttl``
seconds; an expired tenant fails closed (:class:`KeysNotLoadedError` /
``DecryptError(reason="not_loaded")``) until reloaded, which bounds how long a
key destroyed or rotated by another process stays usable here.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import DecryptError, KekError, KeysNotLoadedError, ShreddedError
from .format import DataKey, Mode, decrypt_value, encrypt_value, parse_header
from .primitives import KEY_SIZE, random_bytes
from .provider import KekProvider
from .store import KeyRecord, KeyStore

EventCallback = Callable[..., None]
"""``on_event(kind: str, **fields)``; fields name tenants, versions and KEK ids only."""


@dataclass(slots=True)
class _TenantKeys:
    loaded_at: float
    keys: dict[int, DataKey] = field(default_factory=dict)
    destroyed: frozenset[int] = frozenset()
    current: DataKey | None = None


class Keyring:
    def __init__(
        self,
        kek: KekProvider,
        store: KeyStore,
        *,
        cache_ttl: float = 300.0,
        on_event: EventCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be positive")
        self._kek = kek
        self.store = store
        self.cache_ttl = cache_ttl
        self._on_event = on_event
        self._clock = clock
        self._cache: dict[str, _TenantKeys] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __repr__(self) -> str:
        return f"Keyring(kek={self._kek.key_id!r}, store={self.store!r}, tenants_cached={len(self._cache)})"

    @property
    def kek_id(self) -> str:
        return self._kek.key_id

    def _event(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, **fields)

    # -- loading ---------------------------------------------------------------------------

    def is_loaded(self, tenant: str) -> bool:
        entry = self._cache.get(tenant)
        return entry is not None and self._clock() - entry.loaded_at < self.cache_ttl

    def forget(self, tenant: str) -> None:
        """Drop a tenant's keys from memory (they reload on the next ensure_loaded)."""
        self._cache.pop(tenant, None)

    async def ensure_loaded(self, tenant: str, *, create: bool = True, force: bool = False) -> None:
        """Load (or, with ``create``, make version 1 of) the tenant's DEKs unless fresh in cache."""
        if not force and self.is_loaded(tenant):
            return
        async with self._locks[tenant]:
            if not force and self.is_loaded(tenant):
                return
            records = await self.store.load(tenant)
            if not records and create:
                if await self._add_version(tenant, 1):
                    self._event("key.created", tenant=tenant, version=1, kek_id=self._kek.key_id)
                records = await self.store.load(tenant)
            self._cache[tenant] = self._build(records)

    def _build(self, records: list[KeyRecord]) -> _TenantKeys:
        entry = _TenantKeys(loaded_at=self._clock())
        destroyed = set()
        for r in records:
            if r.destroyed or r.wrapped is None:
                destroyed.add(r.version)
                continue
            try:
                dek = self._kek.unwrap(r.wrapped)
            except KekError as exc:
                raise KekError(
                    f"DEK {r.tenant} v{r.version} (wrapped under {r.kek_id}) cannot be unwrapped "
                    f"with the configured KEK {self._kek.key_id}: {exc}"
                ) from None
            entry.keys[r.version] = DataKey(r.version, dek)
        entry.destroyed = frozenset(destroyed)
        if entry.keys:
            entry.current = entry.keys[max(entry.keys)]
        return entry

    async def _add_version(self, tenant: str, version: int) -> bool:
        wrapped = self._kek.wrap(random_bytes(KEY_SIZE))
        record = KeyRecord(tenant, version, wrapped, self._kek.key_id, datetime.now(UTC))
        return await self.store.insert(record)

    # -- hot path --------------------------------------------------------------------------

    def _fresh(self, tenant: str) -> _TenantKeys | None:
        entry = self._cache.get(tenant)
        if entry is None or self._clock() - entry.loaded_at >= self.cache_ttl:
            return None
        return entry

    def _current_key(self, tenant: str) -> DataKey:
        entry = self._fresh(tenant)
        if entry is None:
            raise KeysNotLoadedError(f"keys of tenant {tenant!r} are not loaded (or expired); call ensure_loaded")
        if entry.current is None:
            if entry.destroyed:
                raise ShreddedError(f"keys of tenant {tenant!r} are destroyed (crypto-shredded); rotate to start anew")
            raise KeysNotLoadedError(f"tenant {tenant!r} has no keys")
        return entry.current

    def current_version(self, tenant: str) -> int:
        """The DEK version new writes of ``tenant`` use."""
        return self._current_key(tenant).version

    def encrypt(self, tenant: str, table: str, column: str, mode: Mode | str, plaintext: bytes) -> bytes:
        """Encrypt canonical plaintext bytes for one field under the tenant's newest DEK."""
        return encrypt_value(self._current_key(tenant), Mode(mode), tenant, table, column, plaintext)

    def decrypt(self, tenant: str, table: str, column: str, ciphertext: bytes) -> bytes:
        """Open one field; raises :class:`DecryptError` (never returns garbage)."""
        entry = self._fresh(tenant)
        if entry is None:
            raise DecryptError(f"keys of tenant {tenant!r} are not loaded (or expired)", "not_loaded")
        _, version = parse_header(ciphertext)
        key = entry.keys.get(version)
        if key is None:
            if version in entry.destroyed or (entry.current is None and entry.destroyed):
                raise DecryptError(
                    f"key version {version} of tenant {tenant!r} destroyed (crypto-shredded)", "destroyed"
                )
            raise DecryptError(f"unknown key version {version} for tenant {tenant!r}", "unknown_version")
        return decrypt_value(key, tenant, table, column, ciphertext)

    # -- management ------------------------------------------------------------------------

    async def list_keys(self) -> list[KeyRecord]:
        return await self.store.list_all()

    async def rotate(self, tenant: str) -> int:
        """Add a new DEK version for new writes; older versions keep decrypting."""
        async with self._locks[tenant]:
            records = await self.store.load(tenant)
            version = max((r.version for r in records), default=0) + 1
            if not await self._add_version(tenant, version):
                raise KekError(f"tenant {tenant!r}: version {version} was created concurrently; retry the rotation")
            self._cache[tenant] = self._build(await self.store.load(tenant))
        self._event("key.rotated", tenant=tenant, version=version, kek_id=self._kek.key_id)
        return version

    async def rewrap(self, new_kek: KekProvider) -> int:
        """Re-wrap every live DEK under ``new_kek`` (data untouched); return how many changed.

        All-or-nothing in the store; rerunning after a crash skips DEKs already
        under the new KEK. Afterwards this Keyring uses ``new_kek``.
        """
        updates = []
        for r in await self.store.list_all():
            if r.destroyed or r.wrapped is None:
                continue
            if r.kek_id == new_kek.key_id:
                new_kek.unwrap(r.wrapped)  # proves the record really is under the new KEK
                continue
            try:
                dek = self._kek.unwrap(r.wrapped)
            except KekError as exc:
                raise KekError(f"DEK {r.tenant} v{r.version} (wrapped under {r.kek_id}): {exc}") from None
            updates.append(KeyRecord(r.tenant, r.version, new_kek.wrap(dek), new_kek.key_id, r.created_at))
        if updates:
            await self.store.update_wrapped(updates)
        old = self._kek.key_id
        self._kek = new_kek
        self._event("key.rewrapped", old_kek_id=old, new_kek_id=new_kek.key_id, count=len(updates))
        return len(updates)

    async def shred(self, tenant: str, *, confirm: str) -> list[int]:
        """Destroy every DEK of ``tenant`` (crypto-shredding); ``confirm`` must repeat the tenant.

        Wrapped material is deleted; tombstones with ``destroyed_at`` remain. Other
        processes lose the keys when their cache expires (``cache_ttl``).
        """
        if confirm != tenant:
            raise ValueError("shred needs confirm=<the tenant name>")
        async with self._locks[tenant]:
            versions = await self.store.destroy(tenant, datetime.now(UTC))
            self._cache[tenant] = self._build(await self.store.load(tenant))
        if versions:
            self._event("key.shredded", tenant=tenant, versions=versions)
        return versions

    async def close(self) -> None:
        self._cache.clear()
        await self.store.close()
