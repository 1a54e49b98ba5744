"""Typed, immutable configuration objects and the error type that reports every problem at once."""

from __future__ import annotations

import hmac
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantgate.audit.settings import AuditSettings
from tenantgate.keyring.auth.jwt import JwkSet
from tenantgate.keyring.auth.oidc import ROLES
from tenantgate.keyring.auth.scram import ScramVerifier
from tenantgate.keyring.settings import EncryptionSettings

from .compliance import ComplianceSettings
from .monitoring import MonitoringSettings
from .values import render_identifier

__all__ = [
    "AUTH_METHODS",
    "LIMIT_KEYS",
    "LOG_LEVELS",
    "ROLES",
    "ROW_LIMIT_ACTIONS",
    "SSLMODES",
    "TIERS",
    "TLS",
    "TLS_MODES",
    "USER_AUTH_METHODS",
    "Admin",
    "Backend",
    "Config",
    "ConfigError",
    "Limits",
    "Listen",
    "Logging",
    "Oidc",
    "Problem",
    "ScopedTable",
    "Scoping",
    "Secret",
    "Server",
    "Tenant",
    "User",
    "format_address",
]

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
TLS_MODES = ("disable", "allow", "require")
AUTH_METHODS = ("scram-sha-256", "md5")
JWT = "jwt"  # the password is an OIDC token ([oidc]); users only
USER_AUTH_METHODS = (*AUTH_METHODS, JWT)
TIERS = ("shared", "schema", "dedicated")
ROW_LIMIT_ACTIONS = ("refuse", "truncate")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

MASK = "***"


class Secret:
    """A secret string whose str/repr is '***'; `.reveal()` is the only way to read it.

    >>> s = Secret("hunter2")
    >>> s, str(s), f"{s}", s.reveal()
    (***, '***', '***', 'hunter2')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(
            self._value.encode("utf-8", "surrogatepass"), other._value.encode("utf-8", "surrogatepass")
        )

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling is how config reaches worker processes; keep it working without exposing repr.
        return (Secret, (self._value,))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file: which file, which dotted key, what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; str() lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_address(address: tuple[str, int]) -> str:
    """'host:port', with brackets around IPv6 hosts.

    >>> format_address(("::1", 6432)), format_address(("127.0.0.1", 6432))
    ('[::1]:6432', '127.0.0.1:6432')
    """
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Listen:
    address: tuple[str, int]
    unix_socket: str | None
    admin: tuple[str, int] | None
    metrics: tuple[str, int] | None
    workers: int


@dataclass(frozen=True, slots=True)
class Backend:
    host: str
    port: int
    user: str
    password: Secret | None
    database: str | None
    sslmode: str
    sslrootcert: str | None
    connect_timeout: float
    allow_superuser: bool
    region: str | None
    pool_mode: str = "session"  # session | transaction (tenant sessions; trusted users stay session-pooled)
    pool_size: int = 20  # backend connections per database in transaction mode
    pool_timeout: float = 30.0  # seconds a client may wait for a pooled backend


@dataclass(frozen=True, slots=True)
class TLS:
    mode: str
    cert: str | None
    key: str | None


@dataclass(frozen=True, slots=True)
class Server:
    max_message_size: int
    max_startup_packet: int
    startup_timeout: float
    shutdown_timeout: float
    auth_method: str
    secret_file: str | None
    # Contents of secret_file (one trailing newline stripped); None: the proxy draws a random one.
    secret: Secret | None


@dataclass(frozen=True, slots=True)
class Logging:
    level: str
    json: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-tenant limits ([limits] for every tenant, [tenants.X] overrides); None: unlimited."""

    max_client_connections: int | None = None
    max_backend_connections: int | None = None
    statements_per_second: float | None = None
    statement_burst: int | None = None  # bucket size; default: one second's worth
    rate_limit_wait: float = 0.5  # seconds an excess statement may wait for a token before 53400
    statement_timeout: float | None = None  # seconds
    max_rows: int | None = None  # rows returned per statement
    max_rows_action: str = "refuse"  # refuse (54000) | truncate (with a warning)

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in LIMIT_KEYS)


