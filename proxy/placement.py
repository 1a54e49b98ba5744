"""Where a session's statements run: the tenant's tier, backend server and search_path.

Placement comes from the config only (``[tenants.X] tier``, ``schema``, ``[tenants.X.backend]``):

- ``shared``: the main ``[backend]``, search_path ``public``, rows scoped by the rewriter;
- ``schema``: the main ``[backend]``, search_path pinned to the tenant's schema (the rewriter
  refuses every other non-catalog schema);
- ``dedicated``: the tenant's own backend, scoped like ``shared`` inside it.

Trusted service users (no tenant) are placed like ``shared`` without scoping.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenantgate.config import Config
from tenantgate.config.schema import Backend as BackendConfig
from tenantgate.config.values import render_identifier

from .backend import BackendTarget


def backend_target(backend: BackendConfig) -> BackendTarget:
    """How to reach a configured backend (the password revealed only here, for the connection)."""
    return BackendTarget(
        host=backend.host,
        port=backend.port,
        user=backend.user,
        password=backend.password.reveal() if backend.password is not None else None,
        sslmode=backend.sslmode,
        sslrootcert=backend.sslrootcert,
        connect_timeout=backend.connect_timeout,
    )


@dataclass(frozen=True, slots=True)
class Placement:
    tier: str
    schema: str | None
    backend: BackendConfig
    target: BackendTarget

    @classmethod
    def of(cls, config: Config, tenant: str | None) -> Placement:
        """The placement of a tenant's sessions (None: a trusted user)."""
        placed = config.tenant(tenant) if tenant is not None else None
        backend = config.backend_of(tenant)
        if placed is None:
            return cls("shared", None, backend, backend_target(backend))
        return cls(placed.tier, placed.schema, backend, backend_target(backend))

    @property
    def search_path(self) -> str:
        """The pinned search_path, as a setting value.

        >>> from tenantgate.config.schema import Backend
        >>> b = Backend("h", 5432, "u", None, None, "disable", None, 5.0, False, None)
        >>> Placement("schema", "T_Acme", b, backend_target(b)).search_path
        '"T_Acme"'
        """
        return render_identifier(self.schema) if self.schema is not None else "public"

    def database(self, requested: str | None, user: str) -> str:
        """The backend database: the placement's own, else the one the client asked for, else its user name."""
        return self.backend.database or requested or user

    @property
    def key(self) -> tuple[object, ...]:
        """What a session's backend depends on: a change moves the tenant's sessions (reload)."""
        return (self.tier, self.schema, self.target, self.backend.database, self.backend.pool_mode)

    def describe(self) -> str:
        """'host:port/database' for SHOW TENANTS (no credentials)."""
        b = self.backend
        return f"{b.host}:{b.port}/{b.database or '*'}"
