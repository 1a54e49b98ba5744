"""Health of the PostgreSQL servers that tenants are placed on: a down server fails only its tenants, fast.

Tenants spread over several servers ([backend] and each dedicated tier's own). When connecting
to one fails (refused, unreachable, timed out), that server is marked down for ``RETRY``
seconds: every new connection to it in that window fails at once with 08006 (connection
failure, as the connect itself would) saying which server is down and since when, instead of
each session waiting out its own connect_timeout against a server that hangs. After the
window the next connection tries again (one probe per window); its success marks the server
up. Sessions of tenants on other servers never notice, and /readyz stays ready: the instance
itself is fine, so a load balancer keeps sending it the other tenants.

>>> clock = [100.0]
>>> health = ServerHealth(clock=lambda: clock[0])
>>> health.failed(("db2", 5432), "connection refused"); health.refusal(("db2", 5432))
'connection to database server db2:5432 failed: it is down (connection refused, 0 s ago); retrying in 1.0 s'
>>> health.refusal(("db1", 5432)) is None          # other servers are not affected
True
>>> clock[0] += RETRY; health.refusal(("db2", 5432)) is None  # the window passed: one try goes through
True
>>> health.refusal(("db2", 5432)) is None          # ... and until it fails again, so do others
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

RETRY = 1.0  # seconds a down server is not tried again


@dataclass
class _Down:
    since: float
    reason: str
    retry_at: float


class ServerHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down: dict[tuple[str, int], _Down] = {}

    def refusal(self, server: tuple[str, int]) -> str | None:
        """Why a connection to ``server`` must not be tried now (None: try it)."""
        down = self._down.get(server)
        now = self._clock()
        if down is None or now >= down.retry_at:
            return None
        host, port = server
        return (
            f"connection to database server {host}:{port} failed: it is down ({down.reason}, "
            f"{now - down.since:.0f} s ago); retrying in {down.retry_at - now:.1f} s"
        )

    def failed(self, server: tuple[str, int], reason: str) -> None:
        now = self._clock()
        since = self._down[server].since if server in self._down else now
        self._down[server] = _Down(since, reason, now + RETRY)

    def ok(self, server: tuple[str, int]) -> None:
        self._down.pop(server, None)

    def down(self) -> list[tuple[str, int]]:
        return list(self._down)


servers = ServerHealth()  # this process's view of every server it connects to