LIMIT_KEYS = (
    "max_client_connections",
    "max_backend_connections",
    "statements_per_second",
    "statement_burst",
    "statement_timeout",
    "max_rows",
)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    tier: str
    schema: str | None
    region: str | None
    backend: Backend | None = None  # tier = dedicated: the tenant's own server/database
    limits: Limits = Limits()
    allow_ddl: bool = False  # tier = dedicated: DDL, TRUNCATE, LOCK, VACUUM pass in its own database


@dataclass(frozen=True, slots=True)
class User:
    name: str
    tenant: str | None
    trusted: bool
    role: str
    auth: str
    scram: ScramVerifier | None
    # An md5 hash is password-equivalent for md5 auth, so it stays out of repr.
    md5: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Oidc:
    """[oidc]: tokens of one issuer as passwords; ``keys``: a jwks_file's keys (None for a jwks_url,
    which the serving process fetches: tenantgate.proxy.oidc)."""

    issuer: str
    audience: str
    jwks_file: str | None
    jwks_url: str | None
    keys: JwkSet | None = field(compare=False, repr=False)
    tenant_claim: str = "tenant"
    role_claim: str = "tenantgate_role"
    user_claim: str = "sub"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: float = 30.0
    dynamic_users: bool = False  # any user whose token verifies logs in, tenant from the claim


@dataclass(frozen=True, slots=True)
class Admin:
    name: str
    scram: ScramVerifier | None
    md5: str | None = field(repr=False)
    auth: str = "scram-sha-256"


@dataclass(frozen=True, slots=True)
class ScopedTable:
    schema: str | None
    name: str
    column: str


@dataclass(frozen=True, slots=True)
class Scoping:
    column: str
    tables: tuple[ScopedTable, ...]
    reference: tuple[tuple[str | None, str], ...]
    # EXPLAIN without ANALYZE for tenants: its estimates come from statistics over every tenant's rows
    allow_explain: bool = False


@dataclass(frozen=True, slots=True)
class Cluster:
    """[cluster]: several instances serving one config (README "Running several instances").

    ``peers`` maps every instance id to its peer-channel address, in the same order everywhere:
    an instance's position in it is the ``index`` its cancel keys encode.
    """

    instance: str
    peers: Mapping[str, tuple[str, int]]
    secret: Secret  # shared by every instance: HMAC key of the peer channel
    listen: tuple[str, int] | None = None  # where this instance's peer channel binds (None: its peers entry)

    @property
    def bind(self) -> tuple[str, int]:
        return self.listen or self.peers[self.instance]

    @property
    def index(self) -> int:
        return list(self.peers).index(self.instance)

    @property
    def size(self) -> int:
        return len(self.peers)


