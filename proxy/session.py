"""The statement pipeline of one client session, in relay mode.

Client frames are scanned for the few message types that carry SQL or identity
(Query, Parse, Bind, FunctionCall); every other message is relayed as the same
bytes, in the same order, in one write per read. Backend frames are scanned for
ReadyForQuery (transaction state) and, only when needed, ErrorResponse.

Refusals keep PostgreSQL's semantics exactly by letting the backend produce the
error: the refused message is replaced by a statement that cannot parse (a random
marker token), the backend aborts the implicit or explicit transaction and skips to
Sync as it would for any error, and the proxy swaps the backend's syntax error for
its own ErrorResponse (SQLSTATE 42501 and the reason). Nothing of the refused
statement reaches the backend, ordering is preserved in pipelines, and the
transaction status the client sees is the one PostgreSQL really has.

A tenant's protocol-level statements live on backends only under proxy-owned names
(:class:`.pool.PreparedStatements`, both pool modes), and what the proxy knows of them
follows the backend's acknowledgements; a transaction-pooled session's setting changes
follow it from backend to backend (:mod:`.tracked`) or pin it.

(Long module: the relay loops and the per-message decisions share one session's state
and its hot path; the pieces without I/O live in pool.py, tracked.py and crypto.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tenantgate.keyring.errors import SqlStateError
from tenantgate.keyring.quoting import unquote_literal
from tenantgate.rewriter import Plan, Refused, statement_names
from tenantgate.rewriter.positions import map_position
from tenantgate.rewriter.roles import read_only_violation
from tenantgate.rewriter.settings import Changes

from . import codec
from .auditing import SessionAudit, first_word
from .backend import BackendError
from .channels import Channels
from .codec import Bind, ErrorResponse, MsgType, Parse, Query
from .encoding import UTF8, ClientEncoding, EncodingError, canonical_name, client_encoding
from .filters import ResponseFilter, run_chain
from .limits import LimitExceeded, TenantLimiter
from .pipeline import Pipeline
from .pool import BackendPool, PoolTimeout, Prepared, PreparedStatements, backend_name
from .rowlimit import RowLimit
from .state import SessionSnapshot
from .timeouts import StatementTimeout
from .tracked import RESET_ALL, Change, TrackedSettings
from .withheld import Withheld

if TYPE_CHECKING:
    from tenantgate.config.schema import Limits

    from .backend import Backend
    from .conn import PgConnection
    from .counters import Metrics
    from .crypto import SessionCrypto
    from .monitor.tally import UserTally

log = logging.getLogger("tenantgate.session")

_ACKS = frozenset((MsgType.PARSE_COMPLETE, MsgType.CLOSE_COMPLETE))
_STATEMENTS = frozenset((MsgType.QUERY, MsgType.EXECUTE))  # what the statement rate limit counts
_CLIENT_SPECIAL = frozenset((MsgType.QUERY, MsgType.PARSE, MsgType.BIND, MsgType.FUNCTION_CALL, MsgType.EXECUTE))
_CLIENT_NAMED = _CLIENT_SPECIAL | {MsgType.DESCRIBE, MsgType.CLOSE}  # tenant sessions: statement names are translated
_EXTENDED = frozenset(  # answered only up to the next Sync
    (MsgType.PARSE, MsgType.BIND, MsgType.DESCRIBE, MsgType.EXECUTE, MsgType.CLOSE, MsgType.FLUSH)
)
# Statement kinds whose session state cannot be handed to another client's transaction.
_PINNING_KINDS = frozenset(("prepare", "listen", "declare", "ddl"))  # ddl: CREATE TEMP ...
# A SET/RESET the plan reports no setting change for (none it could track): pinned, in doubt.
_SETTING_KINDS = frozenset(("set", "reset"))
# ... those that wipe the settings the proxy applied (re-applied right after them),
_RESETTING_KINDS = frozenset(("reset_all", "discard_all"))
# ... those that can undo setting changes of the open transaction in part,
_PARTIAL_UNDO = frozenset(("rollback_to", "rollback", "commit", "begin", "savepoint", "release"))
# Statements that name a prepared statement (SQL and protocol level share one namespace), and the
# words that make a trusted session's unplanned text worth a closer look for them.
_NAMING_KINDS = frozenset(("prepare", "execute", "deallocate"))
_NAMING_WORDS = re.compile(r"prepare|execute|deallocate", re.IGNORECASE)
# ... and the completion tags of statements that drop every prepared statement of the backend.
_DROP_ALL_TAGS = frozenset((b"DEALLOCATE ALL", b"DISCARD ALL"))
_BACKEND_AUDITED = frozenset(
    (MsgType.COMMAND_COMPLETE, MsgType.EMPTY_QUERY_RESPONSE, MsgType.PORTAL_SUSPENDED, MsgType.ERROR_RESPONSE,
     MsgType.READY_FOR_QUERY)
)
_BACKEND_WATCHED = _BACKEND_AUDITED | _ACKS | {MsgType.PARAMETER_STATUS}  # + what the session's filters watch
_COMPLETIONS = frozenset((MsgType.COMMAND_COMPLETE, MsgType.PORTAL_SUSPENDED, MsgType.EMPTY_QUERY_RESPONSE))


# Why a session holds client messages back (Session._hold_why), and the checks they resume at (_admit).
# _CHECK_SEND: bytes made for the backend, held until their write-ahead audit records are durable (strict).
_POOL, _PAUSE, _KEYS, _THROTTLE, _RATE, _STRICT = (
    "pool wait", "PAUSE", "key refresh", "monitoring throttle", "rate limit", "strict audit"
)
_CHECK_PAUSE, _CHECK_KEYS, _CHECK_THROTTLE, _CHECK_RATE, _CHECK_BACKEND, _CHECK_RELAY, _CHECK_SEND = range(7)
_READING = frozenset((_POOL, _STRICT))  # holds over within a round trip: the client is read on (bounded)
_HOLD_READING = 64 * 1024  # bytes such a hold takes in before it stops reading the client


class Refusal(SqlStateError):
    """A statement the proxy (not the rewriter) will not run: SQLSTATE, message and a reason code."""

    def __init__(self, sqlstate: str, message: str, reason: str = "", position: int | None = None) -> None:
        super().__init__(sqlstate, message, reason)
        self.position = position  # 1-based character index into the client's text (field P)


class Session:
    """Relays one client and its backend; decides what of the client's SQL may pass."""

    readonly = False  # set by the client connection for users of the readonly role
    signals: UserTally | None = None  # security monitoring's counts of this user (proxy/monitor/tally.py)

    def __init__(
        self,
        client: PgConnection,
        backend: Backend | None,
        *,
        user: str,
        tenant: str | None,
        rewriter: Any | None,
        paused: set[str],
        audit: SessionAudit | None = None,
        pool: BackendPool | None = None,
        settings: dict[str, str] | None = None,
        metrics: Metrics,
        crypto: SessionCrypto | None = None,
        limiter: TenantLimiter | None = None,
        encoding: ClientEncoding = UTF8,
        reset_encoding: str = "UTF8",
        client_pid: int = 0,
    ) -> None:
        self.client = client
        self.client_pid = client_pid  # the pid of the client's BackendKeyData
        self._backend_fatal = False  # the backend's own FATAL went to the client: its close is no surprise
        self._lost_behind = False  # the backend closed while strict-audit output was behind its record
        # the session's client_encoding, fixed at startup: every client text is decoded and sent in it
        self.encoding = encoding
        # where RESET ALL / DISCARD ALL take the backend's encoding (a pooled backend: its own default)
        self._reset_encoding = reset_encoding if pool is not None else encoding.name
        self._said_goodbye = False  # the client sent Terminate: the backend's close is expected
        # pooled: the client's Terminate came behind whole requests; it is closed once they are answered
        self._leaving = False
        self.backend = backend  # None between transactions in transaction mode
        self.user = user
        self.tenant = tenant
        self.rewriter = rewriter  # tenantgate.rewriter.Rewriter, or None: relay SQL unchanged
        self.status = backend.status if backend is not None else "I"
        # transaction mode: the pool, and the settings applied to each backend we are handed
        self.pool = pool
        self.pinned = pool is None
        self.settings = settings or {}
        # client messages held back, in arrival order, each with the check it resumes at (_admit), and
        # why the session holds (_POOL, _PAUSE, _KEYS, _THROTTLE, _RATE, _STRICT; None: nothing holds): replayed
        # in _replay
        self._hold: deque[tuple[bytes, list[tuple[int, int, int]], int]] = deque()
        self._hold_why: str | None = None
        self._held_bytes = 0  # what arrived while holding (bounds a pool wait, which holds without pausing)
        self._client_paused = False  # _hold_back stopped reading the client
        # tenant sessions (and every pooled one): statements live on backends under proxy-owned names
        self._named = PreparedStatements() if pool is not None or rewriter is not None else None
        self._special = _CLIENT_NAMED if self._named is not None else _CLIENT_SPECIAL
        self._tracked = TrackedSettings(self.settings) if pool is not None else None
        self._rolled_back = False  # ... a ROLLBACK completed in it
        # a hand-over's settings, sent in the same write as the client's messages that follow them
        self._setup_out = b""
        self._intents: list[asyncio.Future[int | None]] = []  # strict audit: the write-ahead records _STRICT waits for
        self.crypto = crypto  # field-level encryption of this tenant session, or None
        self.limiter = limiter  # the tenant's limits (None: trusted users, unlimited)
        # the concerns that look at backend frames (proxy/filters.py), in order; the row limit only while
        # a cap is set, so that rows stay on the relay's fast path otherwise
        self._channels = Channels(tenant, client_pid=client_pid, encoding=encoding) if tenant is not None else None
        filters: tuple[ResponseFilter, ...] = tuple(f for f in (crypto, self._channels) if f is not None)
        self._row_limit = RowLimit(self._limits, self._limit_hit) if limiter is not None else None
        limited = filters if self._row_limit is None else (self._row_limit, *filters)
        self._chains = (filters, limited)
        # the backend frames the relay loop looks at, without and with the row limit (the rest pass as they are)
        self._watched = (_watched(filters), _watched(limited))
        self._redacted = ""  # the last planned statement with its encrypted literals masked
        self._reassert = False  # a RESET ALL / DISCARD ALL was executed: apply the settings after the next Sync
        self._pipe = Pipeline()  # the cycles sent and answered, the proxy's own among them
        self._refusals: deque[tuple[bytes, ErrorResponse, int]] = deque()
        self._rewritten: dict[int, tuple[str, str]] = {}  # cycle -> (client's text, backend's): Query or Bind
        self.statements = 0
        self.refused = 0
        self.busy_since: float | None = None  # monotonic start of the oldest unanswered request
        self._paused = paused  # tenants ("*" = everyone) whose new statements wait (admin PAUSE)
        self.held_since: float | None = None  # monotonic time PAUSE first held a message (SHOW POOLS)
        self.audit = audit
        self.metrics = metrics
        self._proxy_time = 0.0  # this busy period's time spent in the proxy (overhead histogram)
        self._portal = ("unknown", "allowed")  # what the next Execute runs
        self._bound: dict[bytes, Prepared | None] = {}  # portal -> its statement (transaction pooling)
        self._kinds: dict[str, str] = {}  # trusted sessions: statement name -> kind (metrics)
        self._sql_names: set[str] = set()  # SQL-level prepared statements (one namespace with protocol ones)
        self._name_ops: deque[tuple[int, str, str]] = deque()  # (cycle, prepare/deallocate[_protocol], name) sent
        self._refused_parse: tuple[str, str] | None = None  # (name, kind) of a Parse refused before Sync
        # a message before the next Sync was refused: the backend skips the rest up to it (nothing runs)
        self._cycle_refused = False
        # strict audit: client output behind completion records not yet durable
        self._withheld = Withheld(client.write, closed=lambda: client.is_closed, failed=self._withhold_failed,
                                  drained=self._released_all, pause=self._pause_backend,
                                  resume=self._resume_backend) if audit is not None else None
        self._over_rate = False  # this read's statements are refused (53400)
        self._timeout = StatementTimeout(self._limits, self._limit_hit, lambda: self.backend) \
            if limiter is not None else None
        self._move: tuple[BackendPool | None, str] | None = None  # a new placement, taken at the next boundary
        # transaction pooling: the reported settings as the client was last told them (ParameterStatus)
        self.told: dict[str, str] = {}

    # ------------------------------------------------------------------ client -> backend

    def snapshot(self) -> SessionSnapshot:
        """What the console may know of this session now (proxy/state.py)."""
        return SessionSnapshot(self.status, self.busy_since, self.held_since, self._hold_why, self.statements,
                               self.refused, self.pinned, self.pool)

    @property
    def is_paused(self) -> bool:
        return bool(self._paused) and ("*" in self._paused or (self.tenant or "") in self._paused)

    def resume(self) -> None:
        """PAUSE is over for this session: release what it held, then read from the client again."""
        if self._hold_why == _PAUSE:
            self.held_since = None
            self._replay()

    def _hold_back(self, why: str, buf: bytes, frames: list[tuple[int, int, int]], stage: int) -> None:
        """Hold these messages (ahead of any held behind them) until _replay. Reading the client stops
        too, except for a pool wait or a write-ahead record: those are over within a round trip, and
        pausing and resuming would cost syscalls per statement; what arrives meanwhile is held behind
        (on_client), up to _HOLD_READING."""
        self._hold_why = why
        self._hold.appendleft((buf, frames, stage))
        if why not in _READING:
            self._pause_client()

    def _pause_client(self) -> None:
        if not self._client_paused and self.client.transport is not None:
            self._client_paused = True
            self.client.transport.pause_reading()

    def _replay(self) -> None:
        """The one place held messages go on: in order, each from the check it stopped at, until one holds again."""
        self._unhold()
        hold = self._hold
        while hold and self._hold_why is None:
            if self.client.is_closed:
                hold.clear()
                return
            buf, frames, stage = hold.popleft()
            self._admit(buf, frames, stage)
        if self._hold_why is None:
            self._held_bytes = 0
            if self._client_paused and self.client.transport is not None and not self.client.is_closed:
                self._client_paused = False
                self.client.transport.resume_reading()

    def _unhold(self) -> None:
        # Its own method: assigned in _replay, mypy would narrow the attribute to None across _admit
        # (which may hold again) and mypyc would check every later read against that narrowed type.
        self._hold_why = None

    @property
    def at_boundary(self) -> bool:
        """Between transactions with nothing outstanding: where PAUSE holds and placements change."""
        return self.status == "I" and self._pipe.quiet and self._hold_why != _POOL

    def move_to(self, pool: BackendPool | None, search_path: str) -> None:
        """The tenant's placement changed (reload): switch at the next transaction boundary."""
        self._move = (pool, search_path)

    def _take_move(self) -> bool:
        """Apply a pending placement change; False when the session had to end for it."""
        assert self._move is not None
        pool, search_path = self._move
        # a backend carrying session state, or statements planned for the old placement: start afresh
        if pool is None or self.pool is None or self.pinned or (self._named is not None and self._named.names):
            self._end(codec.error("57P01", "tenant placement changed; reconnect", severity="FATAL"))
            return False
        self._move = None
        if self.backend is not None:  # idle between transactions: give it back to its old pool
            backend, self.backend = self.backend, None
            self.client.backpressure_peer = None
            self._release_backend(backend)
        self.pool = pool
        self.settings["search_path"] = search_path
        return True

    def on_client(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        if self._leaving:  # nothing after a Terminate is the client's
            return
        if self._hold_why is not None:  # arrived before reading paused: behind what is held, through every check
            self._hold.append((buf, frames, _CHECK_PAUSE))
            self._held_bytes += len(buf)
            if self._held_bytes > _HOLD_READING:  # a hold that reads on (_READING) is bounded here
                self._pause_client()
            return
        self._admit(buf, frames, _CHECK_PAUSE)

    def _admit(self, buf: bytes, frames: list[tuple[int, int, int]], stage: int) -> None:
        """Take client messages through the session's checks from ``stage`` on, in this order, to the
        backend; a check that must wait holds them (_hold_back) and they resume at that check, or past it."""
        if stage == _CHECK_SEND:  # made for the backend; its write-ahead records are durable now
            if self.backend is not None:
                self.backend.conn.write(buf)
            return
        if stage <= _CHECK_PAUSE:
            if self._paused and self.is_paused and self.at_boundary:
                if self.held_since is None:
                    self.held_since = time.monotonic()
                self._hold_back(_PAUSE, buf, frames, _CHECK_PAUSE)
                return
            cut = next((i for i, f in enumerate(frames) if f[0] == MsgType.TERMINATE), None)
            if cut is not None:
                self._said_goodbye = True  # nothing more is written to this client, a backend FATAL included
            if self.pool is not None and cut is not None:
                # a pooled backend outlives its clients: their Terminate (and anything after it) is for the
                # proxy. What came before it runs, as PostgreSQL runs it; when that ends a cycle the client is
                # closed once it is answered, so the backend goes back to the pool clean rather than closed
                # mid-answer (an unsynced tail: closed now, and the backend with it)
                frames = frames[:cut]
                if frames and _ends_synced(frames, self._pipe.unsynced):
                    self._leaving = True
                    self._hold.clear()  # what is held now came after the Terminate; what it ends may still wait
                else:
                    self.client.close()
                if not frames:
                    return
                buf = buf[: frames[-1][2]]
        # a new placement (RELOAD) is taken at the boundary, held messages included (not once handed a backend)
        if stage < _CHECK_RELAY and self._move is not None and self.at_boundary and not self._take_move():
            return
        crypto = self.crypto
        if stage <= _CHECK_KEYS and crypto is not None and not crypto.keys_fresh():
            self._hold_back(_KEYS, buf, frames, _CHECK_THROTTLE)
            asyncio.get_running_loop().create_task(self._reload_keys())
            return
        signals = self.signals
        if stage <= _CHECK_THROTTLE and signals is not None and signals.throttle is not None:
            # a monitoring response holds: the tokens are taken now, so the replay resumes after this check
            wait = signals.throttle.delay(sum(1 for f in frames if f[0] in _STATEMENTS))
            if wait > 0:
                self._hold_back(_THROTTLE, buf, frames, _CHECK_RATE)
                asyncio.get_running_loop().call_later(wait, self._replay)
                return
        limiter = self.limiter
        if stage <= _CHECK_RATE and limiter is not None and limiter.limits.statements_per_second is not None:
            count = sum(1 for f in frames if f[0] in _STATEMENTS)
            delay = limiter.take(count) if count else 0.0
            if delay is None:
                self.metrics.limit_hit(self.tenant, "statements_per_second")
                self._over_rate = True
            elif delay > 0:  # over the statement rate: they wait for their tokens (at most rate_limit_wait)
                self._hold_back(_RATE, buf, frames, _CHECK_BACKEND)
                asyncio.get_running_loop().call_later(delay, self._replay)
                return
        if self.backend is None:
            self._wait_for_backend(buf, frames)
            return
        self._relay_client(buf, frames)

    async def _reload_keys(self) -> None:
        assert self.crypto is not None
        try:
            await self.crypto.refresh()
        except Exception as exc:  # statements then fail closed (55000) on their own
            log.error("loading the keys of tenant %s failed: %s", self.tenant, exc)
        self._replay()

    # ------------------------------------------------------------------ transaction pooling

    def _wait_for_backend(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        assert self.pool is not None
        limiter = self.limiter
        if limiter is None or limiter.take_backend():
            backend = self.pool.take_idle(self._desired())  # the common case: a backend is free right now
            if backend is not None:
                self._hand_over(backend)
                self._relay_client(buf, frames)
                return
            self._hold_back(_POOL, buf, frames, _CHECK_RELAY)
            self.pool.wait(self._handed)  # the tenant's slot is held while waiting, as _acquire does
            return
        self._hold_back(_POOL, buf, frames, _CHECK_RELAY)
        asyncio.get_running_loop().create_task(self._acquire())  # waits for a slot of the tenant first

    async def _acquire(self) -> None:
        assert self.pool is not None and self.limiter is not None
        try:
            await self.limiter.acquire_backend(self.pool.timeout)
        except LimitExceeded as exc:
            self.metrics.limit_hit(self.tenant, exc.limit)
            self._end(codec.error(exc.sqlstate, exc.message, severity="FATAL"))
            return
        try:
            backend = await self.pool.acquire(self._desired())
        except (PoolTimeout, BackendError) as exc:
            self._failed_wait(exc)
            return
        self._got_backend(backend)

    def _handed(self, waiter: asyncio.Future[Backend]) -> None:
        """The pool's answer to this session's wait (BackendPool.wait): a backend, or why there is none."""
        exc = waiter.exception()  # nobody cancels it: the pool's timer fails it instead
        if exc is None:
            self._got_backend(waiter.result())
        elif isinstance(exc, PoolTimeout | BackendError):
            self._failed_wait(exc)
        else:  # opening a new backend connection failed otherwise (an OSError, say): the session ends, never waits on
            log.error("opening a pooled backend connection failed: %r", exc)
            self._failed_wait(BackendError(codec.error("08006", "could not connect to the backend", severity="FATAL")))

    def _got_backend(self, backend: Backend) -> None:
        if self.client.is_closed:
            self._release_backend(backend)
            return
        self._hand_over(backend)
        self._replay()

    def _failed_wait(self, exc: PoolTimeout | BackendError) -> None:
        if self.limiter is not None:
            self.limiter.release_backend()
        self._end(exc.error if isinstance(exc, BackendError) else codec.error("53300", str(exc), severity="FATAL"))

    def _hand_over(self, backend: Backend) -> None:
        """A pooled backend for this transaction, carrying exactly this session's settings."""
        self.attach(backend)
        setup = self.setup_sql(backend)
        if setup:  # always followed by _relay_client of what waited for this backend
            self._setup_out = self._setup_bytes(setup)

    def attach(self, backend: Backend) -> None:
        self.backend = backend
        self.status = backend.status
        self.client.backpressure_peer = backend.conn
        backend.conn.backpressure_peer = self.client
        backend.conn.on_lost = self._backend_lost
        backend.conn.enter_relay(self.on_backend)
        if self._channels is not None:
            self._channels.backend_pid = backend.pid

    def _desired(self) -> dict[str, str]:
        assert self._tracked is not None
        return self._tracked.desired()

    def setup_sql(self, backend: Backend) -> str:
        """SETs that make a handed-over backend carry exactly this session's settings."""
        assert self._tracked is not None
        return self._tracked.setup_sql(backend)

    def _setup_bytes(self, sql: str, *, tolerant: bool = False) -> bytes:
        """A query whose answer the proxy swallows (counted as one cycle of its own). ``tolerant``:
        it may fail, in a transaction the client's statement aborted (see _swallowed_error)."""
        self._pipe.inject(may_fail=tolerant)
        if self._named is not None and self.backend is not None:
            self._named.query_sent(self.backend, by_client=False)
        return Query(sql).encode()

    def _inject_abort(self) -> None:
        """Fail the backend's transaction block, as the client was told (a value could not be decrypted)."""
        assert self.backend is not None
        self._pipe.inject(may_fail=True)
        if self._named is not None:
            self._named.query_sent(self.backend, by_client=False)
        self.backend.conn.write(Query("tenantgate_decryption_failed_" + secrets.token_hex(8)).encode())

    def _between_transactions(self) -> bool:
        """Transaction pooling, the transaction over and nothing outstanding: the backend can go."""
        return not (
            self.pinned
            or self.backend is None
            or self.status != "I"
            or not self._pipe.quiet
            or (self._withheld is not None and self._withheld.paused)
            or self._hold_why in _READING
        )

    def _maybe_release(self) -> None:
        """Hand the backend back once the transaction is over and nothing is outstanding."""
        if self._between_transactions():
            self._drop_backend(release=True)

    def _drop_backend(self, *, release: bool = False) -> None:
        """Let go of the backend between transactions: back to the pool, or closed (it is dying)."""
        backend = self.backend
        assert backend is not None
        self.backend = None
        self.client.backpressure_peer = None
        self._release_backend(backend, discard=not release)

    def _release_backend(self, backend: Backend, *, discard: bool = False) -> None:
        """Give a pooled backend back (or close it: mid-transaction, pinned) and free the tenant's slot."""
        assert self.pool is not None
        if discard:
            self.pool.discard(backend)
        else:
            self.pool.release(backend)
        if self.limiter is not None:
            self.limiter.release_backend()

    def _pin(self, why: str) -> None:
        if not self.pinned:
            self.pinned = True
            log.debug("session pinned to its backend: %s", why)

    def _backend_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, codec.ProtocolError):
            log.warning("backend protocol error: %s", exc)
        if self._withheld is not None and self._withheld.holding and not self.client.is_closed:
            self._lost_behind = True  # what it said before closing (its FATAL, say) is released first
            return
        if self._backend_fatal:  # the client was told why, in PostgreSQL's words (57P01, 25P03, ...)
            self.client.close()
            return
        self._end(codec.error("08006", "server closed the connection unexpectedly", severity="FATAL"))

    def _end(self, err: ErrorResponse) -> None:
        if self._said_goodbye:  # the client is leaving: it expects no answer, and a FATAL crashes some drivers
            self.client.close()
        elif not self.client.is_closed:
            self.client.write(err.encode())
            self.client.close()

    def detach(self) -> None:
        """The client is gone: return or drop the backend."""
        if self._timeout is not None:
            self._timeout.stop()
        backend, self.backend = self.backend, None
        if backend is None:
            return
        if self.pool is None:
            backend.conn.on_lost = None
            backend.conn.write(codec.Terminate().encode())
            backend.conn.close()
        else:  # mid-transaction or pinned state: closing it rolls back and forgets everything
            clean = self.status == "I" and self._pipe.quiet
            self._release_backend(backend, discard=not clean or self.pinned)

    def _relay_client(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        if self.busy_since is None:
            self.busy_since = time.monotonic()
            if self._timeout is not None:
                self._timeout.start()
        t0 = time.perf_counter()
        special = self._special
        crypto = self.crypto
        out: bytearray | None = None
        mark = 0
        for mtype, start, end in frames:
            if mtype == MsgType.SYNC:
                self._pipe.sync()
                self._refused_parse = None
                self._cycle_refused = False
                if crypto is not None:
                    crypto.on_request(mtype, None)
                if not self._reassert:
                    continue
                replacement = buf[start:end]
            else:
                if mtype in _EXTENDED:
                    self._pipe.extended()
                if mtype not in special:
                    continue
                changed = self._client_message(mtype, buf, start, end)
                if changed is None and not (self._reassert and mtype == MsgType.QUERY):
                    continue
                replacement = buf[start:end] if changed is None else changed
            if self._reassert and not self._pipe.unsynced:
                # the client wiped the session's settings: apply them again before its next statement
                self._reassert = False
                assert self.backend is not None
                replacement += self._setup_bytes(self.setup_sql(self.backend), tolerant=True)
            if out is None:
                out = bytearray()
            out += buf[mark:start]
            out += replacement
            mark = end
        backend = self.backend
        assert backend is not None
        data = buf if out is None else bytes(out + buf[mark:])
        if self._setup_out:
            data, self._setup_out = self._setup_out + data, b""
        self._over_rate = False
        if self.audit is not None and self.audit.intents:
            self._gate(data)  # strict audit: only once the write-ahead records are durable
        else:
            backend.conn.write(data)
        self._proxy_time += time.perf_counter() - t0

    def _limits(self) -> Limits:
        assert self.limiter is not None
        return self.limiter.limits  # live: a reload's new limits apply to the next statement

    def _limit_hit(self, limit: str) -> None:
        """A tenant limit refused, cut or delayed something of this session: counted twice, as SHOW
        LIMITS and the metrics report them."""
        assert self.limiter is not None
        self.limiter.hits[limit] += 1
        self.metrics.limit_hit(self.tenant, limit)

    def _gate(self, data: bytes) -> None:
        """Hold bytes made for the backend until their statements' write-ahead records are on disk;
        what the client sends meanwhile waits behind them, in the one hold queue."""
        assert self.audit is not None
        self._intents, self.audit.intents = self.audit.intents, []
        self._hold_back(_STRICT, data, [], _CHECK_SEND)
        for intent in self._intents:  # callbacks, not a task per statement: _open_gate runs as each is durable
            intent.add_done_callback(self._open_gate)

    def _open_gate(self, _durable: asyncio.Future[int | None]) -> None:
        """Once every record it waits for is durable, the strict hold goes on (_replay); a record that
        failed ends the session instead, the statement unsent."""
        intents = self._intents
        if self._hold_why != _STRICT or not all(intent.done() for intent in intents):
            return
        self._intents = []
        if any(intent.cancelled() or intent.exception() is not None for intent in intents):
            log.error("write-ahead audit record failed: the statement is not sent; closing the session")
            self._hold.clear()
            self._end(
                codec.error(
                    "58030",
                    "the audit log cannot be written: the statement was not run and the session is closed",
                    severity="FATAL",
                )
            )
            if self.backend is not None:
                self.backend.conn.abort()  # rolls back whatever transaction is open
            return
        self._replay()

    def _client_message(self, mtype: int, buf: bytes, start: int, end: int) -> bytes | None:
        """Bytes that replace this message, or None to relay it unchanged."""
        body = buf[start + 5 : end]
        audit = self.audit
        sql = ""
        try:
            if mtype == MsgType.QUERY:
                cycle = self._pipe.query()
                self.statements += 1
                if self._named is not None and self.backend is not None:  # whatever it is, even refused
                    self._named.query_sent(self.backend, by_client=True)
                if self.crypto is not None:  # one answer cycle, whatever is sent in its place
                    self.crypto.on_request(MsgType.QUERY, None)
                try:
                    text = sql = codec.query_text(body, self.encoding)
                except EncodingError as exc:
                    raise Refusal(exc.sqlstate, str(exc), "encoding") from None
                self._check_rate()
                self._check_audit()
                plan = self._plan(sql, extended=False)
                rewritten, kinds = plan.sql, plan.kinds
                self._check_encoding(plan)
                sql = self._redacted
                changes = self._setting_changes(plan)
                dropped = self._sql_statement_names(text, kinds)
                if self.pool is not None:
                    self._track_state(plan, changes)  # may refuse: a reset that is not the last statement
                    self._settings_sent(changes, cycle)
                for kind in kinds or (first_word(sql),):
                    self.metrics.statement(self.tenant, kind, "allowed")
                if audit is not None:
                    audit.query(sql, rewritten, kinds, cycle)
                prefix = b""
                if dropped is not None and self._named is not None:  # last: it queues messages
                    prefix, bname = self._named.deallocate(dropped, cycle)
                    self._name_ops.append((cycle, "deallocate_protocol", dropped))
                    rewritten = f"DEALLOCATE {bname}"
                # the backend gets the verified text in the session's encoding: the client's bytes only if identical
                try:
                    query = codec.query_bytes(rewritten, self.encoding)
                except EncodingError as exc:
                    raise Refusal(exc.sqlstate, str(exc), "encoding") from None
                if rewritten != text:
                    self._rewritten[cycle] = (text, rewritten)
                return None if query == buf[start:end] else prefix + query
            if mtype == MsgType.PARSE:
                try:
                    name, sql, param_types = codec.parse_parts(body, self.encoding)
                except EncodingError as exc:
                    raise Refusal(exc.sqlstate, str(exc), "encoding") from None
                return self._parse(name, sql, param_types, buf[start:end])
            if mtype == MsgType.BIND:
                return self._bind(body)
            if mtype in (MsgType.DESCRIBE, MsgType.CLOSE):  # tenant and pooled sessions only: translate statement names
                return self._describe_close(mtype, body)
            if mtype == MsgType.EXECUTE:
                self.statements += 1
                self._check_rate()
                if audit is not None and not self._cycle_refused:  # skipped by the backend: no record says it ran
                    self._check_audit()
                    msg = codec.decode_frontend(mtype, body)
                    assert isinstance(msg, codec.Execute)
                    audit.execute(msg.portal, self._pipe.next)
                kind, decision = self._portal
                self.metrics.statement(self.tenant, kind, decision)
                if self._tracked is not None:
                    self._execute_settings(body.partition(b"\x00")[0])
                if self.crypto is not None:  # may describe the portal first, to know what to decrypt
                    return self.crypto.on_request(MsgType.EXECUTE, codec.decode_frontend(mtype, body))
                return None
            # FunctionCall: the fast-path protocol bypasses every SQL check
            self._pipe.query()
            raise Refusal("42501", "the function call protocol is not allowed through tenantgate", "function_call")
        except Refusal as refusal:
            self.refused += 1
            if self.signals is not None:
                self.signals.refused(refusal.reason)
            self.metrics.error(refusal.sqlstate)
            if mtype in _EXTENDED:  # not a Query or FunctionCall: those are a cycle of their own
                self._cycle_refused = True
            if mtype == MsgType.BIND:
                self._portal = (self._portal[0], "refused")
            elif mtype == MsgType.EXECUTE:
                self.metrics.statement(self.tenant, self._portal[0], "refused")
            elif mtype == MsgType.PARSE:  # counted at its Execute (the backend skips it: the Parse failed first)
                self._refused_parse = (self._parse_name(body), first_word(sql))
            else:
                kind = first_word(sql) if mtype == MsgType.QUERY else "function_call"
                self.metrics.statement(self.tenant, kind, "refused")
            if audit is not None:
                audit.refused(sql, refusal.sqlstate, refusal.reason, refusal.message)
            return self._inject(refusal, simple=mtype in (MsgType.QUERY, MsgType.FUNCTION_CALL))

    def _decode(self, mtype: int, body: bytes) -> object:
        """A client message whose text is decoded in the session's encoding, as the backend reads it."""
        try:
            return codec.decode_frontend(mtype, body, self.encoding)
        except EncodingError as exc:
            raise Refusal(exc.sqlstate, str(exc), "encoding") from None

    def _bind_statement(self, body: bytes) -> str:
        try:
            return codec.bind_statement(body, self.encoding)
        except EncodingError as exc:
            raise Refusal(exc.sqlstate, str(exc), "encoding") from None

    def _check_encoding(self, plan: Plan) -> None:
        """client_encoding is fixed for a tenant session: the proxy lexes in it, so the backend must read in it.
        The rewriter lists every session-level change (SET, SET NAMES, RESET, literal set_config) in
        ``plan.settings`` as a quoted literal and refuses the other forms (LOCAL, non-literal values).
        (Trusted sessions are not rewritten: they may change it, and the proxy follows, see _parameter_status.)"""
        if self.tenant is None:
            return
        changes = [value for name, value in plan.settings if name == "client_encoding"]
        if self._reset_encoding != self.encoding.name and ("reset_all" in plan.kinds or "discard_all" in plan.kinds):
            changes.append(None)
        for value in changes:
            target = self._reset_encoding if value is None else canonical_name(unquote_literal(value) or "")
            if target != self.encoding.name:
                raise Refusal(
                    "0A000",
                    f"client_encoding is fixed for this session ({self.encoding.name}): "
                    "set it in the connection string (client_encoding) instead",
                    "client_encoding",
                )

    @staticmethod
    def _parse_name(body: bytes) -> str:
        return body.partition(b"\x00")[0].decode("utf-8", "replace")

    def _parse(self, name: str, text: str, param_types: tuple[int, ...], raw: bytes) -> bytes | None:
        """A client's Parse: planned, sealed, and (tenant sessions) prepared under its backend name."""
        named = self._named
        if named is not None and name and (named.lookup(name)[0] is not None or name in self._sql_names):
            # PostgreSQL's answer; the content-addressed names would otherwise let it pass
            raise Refusal("42P05", f'prepared statement "{name}" already exists', "duplicate_statement")
        plan = self._plan(text, extended=True)
        self._check_encoding(plan)
        sql = self._redacted
        kind = plan.kinds[0] if plan.kinds else first_word(sql)
        changes = self._setting_changes(plan)
        if self.pool is not None:
            self._track_state(plan, changes)
        crypto = self.crypto
        bname = name
        if named is not None and name:
            types = param_types
            if crypto is not None:  # encrypted parameters are declared bytea to the backend
                try:
                    types = crypto.sealed_types(types, plan.encrypt_params)[0]
                except Refused as exc:
                    raise Refusal(exc.sqlstate, exc.message, exc.reason) from None
            bname = backend_name(plan.sql, types)
        if self.audit is not None:
            self.audit.parse(bname, sql, plan.sql, kind)
        # the backend gets the verified text in the session's encoding: the client's bytes only if identical
        try:
            sent = codec.parse_bytes(bname, plan.sql, param_types, self.encoding)
        except EncodingError as exc:
            raise Refusal(exc.sqlstate, str(exc), "encoding") from None
        data = None if sent == raw else sent
        if crypto is not None:
            try:
                parse = Parse(bname, plan.sql, param_types)
                data = crypto.on_request(MsgType.PARSE, parse, plan.encrypt_params) or data
            except Refused as exc:
                raise Refusal(exc.sqlstate, exc.message, exc.reason) from None
        if named is None:
            self._kinds[name] = kind
            return data
        assert self.backend is not None
        resets = self._tracked is not None and self._tracked.resets_base(changes)
        _check_bound_types(plan, param_types)
        texts = (text, plan.sql) if plan.sql != text else None
        statement = Prepared(bname, data or sent, kind, plan.tenant_params, tuple(changes), resets, texts,
                             plan.bound_settings)
        return named.parse(self.backend, name, statement, self._pipe.next)

    def _bind(self, body: bytes) -> bytes | None:
        """A client's Bind: checked against the statement the backend will run, under its backend name."""
        named = self._named
        name = self._bind_statement(body)
        statement, pending = named.lookup(name) if named is not None else (None, None)
        refused = self._refused_parse
        if refused is not None and refused[0] == name:  # the backend skips it: the refused Parse failed first
            self._portal = (refused[1], "refused")
        else:
            self._portal = (statement.kind if statement is not None else self._kinds.get(name, "unknown"), "allowed")
        if named is None:  # a trusted session relays its own names (SQL and protocol level share them)
            if self.audit is not None:
                self._audit_bind(body)
            return None
        if statement is not None and statement.bound_settings:
            bound = self._decode(MsgType.BIND, body)
            assert isinstance(bound, Bind)
            statement = self._bind_settings(statement, bound)
        if self._tracked is not None:
            self._bound[body.partition(b"\x00")[0]] = statement
        if statement is None:  # the unnamed one too: a pooled backend may hold another session's
            missing = codec.rename_bind(body, self._missing(name))
            if self.audit is not None:
                self._audit_bind(missing[5:])
            return missing
        frame = codec.rename_bind(body, statement.bname) if statement.bname != name else None
        # what an error of its Execute points into (utility statements are analysed then: PREPARE, EXPLAIN)
        self._rewritten.pop(self._pipe.next, None)
        if statement.texts is not None:
            self._rewritten[self._pipe.next] = statement.texts
        crypto, audit = self.crypto, self.audit
        if statement.tenant_params or audit is not None or crypto is not None:
            bind = self._decode(MsgType.BIND, body if frame is None else frame[5:])
            assert isinstance(bind, Bind)
            self._check_bind(bind, statement.tenant_params)
            if crypto is not None:
                try:
                    sealed = crypto.on_request(MsgType.BIND, bind)
                except Refused as exc:
                    raise Refusal(exc.sqlstate, exc.message, exc.reason) from None
                if sealed is not None:  # the audit sees the ciphertext of encrypted values
                    frame = sealed
                    bind = codec.decode_frontend(MsgType.BIND, sealed[5:])  # type: ignore[assignment]
                    assert isinstance(bind, Bind)
            if audit is not None:
                audit.bind(bind)
        prefix = self._prepare_for(name, statement, pending)
        if not prefix and frame is None:
            return None
        return prefix + (codec.rename_bind(body, name) if frame is None else frame)

    def _bind_settings(self, statement: Prepared, bind: Bind) -> Prepared:
        """The statement with the setting changes its set_config($n, ...) calls make with these values,
        checked as their literal form would be (refused the same way); the Bind reaches the backend
        unchanged, so the backend holds exactly the values checked here."""
        assert self.rewriter is not None
        assert self.tenant is not None
        changes = Changes(self.rewriter.policy.for_tenant(self.tenant).search_path)
        try:
            for spec in statement.bound_settings:
                name, value, local = (self._bound_text(bind, arg, is_local=i == 2) for i, arg in enumerate(spec))
                changes.bind_set_config(name, value, local)
        except Refused as exc:
            raise Refusal(exc.sqlstate, exc.message, exc.reason) from None
        if changes.pins and self.pool is not None:
            self._pin(", ".join(changes.pins))
        return replace(statement, settings=statement.settings + tuple(changes.settings))

    def _bound_text(self, bind: Bind, arg: int | str, *, is_local: bool) -> str:
        """A set_config() argument: a literal's text, or the value the Bind gives its $n (as text)."""
        if isinstance(arg, str):
            return arg
        formats = bind.param_formats
        binary = bool(formats) and formats[0 if len(formats) == 1 else min(arg, len(formats)) - 1] != 0
        value = bind.params[arg - 1] if arg <= len(bind.params) else None
        if value is None:
            raise Refusal("0A000", f"set_config() needs ${arg} as a non-NULL value through tenantgate",
                          "set_config_bind")
        if binary and is_local:  # a boolean's binary form (the only type is_local takes)
            if value not in (b"\x00", b"\x01"):
                raise Refusal("22P03", f"incorrect binary data format in bind parameter {arg}", "set_config_bind")
            return "true" if value == b"\x01" else "false"
        try:  # a text (or varchar) value's binary form is its text: the same bytes
            return self.encoding.decode(value)
        except EncodingError as exc:
            raise Refusal(exc.sqlstate, str(exc), "encoding") from None

    def _audit_bind(self, body: bytes) -> None:
        assert self.audit is not None
        bind = self._decode(MsgType.BIND, body)
        assert isinstance(bind, Bind)
        self.audit.bind(bind)

    def _prepare_for(self, name: str, statement: Prepared, pending: int | None) -> bytes:
        """What goes before a Bind or Describe of ``statement`` so the backend runs exactly it."""
        named, backend = self._named, self.backend
        assert named is not None and backend is not None
        cycle = self._pipe.next
        if name:
            return named.prepare(backend, statement, cycle)
        prefix = named.unnamed(backend, statement, pending, cycle)
        if prefix and self.crypto is not None:
            self.crypto.parse_again("")
        return prefix

    def _missing(self, name: str) -> str:
        """A statement name no backend has; its "does not exist" error becomes PostgreSQL's for ``name``."""
        marker = "tenantgate_missing_" + secrets.token_hex(8)
        what = f'prepared statement "{name}"' if name else "unnamed prepared statement"
        err = codec.error("26000", f"{what} does not exist")
        self._refusals.append((marker.encode(), err, self._pipe.sent))
        return marker

    def _describe_close(self, mtype: int, body: bytes) -> bytes | None:
        named, backend, crypto = self._named, self.backend, self.crypto
        assert named is not None and backend is not None
        msg = self._decode(mtype, body)
        assert isinstance(msg, codec.Describe | codec.Close)
        cycle = self._pipe.next
        if msg.kind == "P":  # portals live in one transaction, on the backend it holds: names as they are
            if isinstance(msg, codec.Close):
                named.sent_other(cycle)
            if crypto is not None:
                crypto.on_request(mtype, msg)
            return None
        if isinstance(msg, codec.Close):
            # a name this session never prepared closes nothing, as in PostgreSQL (CloseComplete)
            bname = named.close(backend, msg.name, cycle)
            close = codec.Close("S", "tenantgate_none_" + secrets.token_hex(8) if bname is None else bname)
            return None if close == msg else close.encode()
        statement, pending = named.lookup(msg.name)
        if statement is None:
            describe = codec.Describe("S", self._missing(msg.name))
            prefix = b""
        else:
            describe = codec.Describe("S", statement.bname)
            prefix = self._prepare_for(msg.name, statement, pending)
        if crypto is not None:
            crypto.on_request(mtype, describe)
        return None if describe == msg and not prefix else prefix + describe.encode()

    def _sql_statement_names(self, sql: str, kinds: tuple[str, ...]) -> str | None:
        """SQL PREPARE/EXECUTE/DEALLOCATE share one namespace with the client's protocol-level names, as
        in PostgreSQL, although those live on backends under other names. The name of the client's
        protocol-level statement a lone DEALLOCATE drops (translated by the caller), else None.
        Only this session's own names are ever translated, never to anybody else's."""
        named = self._named
        if named is None or self.backend is None or self.status == "E":  # aborted: the backend refuses it (25P02)
            return None
        if kinds and not _NAMING_KINDS.intersection(kinds):
            return None
        if not kinds and not _NAMING_WORDS.search(sql):  # trusted sessions: not planned, look closer only then
            return None
        refs = statement_names(sql)
        protocol = [(kind, name) for kind, name in refs if kind and named.lookup(name)[0] is not None]
        if not protocol:
            self._name_ops.extend((self._pipe.sent, k, name) for k, name in refs if k in ("prepare", "deallocate"))
            return None
        kind, name = protocol[0]
        if kind == "prepare":
            raise Refusal("42P05", f'prepared statement "{name}" already exists', "duplicate_statement")
        if kind == "execute":
            raise Refusal("0A000", f'EXECUTE of "{name}", a statement prepared with the extended protocol, is not '
                          "supported through tenantgate: bind it with the extended protocol instead",
                          "execute_protocol_statement")
        if len(refs) > 1:
            raise Refusal("0A000", f'DEALLOCATE of "{name}", a statement prepared with the extended protocol, must be '
                          "alone in its query through tenantgate", "deallocate_not_alone")
        return name

    def _setting_changes(self, plan: Plan) -> list[Change]:
        """The session-level setting changes of a plan, RESET ALL / DISCARD ALL included."""
        changes: list[Change] = list(plan.settings)
        if _RESETTING_KINDS.intersection(plan.kinds):
            changes.append(RESET_ALL)
        return changes

    def _track_state(self, plan: Plan, changes: list[Change]) -> None:
        """Transaction mode: session state that must not reach another client pins this one."""
        kinds = plan.kinds
        pinning = set(_PINNING_KINDS.intersection(kinds)) | set(plan.pins)
        if _SETTING_KINDS.intersection(kinds) and not (plan.settings or plan.pins) and self.backend is not None:
            # the plan lists session-level changes only, and the rewriter reports the rest as pins: this is
            # SET LOCAL / SET TRANSACTION or a no-op of a pinned setting (standard_conforming_strings = on,
            # the pinned search_path). The next client's hand-over starts from RESET ALL all the same.
            self.backend.unknown_settings = True
        if changes and _PARTIAL_UNDO.intersection(kinds):
            pinning.add("settings changed beside transaction control")  # which of them stick is unclear
        if "rollback_to" in kinds and self._tracked is not None and self._tracked.in_doubt:
            pinning.add("ROLLBACK TO SAVEPOINT after setting changes")
        if pinning:
            self._pin(", ".join(sorted(pinning)))
        if (
            self._tracked is not None
            and len(kinds) > 1
            and self._tracked.resets_base(changes)
            and kinds[-1] not in _RESETTING_KINDS | {"reset"}
        ):
            raise Refusal(
                "0A000",
                "RESET ALL, DISCARD ALL or RESET of a setting must be the last statement of a query through "
                "tenantgate (the session's settings are re-applied right after it)",
                "reset_not_last",
            )

    def _settings_sent(self, changes: list[Change], cycle: int) -> None:
        """Statements changing these settings were sent in ``cycle``: the backend is dirty for them."""
        tracked = self._tracked
        if tracked is None or not changes:
            return
        tracked.change(changes, cycle, self.backend)
        if tracked.resets_base(changes):
            self._reassert = True

    def _execute_settings(self, portal: bytes) -> None:
        """An Execute: the setting changes of the portal's statement happen now."""
        if self._reassert:  # a resetting statement ran before in this batch: settings are re-applied at Sync
            raise Refusal(
                "0A000",
                "after RESET ALL, DISCARD ALL or RESET of a setting, send Sync before the next Execute through "
                "tenantgate (the session's settings are re-applied there)",
                "reset_not_last",
            )
        statement = self._bound.get(portal)
        if statement is not None and statement.settings:
            self._settings_sent(list(statement.settings), self._pipe.next)

    def _check_rate(self) -> None:
        if self._over_rate:
            assert self.limiter is not None
            raise Refusal(
                "53400",
                f"statement rate limit of tenant {self.tenant} exceeded "
                f"({self.limiter.limits.statements_per_second:g} statements per second)",
                "statements_per_second",
            )

    def _check_audit(self) -> None:
        if self.audit is not None and not self.audit.accepting:
            raise Refusal(
                "58030", "the audit log cannot be written: statement refused (audit on_failure = refuse)", "audit"
            )

    def _plan(self, sql: str, *, extended: bool) -> Plan:
        """The plan for the backend (the client's text unchanged when there is no rewriter)."""
        rewriter = self.rewriter
        self._redacted = sql
        if rewriter is None:
            plan = Plan(sql, ())
        else:
            encrypt = self.crypto.sealing() if self.crypto is not None else None
            try:
                plan = rewriter.plan(sql, self.tenant, extended=extended, encrypt=encrypt)
            except Refused as exc:
                raise Refusal(exc.sqlstate, exc.message, exc.reason, exc.position) from None
            if self.signals is not None:
                self.signals.planned(sql, plan.cached)
            for start, end in sorted(plan.redactions, reverse=True):  # encrypted literals never reach the audit
                self._redacted = self._redacted[:start] + "'***'" + self._redacted[end:]
        if self.readonly and (what := read_only_violation(sql, plan.kinds)) is not None:
            raise Refusal("25006", f"cannot execute {what} in a read-only session", "read_only")
        return plan

    def _check_bind(self, bind: Bind, wanted: tuple[int, ...]) -> None:
        try:
            tenant: bytes | None = self.encoding.encode(self.tenant or "")
        except EncodingError:  # the session cannot even spell its tenant: no value can match it
            tenant = None
        for n in wanted:
            value = bind.params[n - 1] if n <= len(bind.params) else None
            if value != tenant:
                raise Refusal(
                    "42501",
                    f"parameter ${n} sets the tenant column to a value other than the session's tenant",
                    "tenant_column",
                )

    def _inject(self, refusal: Refusal, *, simple: bool) -> bytes:
        """A message that fails to parse on the backend; its error is swapped for ours."""
        marker = b"tenantgate_refused_" + secrets.token_hex(8).encode()
        err = codec.error(refusal.sqlstate, refusal.message, position=refusal.position)
        # Query-type refusals are their own cycle (already counted); Parse/Bind belong to the next Sync's
        self._refusals.append((marker, err, self._pipe.sent - (1 if simple else 0)))
        log.info("refused statement: %s (%s)", refusal.reason, refusal.sqlstate)
        text = marker.decode()
        if simple:
            return Query(text).encode()
        return Parse(text, text).encode()  # a named statement that fails: the unnamed one stays as it was


    # ------------------------------------------------------------------ backend -> client

    def on_backend(self, buf: bytes, frames: list[tuple[int, int, int]]) -> None:
        """Relay the backend's frames; strict audit: what follows a completion waits for its record."""
        out: bytearray | None = None
        mark = 0
        audit = self.audit
        limited = self._row_limit is not None and self._row_limit.active
        watched, chain = self._watched[limited], self._chains[limited]
        pipe = self._pipe
        for mtype, start, end in frames:
            if mtype not in watched and pipe.answering_injected() is None:
                continue  # a RowDescription, DataRow, BindComplete, ...: relayed as it came
            if mtype == MsgType.ERROR_RESPONSE and not self._backend_fatal and ends_session(buf[start + 5 : end]):
                if self._between_transactions():  # pooled, right behind its last ReadyForQuery: nobody's
                    out = _splice(out, buf, mark, start)
                    mark = end
                    self._drop_backend()
                    continue
                # the backend's last word (terminated, shut down, timed out) to the client it serves:
                # relayed as it is, even in a cycle the proxy injected, then the connection closes
                self._backend_fatal = True
                if self._pipe.answering_injected() is not None:
                    continue
            injected = self._pipe.answering_injected()
            if injected is not None:
                # the answer to a statement the proxy injected: nobody's business but ours
                out = _splice(out, buf, mark, start)
                mark = end
                if mtype == MsgType.READY_FOR_QUERY:
                    self._pipe.ready()
                    self.status = chr(buf[start + 5])
                elif mtype == MsgType.ERROR_RESPONSE and injected:
                    # a transaction made to fail (decryption error), or settings re-applied in one the
                    # client's statement aborted: what the backend carries is unknown now
                    if self._tracked is not None and self.backend is not None:
                        self._tracked.undone(self.backend)
                elif mtype == MsgType.ERROR_RESPONSE:
                    log.error("applying session settings on a pooled backend failed: closing the session")
                    self._end(codec.error("08006", "tenantgate could not prepare a backend", severity="FATAL"))
                    return
                elif mtype == MsgType.PARAMETER_STATUS and self._parameter_status(buf[start + 5 : end], setup=True):
                    out += buf[start:end]  # the client's own value, now in the backend's spelling
                continue
            if mtype == MsgType.COMMAND_COMPLETE and self._named is not None:
                self._completed(buf[start + 5 : end - 1])
            if chain:
                replacement, final, abort = run_chain(chain, mtype, buf[start + 5 : end])
                if abort:  # the client was told its transaction failed: the backend's fails too
                    self._inject_abort()
                if replacement is not None:
                    out = _splice(out, buf, mark, start, replacement)
                    mark = end
                    if final:  # dropped, or replaced by an error: it goes no further (proxy/filters.py)
                        if replacement[:1] == ErrorResponse.TYPE:
                            self._filter_error(replacement, completion=mtype in _COMPLETIONS)
                        continue
            if mtype == MsgType.READY_FOR_QUERY:
                self.status = chr(buf[start + 5])
                cycle, failed = self._pipe.ready()
                self._rewritten.pop(cycle, None)
                if self._pipe.answered_all:
                    if self.busy_since is not None:
                        self.metrics.timing(self.tenant, time.monotonic() - self.busy_since, self._proxy_time)
                        self._proxy_time = 0.0
                    self.busy_since = None
                    if self._timeout is not None:
                        self._timeout.stop()
                refusals = self._refusals
                while refusals and refusals[0][2] < cycle:
                    refusals.popleft()
                if audit is not None:
                    audit.cycle_done(cycle)
                if self._named is not None:
                    self._named.cycle_done(cycle)
                self._cycle_end(cycle, failed)
            elif mtype in _ACKS and self._named is not None:
                swallow, told = self._named.answered()
                if told and self.crypto is not None:
                    self.crypto.parsed()
                if swallow:  # the answer to a Parse/Close the proxy added
                    out = _splice(out, buf, mark, start)
                    mark = end
            elif mtype == MsgType.ERROR_RESPONSE:
                self._pipe.error()
                texts = self._texts_answered()
                if self._named is not None and self.backend is not None:
                    self._named.failed(self.backend, self._pipe.answering)
                replacement = self._swap_error(buf[start + 5 : end]) if self._refusals else None
                if replacement is None and texts is not None:
                    replacement = _client_position(buf[start + 5 : end], *texts)
                if replacement is not None:
                    out = _splice(out, buf, mark, start, replacement)
                    mark = end
                else:
                    err = codec.decode_backend(MsgType.ERROR_RESPONSE, buf[start + 5 : end], self.encoding)
                    assert isinstance(err, ErrorResponse)
                    self.metrics.error(err.sqlstate)
                    if audit is not None:
                        audit.complete(None, err.sqlstate)
                    if err.sqlstate == "57014" and self._timeout is not None and \
                            (timed_out := self._timeout.error(err)) is not None:
                        out = _splice(out, buf, mark, start, timed_out)
                        mark = end
            elif mtype == MsgType.PARAMETER_STATUS:
                if not self._parameter_status(buf[start + 5 : end], setup=False):
                    out = _splice(out, buf, mark, start)
                    mark = end
            elif audit is not None and mtype in _BACKEND_AUDITED:
                tag = buf[start + 5 : end - 1].decode() if mtype == MsgType.COMMAND_COMPLETE else None
                durable = audit.complete(tag, None)
                # a completion the row limit rewrote is already in ``out``: resume after it
                at = max(start, mark)
                if durable is not None and not durable.done():
                    # strict: nothing from this completion on reaches the client before its record is
                    # durable; the session goes on (its backend may serve others meanwhile)
                    self._flush_backend(buf, out, mark, at)
                    out, mark = None, at
                    assert self._withheld is not None
                    self._withheld.behind(durable)
                    continue
                if durable is not None and durable.exception() is not None:
                    self._flush_backend(buf, out, mark, at)
                    self._withhold_failed()
                    return
        self._flush_backend(buf, out, mark, len(buf))
        if self.pool is not None:
            self._maybe_release()
        if self._leaving and self._pipe.quiet:
            self.client.close()

    def _filter_error(self, frame: bytes, *, completion: bool) -> None:
        """A filter answered with an error (a value that cannot be decrypted, too many rows): counted, and
        when it replaced a statement's completion, what the audit records that statement ended with."""
        err = codec.decode_backend(MsgType.ERROR_RESPONSE, frame[5:])
        assert isinstance(err, ErrorResponse)
        self.metrics.error(err.sqlstate)
        if completion and self.audit is not None:
            self.audit.complete(None, err.sqlstate)

    def _completed(self, tag: bytes) -> None:
        """A statement's CommandComplete: what it did to the session's state took effect."""
        if self.signals is not None:
            self.signals.completed(tag)
        if tag == b"ROLLBACK":
            self._rolled_back = True
        elif tag in _DROP_ALL_TAGS and self._named is not None and self.backend is not None:
            self._named.forget_all(self.backend)
        elif tag in (b"DEALLOCATE", b"PREPARE") and self._named is not None:
            self._named_statement_done(tag.decode().lower())
        if tag == b"DEALLOCATE" and self.backend is not None:
            self.backend.prepared.clear()  # it may have been one of ours: every statement is prepared again on demand
        if tag in _DROP_ALL_TAGS:
            self._sql_names.clear()

    def _named_statement_done(self, kind: str) -> None:
        """A PREPARE or DEALLOCATE of this cycle succeeded: the name it prepared or dropped follows."""
        ops, cycle = self._name_ops, self._pipe.answering
        while ops and ops[0][0] < cycle:  # a failed statement's cycle: nothing after it ran
            ops.popleft()
        if not ops or ops[0][0] != cycle or not ops[0][1].startswith(kind):
            return
        _, op, name = ops.popleft()
        if op == "prepare":
            self._sql_names.add(name)
        elif op == "deallocate":
            self._sql_names.discard(name)
        else:
            assert self._named is not None
            self._named.names.pop(name, None)

    def _cycle_end(self, cycle: int, failed: bool) -> None:
        """A ReadyForQuery: settings changed in that cycle stick, or are undone with their transaction."""
        if self._tracked is not None:
            self._tracked.cycle_done(
                cycle,
                failed=failed,
                status=self.status,
                rolled_back=self._rolled_back,
                backend=self.backend,
            )
        if self.status == "I":
            self._bound.clear()  # portals end with their transaction
        self._rolled_back = False

    def _flush_backend(self, buf: bytes, out: bytearray | None, mark: int, upto: int) -> None:
        if out is None:
            if mark == 0 and upto == len(buf):
                data = buf
            elif upto > mark:
                data = buf[mark:upto]
            else:
                return
        else:
            out += buf[mark:upto]
            data = bytes(out)
        if self._withheld is None:
            self.client.write(data)
        else:
            self._withheld.write(data)

    def _pause_backend(self) -> bool:
        """Backpressure, as a slow client's: the backend (held until the output drains) is not read."""
        transport = self.backend.conn.transport if self.backend is not None else None
        if transport is None:
            return False
        transport.pause_reading()
        return True

    def _resume_backend(self) -> None:
        transport = self.backend.conn.transport if self.backend is not None else None
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _released_all(self) -> None:
        """Strict audit: nothing of the output waits for a record any more."""
        if self._lost_behind:
            self._backend_lost(None)
        elif self.pool is not None and self.backend is not None:
            self._maybe_release()

    def _withhold_failed(self) -> None:
        """A result whose audit record could not be written is never released: end the session
        (closing the backend rolls back whatever transaction is open)."""
        log.error("audit record could not be written: withholding the result and closing session")
        err = codec.error(
            "58030",
            "the audit log cannot be written: the result is withheld and the session is closed",
            severity="FATAL",
        )
        self.client.write(err.encode())
        self.client.close()
        if self.backend is not None:
            self.backend.conn.abort()

    def _swap_error(self, body: bytes) -> bytes | None:
        for i, (marker, err, _gen) in enumerate(self._refusals):
            if marker in body:
                del self._refusals[i]
                try:
                    return err.encode(self.encoding)  # it quotes the client's text: in the client's encoding
                except EncodingError:
                    return err.encode()
        return None

    def _texts_answered(self) -> tuple[str, str] | None:
        """(client's text, backend's) of the rewritten statement an ErrorResponse answers, if any:
        the first Parse of the cycle still waiting for its answer, else the cycle's simple Query or
        last Bind. (An Execute failing before a later Parse of the same pipeline is taken for that
        Parse: PostgreSQL reports no positions for execution errors but of utility statements.)"""
        cycle = self._pipe.answering
        if self._named is not None:
            parsing = next((s.statement for s in self._named.sent if s.cycle == cycle and s.statement), None)
            if parsing is not None:
                return parsing.texts
        return self._rewritten.get(cycle)

    def _parameter_status(self, body: bytes, *, setup: bool) -> bool:
        """A backend's ParameterStatus: follow it; whether the client is to see it. A pooled session's
        client sees a value only when it differs from what it was told: a hand-over re-applying its
        settings (``setup``) changes nothing it did not ask for, and what it never changed keeps
        the value it saw at connect."""
        msg = codec.decode_backend(MsgType.PARAMETER_STATUS, body, self.encoding)
        assert isinstance(msg, codec.ParameterStatus)
        if self.backend is not None:
            self.backend.params[msg.name] = msg.value
        self._check_lexing(msg)
        if self.pool is None:
            return True
        if setup:  # the value the session desires, as the backend spells it: later logins answer with it
            assert self._tracked is not None
            value = self._tracked.desired().get(msg.name.lower())
            if value is None:
                return False
            if len(self.pool.spellings) < 1024:
                self.pool.spellings[(msg.name.lower(), value)] = msg.value
        if self.told.get(msg.name) == msg.value:
            return False
        self.told[msg.name] = msg.value
        return True

    def _check_lexing(self, msg: codec.ParameterStatus) -> None:
        # backstop: never another statement under a lexing the proxy did not verify
        if self.tenant is None:  # trusted sessions are not rewritten: the proxy only follows their encoding
            if msg.name == "client_encoding":
                with contextlib.suppress(EncodingError):  # unsupported: its statements are refused (22021)
                    self.encoding = client_encoding(msg.value)
        elif msg.name == "client_encoding" and canonical_name(msg.value) != self.encoding.name:
            self._lexing_changed(f"client_encoding changed to {msg.value} (the session's is {self.encoding.name})")
        elif msg.name == "standard_conforming_strings" and msg.value != "on":
            self._lexing_changed("standard_conforming_strings was turned off")

    def _lexing_changed(self, why: str) -> None:
        log.error("backend lexing changed: %s; closing the session", why)
        if self.backend is not None:
            self.backend.conn.on_lost = None
            self.backend.conn.abort()
        self._end(codec.error("08P01", f"the backend's {why}: tenantgate closed the session", severity="FATAL"))


def _watched(chain: tuple[ResponseFilter, ...]) -> frozenset[int]:
    """The backend frames the relay loop takes off its fast path: the session's own and the chain's."""
    return _BACKEND_WATCHED.union(*(f.responses for f in chain))


def _client_position(body: bytes, client: str, sent: str) -> bytes | None:
    """The error frame with its position moved into the client's text (or dropped), None if it has none."""
    position = dict(codec.raw_fields(body)).get("P")
    if position is None or not position.isdigit():
        return None
    mapped = map_position(client, sent, int(position))
    return codec.with_error_field(body, "P", None if mapped is None else str(mapped))


def _ends_synced(frames: list[tuple[int, int, int]], unsynced: bool) -> bool:
    """Whether these client messages, sent after ``unsynced`` state, leave nothing unanswered behind a
    ReadyForQuery: they end with a Query or a Sync and no extended message after the last Sync.

    >>> Q, P, S = (MsgType.QUERY, 0, 1), (MsgType.PARSE, 0, 1), (MsgType.SYNC, 0, 1)
    >>> _ends_synced([Q], False), _ends_synced([Q], True), _ends_synced([P, S, Q], True), _ends_synced([S, P], False)
    (True, False, True, False)
    """
    for mtype, _, _ in frames:
        if mtype == MsgType.SYNC:
            unsynced = False
        elif mtype in _EXTENDED:
            unsynced = True
    return frames[-1][0] in (MsgType.QUERY, MsgType.SYNC) and not unsynced


def ends_session(body: bytes) -> bool:
    """Whether an ErrorResponse body has severity FATAL or PANIC (the non-localized V field:
    fields end in NUL, so a field boundary cannot be forged inside a message).

    >>> ends_session(codec.error("57P01", "terminating connection", severity="FATAL").encode()[5:])
    True
    >>> ends_session(codec.error("42601", "VFATAL").encode()[5:])
    False
    """
    fields = b"\x00" + body
    return b"\x00VFATAL\x00" in fields or b"\x00VPANIC\x00" in fields


# What a set_config() parameter may be declared as: its text reaches set_config() unchanged
# (a name-typed one would be cut to 63 bytes after the check, other types converted).
_TEXT_TYPES = frozenset((0, 25, 705, 1043))  # unspecified, text, unknown, varchar


def _check_bound_types(plan: Plan, param_types: tuple[int, ...]) -> None:
    for spec in plan.bound_settings:
        for i, arg in enumerate(spec):
            allowed = _TEXT_TYPES | {16} if i == 2 else _TEXT_TYPES  # is_local may be declared boolean
            if isinstance(arg, int) and arg <= len(param_types) and param_types[arg - 1] not in allowed:
                raise Refusal("0A000", f"set_config() needs ${arg} declared as text (or unspecified) through "
                              "tenantgate", "set_config_bind")


def _splice(out: bytearray | None, buf: bytes, mark: int, start: int, replacement: bytes = b"") -> bytearray:
    """The relayed bytes so far plus buf[mark:start] and what replaces (or drops) the frame at start."""
    if out is None:
        out = bytearray()
    out += buf[mark:start]
    out += replacement
    return out

