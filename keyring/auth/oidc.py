"""What a verified OIDC token grants: the claims of an ``[oidc]`` section mapped to a tenant session.

The user claim must be the login name, the tenant claim a tenant of [tenants] (and, for a
configured user, that user's tenant); the role claim or the user's configured role may make
the session read-only. The section and user are read through small protocols, so this room
needs nothing from config/ (which imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .jwt import JwtError

__all__ = ["ROLES", "ClaimNames", "JwtIdentity", "RoleOf", "identify"]

ROLES = ("readwrite", "readonly")  # config.schema.ROLES is this tuple


class ClaimNames(Protocol):
    """Which claims name the user, the tenant and the role (config.schema.Oidc)."""

    @property
    def user_claim(self) -> str: ...
    @property
    def tenant_claim(self) -> str: ...
    @property
    def role_claim(self) -> str: ...


class RoleOf(Protocol):
    """A configured user's tenant and role (config.schema.User)."""

    @property
    def tenant(self) -> str | None: ...
    @property
    def role(self) -> str: ...


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    """What a verified token grants: the session's tenant, and whether it may only read."""

    tenant: str
    readonly: bool


def identify(
    oidc: ClaimNames, tenants: Mapping[str, object], user: RoleOf | None, name: str, claims: Mapping[str, Any]
) -> JwtIdentity:
    """Map verified claims to a session for login ``name`` (``user``: its [users] entry, None if dynamic)."""
    if claims.get(oidc.user_claim) != name:
        raise JwtError(f"claim {oidc.user_claim!r} does not name user {name!r}")
    tenant = claims.get(oidc.tenant_claim)
    if not isinstance(tenant, str) or not tenant:
        raise JwtError(f"the token has no {oidc.tenant_claim!r} claim (a string)")
    if tenant not in tenants:
        raise JwtError(f"claim {oidc.tenant_claim!r} names a tenant that is not in [tenants]")
    if user is not None and tenant != user.tenant:
        raise JwtError(f"claim {oidc.tenant_claim!r} is not the tenant of user {name!r}")
    role = claims.get(oidc.role_claim)
    if role is not None and role not in ROLES:
        raise JwtError(f"claim {oidc.role_claim!r} must be one of {', '.join(ROLES)}")
    # the stricter of the two wins: a token cannot lift a read-only user's restriction
    return JwtIdentity(tenant, role == "readonly" or (user is not None and user.role == "readonly"))
