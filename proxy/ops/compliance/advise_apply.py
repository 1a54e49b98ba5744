"""``advise --emit-toml`` and ``--apply``: proposals as a config fragment, or edits to the config file
itself with tomlkit (comments and layout kept), validated before it is kept, the old file backed up."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table

from tenantgate.config import ConfigError, load_config

from .advise import Proposal

APPLIED = ("scoping", "reference", "encryption", "role", "limit")


def _edit(doc: tomlkit.TOMLDocument, proposals: Sequence[Proposal]) -> list[str]:
    done = []
    for p in proposals:
        if p.category in ("scoping", "reference"):
            scoping = doc.setdefault("scoping", tomlkit.table())
            key = "tables" if p.category == "scoping" else "reference"
            names = scoping.setdefault(key, tomlkit.array())
            if p.subject not in names:
                names.append(p.subject)
                done.append(f"scoping.{key} += {p.subject}")
        elif p.category == "encryption" and "encryption" in doc:
            enc = doc["encryption"]
            assert isinstance(enc, Table)
            columns = enc.setdefault("columns", tomlkit.aot())
            assert isinstance(columns, AoT)
            entry = tomlkit.table()
            entry.update(p.setting)
            columns.append(entry)
            done.append(f"encryption.columns += {p.subject} ({p.setting['mode']})")
        elif p.category == "role":
            doc["users"][p.subject]["role"] = p.setting["role"]  # type: ignore[index]
            done.append(f"users.{p.subject}.role = readonly")
        elif p.category == "limit":
            doc["tenants"][p.subject]["statements_per_second"] = p.setting["statements_per_second"]  # type: ignore[index]
            done.append(f"tenants.{p.subject}.statements_per_second = {p.setting['statements_per_second']}")
    return done


def emit_toml(proposals: Sequence[Proposal]) -> str:
    """The proposals as a TOML fragment to merge by hand (one comment with the reason per entry)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("tenantgate advise: proposed settings (review before use)"))
    for p in proposals:
        if p.category == "encryption":
            doc.setdefault("encryption", tomlkit.table())
    _edit(doc, [p for p in proposals if p.category in ("scoping", "reference", "encryption")])
    users, tenants = tomlkit.table(), tomlkit.table()
    for p in proposals:
        if p.category == "role":
            users.setdefault(p.subject, tomlkit.table())["role"] = p.setting["role"]
        elif p.category == "limit":
            tenants.setdefault(p.subject, tomlkit.table())["statements_per_second"] = p.setting["statements_per_second"]
    if users:
        doc["users"] = users
    if tenants:
        doc["tenants"] = tenants
    reasons = "\n".join(f"# {p.category} {p.subject}: {p.reason} [{', '.join(p.controls)}]" for p in proposals)
    return tomlkit.dumps(doc) + ("\n" + reasons + "\n" if reasons else "")


def apply(path: Path, proposals: Sequence[Proposal]) -> tuple[list[str], Path]:
    """Edit ``path`` in place; keeps ``path.bak``. Raises ConfigError (file restored) if the result is invalid."""
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    done = _edit(doc, [p for p in proposals if p.category in APPLIED])
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        shutil.copy2(backup, path)
        raise
    return done, backup
