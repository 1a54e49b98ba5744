"""Transaction pooling: backend connections shared by tenant sessions, one transaction at a time.

A session holds a pooled backend from its first message after ReadyForQuery('I') until
the next ReadyForQuery('I') with nothing outstanding. On every hand-over the session's
settings (the tenant, search_path, the client's reported session parameters) are
applied in one pipelined Query ahead of the client's own messages, and its answer is
swallowed: no round trip, and no session state of one client survives into another
client's transaction. Named prepared statements (protocol level) follow the session
from backend to backend under content-addressed names (:class:`PreparedStatements`), and the
client's session-level setting changes are re-applied like its startup settings
(:mod:`.tracked`). What cannot be handed over safely (LISTEN, cursors, SQL PREPARE, settings
the rewriter cannot track) pins the client to its backend for the rest of its session instead.

Waiting clients are served first come, first served; a client that waits longer than
``pool_timeout`` gets SQLSTATE 53300.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .backend import Backend, BackendTarget, connect
from .codec import Close, Parse

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
        # in line for a backend: (future, when it began waiting); first come first served, so the head
        # times out first and one timer for the head (_expire) serves the whole line
        self.waiters: deque[tuple[asyncio.Future[Backend], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.opening = 0
        self.max_wait = 0.0
        # what the server reported at startup: later logins answer with it without a backend
        self.params: dict[str, str] | None = None
        # (setting, value as SQL text) -> how backends report it (ParameterStatus): logins answer in it
        self.spellings: dict[tuple[str, str], str] = {}

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    def take_idle(self, settings: dict[str, str] | None = None) -> Backend | None:
        """An idle backend now, preferring one that already carries ``settings`` (a tenant's own
        settings then need no SET on hand-over); None when every backend is busy."""
        if settings is not None:
            for backend in reversed(self.idle):
                if backend.applied == settings and _usable(backend):
                    self.idle.remove(backend)
                    self.busy.add(backend)
                    return backend
        while self.idle:
            backend = self.idle.popleft()
            if _usable(backend):
                self.busy.add(backend)
                return backend
        return None

    async def acquire(self, settings: dict[str, str] | None = None) -> Backend:
        """An idle backend (see take_idle), else wait in line for one."""
        backend = self.take_idle(settings)
        if backend is not None:
            return backend
        waiter = self.wait(None)
        try:
            return await waiter
        except asyncio.CancelledError:
            # the waiting task was cancelled, perhaps just after release() handed it a backend: give it back
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())
            waiter.cancel()
            self.waiters = deque(w for w in self.waiters if w[0] is not waiter)
            raise

    def wait(self, then: Callable[[asyncio.Future[Backend]], None] | None) -> asyncio.Future[Backend]:
        """Wait in line for a backend (the caller found none idle): a future that gets it, or PoolTimeout
        after ``timeout``; ``then`` is called with it once it is done. A session that waits passes a
        callback rather than awaiting in a task of its own, and no waiter has a timer of its own: a
        Task and its steps, or a timer, per wait cost more than the rest of the hand-over."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Backend] = loop.create_future()
        if then is not None:
            waiter.add_done_callback(then)
        now = loop.time()
        self.waiters.append((waiter, now))
        if self._timer is None:
            self._timer = loop.call_at(now + self.timeout, self._expire)
        self._refill()  # below pool_size: a new connection, for the first waiter in line
        return waiter

    def _expire(self) -> None:
        """The head's wait may be over: fail whoever waited ``timeout``, then wake for the new head."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer = None
        waiters = self.waiters
        while waiters and (waiters[0][0].done() or waiters[0][1] + self.timeout <= now):
            waiter, started = waiters.popleft()
            if not waiter.done():
                self.max_wait = max(self.max_wait, now - started)
                waiter.set_exception(PoolTimeout(self._timeout_message()))
        if waiters:
            self._timer = loop.call_at(waiters[0][1] + self.timeout, self._expire)

    def _timeout_message(self) -> str:
        return f"no backend connection became free within pool_timeout ({self.timeout:g}s)"

    def _serve(self, waiter: asyncio.Future[Backend], started: float, backend: Backend) -> None:
        """Hand a busy backend to a waiter."""
        self.max_wait = max(self.max_wait, asyncio.get_running_loop().time() - started)
        waiter.set_result(backend)

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
            waiter, started = self.waiters.popleft()
            if not waiter.done():
                self.busy.add(backend)
                self._serve(waiter, started, backend)
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
        while self.waiters and self.waiters[0][0].done():
            self.waiters.popleft()
        if not self.waiters or self.total >= self.size:
            return
        waiter, started = self.waiters.popleft()
        self.opening += 1
        loop = asyncio.get_running_loop()
        # off the line, so _expire does not see it: its own timer (this path is rare, at most pool_size times)
        timer = loop.call_at(started + self.timeout, _expire_one, waiter, self._timeout_message())

        async def open_for() -> None:
            try:
                backend = await self._open()
            except Exception as exc:
                if not waiter.done():
                    waiter.set_exception(exc)
                return
            finally:
                timer.cancel()
            if waiter.done():
                self.release(backend)
            else:
                self._serve(waiter, started, backend)

        asyncio.get_running_loop().create_task(open_for())

    async def close(self) -> None:
        for backend in list(self.idle):
            backend.conn.close()
        self.idle.clear()


def _expire_one(waiter: asyncio.Future[Backend], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout(message))


def _usable(backend: Backend) -> bool:
    """An idle backend says nothing until asked; one that did (its FATAL before it closes, a
    notice) is closed here and left behind, so nobody is handed what it said."""
    if backend.conn.has_buffered():
        backend.conn.abort()
    return not backend.conn.is_closed


# Backend names are not computable from a statement's text outside this process: a tenant who
# knows another's SQL still cannot name its statement (SQL EXECUTE tg_... is refused besides).
_NAME_SALT = secrets.token_bytes(16)


def backend_name(sql: str, param_types: tuple[int, ...]) -> str:
    """The name a prepared statement gets on backends: the same text and parameter types give the
    same name in this process, so pooled sessions share it and nobody's name can collide with it.

    >>> backend_name("SELECT 1", ()) == backend_name("SELECT 1", ()) != backend_name("SELECT 1", (23,))
    True
    """
    digest = hashlib.sha256(_NAME_SALT + repr((sql, param_types)).encode()).hexdigest()[:24]
    return f"tg_{digest}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the proxy knows of one of the client's protocol-level prepared statements."""

    bname: str  # its name on backends: content-addressed, or "" for the unnamed statement
    parse: bytes  # the Parse that prepares it on a backend (on demand: hand-over, DEALLOCATE ALL)
    kind: str  # the statement kind (metrics)
    tenant_params: tuple[int, ...] = ()  # $n whose Bind value must be the session's tenant
    settings: tuple[tuple[str, str | None], ...] = ()  # session setting changes its Execute makes
    resets: bool = False  # its Execute wipes the settings the proxy applied (RESET ALL, DISCARD ALL)
    texts: tuple[str, str] | None = None  # (client's text, backend's) when rewritten: error positions map back
    bound_settings: tuple[tuple[int | str, int | str, int | str], ...] = ()  # set_config($n...): Plan's


