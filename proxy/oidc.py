"""Logins with an OIDC token as the password: where the keys come from, and what a token grants.

The JWKS of ``[oidc]`` is read (``jwks_file``) or fetched (``jwks_url``) whenever the config
loads, so at start and on every reload. A URL source is fetched once more when a token names
a kid the cached set lacks (an IdP rotating its keys), at most once per REFETCH_INTERVAL.

A verified token becomes a tenant session: the user claim must be the login name, the tenant
claim a tenant of [tenants] (and, for a configured user, that user's tenant); the role claim
or the user's configured role may make the session read-only.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .jwt import JwksError, JwkSet, JwtError, parse_jwks, token_kid, verify_jwt

if TYPE_CHECKING:
    from tenantgate.config.schema import Config, Oidc, User

__all__ = ["FETCH_TIMEOUT", "REFETCH_INTERVAL", "JwksCache", "JwtIdentity", "fetch_jwks", "identify", "jwt_verifier"]

log = logging.getLogger("tenantgate.oidc")

FETCH_TIMEOUT = 5.0  # seconds for one JWKS request
REFETCH_INTERVAL = 30.0  # seconds between refetches that unknown kids trigger: tokens cannot hammer the IdP
MAX_JWKS_BYTES = 1 << 20
ROLES = ("readwrite", "readonly")  # as config.schema.ROLES (importing it here would be circular)


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError("redirected away from http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SameSchemeRedirects)


def fetch_jwks(url: str, timeout: float = FETCH_TIMEOUT) -> JwkSet:
    """GET and parse a JWKS (blocking); JwksError says why it failed, without repeating the URL."""
    # http(s) only: the config checks the URL's scheme, the opener the scheme of redirects
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "tenantgate"})  # noqa: S310
    try:
        with _opener.open(request, timeout=timeout) as response:
            data = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise JwksError(f"the server answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise JwksError(f"cannot fetch it: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise JwksError(f"cannot fetch it: {exc.__class__.__name__}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
    return parse_jwks(data)


class JwksCache:
    """The current keys of one [oidc] section; for a URL source, refetched once for an unknown kid."""

    def __init__(self, keys: JwkSet, url: str | None = None) -> None:
        self.keys = keys
        self.url = url
        self._last_refetch = -math.inf
        self._inflight: asyncio.Task[None] | None = None

    def __reduce__(self) -> Any:
        return (JwksCache, (self.keys, self.url))

    def _unknown(self, kid: str | None) -> bool:
        return self.url is not None and kid is not None and kid not in self.keys.kids()

    def wants_refetch(self, kid: str | None, now: float) -> bool:
        """Whether a token naming ``kid`` should make a URL source refetch at monotonic time ``now``."""
        return self._unknown(kid) and now - self._last_refetch >= REFETCH_INTERVAL

    async def refresh_for(self, password: bytes) -> None:
        """Before verifying a token (a PasswordMessage's bytes): refetch if it names a new kid."""
        kid = token_kid(password.rstrip(b"\0").decode("ascii", "replace"))
        if not self._unknown(kid):
            return
        if self._inflight is None:
            now = time.monotonic()
            if not self.wants_refetch(kid, now):
                return  # refetched a moment ago: the kid is unknown to the IdP too
            self._last_refetch = now
            self._inflight = asyncio.get_running_loop().create_task(self._refetch())
        # every login waiting for the new keys shares one request; a cancelled login leaves it running
        await asyncio.shield(self._inflight)

    async def _refetch(self) -> None:
        assert self.url is not None
        try:
            self.keys = await asyncio.to_thread(fetch_jwks, self.url)
            log.info("JWKS refetched for an unknown kid: %d keys", len(self.keys.keys))
        except JwksError as exc:
            log.warning("refetching the JWKS failed, keeping the cached keys: %s", exc)
        finally:
            self._inflight = None


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    """What a verified token grants: the session's tenant, and whether it may only read."""

    tenant: str
    readonly: bool


def identify(
    oidc: Oidc, tenants: Mapping[str, object], user: User | None, name: str, claims: Mapping[str, Any]
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


def jwt_verifier(config: Config, name: str, clock: Callable[[], float] = time.time) -> Callable[[str], JwtIdentity]:
    """The verifier ClientAuth calls with the token that user ``name`` sent as password."""
    oidc = config.oidc
    assert oidc is not None
    user = config.users.get(name)

    def verify(token: str) -> JwtIdentity:
        claims = verify_jwt(
            token,
            oidc.jwks.keys,
            issuer=oidc.issuer,
            audience=oidc.audience,
            algorithms=oidc.algorithms,
            leeway=oidc.leeway,
            now=clock(),
        )
        return identify(oidc, config.tenants, user, name, claims)

    return verify