@dataclass(frozen=True, slots=True)
class Config:
    listen: Listen
    backend: Backend
    tls: TLS
    server: Server
    logging: Logging
    tenants: Mapping[str, Tenant]
    users: Mapping[str, User]
    admins: Mapping[str, Admin]
    scoping: Scoping
    source: pathlib.Path
    audit: AuditSettings | None = None  # None: auditing off
    encryption: EncryptionSettings | None = None  # None: no encrypted columns
    oidc: Oidc | None = None  # None: no token logins
    limits: Limits = Limits()  # [limits]: defaults for every tenant (also tenants known only from a token)
    compliance: ComplianceSettings | None = None  # [compliance]: enabled frameworks (config/compliance.py)
    digest: str = ""  # SHA-256 of the file as loaded: audit `reload` records carry it before and after
    cluster: Cluster | None = None  # None: a single instance
    monitoring: MonitoringSettings | None = None  # [monitoring] (config/monitoring.py), None: off

    def tenant(self, name: str) -> Tenant:
        """A tenant's placement and limits; a tenant known only from a JWT claim is shared with [limits]."""
        found = self.tenants.get(name)
        return found if found is not None else Tenant(name, "shared", None, None, None, self.limits)

    def backend_of(self, tenant: str | None) -> Backend:
        """The backend a session of this tenant (None: trusted user) is routed to."""
        placed = self.tenants.get(tenant) if tenant is not None else None
        return placed.backend if placed is not None and placed.backend is not None else self.backend

    def redacted(self) -> dict[str, Any]:
        """Plain data for SHOW CONFIG and logs, every secret replaced by '***'."""

        def masked(value: object) -> str | None:
            return None if value is None else MASK

        def addr(value: tuple[str, int] | None) -> str | None:
            return None if value is None else format_address(value)

        def qualified(schema: str | None, name: str) -> str:
            table = render_identifier(name)
            return table if schema is None else f"{render_identifier(schema)}.{table}"

        def backend(be: Backend) -> dict[str, Any]:
            return {
                "host": be.host,
                "port": be.port,
                "user": be.user,
                "password": masked(be.password),
                "database": be.database,
                "sslmode": be.sslmode,
                "sslrootcert": be.sslrootcert,
                "connect_timeout": be.connect_timeout,
                "allow_superuser": be.allow_superuser,
                "region": be.region,
                "pool_mode": be.pool_mode,
                "pool_size": be.pool_size,
                "pool_timeout": be.pool_timeout,
            }

        def limits(lim: Limits) -> dict[str, Any]:
            return {name: getattr(lim, name) for name in (*LIMIT_KEYS, "rate_limit_wait", "max_rows_action")}

        lt, srv = self.listen, self.server
        return {
            "source": str(self.source),
            "listen": {
                "address": format_address(lt.address),
                "unix_socket": lt.unix_socket,
                "admin": addr(lt.admin),
                "metrics": addr(lt.metrics),
                "workers": lt.workers,
            },
            "backend": backend(self.backend),
            "tls": {"mode": self.tls.mode, "cert": self.tls.cert, "key": self.tls.key},
            "server": {
                "max_message_size": srv.max_message_size,
                "max_startup_packet": srv.max_startup_packet,
                "startup_timeout": srv.startup_timeout,
                "shutdown_timeout": srv.shutdown_timeout,
                "auth_method": srv.auth_method,
                "secret_file": srv.secret_file,
                "secret": masked(srv.secret),
            },
            "logging": {"level": self.logging.level, "json": self.logging.json},
            "limits": limits(self.limits),
            "tenants": {
                t.name: {
                    "tier": t.tier,
                    "schema": t.schema,
                    "region": t.region,
                    "backend": None if t.backend is None else backend(t.backend),
                    "limits": limits(t.limits),
                    "allow_ddl": t.allow_ddl,
                }
                for t in self.tenants.values()
            },
            "users": {
                u.name: {
                    "tenant": u.tenant,
                    "trusted": u.trusted,
                    "role": u.role,
                    "auth": u.auth,
                    "scram": masked(u.scram),
                    "md5": masked(u.md5),
                }
                for u in self.users.values()
            },
            "admins": {
                a.name: {"auth": a.auth, "scram": masked(a.scram), "md5": masked(a.md5)} for a in self.admins.values()
            },
            "oidc": None
            if self.oidc is None
            else {
                "issuer": self.oidc.issuer,
                "audience": self.oidc.audience,
                "jwks_file": self.oidc.jwks_file,
                "jwks_url": self.oidc.jwks_url,
                "tenant_claim": self.oidc.tenant_claim,
                "role_claim": self.oidc.role_claim,
                "user_claim": self.oidc.user_claim,
                "algorithms": list(self.oidc.algorithms),
                "leeway": self.oidc.leeway,
                "dynamic_users": self.oidc.dynamic_users,
            },
            "scoping": {
                "column": render_identifier(self.scoping.column),
                "tables": [
                    {"name": qualified(t.schema, t.name), "column": render_identifier(t.column)}
                    for t in self.scoping.tables
                ],
                "reference": [qualified(s, n) for s, n in self.scoping.reference],
            },
        }
