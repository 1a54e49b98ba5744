"""The `[audit]` configuration section, parsed from the raw TOML dict.

>>> s = parse_audit_settings({"audit": {"key": "env:TG_AUDIT_KEY"}}, source="tg.toml")
>>> (s.sink, s.durability, s.on_failure, s.log_parameters, s.checkpoint_every)
('file', 'batched', 'refuse', 'none', 1000)
>>> try:
...     parse_audit_settings({"audit": {"key": "env:K", "durability": "eventual"}}, source="tg.toml")
... except AuditConfigError as exc:
...     print(exc)
tg.toml: [audit] durability: must be one of 'strict', 'batched'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import AuditConfigError

_KNOWN = frozenset({
    "enabled", "sink", "path", "dsn", "dsn_env", "table", "key", "signing_key", "checkpoint_every",
    "durability", "flush_interval_ms", "rotate_bytes", "rotate_seconds", "on_failure", "log_parameters",
    "queue_max", "format", "compress", "retention",
})
_RETENTION_KEYS = frozenset({"hot_days", "archive_days", "archive", "archive_dsn", "archive_dsn_env",
                             "archive_table"})


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """`[audit.retention]`: rotated segments stay `hot_days` in the log directory, are shipped to
    `archive` (a directory, ideally on another volume) or to the table `archive_table` of the
    PostgreSQL database at `archive_dsn` (then `archive` is None), and kept there `archive_days`
    (0: forever). A hot segment is deleted only once its archived copy verified (audit/retention.py)."""

    archive: Path | None
    hot_days: int = 90
    archive_days: int = 365
    dsn: str | None = None
    table: str = "tenantgate_audit_archive"

    def __repr__(self) -> str:  # the DSN may embed a password
        where = str(self.archive) if self.archive is not None else f"postgres table {self.table}"
        return f"RetentionSettings({where!r}, hot_days={self.hot_days}, archive_days={self.archive_days})"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Validated `[audit]` settings (paths already resolved against the config file's directory)."""

    key: str
    enabled: bool = True
    sink: str = "file"
    path: Path = Path("audit/tenantgate.jsonl")
    dsn: str | None = None
    table: str = "tenantgate_audit"
    signing_key: str | None = None
    checkpoint_every: int = 1000
    durability: str = "batched"
    flush_interval_ms: int = 50
    rotate_bytes: int = 104_857_600
    rotate_seconds: int = 86_400
    on_failure: str = "refuse"
    log_parameters: str = "none"
    queue_max: int = 100_000
    format: int = 2  # record format written (1: the previous release's, still verified)
    compress: str = "zstd"  # rotated segments: "zstd" or "none"
    retention: RetentionSettings | None = None

    def __repr__(self) -> str:
        # The DSN may embed a password: never print it.
        return (f"AuditSettings(sink={self.sink!r}, path={str(self.path)!r}, table={self.table!r}, "
                f"durability={self.durability!r}, on_failure={self.on_failure!r})")


