"""Load a tenantgate TOML file into a validated, immutable `Config`.

Longer than most modules on purpose: one loader (_Loader) that checks the sections against each other
(a user's tenant must be one of [tenants], for one) and collects every problem in one pass; the
section types are schema.py, the value parsers values.py.

Every problem in the file is collected and raised together in one `ConfigError`; values of
secret keys (passwords, verifiers, hashes, secret files) never appear in messages.
Relative file paths in the config are resolved against the config file's directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import re
import ssl
import tomllib
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tenantgate.audit.errors import AuditConfigError
from tenantgate.audit.settings import AuditSettings, parse_audit_settings
from tenantgate.keyring.auth.jwt import JwksError, JwkSet, check_algorithm, parse_jwks
from tenantgate.keyring.auth.scram import ScramVerifier, make_verifier, md5_hash
from tenantgate.keyring.settings import EncryptionSettings, SettingsError, parse_encryption

from .compliance import ComplianceSettings, parse_compliance
from .controls import enforce
from .monitoring import MonitoringSettings, parse_monitoring
from .schema import (
    AUTH_METHODS,
    JWT,
    LOG_LEVELS,
    ROLES,
    ROW_LIMIT_ACTIONS,
    SSLMODES,
    TIERS,
    TLS,
    TLS_MODES,
    USER_AUTH_METHODS,
    Admin,
    Backend,
    Cluster,
    Config,
    ConfigError,
    Limits,
    Listen,
    Logging,
    Oidc,
    Problem,
    ScopedTable,
    Scoping,
    Secret,
    Server,
    Tenant,
    User,
)
from .values import NAMEDATALEN, parse_address, parse_host, parse_identifier, parse_qualified_name

__all__ = ["EXTERNAL_SECTIONS", "check_config", "load_config"]

# Top-level sections owned by other modules (audit/settings.py, keyring/settings.py), which
# validate them; here they only have to be tables.
EXTERNAL_SECTIONS = frozenset({"audit", "encryption"})

SECTIONS = frozenset(
    {
        "listen",
        "backend",
        "tls",
        "server",
        "logging",
        "limits",
        "tenants",
        "users",
        "admins",
        "scoping",
        "oidc",
        "cluster",
        "compliance",
        "monitoring",
    }
)
LIMIT_TABLE_KEYS = frozenset(
    {
        "max_client_connections",
        "max_backend_connections",
        "statements_per_second",
        "statement_burst",
        "rate_limit_wait",
        "statement_timeout",
        "max_rows",
        "max_rows_action",
    }
)
BACKEND_KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "password_env",
        "password_file",
        "database",
        "sslmode",
        "sslrootcert",
        "connect_timeout",
        "allow_superuser",
        "region",
        "pool_mode",
        "pool_size",
        "pool_timeout",
    }
)

MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_MESSAGE_SIZE = 1 << 30  # PostgreSQL's MaxAllocSize: no legal message is larger
MIN_SERVER_SECRET = 32

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MD5_RE = re.compile(r"md5[0-9a-f]{32}")

_MISSING: Any = object()
T = TypeVar("T")


def load_config(path: str | os.PathLike[str], *, enforce_compliance: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem found.

    ``enforce_compliance = False`` keeps [compliance] but does not refuse a setting weaker than its
    frameworks: for `tenantgate compliance check`, which reports each such control as failed."""
    return _Loader(path, enforce_compliance).load()


def check_config(path: str | os.PathLike[str]) -> list[str]:
    """Problems in a config file, one '<file>: <key>: <message>' line each; empty when it is valid."""
    try:
        load_config(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def default_workers(cpus: int | None = None) -> int:
    """``[listen] workers`` when unset: half the CPUs, at least 1 (256 at most).

    The proxy shares its host with the kernel's network stack and, often, PostgreSQL or the app; on a
    2-core machine a second worker process doubled the CPU per statement (processes thrashing each
    other's caches, more wake-ups per statement) for no more TPS (README, "Worker processes").

    >>> default_workers(1), default_workers(2), default_workers(8), default_workers(1024)
    (1, 1, 4, 256)
    """
    if cpus is None:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus // 2, 256))


def parse_http_url(value: str) -> str:
    """An http(s) URL with a host and no credentials (they would end up in SHOW CONFIG).

    >>> parse_http_url("https://idp.example/jwks.json")
    'https://idp.example/jwks.json'
    >>> parse_http_url("file:///etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: must be an http:// or https:// URL
    """
    try:
        url = urllib.parse.urlsplit(value)
        url.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not url.hostname:
        raise ValueError("has no host")
    if url.username is not None or url.password is not None:
        raise ValueError("must not hold credentials")
    return value


def _join(path: str, key: str) -> str:
    """Dotted key as TOML would write it: `users."svc.reports".tenant`."""
    part = key if _BARE_KEY_RE.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), "a date/time")


