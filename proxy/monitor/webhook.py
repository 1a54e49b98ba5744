"""The optional alert webhook: a JSON POST whose body is signed with HMAC-SHA256.

The receiver recomputes ``hmac(secret, body)`` and compares it with the
``X-Tenantgate-Signature: sha256=<hex>`` header (constant time); ``X-Tenantgate-Timestamp``
is inside the signed body too (``sent_at``), so a replayed body can be told by its age.

>>> body = signed_body({"id": 1}, 0.0)
>>> body
b'{"alert":{"id":1},"sent_at":0.0}'
>>> verify(b"k", body, "sha256=" + signature(b"k", body)), verify(b"k", body, "sha256=00")
(True, False)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request

log = logging.getLogger("tenantgate.monitor")

HEADER = "X-Tenantgate-Signature"


def signed_body(alert: dict[str, object], now: float) -> bytes:
    return json.dumps({"alert": alert, "sent_at": now}, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does: the header's signature matches the body under the shared secret."""
    return hmac.compare_digest(f"sha256={signature(secret, body)}", header)


def _post(url: str, body: bytes, sig: str, timeout: float) -> int:
    request = urllib.request.Request(  # noqa: S310 (an http(s) URL: config/monitoring.py checks the scheme)
        url, data=body, method="POST", headers={"Content-Type": "application/json", HEADER: f"sha256={sig}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return int(response.status)


async def post_alert(url: str, secret: str, alert: dict[str, object], *, retries: int, timeout: float) -> bool:
    """POST one alert; retried with back-off (0.5 s, 1 s, 2 s, ...) on errors and non-2xx answers."""
    body = signed_body(alert, time.time())
    sig = signature(secret.encode(), body)
    for attempt in range(retries + 1):
        try:
            status = await asyncio.to_thread(_post, url, body, sig, timeout)
            if 200 <= status < 300:
                return True
            problem = f"HTTP {status}"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            problem = str(exc)
        log.warning("alert %s webhook attempt %d failed: %s", alert.get("id"), attempt + 1, problem)
        if attempt < retries:
            await asyncio.sleep(0.5 * 2**attempt)
    return False