@dataclass(slots=True)
class _Sent:
    """A Parse or Close sent to the backend, waiting for its ParseComplete/CloseComplete."""

    cycle: int
    swallow: bool  # the proxy's own message: its answer goes to nobody
    name: str | None = None  # the client's statement it creates or (``statement`` None) closes
    statement: Prepared | None = None
    crypto: bool = False  # field encryption was told of this Parse: its answer goes there too


class PreparedStatements:
    """Protocol-level prepared statements of one tenant session (both pool modes).

    A named statement never lives on a backend under the client's name but under the
    content-addressed name of :func:`backend_name`: SQL-level EXECUTE or DEALLOCATE cannot
    reach it by the client's name, sessions sharing a pooled backend cannot collide, and it
    is prepared on whichever backend the session holds, on demand (Close + Parse injected
    before the Bind or Describe that needs it). A name this session did not prepare is
    answered as PostgreSQL does (see the session), without reaching anybody's statement.

    The view follows only what the backend acknowledged: a client's Parse or Close changes
    ``names`` on its ParseComplete/CloseComplete; an error drops whatever of that cycle is still
    in flight (the backend skipped it, up to Sync). Until then a lookup sees the pending change,
    which is what the backend runs if it gets that far.
    """

    def __init__(self) -> None:
        self.names: dict[str, Prepared] = {}  # acknowledged: client name -> statement
        self.sent: deque[_Sent] = deque()  # Parse/Close messages in flight, in order
        self.added: list[tuple[int, str]] = []  # (cycle, backend name) assumed prepared

    def lookup(self, name: str) -> tuple[Prepared | None, int | None]:
        """(what a Bind of ``name`` would run, the cycle of its Parse if that is still in flight)."""
        for sent in reversed(self.sent):
            if sent.name == name:
                return sent.statement, None if sent.statement is None else sent.cycle
        return self.names.get(name), None

    def parse(self, backend: Backend, name: str, statement: Prepared, cycle: int) -> bytes:
        """The bytes that prepare the client's statement (the caller refused a duplicate name)."""
        if not name:
            self.sent.append(_Sent(cycle, False, name, statement, crypto=True))
            backend.unnamed = statement
            return statement.parse
        # the same text may be prepared there already (another session's, or a DEALLOCATE ALL
        # that failed): replace it rather than fail
        self.sent.append(_Sent(cycle, True))
        self.sent.append(_Sent(cycle, False, name, statement, crypto=True))
        self._assume(backend, statement.bname, cycle)
        return Close("S", statement.bname).encode() + statement.parse

    def prepare(self, backend: Backend, statement: Prepared, cycle: int) -> bytes:
        """What to send before a Bind or Describe of ``statement`` so that the backend has it."""
        if statement.bname in backend.prepared:
            return b""
        self.sent.append(_Sent(cycle, True))
        self.sent.append(_Sent(cycle, True))
        self._assume(backend, statement.bname, cycle)
        return Close("S", statement.bname).encode() + statement.parse

    def unnamed(self, backend: Backend, statement: Prepared, pending: int | None, cycle: int) -> bytes:
        """What to send before a Bind or Describe of the unnamed statement so that the backend runs
        exactly ``statement``: its Parse again when the backend's unnamed statement is another
        session's (pooled backends keep it across hand-overs) or when its own Parse is still in flight
        in an earlier cycle, which may fail or be skipped and leave an older one there."""
        if backend.unnamed is statement and (pending is None or pending >= cycle):
            return b""
        self.sent.append(_Sent(cycle, True, "", statement, crypto=True))
        backend.unnamed = statement
        return statement.parse

    def close(self, backend: Backend, name: str, cycle: int) -> str | None:
        """The backend name a client's Close of ``name`` closes, or None: unknown, close nothing."""
        statement, _ = self.lookup(name)
        self.sent.append(_Sent(cycle, False, name, None))
        if statement is None:
            return None
        backend.prepared.discard(statement.bname)  # re-prepared if another name needs it
        if not name:
            backend.unnamed = None
        return statement.bname

    def deallocate(self, name: str, cycle: int) -> tuple[bytes, str]:
        """A client's SQL ``DEALLOCATE name`` of its protocol-level statement (one namespace, as in
        PostgreSQL): (what goes before ``DEALLOCATE <backend name>`` in the same message, that name).
        The backend may not hold the statement (prepared on demand): a stand-in under its name gives
        the DEALLOCATE something to drop. The client's name goes on the DEALLOCATE's CommandComplete."""
        statement, _ = self.lookup(name)
        assert statement is not None and statement.bname
        self.sent.append(_Sent(cycle, True))
        self.sent.append(_Sent(cycle, True))
        return Close("S", statement.bname).encode() + Parse(statement.bname, "SELECT NULL").encode(), statement.bname

    def query_sent(self, backend: Backend, *, by_client: bool) -> None:
        """A simple Query went to the backend: PostgreSQL drops the unnamed statement then (the
        client's too, when the Query is the client's; re-prepared on demand when it is the proxy's)."""
        backend.unnamed = None
        if by_client:
            self.names.pop("", None)

    def sent_other(self, cycle: int) -> None:
        """A Parse or Close whose answer the client gets and that changes no name here."""
        self.sent.append(_Sent(cycle, False))

    def _assume(self, backend: Backend, bname: str, cycle: int) -> None:
        backend.prepared.add(bname)
        self.added.append((cycle, bname))

    def answered(self) -> tuple[bool, bool]:
        """A ParseComplete/CloseComplete arrived: apply it. (Is it the answer to the proxy's own
        message, was field encryption told of that Parse)."""
        if not self.sent:
            return False, False
        sent = self.sent.popleft()
        if sent.name is not None:
            if sent.statement is None:
                self.names.pop(sent.name, None)
            else:
                self.names[sent.name] = sent.statement
        return sent.swallow, sent.crypto

    def failed(self, backend: Backend, cycle: int) -> None:
        """An error in this cycle: the backend skipped the rest of it, so assume none of it happened."""
        for c, bname in self.added:
            if c >= cycle:
                backend.prepared.discard(bname)
        self.sent = deque(s for s in self.sent if s.cycle != cycle)

    def cycle_done(self, cycle: int) -> None:
        while self.sent and self.sent[0].cycle <= cycle:
            self.sent.popleft()
        self.added = [(c, b) for c, b in self.added if c > cycle]

    def forget_all(self, backend: Backend) -> None:
        """DEALLOCATE ALL / DISCARD ALL succeeded: every statement on the backend is gone, this
        session's names too (as in PostgreSQL); other sessions re-prepare theirs on demand."""
        backend.prepared.clear()
        backend.unnamed = None
        self.names.clear()
