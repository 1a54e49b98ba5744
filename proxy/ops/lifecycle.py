"""What the tenant lifecycle tools share: where a tenant's rows live, its keys, signing, admin steps.

``tenant create|export|restore|delete`` and their offline verifiers use these; ``tenant move``
keeps its own module (move.py) and lends its connection and admin helpers here.

Signed documents (export manifests, deletion certificates) are canonical JSON (sorted keys, no
spaces); the signature is the audit signing key's Ed25519 signature of the document's SHA-256,
so `tenantgate audit`'s public key (``audit keygen --ed25519 PATH`` writes PATH.pub) checks them.

>>> canonical({"b": 1, "a": [1, "x"]})
b'{"a":[1,"x"],"b":1}'
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

from tenantgate.audit.errors import AuditKeyError
from tenantgate.audit.keys import Signer, Verifier, load_public_key, load_signing_key
from tenantgate.config import Config, ConfigError, load_config
from tenantgate.keyring.errors import ShreddedError
from tenantgate.keyring.kek import provider_from_uri
from tenantgate.keyring.keyring import Keyring
from tenantgate.keyring.settings import backend_dsn, read_toml
from tenantgate.keyring.store import KeyStore
from tenantgate.keyring.store_db import DatabaseKeyStore
from tenantgate.keyring.store_file import FileKeyStore

from .admin_client import AdminClient
from .move import MoveError, UsageError, quiesce
from .move import _admin as admin_of
from .move import _command as command
from .move import source_endpoint as tenant_endpoint
from .placement_copy import MovedTable

__all__ = [
    "Checkpoint",
    "LifecycleError",
    "Progress",
    "UsageError",
    "admin_of",
    "canonical",
    "command",
    "current_key",
    "keyring_of",
    "load",
    "no_checkpoint",
    "note",
    "quiesce",
    "scoped_tables",
    "served",
    "sign",
    "signer_of",
    "tenant_endpoint",
    "verifier_of",
    "verify_signature",
]

Progress = Callable[[str], None]
"""Where a step's progress lines go (print, or a test's list)."""
Checkpoint = Callable[[str], None]
"""Called with each step's name as it starts: tests raise from it to fail a run there."""


class LifecycleError(MoveError):
    """A lifecycle step failed (exit 1); the message says what stands."""


def no_checkpoint(step: str) -> None:
    return None


def load(path: pathlib.Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def scoped_tables(cfg: Config, tenant: str, tier: str | None = None, schema: str | None = None) -> list[MovedTable]:
    """The scoped tables where the tenant's rows live (``tier``/``schema``: as if placed there).

    Every tier keeps the tenant column (schema-tier copies are made with LIKE), so source and
    target are the same table and ``column`` filters the tenant's rows everywhere.
    """
    t = cfg.tenants.get(tenant)
    tier = tier or (t.tier if t is not None else "shared")
    schema = schema or (t.schema if t is not None else None)
    out = []
    for table in cfg.scoping.tables:
        shared = (table.schema or "public", table.name)
        name = (schema, table.name) if tier == "schema" and schema else shared
        out.append(MovedTable(name, name, table.column, shared))
    if not out:
        raise UsageError(f"{cfg.source}: [scoping] lists no tables")
    return out


def _store(cfg: Config) -> KeyStore:
    assert cfg.encryption is not None
    if cfg.encryption.store == "file":
        assert cfg.encryption.store_path is not None
        return FileKeyStore(cfg.encryption.store_path)
    return DatabaseKeyStore(backend_dsn(read_toml(cfg.source), cfg.source))


def keyring_of(cfg: Config) -> Keyring | None:
    """The configured keyring (None without [encryption]); KeyringError names what is wrong."""
    if cfg.encryption is None:
        return None
    return Keyring(provider_from_uri(cfg.encryption.kek), _store(cfg), cache_ttl=cfg.encryption.cache_ttl)


async def current_key(keyring: Keyring, tenant: str) -> int:
    """The DEK version the tenant's new writes use, made when it has none (version 1), or a new
    version when all are shredded (an offboarded tenant back again: the old keys stay destroyed)."""
    await keyring.ensure_loaded(tenant, create=True)
    try:
        return keyring.current_version(tenant)
    except ShreddedError:
        return await keyring.rotate(tenant)


def signer_of(cfg: Config) -> Signer:
    key = cfg.audit.signing_key if cfg.audit is not None else None
    if key is None:
        raise UsageError(f"{cfg.source}: audit.signing_key is needed to sign exports and deletion certificates")
    try:
        return load_signing_key(key)
    except AuditKeyError as exc:
        raise UsageError(f"{cfg.source}: audit.signing_key: {exc}") from None


def verifier_of(public_key: str | None, config: str | None) -> Verifier:
    """The public key given, or the configured signing key's own."""
    try:
        if public_key is not None:
            return load_public_key(public_key)
    except AuditKeyError as exc:
        raise UsageError(str(exc)) from None
    if config is None:
        raise UsageError("give --public-key PEM (the audit signing key's .pub) or --config")
    return signer_of(load(pathlib.Path(config))).verifier


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(signer: Signer, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a ``signature`` block over its canonical form (the block itself left out)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    sha = hashlib.sha256(canonical(body)).hexdigest()
    return {
        **body,
        "signature": {"alg": "ed25519", "sha256": sha, "key": signer.verifier.fingerprint, "value": signer.sign(sha)},
    }


def verify_signature(doc: dict[str, Any], verifier: Verifier) -> str:
    """The document's SHA-256 when its signature holds; LifecycleError saying what does not."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        raise LifecycleError("not signed (no signature block)")
    body = {k: v for k, v in doc.items() if k != "signature"}
    sha = hashlib.sha256(canonical(body)).hexdigest()
    if sig.get("sha256") != sha:
        raise LifecycleError("the signed content was changed (its SHA-256 differs from the signed one)")
    if not verifier.verify(sha, sig["value"]):
        raise LifecycleError(f"bad signature: not made by key {verifier.fingerprint}")
    return sha


async def note(
    cfg: Config, admin_user: str | None, event: str, tenant: str, sha256: str, out: Progress
) -> None:
    """Record a lifecycle event in the audit log (``NOTE`` on the admin port) when a proxy runs there."""
    try:
        async with admin_of(cfg, admin_user).session() as admin:
            await command(admin, f"NOTE {event} {tenant} {sha256}")
    except (MoveError, UsageError) as exc:
        out(f"audit: NOTE {event} {tenant} {sha256} not recorded ({exc})")


async def served(admin: AdminClient, tenant: str) -> bool:
    """Whether the running proxy knows the tenant (SHOW TENANTS)."""
    return any(r["tenant"] == tenant for r in await command(admin, "SHOW TENANTS"))
