"""The ``[encryption]`` section of tenantgate's TOML, plus what the ``keys`` CLI needs of ``[backend]``.

::

    [encryption]
    kek = "file:/etc/tenantgate/kek.bin"   # env:VAR | pkcs11:token=..;label=..;pin-env=VAR | plug-in URI
    store = "database"                      # database (table tenantgate.keys) | file:/path/keys.json
    cache_ttl = 300                         # seconds DEKs stay cached per process (1..86400)

    [[encryption.columns]]
    table = "customers"                     # [schema.]table as the proxy names it
    column = "ssn"
    mode = "deterministic"                  # deterministic (AES-SIV) | randomized (AES-GCM, default)
    type = "text"                           # text int int4 integer bigint int8 numeric date timestamptz jsonb bytea

Relative ``file:`` paths are resolved against the config file's folder.
Identifiers are folded to lower case unless written quoted (``'"MixedCase"'``);
the folded ``table`` and ``column`` are what the ciphertext's associated data binds.
The tenant column of each table comes from ``[scoping]`` (``column``, or a
table's own ``{name = .., column = ..}``), default ``tenant_id``.
Every problem is reported at once, each as ``<file>: <dotted.key>: <what is wrong>``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from .format import Mode
from .pgtypes import TYPES, PgType
from .quoting import unquote_ident

_IDENT = re.compile(r'[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+"')
_ENCRYPTION_KEYS = frozenset({"kek", "store", "cache_ttl", "columns"})
_COLUMN_KEYS = frozenset({"table", "column", "mode", "type"})
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class SettingsError(ValueError):
    """Every problem found, one ``<file>: <key>: <message>`` per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    table: str
    column: str
    mode: Mode
    type: PgType
    tenant_column: str


@dataclass(frozen=True, slots=True)
class EncryptionSettings:
    kek: str
    store: str
    """``"database"`` or ``"file"``."""
    store_path: Path | None
    cache_ttl: float
    columns: tuple[EncryptedColumn, ...]
    source: Path

    def column(self, table: str, column: str) -> EncryptedColumn | None:
        table, column = fold_name(table), fold_name(column)
        return next((c for c in self.columns if c.table == table and c.column == column), None)


def fold_name(name: str) -> str:
    """Fold a ``[schema.]name`` as PostgreSQL does: unquoted parts to lower case.

    >>> fold_name('Sales."Big Customers"')
    'sales.Big Customers'
    """
    parts = _split_qualified(name)
    if parts is None:
        raise ValueError(f"not a valid [schema.]identifier: {name!r}")
    return ".".join(parts)


def _split_qualified(name: str) -> list[str] | None:
    parts, pos = [], 0
    while True:
        m = _IDENT.match(name, pos)
        if m is None:
            return None
        token = m.group()
        parts.append(unquote_ident(token))
        pos = m.end()
        if pos == len(name):
            return parts if len(parts) <= 2 else None
        if name[pos] != ".":
            return None
        pos += 1