def parse_audit_settings(raw: Mapping[str, object], *, source: str,
                         base_dir: Path | None = None) -> AuditSettings:
    """Validate `raw["audit"]` (a `tomllib` result); errors name `source` and the key."""
    section = raw.get("audit")
    if not isinstance(section, Mapping):
        raise AuditConfigError(f"{source}: [audit] section missing or not a table")

    def err(key: str, msg: str) -> AuditConfigError:
        return AuditConfigError(f"{source}: [audit] {key}: {msg}")

    unknown = sorted(set(section) - _KNOWN)
    if unknown:
        raise err(unknown[0], "unknown key")

    def choice(key: str, options: tuple[str, ...], default: str) -> str:
        value = section.get(key, default)
        if value not in options:
            raise err(key, "must be one of " + ", ".join(repr(o) for o in options))
        return str(value)

    def integer(key: str, default: int, minimum: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise err(key, f"must be an integer >= {minimum}")
        return value

    def text(key: str) -> str | None:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise err(key, "must be a non-empty string")
        return value

    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise err("enabled", "must be true or false")
    sink = choice("sink", ("file", "postgres"), "file")
    key = text("key")
    if key is None:
        raise err("key", "required (HMAC key provider, e.g. \"file:/etc/tenantgate/audit.key\")")
    for name in ("key", "signing_key"):
        uri = text(name)
        if uri is not None and not uri.startswith(("file:", "env:")):
            raise err(name, "must be a provider URI \"file:PATH\" or \"env:VAR\"")
    signing_key = text("signing_key")
    if signing_key is not None and signing_key.startswith("file:") and base_dir is not None:
        signing_key = "file:" + str(base_dir / signing_key[5:])
    if key.startswith("file:") and base_dir is not None:
        key = "file:" + str(base_dir / key[5:])

    path = Path(text("path") or "audit/tenantgate.jsonl")
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    dsn = _dsn(section, "dsn", err)
    if sink == "postgres" and dsn is None:
        raise err("dsn", "required when sink = \"postgres\" (or dsn_env)")
    table = text("table") or "tenantgate_audit"
    if not _table_name(table):
        raise err("table", "must be an identifier or schema.identifier")

    retention = None
    raw_retention = section.get("retention")
    if raw_retention is not None:
        if not isinstance(raw_retention, Mapping):
            raise err("retention", "must be a table ([audit.retention])")
        extra = sorted(set(raw_retention) - _RETENTION_KEYS)
        if extra:
            raise err(f"retention.{extra[0]}", "unknown key")
        archive = raw_retention.get("archive")
        archive_dsn = _dsn(raw_retention, "archive_dsn", lambda k, m: err(f"retention.{k}", m))
        archive_path = None
        if archive_dsn is not None and archive is not None:
            raise err("retention.archive", "give either archive (a directory) or archive_dsn, not both")
        if archive_dsn is None:
            if not isinstance(archive, str) or not archive:
                raise err("retention.archive", "required: the directory rotated segments are shipped to "
                                               "(or archive_dsn / archive_dsn_env: a PostgreSQL database)")
            archive_path = Path(archive)
            if base_dir is not None and not archive_path.is_absolute():
                archive_path = base_dir / archive_path
        archive_table = raw_retention.get("archive_table", "tenantgate_audit_archive")
        if not isinstance(archive_table, str) or not _table_name(archive_table):
            raise err("retention.archive_table", "must be an identifier or schema.identifier")
        days = {}
        for name, default in (("hot_days", 90), ("archive_days", 365)):
            value = raw_retention.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise err(f"retention.{name}", "must be an integer >= 0")
            days[name] = value
        if days["archive_days"] and days["archive_days"] < days["hot_days"]:
            raise err("retention.archive_days", "must be 0 (forever) or at least hot_days")
        retention = RetentionSettings(archive_path, days["hot_days"], days["archive_days"], archive_dsn,
                                      archive_table)

    fmt = section.get("format", 2)
    if fmt not in (1, 2) or isinstance(fmt, bool):
        raise err("format", "must be 1 or 2")
    return AuditSettings(
        key=key, enabled=enabled, sink=sink, path=path, dsn=dsn, table=table, signing_key=signing_key,
        checkpoint_every=integer("checkpoint_every", 1000, 0),
        durability=choice("durability", ("strict", "batched"), "batched"),
        flush_interval_ms=integer("flush_interval_ms", 50, 1),
        rotate_bytes=integer("rotate_bytes", 104_857_600, 0),
        rotate_seconds=integer("rotate_seconds", 86_400, 0),
        on_failure=choice("on_failure", ("refuse", "drop"), "refuse"),
        log_parameters=choice("log_parameters", ("none", "hash", "full"), "none"),
        queue_max=integer("queue_max", 100_000, 1),
        format=int(fmt), compress=choice("compress", ("zstd", "none"), "zstd"), retention=retention,
    )


def _dsn(section: Mapping[str, object], key: str, err: Callable[[str, str], AuditConfigError]) -> str | None:
    """`key` (a DSN) or `key`_env (the variable holding it), not both; None when neither is given."""
    dsn, env = section.get(key), section.get(key + "_env")
    for name, value in ((key, dsn), (key + "_env", env)):
        if value is not None and (not isinstance(value, str) or not value):
            raise err(name, "must be a non-empty string")
    if dsn is not None and env is not None:
        raise err(key + "_env", f"give either {key} or {key}_env, not both")
    if env is not None:
        dsn = os.environ.get(str(env))
        if not dsn:
            raise err(key + "_env", f"environment variable {env} is not set")
    return None if dsn is None else str(dsn)


def _table_name(table: str) -> bool:
    return all(part.isidentifier() for part in table.split(".")) and table.count(".") <= 1