class _Loader:
    def __init__(self, path: str | os.PathLike[str], enforce_compliance: bool = True) -> None:
        self.enforce_compliance = enforce_compliance
        self.file = os.fspath(path)
        self.path = pathlib.Path(self.file).absolute()
        self.problems: list[Problem] = []
        self.digest = ""

    # ------------------------------------------------------------------ plumbing

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, key, message))

    def table(self, raw: Mapping[str, Any], key: str, path: str, allowed: frozenset[str]) -> dict[str, Any]:
        """raw[key] as a table (empty if absent), reporting unknown keys."""
        value = raw.get(key, {})
        where = _join(path, key)
        if not isinstance(value, dict):
            self.problem(where, f"expected a table, got {_type_name(value)}")
            return {}
        self.unknown(value, where, allowed)
        return value

    def unknown(self, tbl: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
        for key in tbl:
            if key not in allowed:
                self.problem(_join(path, key), f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(
        self,
        tbl: Mapping[str, Any],
        key: str,
        path: str,
        kind: type[T] | tuple[type, ...],
        default: Any,
        *,
        required: bool = False,
    ) -> Any:
        """tbl[key] checked against kind; the default (after a problem) when absent or wrong."""
        where = _join(path, key)
        if key not in tbl:
            if required:
                self.problem(where, "is required")
            return default
        value = tbl[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python but not in TOML; an int is a fine float.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            want = " or ".join(_TYPE_NAMES[k] for k in kinds)
            self.problem(where, f"expected {want}, got {_type_name(value)}")
            return default
        return value

    def string(
        self, tbl: Mapping[str, Any], key: str, path: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        """A non-empty string without NUL; its value is never put into a message."""
        value = self.get(tbl, key, path, str, _MISSING, required=required)
        if value is _MISSING:
            return default
        if not value:
            self.problem(_join(path, key), "must not be empty")
            return default
        if "\0" in value:
            self.problem(_join(path, key), "must not contain NUL characters")
            return default
        return value

    def number(
        self,
        tbl: Mapping[str, Any],
        key: str,
        path: str,
        kind: type[T],
        default: T,
        low: float,
        high: float,
        *,
        low_open: bool = False,
    ) -> T:
        value = self.get(tbl, key, path, kind, _MISSING)
        if value is _MISSING:
            return default
        bad = (
            (isinstance(value, float) and not math.isfinite(value))
            or value > high
            or (value <= low if low_open else value < low)
        )
        if bad:
            lower = f"greater than {low}" if low_open else f"at least {low}"
            self.problem(_join(path, key), f"must be {lower} and at most {high}, got {value!r}")
            return default
        return value  # type: ignore[no-any-return]

    def enum(
        self, tbl: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], default: str | None
    ) -> str | None:
        value = self.get(tbl, key, path, str, _MISSING)
        if value is _MISSING:
            return default
        if value not in choices:
            self.problem(_join(path, key), f"must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value  # type: ignore[no-any-return]

    def parsed(
        self, tbl: Mapping[str, Any], key: str, path: str, parse: Callable[[str], T], default: Any = None
    ) -> Any:
        """tbl[key] run through a ValueError-raising parser (address, identifier, verifier)."""
        value = self.string(tbl, key, path)
        return default if value is None else self.convert(value, _join(path, key), parse, default)

    def convert(self, value: str, where: str, parse: Callable[[str], T], default: Any = None) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            self.problem(where, str(exc))
            return default

    def file_path(self, tbl: Mapping[str, Any], key: str, path: str) -> str | None:
        """A path relative to the config file, which must be a readable file."""
        value = self.string(tbl, key, path)
        if value is None:
            return None
        resolved = self.path.parent / pathlib.Path(value).expanduser()
        # Check the type first: opening a FIFO would block the loader.
        if resolved.exists() and not resolved.is_file():
            self.problem(_join(path, key), f"{str(resolved)!r} is not a regular file")
            return None
        try:
            with open(resolved, "rb"):
                pass
        except OSError as exc:
            self.problem(_join(path, key), f"cannot read {str(resolved)!r}: {exc.strerror or exc}")
            return None
        return str(resolved)

    def read_secret_file(self, where: str, resolved: str) -> str | None:
        try:
            text = pathlib.Path(resolved).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            self.problem(where, f"{resolved!r} is not valid UTF-8")
            return None
        except OSError as exc:
            self.problem(where, f"cannot read {resolved!r}: {exc.strerror or exc}")
            return None
        text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
        if not text:
            self.problem(where, f"{resolved!r} is empty")
            return None
        if "\0" in text:
            self.problem(where, f"{resolved!r} contains NUL characters")
            return None
        return text

    def plaintext(self, tbl: Mapping[str, Any], source: str, path: str) -> str | None:
        """The password from a 'password', 'password_env' or 'password_file' key."""
        where = _join(path, source)
        if source == "password":
            return self.string(tbl, "password", path)
        if source == "password_env":
            var = self.string(tbl, "password_env", path)
            if var is None:
                return None
            value = os.environ.get(var)
            if value is None:
                self.problem(where, f"environment variable {var} is not set")
            elif not value or "\0" in value:
                self.problem(where, f"environment variable {var} is empty or contains NUL")
            else:
                return value
            return None
        resolved = self.file_path(tbl, "password_file", path)
        return None if resolved is None else self.read_secret_file(where, resolved)

    # ------------------------------------------------------------------ the file

    def load(self) -> Config:
        raw = self.read()
        self.unknown(raw, "", SECTIONS | EXTERNAL_SECTIONS)
        for name in EXTERNAL_SECTIONS:
            if name in raw and not isinstance(raw[name], dict):
                self.problem(name, f"expected a table, got {_type_name(raw[name])}")
        listen = self.listen(raw)
        backend = self.backend(raw)
        tls = self.tls(raw)
        server = self.server(raw)
        logging = self.logging(raw)
        defaults = self.limits(self.table(raw, "limits", "", LIMIT_TABLE_KEYS), "limits", Limits())
        tenants = self.tenants(raw, backend, defaults)
        oidc = self.oidc(raw)
        users = self.users(raw, server.auth_method, tenants, "oidc" in raw)
        admins = self.admins(raw, server.auth_method, users)
        scoping = self.scoping(raw)
        self.own_schemas(tenants, scoping)
        audit = self.audit(raw)
        encryption = self.encryption(raw)
        compliance = self.compliance(raw)
        monitoring = self.monitoring(raw)
        cluster, listen = self.cluster(raw, listen)
        if self.problems:
            raise ConfigError(self.problems)
        config = Config(
            listen=listen,
            backend=backend,
            tls=tls,
            server=server,
            logging=logging,
            tenants=types.MappingProxyType(tenants),
            users=types.MappingProxyType(users),
            admins=types.MappingProxyType(admins),
            scoping=scoping,
            source=self.path,
            audit=audit,
            encryption=encryption,
            oidc=oidc,
            limits=defaults,
            compliance=compliance,
            monitoring=monitoring,
            digest=self.digest,
            cluster=cluster,
        )
        # Only a config valid on its own is measured against the enabled frameworks.
        config, weaker = enforce(config) if self.enforce_compliance else (config, [])
        for key, message in weaker:
            self.problem(key, message)
        if self.problems:
            raise ConfigError(self.problems)
        return config

    def compliance(self, raw: Mapping[str, Any]) -> ComplianceSettings | None:
        settings, problems = parse_compliance(raw, self.path.parent)
        for key, message in problems:
            self.problem(key, message)
        return settings

    def monitoring(self, raw: Mapping[str, Any]) -> MonitoringSettings | None:
        settings, problems = parse_monitoring(raw, self.path.parent)
        for key, message in problems:
            self.problem(key, message)
        return settings

    def cluster(self, raw: Mapping[str, Any], listen: Listen) -> tuple[Cluster | None, Listen]:
        """[cluster]: this instance's id (``instance``, or the variable named by ``instance_env``, so
        every instance can read one file), every instance's peer address (and, for instances sharing
        one host, its own [listen] addresses), the shared secret; and [listen] as this instance has it.
        ``[listen] workers`` defaults to 1 here (one process per instance); with more, the instance's
        supervisor serves its peer channel."""
        p = "cluster"
        if "cluster" not in raw:
            return None, listen
        sources = ("password", "password_env", "password_file")
        tbl = self.table(raw, p, "", frozenset({"instance", "instance_env", "peers", "listen", *sources}))
        bind = self.parsed(tbl, "listen", p, parse_address)  # e.g. 0.0.0.0:7000 behind a Service name
        instance = self.string(tbl, "instance", p)
        if instance is None and "instance" not in tbl:
            var = self.string(tbl, "instance_env", p)
            instance = os.environ.get(var) if var is not None else None
            if var is not None and not instance:
                self.problem(_join(p, "instance_env"), f"environment variable {var} is not set or empty")
            elif var is None:
                self.problem(p, "set instance or instance_env (this instance's id)")
        peers: dict[str, tuple[str, int]] = {}
        given_peers = self.get(tbl, "peers", p, dict, {}, required=True)
        where = _join(p, "peers")
        for name, value in given_peers.items():
            if isinstance(value, dict):  # {peer = ..., address/admin/metrics = this instance's [listen]}
                here = _join(where, name)
                self.unknown(value, here, frozenset({"peer", "address", "admin", "metrics"}))
                addr = self.parsed(value, "peer", here, parse_address)
                if "peer" not in value:
                    self.problem(_join(here, "peer"), "is required")
                if name == instance:
                    own = {k: self.parsed(value, k, here, parse_address) for k in ("address", "admin", "metrics")}
                    listen = dataclasses.replace(listen, **{k: v for k, v in own.items() if v is not None})
            else:
                addr = self.parsed(given_peers, name, where, parse_address)
            if addr is not None:
                peers[name] = addr
        if instance is not None and "peers" in tbl and instance not in peers:
            self.problem(_join(p, "instance"), "is not one of cluster.peers")
        own_peer = peers.get(instance or "")
        if own_peer is not None and own_peer in (listen.address, listen.admin, listen.metrics):
            self.problem(_join(where, instance or ""), "uses the same host and port as a [listen] address")
        given = [k for k in sources if k in tbl]
        text = self.plaintext(tbl, given[0], p) if len(given) == 1 else None
        if len(given) != 1:
            self.problem(p, "set exactly one of password, password_env, password_file (the peer channel's secret)")
        elif text is not None and len(text.encode()) < MIN_SERVER_SECRET:
            self.problem(_join(p, given[0]), f"the secret must be at least {MIN_SERVER_SECRET} bytes")
            text = None
        explicit = raw.get("listen", {}).get("workers") if isinstance(raw.get("listen"), dict) else None
        if explicit is None:  # scale out with instances first: one process each unless workers is set
            listen = dataclasses.replace(listen, workers=1)
        if instance is None or text is None or instance not in peers:
            return None, listen
        return Cluster(instance, types.MappingProxyType(peers), Secret(text), bind), listen

    def audit(self, raw: Mapping[str, Any]) -> AuditSettings | None:
        """[audit] is validated by tenantgate.audit; its one error joins ours."""
        if not isinstance(raw.get("audit"), dict):
            return None
        try:
            settings = parse_audit_settings(raw, source=self.file, base_dir=self.path.parent)
        except AuditConfigError as exc:
            self.problem("audit", str(exc).removeprefix(f"{self.file}: [audit] "))
            return None
        return settings if settings.enabled else None

    def encryption(self, raw: Mapping[str, Any]) -> EncryptionSettings | None:
        """[encryption] is validated by tenantgate.keyring; its problems join ours."""
        if not isinstance(raw.get("encryption"), dict):
            return None
        try:
            return parse_encryption(raw, self.path)
        except SettingsError as exc:
            for line in exc.problems:
                key, _, message = line.removeprefix(f"{self.file}: ").partition(": ")
                self.problem(key, message)
            return None

    def read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError([Problem(self.file, "", f"cannot read config file: {exc.strerror or exc}")]) from None
        self.digest = hashlib.sha256(data).hexdigest()
        try:
            return tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError([Problem(self.file, "", f"not valid UTF-8 (at byte {exc.start})")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([Problem(self.file, "", f"invalid TOML: {exc}")]) from None

    def listen(self, raw: Mapping[str, Any]) -> Listen:
        p = "listen"
        tbl = self.table(raw, p, "", frozenset({"address", "unix_socket", "admin", "metrics", "workers"}))
        given = self.parsed(tbl, "address", p, parse_address)
        address = given or ("127.0.0.1", 6432)
        admin = self.parsed(tbl, "admin", p, parse_address)
        metrics = self.parsed(tbl, "metrics", p, parse_address)
        # A broken address is reported already; comparing with its fallback would only confuse.
        seen = {address: "address"} if given is not None or "address" not in tbl else {}
        for key, addr in (("admin", admin), ("metrics", metrics)):
            if addr is not None and addr in seen:
                self.problem(_join(p, key), f"uses the same host and port as listen.{seen[addr]}")
            elif addr is not None:
                seen[addr] = key
        unix_socket = self.string(tbl, "unix_socket", p)
        if unix_socket is not None and len(os.fsencode(unix_socket)) > 107:
            self.problem(_join(p, "unix_socket"), "is longer than 107 bytes (the limit for a socket path)")
            unix_socket = None
        workers = self.number(tbl, "workers", p, int, default_workers(), 1, 256)
        return Listen(address, unix_socket, admin, metrics, workers)

    def backend(self, raw: Mapping[str, Any]) -> Backend:
        return self.backend_table(self.table(raw, "backend", "", BACKEND_KEYS), "backend")

    def backend_table(self, tbl: Mapping[str, Any], p: str, base: Backend | None = None) -> Backend:
        """A backend's connection settings; a tenant's own backend takes its pool settings from ``base``."""
        sources = ("password", "password_env", "password_file")
        host = self.string(tbl, "host", p) or "127.0.0.1"
        if not host.startswith("/"):  # an absolute path is a unix socket directory, as in libpq
            host = self.convert(host, _join(p, "host"), parse_host) or "127.0.0.1"
        port = self.number(tbl, "port", p, int, 5432, 1, 65535)
        user = self.role_name(tbl, "user", p, required=True) or ""
        password = None
        given = [k for k in sources if k in tbl]
        if len(given) > 1:
            self.problem(p, f"more than one password source ({', '.join(given)}): set at most one")
        elif given:
            text = self.plaintext(tbl, given[0], p)
            password = None if text is None else Secret(text)
        database = self.role_name(tbl, "database", p)
        sslmode = self.enum(tbl, "sslmode", p, SSLMODES, "prefer") or "prefer"
        sslrootcert = self.file_path(tbl, "sslrootcert", p)
        if sslmode.startswith("verify-") and "sslrootcert" not in tbl:
            self.problem(_join(p, "sslrootcert"), f"is required with sslmode = {sslmode}")
        connect_timeout = self.number(tbl, "connect_timeout", p, float, 5.0, 0, 3600, low_open=True)
        allow_superuser = self.get(tbl, "allow_superuser", p, bool, False)
        region = self.string(tbl, "region", p)
        pool_mode = self.enum(tbl, "pool_mode", p, ("session", "transaction"), None) or (
            base.pool_mode if base is not None else "session"
        )
        pool_size = self.number(tbl, "pool_size", p, int, base.pool_size if base is not None else 20, 1, 10000)
        timeout = base.pool_timeout if base is not None else 30.0
        pool_timeout = self.number(tbl, "pool_timeout", p, float, timeout, 0, 3600, low_open=True)
        return Backend(
            host,
            port,
            user,
            password,
            database,
            sslmode,
            sslrootcert,
            connect_timeout,
            allow_superuser,
            region,
            pool_mode,
            pool_size,
            pool_timeout,
        )

    def role_name(self, tbl: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
        """A PostgreSQL role or database name (case kept, as in the startup packet)."""
        value = self.string(tbl, key, path, required=required)
        if value is not None and len(value.encode("utf-8")) >= NAMEDATALEN:
            self.problem(_join(path, key), f"is longer than {NAMEDATALEN - 1} bytes")
            return None
        return value

    def tls(self, raw: Mapping[str, Any]) -> TLS:
        p = "tls"
        tbl = self.table(raw, p, "", frozenset({"mode", "cert", "key"}))
        mode = self.enum(tbl, "mode", p, TLS_MODES, "disable") or "disable"
        cert = self.file_path(tbl, "cert", p)
        key = self.file_path(tbl, "key", p)
        if mode != "disable":
            for name in ("cert", "key"):
                if name not in tbl:
                    self.problem(_join(p, name), f"is required with mode = {mode}")
            if cert is not None and key is not None:
                try:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    # A passphrase-protected key would make OpenSSL prompt on the terminal.
                    ctx.load_cert_chain(cert, key, password=lambda: b"")
                except (ssl.SSLError, OSError) as exc:
                    reason = getattr(exc, "reason", None) or "unusable"
                    self.problem(p, f"cert and key cannot be loaded together ({reason})")
        return TLS(mode, cert, key)

    def server(self, raw: Mapping[str, Any]) -> Server:
        p = "server"
        tbl = self.table(
            raw,
            p,
            "",
            frozenset(
                {
                    "max_message_size",
                    "max_startup_packet",
                    "startup_timeout",
                    "shutdown_timeout",
                    "auth_method",
                    "secret_file",
                }
            ),
        )
        max_message = self.number(tbl, "max_message_size", p, int, MAX_MESSAGE_SIZE, 1024, MAX_MESSAGE_SIZE)
        max_startup = self.number(tbl, "max_startup_packet", p, int, MAX_STARTUP_PACKET, 64, MAX_STARTUP_PACKET)
        startup_timeout = self.number(tbl, "startup_timeout", p, float, 15.0, 0, 3600, low_open=True)
        shutdown_timeout = self.number(tbl, "shutdown_timeout", p, float, 30.0, 0, 86400)
        auth_method = self.enum(tbl, "auth_method", p, AUTH_METHODS, "scram-sha-256") or "scram-sha-256"
        secret_file = self.file_path(tbl, "secret_file", p)
        secret = None
        if secret_file is not None:
            text = self.read_secret_file(_join(p, "secret_file"), secret_file)
            if text is not None and len(text) < MIN_SERVER_SECRET:
                self.problem(_join(p, "secret_file"), f"holds fewer than {MIN_SERVER_SECRET} characters")
            elif text is not None:
                secret = Secret(text)
        return Server(max_message, max_startup, startup_timeout, shutdown_timeout, auth_method, secret_file, secret)

    def logging(self, raw: Mapping[str, Any]) -> Logging:
        tbl = self.table(raw, "logging", "", frozenset({"level", "json"}))
        level = self.enum(tbl, "level", "logging", LOG_LEVELS, "info") or "info"
        return Logging(level, self.get(tbl, "json", "logging", bool, False))

    def entries(self, raw: Mapping[str, Any], section: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, dotted path, table) for each [section.name]."""
        tbl = raw.get(section, {})
        if not isinstance(tbl, dict):
            self.problem(section, f"expected a table, got {_type_name(tbl)}")
            return []
        out = []
        for name, value in tbl.items():
            where = _join(section, name)
            if not isinstance(value, dict):
                self.problem(where, f"expected a table, got {_type_name(value)}")
            else:
                out.append((name, where, value))
        return out

    def limits(self, tbl: Mapping[str, Any], p: str, base: Limits) -> Limits:
        """Limit keys of [limits] or [tenants.X]; keys not given keep ``base``'s value."""

        def pick(key: str, kind: type, low: float, high: float, *, low_open: bool = False) -> Any:
            return self.number(tbl, key, p, kind, getattr(base, key), low, high, low_open=low_open)

        limits = Limits(
            max_client_connections=pick("max_client_connections", int, 1, 1_000_000),
            max_backend_connections=pick("max_backend_connections", int, 1, 100_000),
            statements_per_second=pick("statements_per_second", float, 0, 1e9, low_open=True),
            statement_burst=pick("statement_burst", int, 1, 1_000_000_000),
            rate_limit_wait=pick("rate_limit_wait", float, 0, 60),
            statement_timeout=pick("statement_timeout", float, 0, 86400 * 7, low_open=True),
            max_rows=pick("max_rows", int, 1, 1 << 62),
            max_rows_action=self.enum(tbl, "max_rows_action", p, ROW_LIMIT_ACTIONS, base.max_rows_action)
            or base.max_rows_action,
        )
        if "statement_burst" in tbl and limits.statements_per_second is None:
            self.problem(_join(p, "statement_burst"), "needs statements_per_second")
        return limits

    def tenants(self, raw: Mapping[str, Any], backend: Backend, defaults: Limits) -> dict[str, Tenant]:
        tenants: dict[str, Tenant] = {}
        schemas: dict[str, str] = {}
        for name, p, tbl in self.entries(raw, "tenants"):
            self.unknown(tbl, p, frozenset({"tier", "schema", "region", "backend", "allow_ddl"}) | LIMIT_TABLE_KEYS)
            if not _TENANT_RE.fullmatch(name):
                self.problem(
                    p, "tenant names are 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"
                )
            tier = self.enum(tbl, "tier", p, TIERS, "shared") or "shared"
            schema = self.parsed(tbl, "schema", p, parse_identifier)
            if tier == "schema" and "schema" not in tbl:
                self.problem(_join(p, "schema"), "is required with tier = schema")
            elif tier != "schema" and "schema" in tbl:
                self.problem(_join(p, "schema"), f"only applies to tier = schema (this tenant is {tier})")
            elif schema is not None and schema in schemas:
                # Two tenants in one schema would see each other's rows.
                self.problem(_join(p, "schema"), f"schema {schema!r} is already used by tenant {schemas[schema]!r}")
            elif schema in ("public", "pg_catalog", "information_schema") or (schema or "").startswith("pg_"):
                self.problem(_join(p, "schema"), f"schema {schema!r} is shared or reserved; a tenant needs its own")
            elif schema is not None:
                schemas[schema] = name
            own: Backend | None = None
            where = _join(p, "backend")
            if tier == "dedicated":
                if not isinstance(tbl.get("backend"), dict):
                    self.problem(where, "is required with tier = dedicated (a table of connection settings)")
                else:
                    self.unknown(tbl["backend"], where, BACKEND_KEYS)
                    own = self.backend_table(tbl["backend"], where, backend)
            elif "backend" in tbl:
                self.problem(where, f"only applies to tier = dedicated (this tenant is {tier})")
            region = self.string(tbl, "region", p)
            limits = self.limits(tbl, p, defaults)
            allow_ddl = self.get(tbl, "allow_ddl", p, bool, False)
            if allow_ddl and tier != "dedicated":  # elsewhere DDL would change tables other tenants share
                self.problem(_join(p, "allow_ddl"), f"only applies to tier = dedicated (this tenant is {tier})")
                allow_ddl = False
            tenants[name] = Tenant(name, tier, schema, region, own, limits, allow_ddl)
            self.residency(tenants[name], p, own or backend, "backend" if own is None else where)
        return tenants

    def own_schemas(self, tenants: Mapping[str, Tenant], scoping: Scoping) -> None:
        """A schema-tier tenant's schema is its alone: no shared (scoped or reference) table may live there."""
        shared = {t.schema or "public" for t in scoping.tables} | {s or "public" for s, _ in scoping.reference}
        for t in tenants.values():
            if t.schema is not None and t.schema in shared:
                self.problem(
                    _join(_join("tenants", t.name), "schema"),
                    f"schema {t.schema!r} holds tables listed in [scoping]; a tenant's schema must be its own",
                )

    def residency(self, tenant: Tenant, p: str, placed: Backend, where: str) -> None:
        """A tenant that declares a region may only be placed on a backend labelled with it."""
        if tenant.region is None or placed.region == tenant.region:
            return
        label = "has no region label" if placed.region is None else f"is in region {placed.region!r}"
        self.problem(
            _join(p, "region"),
            f"tenant {tenant.name!r} must stay in region {tenant.region!r} but its backend ({where}, "
            f"{placed.host}:{placed.port}) {label}",
        )

    def credentials(
        self, name: str, p: str, tbl: Mapping[str, Any], auth: str
    ) -> tuple[ScramVerifier | None, str | None]:
        """(SCRAM verifier, md5 hash) from exactly one password source, fitting the auth method."""
        sources = [k for k in ("password", "scram", "md5", "password_env", "password_file") if k in tbl]
        if not sources:
            self.problem(p, "no password: set one of password, scram, md5, password_env, password_file")
            return None, None
        if len(sources) > 1:
            self.problem(p, f"more than one password source ({', '.join(sources)}): set exactly one")
            return None, None
        source = sources[0]
        where = _join(p, source)
        if source == "scram":
            if auth == "md5":
                self.problem(where, "auth = md5 needs a plaintext password or an md5 hash, not a SCRAM verifier")
                return None, None
            return self.parsed(tbl, "scram", p, ScramVerifier.parse), None
        if source == "md5":
            if auth != "md5":
                self.problem(where, f"auth = {auth} needs a plaintext password or a SCRAM verifier, not an md5 hash")
                return None, None
            value = self.string(tbl, "md5", p)
            if value is not None and not _MD5_RE.fullmatch(value):
                self.problem(where, "must be 'md5' followed by 32 lower-case hex digits")
                return None, None
            return None, value
        password = self.plaintext(tbl, source, p)
        if password is None:
            return None, None
        try:
            verifier = make_verifier(password)
        except ValueError as exc:  # too long or NUL; the message names neither the value nor its bytes
            self.problem(where, str(exc))
            return None, None
        return verifier, (md5_hash(name, password) if auth == "md5" else None)

    def principal_name(self, name: str, p: str) -> None:
        if not name or len(name.encode("utf-8")) >= NAMEDATALEN or "\0" in name:
            self.problem(p, f"user names are 1-{NAMEDATALEN - 1} bytes without NUL")

    def oidc(self, raw: Mapping[str, Any]) -> Oidc | None:
        p = "oidc"
        if "oidc" not in raw:
            return None
        allowed = frozenset(
            {
                "issuer",
                "audience",
                "jwks_file",
                "jwks_url",
                "tenant_claim",
                "role_claim",
                "user_claim",
                "algorithms",
                "leeway",
                "dynamic_users",
            }
        )
        tbl = self.table(raw, p, "", allowed)
        issuer = self.string(tbl, "issuer", p, required=True)
        audience = self.string(tbl, "audience", p, required=True)
        # only what the file sets: Oidc's own defaults stand for the rest
        options: dict[str, Any] = {}
        for key in ("tenant_claim", "role_claim", "user_claim"):
            claim = self.string(tbl, key, p)
            if claim is not None:
                options[key] = claim
        algorithms = self.algorithms(tbl, p)
        if algorithms is not None:
            options["algorithms"] = algorithms
        if "leeway" in tbl:
            options["leeway"] = self.number(tbl, "leeway", p, float, 0.0, 0, 3600)
        if "dynamic_users" in tbl:
            options["dynamic_users"] = self.get(tbl, "dynamic_users", p, bool, False)
        jwks_file = jwks_url = None
        keys: JwkSet | None = None
        given = [k for k in ("jwks_file", "jwks_url") if k in tbl]
        if len(given) != 1:
            self.problem(p, "set exactly one of jwks_file, jwks_url" if given else "jwks_file or jwks_url is required")
        elif given[0] == "jwks_file":
            jwks_file = self.file_path(tbl, "jwks_file", p)
            if jwks_file is not None:
                keys = self.jwks(_join(p, "jwks_file"), jwks_file)
        else:
            # only named here: the serving process fetches it (tenantgate.proxy.oidc.open_jwks)
            jwks_url = self.parsed(tbl, "jwks_url", p, parse_http_url)
        if issuer is None or audience is None or (keys is None and jwks_url is None):
            return None
        return Oidc(issuer, audience, jwks_file, jwks_url, keys, **options)

    def algorithms(self, tbl: Mapping[str, Any], p: str) -> tuple[str, ...] | None:
        """oidc.algorithms when set and valid: asymmetric algorithms only (none and HS* are refused)."""
        value = self.get(tbl, "algorithms", p, list, None)
        if value is None:
            return None
        where = _join(p, "algorithms")
        if not value:
            self.problem(where, "must list at least one algorithm")
            return None
        ok = True
        for i, alg in enumerate(value):
            if not isinstance(alg, str):
                self.problem(f"{where}[{i}]", f"expected a string, got {_type_name(alg)}")
                ok = False
                continue
            try:
                check_algorithm(alg)
            except ValueError as exc:
                self.problem(f"{where}[{i}]", str(exc))
                ok = False
        return tuple(value) if ok else None

    def jwks(self, where: str, resolved: str) -> JwkSet | None:
        try:
            return parse_jwks(pathlib.Path(resolved).read_bytes())
        except OSError as exc:
            self.problem(where, f"cannot read {resolved!r}: {exc.strerror or exc}")
        except JwksError as exc:
            self.problem(where, f"{resolved!r} is not a usable JWKS: {exc}")
        return None

    def users(
        self, raw: Mapping[str, Any], default_auth: str, tenants: Mapping[str, Tenant], token_logins: bool
    ) -> dict[str, User]:
        users: dict[str, User] = {}
        allowed = frozenset(
            {"tenant", "password", "scram", "md5", "password_env", "password_file", "auth", "trusted", "role"}
        )
        for name, p, tbl in self.entries(raw, "users"):
            self.unknown(tbl, p, allowed)
            self.principal_name(name, p)
            auth = self.enum(tbl, "auth", p, USER_AUTH_METHODS, default_auth) or default_auth
            trusted = self.get(tbl, "trusted", p, bool, False)
            tenant = self.string(tbl, "tenant", p)
            if auth == JWT and trusted:
                self.problem(_join(p, "trusted"), "a JWT login is scoped to its tenant claim: remove trusted or auth")
            elif tenant is not None and trusted:
                self.problem(_join(p, "tenant"), "a trusted user has no tenant: remove tenant or trusted")
            elif tenant is not None and tenant not in tenants:
                self.problem(_join(p, "tenant"), f"no tenant {tenant!r} in [tenants]")
            elif tenant is None and not trusted and "tenant" not in tbl:
                self.problem(_join(p, "tenant"), "is required unless trusted = true")
            role = self.enum(tbl, "role", p, ROLES, "readwrite") or "readwrite"
            if auth == JWT:
                scram, md5 = self.token_login(p, tbl, token_logins)
            else:
                scram, md5 = self.credentials(name, p, tbl, auth)
            users[name] = User(name, tenant, trusted, role, auth, scram, md5)
        return users

    def token_login(self, p: str, tbl: Mapping[str, Any], token_logins: bool) -> tuple[None, None]:
        """A user whose password is an OIDC token: no password of its own, and an [oidc] section."""
        if not token_logins:
            self.problem(_join(p, "auth"), "auth = jwt needs an [oidc] section")
        for key in ("password", "scram", "md5", "password_env", "password_file"):
            if key in tbl:
                self.problem(_join(p, key), "auth = jwt takes no password: the token is the password")
        return None, None

    def admins(self, raw: Mapping[str, Any], default_auth: str, users: Mapping[str, User]) -> dict[str, Admin]:
        admins: dict[str, Admin] = {}
        allowed = frozenset({"password", "scram", "md5", "password_env", "password_file", "auth"})
        for name, p, tbl in self.entries(raw, "admins"):
            self.unknown(tbl, p, allowed)
            self.principal_name(name, p)
            if name in users:
                self.problem(p, f"{name!r} is also in [users]: admins and tenant users must have different names")
            auth = self.enum(tbl, "auth", p, AUTH_METHODS, default_auth) or default_auth
            scram, md5 = self.credentials(name, p, tbl, auth)
            admins[name] = Admin(name, scram, md5, auth)
        return admins

    def scoping(self, raw: Mapping[str, Any]) -> Scoping:
        p = "scoping"
        tbl = self.table(raw, p, "", frozenset({"column", "tables", "reference", "allow_explain"}))
        column = self.parsed(tbl, "column", p, parse_identifier, "tenant_id")
        # Keyed as the rewriter sees them: no schema means public.
        seen: dict[tuple[str, str], str] = {}

        def claim(schema: str | None, name: str, where: str, what: str) -> bool:
            key = (schema or "public", name)
            if key in seen:
                self.problem(where, f"{'.'.join(key)} is already listed as {seen[key]}")
                return False
            seen[key] = what
            return True

        tables: list[ScopedTable] = []
        for i, entry in enumerate(self.get(tbl, "tables", p, list, [])):
            where = f"{p}.tables[{i}]"
            if isinstance(entry, dict):
                self.unknown(entry, where, frozenset({"name", "column"}))
                qualified = self.parsed(entry, "name", where, parse_qualified_name)
                if "name" not in entry:
                    self.problem(_join(where, "name"), "is required")
                own = self.parsed(entry, "column", where, parse_identifier, column)
            elif isinstance(entry, str):
                qualified = self.convert(entry, where, parse_qualified_name)
                own = column
            else:
                self.problem(where, f"expected a table name or {{name = ..., column = ...}}, got {_type_name(entry)}")
                continue
            if qualified is not None and claim(qualified[0], qualified[1], where, "a scoped table"):
                tables.append(ScopedTable(qualified[0], qualified[1], own))
        reference: list[tuple[str | None, str]] = []
        for i, entry in enumerate(self.get(tbl, "reference", p, list, [])):
            where = f"{p}.reference[{i}]"
            if not isinstance(entry, str):
                self.problem(where, f"expected a table name, got {_type_name(entry)}")
                continue
            qualified = self.convert(entry, where, parse_qualified_name)
            if qualified is not None and claim(qualified[0], qualified[1], where, "a reference table"):
                reference.append(qualified)
        return Scoping(column, tuple(tables), tuple(reference), self.get(tbl, "allow_explain", p, bool, False))
