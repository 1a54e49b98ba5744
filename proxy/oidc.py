"""Logins with an OIDC token as the password: the serving process's JWKS, and the token check.

config/ reads a ``jwks_file`` when it loads and only names a ``jwks_url``; the serving
process fetches the URL (``open_jwks``) whenever it loads the config, so at start and on
every reload, and fails closed as a config problem when the URL gives no usable JWKS. A URL
source is fetched once more when a token names a kid the cached set lacks (an IdP rotating
its keys), at most once per REFETCH_INTERVAL. What verified claims grant is
:mod:`tenantgate.keyring.auth.oidc`.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tenantgate.config import Config, ConfigError, Problem, load_config
from tenantgate.keyring.auth.jwt import JwksError, JwkSet, parse_jwks, token_kid, verify_jwt
from tenantgate.keyring.auth.oidc import JwtIdentity, identify

__all__ = [
    "FETCH_TIMEOUT",
    "REFETCH_INTERVAL",
    "JwksCache",
    "fetch_jwks",
    "jwt_verifier",
    "load_serving_config",
    "open_jwks",
]

log = logging.getLogger("tenantgate.oidc")

FETCH_TIMEOUT = 5.0  # seconds for one JWKS request
REFETCH_INTERVAL = 30.0  # seconds between refetches that unknown kids trigger: tokens cannot hammer the IdP
MAX_JWKS_BYTES = 1 << 20


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


def open_jwks(config: Config, file: str | os.PathLike[str] | None = None) -> JwksCache | None:
    """The keys of config's [oidc] for the serving process (None without one): a file source's keys
    as config read them, a URL source fetched now. ConfigError naming the config ``file`` (default:
    config.source) and key when the URL gives no usable JWKS."""
    oidc = config.oidc
    if oidc is None:
        return None
    if oidc.jwks_url is None:
        assert oidc.keys is not None  # config refuses a file source without usable keys
        return JwksCache(oidc.keys)
    try:
        return JwksCache(fetch_jwks(oidc.jwks_url), oidc.jwks_url)
    except JwksError as exc:
        where = os.fspath(config.source if file is None else file)
        raise ConfigError([Problem(where, "oidc.jwks_url", f"no usable JWKS: {exc}")]) from None


def load_serving_config(path: str | os.PathLike[str]) -> tuple[Config, JwksCache | None]:
    """What the serving process loads at start and on every reload: the config, then its JWKS."""
    config = load_config(path)
    return config, open_jwks(config, path)


def jwt_verifier(
    config: Config, jwks: JwksCache, name: str, clock: Callable[[], float] = time.time
) -> Callable[[str], JwtIdentity]:
    """The verifier ClientAuth calls with the token that user ``name`` sent as password."""
    oidc = config.oidc
    assert oidc is not None
    user = config.users.get(name)

    def verify(token: str) -> JwtIdentity:
        claims = verify_jwt(
            token,
            jwks.keys,
            issuer=oidc.issuer,
            audience=oidc.audience,
            algorithms=oidc.algorithms,
            leeway=oidc.leeway,
            now=clock(),
        )
        return identify(oidc, config.tenants, user, name, claims)

    return verify
