"""Transaction pooling: backend connections shared by tenant sessions, one transaction at a time.

A session holds a pooled backend from its first message after ReadyForQuery('I') until
the next ReadyForQuery('I') with nothing outstanding. On every hand-over the session's
settings (the tenant, search_path, the client's reported session parameters) are
applied in one pipelined Query ahead of the client's own messages, and its answer is
swallowed: no round trip, and no session state of one client survives into another
client's transaction. Named prepared statements (protocol level) follow the session
from backend to backend under content-addressed names (:class:`PreparedStatements`).
What cannot be handed over safely (LISTEN, cursors, SQL PREPARE, session-level SET/RESET)
pins the client to its backend for the rest of its session instead.

Waiting clients are served first come, first served; a client that waits longer than
``pool_timeout`` gets SQLSTATE 53300.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque

from .backend import Backend, BackendTarget, connect
from .codec import Close, Parse
from .encoding import UTF8, ClientEncoding

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

    def take_idle(self, settings: dict[str, str] | None = None) -> Backend | None:
        """An idle backend now, preferring one that already carries ``settings`` (a tenant's own
        settings then need no SET on hand-over); None when every backend is busy."""
        if settings is not None:
            for backend in reversed(self.idle):
                if backend.applied == settings and not backend.conn.is_closed:
                    self.idle.remove(backend)
                    self.busy.add(backend)
                    return backend
        while self.idle:
            backend = self.idle.popleft()
            if not backend.conn.is_closed:
                self.busy.add(backend)
                return backend
        return None

    async def acquire(self, settings: dict[str, str] | None = None) -> Backend:
        """An idle backend (see take_idle), else wait in line for one."""
        backend = self.take_idle(settings)
        if backend is not None:
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
        if backend.conn.is_closed or backend.status != "I" or backend.cancelled:
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


def backend_name(sql: str, param_types: tuple[int, ...]) -> str:
    """The name a prepared statement gets on pooled backends: the same text and parameter
    types give the same name, so sessions share it and nobody's name can collide with it.

    >>> backend_name("SELECT 1", ()) == backend_name("SELECT 1", ()) != backend_name("SELECT 1", (23,))
    True
    """
    digest = hashlib.sha256(repr((sql, param_types)).encode()).hexdigest()[:24]
    return f"tg_{digest}"


class PreparedStatements:
    """Named prepared statements of one transaction-pooled session, on whichever backend it holds.

    The client's names map to content-addressed backend names. A statement is prepared on a
    backend on demand (a Parse injected before the Bind or Describe that needs it); every
    Parse and Close sent to the backend is remembered in order, so the ParseComplete and
    CloseComplete answers of the proxy's own messages can be swallowed.
    """

    def __init__(self, encoding: ClientEncoding = UTF8) -> None:
        self.encoding = encoding  # the session's: its Parse bytes are read in it on every backend
        self.names: dict[str, tuple[str, bytes]] = {}  # client name -> (backend name, Parse bytes)
        self.expect: deque[tuple[int, bool]] = deque()  # (cycle, swallow) per Parse/Close sent
        self.added: list[tuple[int, str]] = []  # (cycle, backend name) assumed prepared

    def parse(self, backend: Backend, name: str, sql: str, types: tuple[int, ...], cycle: int) -> bytes:
        """The bytes that prepare the client's named statement on ``backend``."""
        bname = backend_name(sql, types)
        parse = Parse(bname, sql, types).encode(self.encoding)
        self.names[name] = (bname, parse)
        # a statement of that name may be there already (same text, from another session): replace it
        self.expect.append((cycle, True))
        self.expect.append((cycle, False))
        self._assume(backend, bname, cycle)
        return Close("S", bname).encode() + parse

    def unnamed_parse(self, cycle: int) -> None:
        self.expect.append((cycle, False))

    def target(self, backend: Backend, name: str, cycle: int) -> tuple[str, bytes]:
        """(backend name, bytes to send first) for a Bind or Describe of the client's statement."""
        entry = self.names.get(name)
        if entry is None:
            return name, b""  # unknown: the backend answers "does not exist", as it should
        bname, parse = entry
        if bname in backend.prepared:
            return bname, b""
        self.expect.append((cycle, True))
        self._assume(backend, bname, cycle)
        return bname, parse

    def close(self, backend: Backend, name: str, cycle: int) -> str:
        entry = self.names.pop(name, None)
        self.expect.append((cycle, False))
        if entry is None:
            return name
        backend.prepared.discard(entry[0])
        return entry[0]

    def close_portal(self, cycle: int) -> None:
        self.expect.append((cycle, False))

    def _assume(self, backend: Backend, bname: str, cycle: int) -> None:
        backend.prepared.add(bname)
        self.added.append((cycle, bname))

    def answered(self) -> bool:
        """A ParseComplete/CloseComplete arrived: True when it answers the proxy's own message."""
        return self.expect.popleft()[1] if self.expect else False

    def failed(self, backend: Backend, cycle: int) -> None:
        """An error in this cycle: the backend skipped the rest, so assume nothing it was sent."""
        for c, bname in self.added:
            if c >= cycle:
                backend.prepared.discard(bname)

    def cycle_done(self, cycle: int) -> None:
        while self.expect and self.expect[0][0] <= cycle:
            self.expect.popleft()
        self.added = [(c, b) for c, b in self.added if c > cycle]