class _Problems:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.source}: {key}: {message}")

    def fatal(self, key: str, message: str) -> NoReturn:
        self.add(key, message)
        raise SettingsError(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise SettingsError(self.items)


def _tenant_columns(raw: Mapping[str, Any], problems: _Problems) -> tuple[str, dict[str, str]]:
    scoping = raw.get("scoping", {})
    if not isinstance(scoping, Mapping):
        problems.add("scoping", "must be a table")
        return "tenant_id", {}
    default = scoping.get("column", "tenant_id")
    if not isinstance(default, str) or _split_qualified(default) is None:
        problems.add("scoping.column", "must be an identifier")
        default = "tenant_id"
    per_table: dict[str, str] = {}
    tables = scoping.get("tables", [])
    for i, entry in enumerate(tables if isinstance(tables, list) else []):
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and isinstance(entry.get("column"), str):
            try:
                per_table[fold_name(entry["name"])] = fold_name(entry["column"])
            except ValueError:
                problems.add(f"scoping.tables[{i}]", "name and column must be identifiers")
    return fold_name(default), per_table


def parse_encryption(raw: Mapping[str, Any], source: str | os.PathLike[str]) -> EncryptionSettings:
    """Validate ``raw["encryption"]`` (the whole TOML document is passed for ``[scoping]``)."""
    src = Path(source)
    problems = _Problems(src)
    enc = raw.get("encryption")
    if not isinstance(enc, Mapping):
        problems.fatal("encryption", "section missing (needs at least kek = ...)")
    for key in sorted(set(enc) - _ENCRYPTION_KEYS):
        problems.add(f"encryption.{key}", f"unknown key (allowed: {', '.join(sorted(_ENCRYPTION_KEYS))})")

    kek = enc.get("kek")
    if not isinstance(kek, str) or not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:.", kek):
        # Never echo the value: a raw key pasted here must not reach a log.
        problems.add("encryption.kek", "required: a KEK URI (file:PATH, env:VAR, pkcs11:..., or a plug-in scheme)")
        kek = ""
    elif kek.startswith("file:") and not os.path.isabs(kek[5:]):
        kek = "file:" + str(src.parent / kek[5:])

    store, store_path = "database", None
    raw_store = enc.get("store", "database")
    if raw_store == "database":
        pass
    elif isinstance(raw_store, str) and raw_store.startswith("file:") and len(raw_store) > 5:
        store, store_path = "file", src.parent / raw_store[5:]
    else:
        problems.add("encryption.store", 'must be "database" or "file:/path/keys.json"')

    ttl = enc.get("cache_ttl", 300)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= 86400:
        problems.add("encryption.cache_ttl", "must be a number of seconds between 1 and 86400")
        ttl = 300

    default_tenant_col, per_table = _tenant_columns(raw, problems)
    columns: list[EncryptedColumn] = []
    raw_columns = enc.get("columns", [])
    if not isinstance(raw_columns, list):
        problems.add("encryption.columns", "must be an array of tables ([[encryption.columns]])")
        raw_columns = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(raw_columns):
        where = f"encryption.columns[{i}]"
        if not isinstance(entry, Mapping):
            problems.add(where, "must be a table with table, column, mode, type")
            continue
        for key in sorted(set(entry) - _COLUMN_KEYS):
            problems.add(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(_COLUMN_KEYS))})")
        before = len(problems.items)
        names = []
        for key, max_parts, what in (("table", 2, "[schema.]table"), ("column", 1, "column")):
            value = entry.get(key)
            parts = _split_qualified(value) if isinstance(value, str) else None
            if parts is None or len(parts) > max_parts:
                problems.add(f"{where}.{key}", f"required: a {what} identifier")
            else:
                names.append(".".join(parts))
        mode = entry.get("mode", "randomized")
        if mode not in ("deterministic", "randomized"):
            problems.add(f"{where}.mode", 'must be "deterministic" or "randomized"')
        type_name = entry.get("type", "text")
        pg_type = TYPES.get(type_name.lower()) if isinstance(type_name, str) else None
        if pg_type is None:
            problems.add(f"{where}.type", f"must be one of {', '.join(TYPES)}")
        if len(problems.items) > before or pg_type is None:
            continue
        table, column = names
        if (table, column) in seen:
            problems.add(where, f"{table}.{column} is listed twice")
            continue
        seen.add((table, column))
        tenant_col = per_table.get(table, default_tenant_col)
        columns.append(EncryptedColumn(table, column, Mode(mode), pg_type, tenant_col))
    problems.raise_if_any()
    return EncryptionSettings(kek, store, store_path, float(ttl), tuple(columns), src)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise SettingsError([f"{p}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{p}: invalid TOML: {exc}"]) from None


def load_encryption(path: str | os.PathLike[str]) -> EncryptionSettings:
    return parse_encryption(read_toml(path), path)


def backend_dsn(raw: Mapping[str, Any], source: str | os.PathLike[str]) -> str:
    """A ``postgresql://`` URL from ``[backend]`` for the keys commands (``database`` is required)."""
    problems = _Problems(Path(source))
    backend = raw.get("backend")
    if not isinstance(backend, Mapping):
        problems.fatal("backend", "section missing (or pass --dsn)")

    def text(key: str, default: str | None = None) -> str | None:
        value = backend.get(key, default)
        if value is not None and not isinstance(value, str):
            problems.add(f"backend.{key}", "must be a string")
            return None
        return value

    host, user, database = text("host", "127.0.0.1"), text("user"), text("database")
    sslmode, sslrootcert = text("sslmode", "prefer"), text("sslrootcert")
    port = backend.get("port", 5432)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.add("backend.port", "must be an integer 1..65535")
    if not user:
        problems.add("backend.user", "required")
    if not database:
        problems.add("backend.database", "required for keys commands (or pass --dsn)")
    if sslmode not in _SSLMODES:
        problems.add("backend.sslmode", f"must be one of {', '.join(_SSLMODES)}")
    password = None
    sources = [k for k in ("password", "password_env", "password_file") if k in backend]
    if len(sources) > 1:
        problems.add("backend", "give at most one of password, password_env, password_file")
    elif sources == ["password"]:
        password = text("password")
    elif sources == ["password_env"]:
        var = text("password_env")
        password = os.environ.get(var) if var else None
        if password is None:
            problems.add("backend.password_env", f"environment variable {var} is not set")
    elif sources == ["password_file"]:
        file = text("password_file")
        if file:
            path = Path(source).parent / file
            try:
                password = path.read_text().removesuffix("\n")
            except OSError as exc:
                problems.add("backend.password_file", f"{path}: cannot read: {exc.strerror}")
    problems.raise_if_any()
    auth = quote(str(user), safe="") + (":" + quote(password, safe="") if password else "")
    query = f"sslmode={sslmode}" + (f"&sslrootcert={quote(sslrootcert)}" if sslrootcert else "")
    netloc = f"[{host}]" if host and ":" in host else str(host)
    return f"postgresql://{auth}@{netloc}:{port}/{quote(str(database), safe='')}?{query}"
