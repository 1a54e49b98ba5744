"""Keyring backup and restore: the wrapped DEKs and their metadata, never a plaintext key.

A backup is one JSON document (written 0600)::

    {"format": "tenantgate-keyring-backup/1", "created_at": "ISO-8601",
     "kek_ids": ["kek:..."], "keys": [<the key file's entries: wrapped DEKs, base64>],
     "sha256": "<hex of the canonical JSON of keys>"}

Losing the key table (or key file) is then recoverable with the KEK: ``restore_keys`` puts
missing records back, after proving that every live one unwraps under the configured KEK.
Tombstones (crypto-shredded versions) are restored as tombstones. A backup that would bring
back a version the store records as shredded is refused, naming each one, unless forced.
The whole restore is checked before anything is written.

>>> digest([])[:12]
'4f53cda18c2b'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import KekError, KeyringError
from .private_file import read_private_json, write_private_json
from .provider import KekProvider
from .store import KeyRecord, KeyStore
from .store_file import _entry, _record  # the key file's entry format is the backup's too

__all__ = ["FORMAT", "RestoreReport", "digest", "key_names", "read_backup", "restore_keys", "write_backup"]

FORMAT = "tenantgate-keyring-backup/1"


def digest(entries: list[dict[str, Any]]) -> str:
    """SHA-256 of the entries' canonical JSON: a damaged or edited backup is refused."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def backup_document(records: list[KeyRecord]) -> dict[str, Any]:
    entries = [_entry(r) for r in sorted(records, key=lambda r: (r.tenant, r.version))]
    return {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "kek_ids": sorted({r.kek_id for r in records if not r.destroyed}),
        "keys": entries,
        "sha256": digest(entries),
    }


async def write_backup(store: KeyStore, path: Path) -> dict[str, Any]:
    """Write every record of ``store`` to ``path`` (atomically, mode 0600); the document written."""
    doc = backup_document(await store.list_all())
    write_private_json(path, doc)
    return doc


def read_backup(path: Path) -> list[KeyRecord]:
    """The records of a backup file; KeyringError when it is not one or does not match its digest."""
    doc = read_private_json(path, FORMAT, "keyring backup", KeyringError)
    entries = doc.get("keys")
    if not isinstance(entries, list) or digest(entries) != doc.get("sha256"):
        raise KeyringError(f"{path}: keyring backup damaged or edited (sha256 does not match its keys)")
    try:
        return [_record(e) for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyringError(f"{path}: malformed key entry in the backup ({exc})") from None


@dataclass
class RestoreReport:
    restored: list[tuple[str, int]] = field(default_factory=list)  # live versions put back
    tombstones: list[tuple[str, int]] = field(default_factory=list)  # shredded versions recorded again
    kept: list[tuple[str, int]] = field(default_factory=list)  # already in the store: left as they are
    resurrected: list[tuple[str, int]] = field(default_factory=list)  # shredded in the store, forced back


def key_names(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{t} v{v}" for t, v in pairs)


async def restore_keys(store: KeyStore, kek: KekProvider, records: list[KeyRecord], *, force: bool) -> RestoreReport:
    """Put the backup's records that the store lacks back into it; nothing is written on a refusal."""
    current = {(r.tenant, r.version): r for r in await store.list_all()}
    report = RestoreReport()
    for r in records:
        if r.destroyed or r.wrapped is None:
            continue
        try:
            kek.unwrap(r.wrapped)  # proves the KEK; the DEK itself is dropped at once
        except KekError as exc:
            raise KekError(
                f"{r.tenant} v{r.version} (wrapped under {r.kek_id}) does not unwrap with the configured KEK "
                f"{kek.key_id}: {exc}; nothing restored"
            ) from None
    for r in records:
        key = (r.tenant, r.version)
        have = current.get(key)
        if have is None:
            (report.tombstones if r.destroyed else report.restored).append(key)
        elif have.destroyed and not r.destroyed:
            report.resurrected.append(key)
        else:
            report.kept.append(key)
    if report.resurrected and not force:
        raise KeyringError(
            f"the backup would resurrect crypto-shredded keys ({key_names(report.resurrected)}): the store records "
            "them as destroyed; nothing restored (--force restores them anyway)"
        )
    by_key = {(r.tenant, r.version): r for r in records}
    for key in report.restored + report.tombstones:
        await store.insert(by_key[key])
    for key in report.resurrected:
        await store.resurrect(by_key[key])
    return report
