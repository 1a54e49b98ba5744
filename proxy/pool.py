"""Transaction pooling: backend connections shared by tenant sessions, one transaction at a time.

A session holds a pooled backend from its first message after ReadyForQuery('I') until
the next ReadyForQuery('I') with nothing outstanding. On every hand-over the session's
settings (the tenant, search_path, the client's reported session parameters) are
applied in one pipelined Query ahead of the client's own messages, and its answer is
swallowed: no round trip, and no session state of one client survives into another
client's transaction. What cannot be handed over safely (named prepared statements,
LISTEN, cursors WITH HOLD, SQL PREPARE, SET of an unreported setting) pins the client to
its backend for the rest of its session instead (PgBouncer's caveats, closed).

Waiting clients are served first come, first served; a client that waits longer than
``pool_timeout`` gets SQLSTATE 53300.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .backend import Backend, BackendTarget, connect

log = logging.getLogger("tenantgate.pool")


class PoolTimeout(Exception):
    pass


class BackendPool:
    def __init__(self, target: BackendTarget, database: str, size: int, timeout: float) -> None:
        self.target = target
        self.database = database
        self.size = size
        self.timeout = timeout
        self.idle: deque[Backend] = deque()
        self.busy: set[Backend] = set()
        self.waiters: deque[asyncio.Future[Backend]] = deque()
        self.opening = 0
        self.max_wait = 0.0
        # what the server reported at startup: later logins answer with it without a backend
        self.params: dict[str, str] | None = None

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    async def acquire(self) -> Backend:
        while self.idle:
            backend = self.idle.popleft()
            if not backend.conn.is_closed:
                self.busy.add(backend)
                return backend
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Backend] = loop.create_future()
        self.waiters.append(waiter)
        self._refill()  # below pool_size: a new connection, for the first waiter in line
        started = loop.time()
        try:
            backend = await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # handed over just as we gave up
            waiter.cancel()
            raise PoolTimeout(f"no backend connection became free within pool_timeout ({self.timeout:g}s)") from None
        finally:
            self.max_wait = max(self.max_wait, loop.time() - started)
            if waiter in self.waiters:
                self.waiters.remove(waiter)
        return backend

    async def _open(self) -> Backend:
        """A new connection (the caller has counted it in ``opening``)."""
        try:
            backend = await connect(self.target, self.database, {"application_name": "tenantgate"})
        finally:
            self.opening -= 1
        if self.params is None:
            self.params = dict(backend.params)
        self.busy.add(backend)
        return backend

    def release(self, backend: Backend) -> None:
        """Take a backend back: it must be idle (ReadyForQuery 'I', nothing outstanding)."""
        self.busy.discard(backend)
        backend.conn.on_frames = None
        backend.conn.on_lost = None
        backend.conn.backpressure_peer = None
        if backend.conn.is_closed or backend.status != "I":
            backend.conn.abort()
            self._refill()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.busy.add(backend)
                waiter.set_result(backend)
                return
        self.idle.append(backend)

    def discard(self, backend: Backend) -> None:
        """Drop a backend whose state cannot be trusted (client vanished mid-transaction)."""
        self.busy.discard(backend)
        backend.conn.on_lost = None
        backend.conn.abort()
        self._refill()

    def _refill(self) -> None:
        """Below pool_size: open a new connection for the first waiter, if any."""
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        if not self.waiters or self.total >= self.size:
            return
        waiter = self.waiters.popleft()
        self.opening += 1

        async def open_for() -> None:
            try:
                backend = await self._open()
            except Exception as exc:
                if not waiter.done():
                    waiter.set_exception(exc)
                return
            if waiter.done():
                self.release(backend)
            else:
                waiter.set_result(backend)

        asyncio.get_running_loop().create_task(open_for())

    async def close(self) -> None:
        for backend in list(self.idle):
            backend.conn.close()
        self.idle.clear()
