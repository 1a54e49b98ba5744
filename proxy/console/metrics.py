"""The HTTP endpoint of the metrics (/metrics, /healthz, /readyz); the figures are
tenantgate.proxy.counters.Metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os

from tenantgate.proxy.counters import Metrics
from tenantgate.proxy.process import Proxy
from tenantgate.proxy.state import ProxyView

from .port import ConsolePort

log = logging.getLogger("tenantgate.metrics")

# The classic text format every Prometheus version reads; our names need none of 1.0.0's escaping.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TOKEN_ENV = "TENANTGATE_METRICS_TOKEN"  # noqa: S105 - the variable name, not a token

# ---------------------------------------------------------------------- HTTP endpoint

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0


class MetricsServer(ConsolePort):
    """A minimal asyncio HTTP/1.1 server: one request per connection, GET/HEAD only.

    /metrics needs ``Authorization: Bearer <token>`` when TENANTGATE_METRICS_TOKEN is set;
    /healthz and /readyz stay open for orchestrator probes (they reveal nothing).
    """

    def __init__(self, proxy: Proxy, metrics: Metrics, token: str | None) -> None:
        self.proxy = proxy
        self.metrics = metrics
        self._token = token.encode() if token else None

    @classmethod
    async def start(cls, proxy: Proxy, host: str, port: int) -> MetricsServer:
        token = os.environ.get(TOKEN_ENV)
        if token is not None and not token:
            log.warning("%s is set but empty: /metrics is served without a token", TOKEN_ENV)
        self = cls(proxy, proxy.metrics, token)
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_HEAD, reuse_address=True)
        log.info("metrics on http://%s:%d/metrics%s", host, self.port, " (bearer token required)" if token else "")
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers, body, method = await self._respond(head)
                writer.write(_response(status, headers, b"" if method == "HEAD" else body, len(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics endpoint failed")
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[int, dict[str, str], bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, {}, b"bad request\n", "GET"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, {"Allow": "GET, HEAD"}, b"method not allowed\n", method
        if target == "/healthz":
            return 200, {}, b"ok\n", method
        if target == "/readyz":
            problems = await self.readiness()
            if problems:
                return 503, {}, ("not ready: " + "; ".join(problems) + "\n").encode(), method
            return 200, {}, b"ready\n", method
        if target == "/metrics":
            if self._token is not None and not self._authorized(lines[1:]):
                return 401, {"WWW-Authenticate": 'Bearer realm="tenantgate"'}, b"unauthorized\n", method
            return 200, {"Content-Type": CONTENT_TYPE}, await self.exposition(), method
        return 404, {}, b"not found: try /metrics, /healthz or /readyz\n", method

    def _authorized(self, header_lines: list[str]) -> bool:
        assert self._token is not None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                scheme, _, credential = value.strip().partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self._token)
        return False

    async def exposition(self) -> bytes:
        """The /metrics body (the supervisor of several workers merges theirs instead)."""
        return self.metrics.exposition()

    async def readiness(self) -> list[str]:
        """Why the proxy cannot serve statements now; empty when it can."""
        return await readiness(self.proxy)


async def readiness(proxy: ProxyView) -> list[str]:
    """Why a proxy process cannot serve statements now; empty when it can."""
    problems = []
    if proxy.stopping.is_set():
        problems.append("shutting down")
    target = proxy.backend_target
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(target.host, target.port)
        writer.close()  # no bytes sent: PostgreSQL does not log an empty connection
    except (OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        problems.append(f"backend {target.host}:{target.port} not reachable ({why})")
    audit = proxy.audit
    if audit is not None and not audit.stats().available:
        problems.append("audit log not writable")
    return problems


def _response(status: int, headers: dict[str, str], body: bytes, length: int) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {length}", "Connection: close"]
    headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
