"""Per-tenant limits against noisy neighbours: connections, backend connections, statement rate.

One `TenantLimiter` per tenant and process holds the live counts; the statement timeout and the
row limit are enforced by the session (proxy/session.py) from the same `Limits`. With several
worker processes each enforces its share (``ceil(limit / workers)``): the kernel spreads
connections over workers, so the counts are per process. In a [cluster] ``workers`` is every
serving process of every instance (instances x workers).

>>> from tenantgate.config.schema import Limits
>>> clock = [0.0]
>>> lim = TenantLimiter("acme", Limits(statements_per_second=10, statement_burst=2, rate_limit_wait=0.5),
...                     clock=lambda: clock[0])
>>> [lim.take(1) for _ in range(3)]     # a burst of 2, then the third waits a tenth of a second
[0.0, 0.0, 0.1]
>>> lim.take(5)                         # 0.6 s away: more than rate_limit_wait, refused
>>> clock[0] = 1.0; lim.take(1)         # the bucket refilled
0.0
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable

from tenantgate.config.schema import Limits
from tenantgate.keyring.errors import SqlStateError


class LimitExceeded(SqlStateError):
    """A limit refused a connection or statement: SQLSTATE, a message for the client, and the
    limit's name as the reason."""

    @property
    def limit(self) -> str:
        return self.reason


class TenantLimiter:
    def __init__(
        self, tenant: str, limits: Limits, *, workers: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tenant = tenant
        self.workers = workers
        self.clients = 0
        self.backends = 0  # backend connections held by this tenant's sessions right now
        self.hits: Counter[str] = Counter()  # limit name -> times it refused or delayed
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tokens = 0.0
        self._stamp = clock()
        self.limits = limits
        self.configure(limits)

    def configure(self, limits: Limits) -> None:
        """New limits (reload): counts are kept, the token bucket starts full."""
        self.limits = limits
        self._tokens = float(self._burst)
        self._stamp = self._clock()
        self._wake()

    def _share(self, value: int | None) -> int | None:
        return None if value is None else max(1, math.ceil(value / self.workers))

    @property
    def max_clients(self) -> int | None:
        return self._share(self.limits.max_client_connections)

    @property
    def max_backends(self) -> int | None:
        return self._share(self.limits.max_backend_connections)

    @property
    def rate(self) -> float | None:
        rate = self.limits.statements_per_second
        return None if rate is None else rate / self.workers

    @property
    def _burst(self) -> int:
        rate = self.rate
        if rate is None:
            return 0
        burst = self.limits.statement_burst
        size = burst if burst is not None else self.limits.statements_per_second or 1
        return max(1, math.ceil(size / self.workers))

    # ------------------------------------------------------------------ connections

    def admit_client(self, holds_backend: bool) -> None:
        """Count a new session, or refuse it (53300) when the tenant is at its limit."""
        cap = self.max_clients
        if cap is not None and self.clients >= cap:
            self.hits["max_client_connections"] += 1
            raise LimitExceeded(
                "53300", f"too many connections for tenant {self.tenant} (limit {cap})", "max_client_connections"
            )
        if holds_backend:
            self.admit_backend()
        self.clients += 1

    def client_closed(self, held_backend: bool) -> None:
        self.clients -= 1
        if held_backend:
            self.release_backend()

    def admit_backend(self) -> None:
        """Session pooling: a session holds its backend for its lifetime, so refuse at login (53300)."""
        cap = self.max_backends
        if cap is not None and self.backends >= cap:
            self.hits["max_backend_connections"] += 1
            raise LimitExceeded(
                "53300",
                f"too many backend connections for tenant {self.tenant} (limit {cap})",
                "max_backend_connections",
            )
        self.backends += 1

    def take_backend(self) -> bool:
        """One of the tenant's backend slots if one is free and nobody waits for it."""
        cap = self.max_backends
        if cap is None or (self.backends < cap and not self._waiters):
            self.backends += 1
            return True
        return False

    async def acquire_backend(self, timeout: float) -> None:
        """Transaction pooling: wait (first come, first served) for one of the tenant's backend slots."""
        if self.take_backend():
            return
        cap = self.max_backends
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            self.hits["max_backend_connections"] += 1
            if waiter.done():  # granted as the timeout fired: hand the slot on
                self.release_backend()
            else:
                waiter.cancel()
            raise LimitExceeded(
                "53300",
                f"no backend connection for tenant {self.tenant} within {timeout:g}s (max_backend_connections = {cap})",
                "max_backend_connections",
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release_backend(self) -> None:
        self.backends -= 1
        self._wake()

    def _wake(self) -> None:
        cap = self.max_backends
        while self._waiters and (cap is None or self.backends < cap):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.backends += 1
                waiter.set_result(None)

    # ------------------------------------------------------------------ statement rate

    def take(self, n: int) -> float | None:
        """Charge ``n`` statements: 0.0 to run now, the seconds to wait first, or None: refuse (53400)."""
        rate = self.rate
        if rate is None:
            return 0.0
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / rate
        if delay <= self.limits.rate_limit_wait:
            self.hits["statements_per_second_delayed"] += 1
            return round(delay, 6)
        self._tokens += n  # refused statements cost nothing
        self.hits["statements_per_second"] += 1
        return None
