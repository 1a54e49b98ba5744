"""Rewrite a tenant's placement in the config file, keeping the rest of it (comments included).

A `PlacementSpec` is where a tenant's data lives: ``schema`` (its own schema in the shared
database) or ``dedicated`` (its own database, reached with the credentials in
``[tenants.T.backend]``, whose password is only ever referenced: password_env or
password_file). A new file is validated with `load_config` (residency rules
included) before it replaces the old one by an atomic rename.

>>> text = '[tenants.acme]  # the first customer\\ntier = "shared"\\n'
>>> print(with_placement(text, "acme", PlacementSpec("schema", schema="t_acme")), end="")
[tenants.acme]  # the first customer
tier = "schema"
schema = "t_acme"
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import tomlkit
from tomlkit.items import Table

from tenantgate.config import Config, ConfigError, Problem, load_config

__all__ = [
    "PlacementSpec",
    "backup_path",
    "replace_config",
    "rewrite_config",
    "validate_text",
    "with_placement",
    "with_tenant",
    "without_tenant",
]


@dataclass(frozen=True)
class PlacementSpec:
    tier: str  # "shared" | "schema" | "dedicated"
    schema: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None  # absolute
    sslmode: str | None = None
    region: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlacementSpec:
        return cls(**data)

    def backend_table(self) -> dict[str, Any]:
        """The [tenants.T.backend] keys of a dedicated placement, in the order [backend] writes them."""
        keys = ("host", "port", "user", "password_env", "password_file", "database", "sslmode", "region")
        values = self.as_dict()
        return {k: values[k] for k in keys if k in values}


def with_placement(text: str, tenant: str, placement: PlacementSpec) -> str:
    """The config text with ``[tenants.<tenant>]`` switched to ``placement``."""
    doc = tomlkit.parse(text)
    entry = doc["tenants"][tenant]  # type: ignore[index]
    assert isinstance(entry, dict)
    entry["tier"] = placement.tier
    for key in ("schema", "backend"):
        if key in entry:
            del entry[key]
    if placement.tier == "schema":
        entry["schema"] = placement.schema
    elif placement.tier == "dedicated":
        backend = tomlkit.table()
        for key, value in placement.backend_table().items():
            backend[key] = value
        if isinstance(entry, Table):
            entry.append("backend", backend)
        else:  # an inline table stays inline
            entry["backend"] = tomlkit.inline_table()
            entry["backend"].update(placement.backend_table())
    return tomlkit.dumps(doc)


def with_tenant(
    text: str, tenant: str, placement: PlacementSpec, region: str | None, login: tuple[str, str] | None
) -> str:
    """The config text with a new ``[tenants.<tenant>]`` (tier "shared" or ``placement``) and, with
    ``login`` = (user, SCRAM verifier), a ``[users.<user>]`` of that tenant."""
    doc = tomlkit.parse(text)
    for section in ("tenants", "users"):
        if section not in doc:
            doc[section] = tomlkit.table(is_super_table=True)
    entry = tomlkit.table()
    entry["tier"] = "shared"
    if region is not None:
        entry["region"] = region
    doc["tenants"][tenant] = entry  # type: ignore[index]
    if login is not None:
        user = tomlkit.table()
        user["tenant"] = tenant
        user["scram"] = login[1]
        doc["users"][login[0]] = user  # type: ignore[index]
    text = tomlkit.dumps(doc)
    return text if placement.tier == "shared" else with_placement(text, tenant, placement)


def without_tenant(text: str, tenant: str) -> str:
    """The config text without ``[tenants.<tenant>]`` and the users that log in as it."""
    doc = tomlkit.parse(text)
    tenants = doc.get("tenants")
    if isinstance(tenants, dict) and tenant in tenants:
        del tenants[tenant]
    users = doc.get("users")
    if isinstance(users, dict):
        for name in [n for n, u in users.items() if isinstance(u, dict) and u.get("tenant") == tenant]:
            del users[name]
    return tomlkit.dumps(doc)


def _staged(path: pathlib.Path, text: str, suffix: str) -> pathlib.Path:
    """``text`` written next to ``path`` (relative paths in it resolve alike), mode kept, fsynced."""
    staged = path.with_name(f".{path.name}.{suffix}-{os.getpid()}")
    mode = path.stat().st_mode & 0o777
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return staged


def validate_text(path: pathlib.Path, text: str) -> Config:
    """Load ``text`` as if it were the file at ``path``; raises ConfigError naming the problems."""
    staged = _staged(path, text, "check")
    try:
        return _load_as(path, staged)
    finally:
        staged.unlink(missing_ok=True)


def _load_as(path: pathlib.Path, staged: pathlib.Path) -> Config:
    try:
        return load_config(staged)
    except ConfigError as exc:  # report the problems against the real file's name
        raise ConfigError([Problem(str(path), p.key, p.message) for p in exc.problems]) from None


def backup_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")


def rewrite_config(path: pathlib.Path, text: str) -> pathlib.Path:
    """Back the file up beside itself (its mode kept: it may hold passwords), then put ``text`` in
    its place (validated, atomic); the backup's path."""
    backup = base = backup_path(path)
    for n in range(1, 1000):  # two rewrites within one second keep both backups
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, path.stat().st_mode & 0o777)
            break
        except FileExistsError:
            backup = base.with_name(f"{base.name}-{n}")
    else:
        raise FileExistsError(f"{backup}: too many backups within one second")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(path.read_text(encoding="utf-8"))
    replace_config(path, text)
    return backup


def replace_config(path: pathlib.Path, text: str) -> None:
    """Validate ``text`` and atomically put it in place of the file at ``path``."""
    staged = _staged(path, text, "new")
    try:
        _load_as(path, staged)
        os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
