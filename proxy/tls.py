"""TLS contexts for both sides of the proxy.

Client side: ``[tls] mode`` disable | allow | require with the proxy's cert and key.
Backend side: libpq's sslmode semantics — prefer/require encrypt without checking the
certificate; verify-ca checks the chain; verify-full also checks the host name.
"""

from __future__ import annotations

import ssl
from functools import lru_cache


def client_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    """Server-side context presented to connecting clients (config/load.py requires both files
    unless [tls] mode = "disable"; a missing one is refused here too, never a plaintext listener)."""
    if cert is None or key is None:
        raise ValueError("[tls] needs cert and key unless mode = \"disable\"")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@lru_cache(maxsize=8)
def backend_context(sslmode: str, rootcert: str | None) -> ssl.SSLContext:
    """Client-side context used towards the backend for one sslmode."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if sslmode in ("verify-ca", "verify-full"):
        if rootcert:
            ctx.load_verify_locations(rootcert)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
