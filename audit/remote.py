"""The audit log in its own process: one `AuditServer` seals and writes, worker processes submit to it.

Longer than most modules on purpose: both ends of one private protocol (the event encoding, the
AuditServer and the worker's RemoteAuditLog), kept together so the two sides cannot drift apart.

With several proxy worker processes the audit log must stay ONE hash chain under one HMAC key, and
sealing is the largest cost of the statement path, so it moves out of the workers: each worker holds
a `RemoteAuditLog` (the same API as `AuditLog`, without any key) that ships events over a unix
stream socket to the `AuditServer` in the supervisor, which submits them to a normal `AuditLog`.

Semantics are those of `AuditLog.submit` / `accepting` / `record`, with the sink state pushed by the
server: strict futures resolve to the record's seq once the server reports it durable (or fail with
AuditUnavailable); batched submit returns None. When the server's sink fails, every worker learns
the state and retry time in the server's next message, so `accepting` turns False in all of them
and True again when the retry time comes (the next statement probes the sink, as in-process). A
lost connection counts as unavailable: pending strict futures fail, batched events not yet taken by
the server are counted lost, and the worker reconnects with back-off. Records a worker rejects
locally while connected are reported to the server so the next `gap` record counts them.

Wire format (version 1): frames of a 4-byte big-endian length and a JSON object.
- worker -> server: {"events": [EVENT, ...], "lost": N, "flush": TOKEN}, keys optional; an EVENT is
  the list of `AuditEvent` fields in `WIRE_FIELDS` order (bytes parameters as {"x": HEX}).
  Events are numbered 0, 1, 2 ... per connection in the order sent.
- server -> worker: {"hello": {...}, "n": EVENTS_TAKEN, "done": [[INDEX, SEQ | null | ERROR], ...],
  "lost": N, "state": [AVAILABLE, RETRY_IN_SECONDS], "seq": LAST_SEQ, "fsync": SECONDS,
  "flushed": [TOKEN, ...]}, keys optional; "hello" (with the server's durability, on_failure and
  sink name) is the first frame of a connection.
Everything one side produces in one event-loop iteration goes out in one write. No pickle: a frame
that is not this JSON is a protocol error and closes the connection (its events are lost, fail
closed). The socket is created 0600 and only peers with the server's uid are served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct
import time
from collections import deque
from functools import partial
from typing import Any, cast

import orjson

from .errors import AuditConfigError, AuditError, AuditUnavailable
from .framing import FrameReader, frame
from .keys import Signer
from .record import AuditEvent
from .settings import AuditSettings
from .sink import Sink
from .writer import AuditLog, AuditStats

log = logging.getLogger("tenantgate.audit")

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 30  # PostgreSQL's own limit on a query's size
FRAME_TARGET = 1 << 20  # a worker splits a large batch into frames of about this size
WIRE_FIELDS = ("kind", "tenant", "user", "client", "session", "database", "sql", "rewritten", "decision",
               "reason", "sqlstate", "rows", "duration_ms", "params", "encrypted_params", "sql_redactions",
               "encrypted_columns", "details", "ts")
_TEXT_FIELDS = ("tenant", "user", "client", "session", "database", "sql", "rewritten", "decision", "reason",
                "sqlstate")
_PEERCRED = struct.Struct("3i")
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class AuditProtocolError(AuditError):
    """A frame on the audit channel is not what the protocol allows (the connection is closed)."""


# ---------------------------------------------------------------------- events on the wire

def _param(value: object) -> object:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"x": bytes(value).hex()}
    return str(value)  # what the record would hold anyway (redact_params / _param_bytes use str())


def encode_event(event: AuditEvent) -> bytes:
    """The event's fields as compact JSON; raises ValueError/TypeError for an event that could not be sealed.

    orjson first (every statement of every worker comes through here: a tenth of the stdlib encoder's
    cost); what it does not take (integers beyond 64 bits, non-string keys in details, ...) goes
    through the stdlib encoder as before. Non-ASCII text is sent as UTF-8, not as escapes: the
    server decodes the same values. (orjson writes a NaN as null where the stdlib would refuse it:
    nothing the proxy records carries one.)

    >>> encode_event(AuditEvent("auth_ok", tenant="acme", params=(b"\\x01", None), ts="T"))
    b'["auth_ok","acme",null,null,null,null,null,null,null,null,null,null,null,[{"x":"01"},null],[],[],[],null,"T"]'
    """
    params, encrypted, spans, columns, details = (event.params, event.encrypted_params, event.sql_redactions,
                                                  event.encrypted_columns, event.details)
    fields = [
        event.kind, event.tenant, event.user, event.client, event.session, event.database, event.sql,
        event.rewritten, event.decision, event.reason, event.sqlstate, event.rows, event.duration_ms,
        None if params is None else [_param(v) for v in params],
        sorted(encrypted) if encrypted else [], [[start, end] for start, end in spans] if spans else [],
        list(columns) if columns else [], None if details is None else dict(details), event.ts,
    ]
    try:
        return orjson.dumps(fields)
    except orjson.JSONEncodeError:
        return _dumps(fields).encode("ascii")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_param(value: object) -> object:
    if isinstance(value, dict):
        if set(value) != {"x"} or not isinstance(value["x"], str):
            raise AuditProtocolError("event field params: an object must be {\"x\": HEX}")
        try:
            return bytes.fromhex(value["x"])
        except ValueError:
            raise AuditProtocolError("event field params: invalid hex") from None
    if value is None or isinstance(value, str | int | float):
        return value
    raise AuditProtocolError("event field params: unexpected value type")


def decode_event(raw: object) -> AuditEvent:
    """The AuditEvent from its wire form, every field type-checked.

    >>> decode_event(json.loads(encode_event(AuditEvent("admin", user="dba", rows=2, ts="T")))).user
    'dba'
    >>> try:
    ...     decode_event(["statement"])
    ... except AuditProtocolError as exc:
    ...     print(exc)
    an event must be a list of 19 fields
    """
    if not isinstance(raw, list) or len(raw) != len(WIRE_FIELDS):
        raise AuditProtocolError(f"an event must be a list of {len(WIRE_FIELDS)} fields")
    # Positional and type()-based: the server decodes every record of every worker.
    (kind, tenant, user, client, session, database, sql, rewritten, decision, reason, sqlstate, rows, duration,
     params, encrypted, spans, columns, details, ts) = raw
    texts = (tenant, user, client, session, database, sql, rewritten, decision, reason, sqlstate)
    for i, value in enumerate(texts):
        if value is not None and type(value) is not str:
            raise AuditProtocolError(f"event field {_TEXT_FIELDS[i]}: expected a string or null")
    if type(kind) is not str or (type(ts) is not int and type(ts) is not str):
        raise AuditProtocolError("event fields kind and ts must be strings (ts: or integer microseconds)")
    if rows is not None and type(rows) is not int:
        raise AuditProtocolError("event field rows: expected an integer or null")
    if duration is not None and type(duration) is not float and type(duration) is not int:
        raise AuditProtocolError("event field duration_ms: expected a number or null")
    if details is not None and type(details) is not dict:
        raise AuditProtocolError("event field details: expected an object or null")
    if params is not None:
        if type(params) is not list:
            raise AuditProtocolError("event field params: expected a list or null")
        params = tuple([_decode_param(v) for v in params])
    if type(encrypted) is not list or not all(type(i) is int for i in encrypted):
        raise AuditProtocolError("event field encrypted_params: expected a list of integers")
    if type(spans) is not list or not all(
            type(s) is list and len(s) == 2 and type(s[0]) is int and type(s[1]) is int for s in spans):
        raise AuditProtocolError("event field sql_redactions: expected a list of [start, end] pairs")
    if type(columns) is not list or not all(type(c) is str for c in columns):
        raise AuditProtocolError("event field encrypted_columns: expected a list of strings")
    try:
        return AuditEvent(kind, *texts, rows, duration, params, frozenset(encrypted),
                          tuple([(s[0], s[1]) for s in spans]), tuple(columns), details, ts)
    except ValueError as exc:
        raise AuditProtocolError(str(exc)) from None


# ---------------------------------------------------------------------- server

def _listen_socket(path: str) -> socket.socket:
    """A unix socket bound at `path`, mode 0600; a stale socket file is replaced, anything else is an error."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise AuditUnavailable(f"audit socket {path}: exists and is not a socket")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window in which the socket is reachable by others
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
    except OSError as exc:
        sock.close()
        raise AuditUnavailable(f"audit socket {path}: cannot listen: {exc.strerror or exc}") from exc
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


class _Connection(asyncio.Protocol):
    """One worker's connection on the server side."""

    def __init__(self, server: AuditServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(MAX_FRAME, AuditProtocolError)
        self.peer = "?"
        self.received = 0  # events taken from this worker (their indexes are 0 .. received-1)
        self.sent_received = 0
        self.done: list[list[object]] = []
        self.lost = 0
        self.flushed: list[int] = []
        self.sent_status: tuple[bool, float, int] | None = None
        self.status_due = True
        self.scheduled = False
        self.closed = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: a cast, not an isinstance check
        self.transport = transport = cast(asyncio.Transport, base)
        sock = transport.get_extra_info("socket")
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        self.peer = f"pid {pid}"
        if uid != os.geteuid():
            log.warning("audit server %s: refused a connection from uid %d (%s)", self.server.path, uid, self.peer)
            self.closed = True
            transport.abort()
            return
        self.server.connections.add(self)
        settings, audit = self.server.settings, self.server.log
        hello = {"v": PROTOCOL_VERSION, "durability": settings.durability, "on_failure": settings.on_failure,
                 "sink": audit.sink.name}
        self.sent_status = audit.status_key()
        self.status_due = False
        transport.write(frame(_dumps({"hello": hello, **audit.status()}).encode("ascii")))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            for message in self.reader.feed(data):
                self._take(message)
        except AuditProtocolError as exc:
            log.error("audit server %s: protocol error from worker %s, closing its connection: %s",
                      self.server.path, self.peer, exc)
            self.close(abort=True)
            return
        self.schedule()

    def _take(self, message: dict[str, Any]) -> None:
        audit = self.server.log
        strict = self.server.settings.durability == "strict"
        events = message.get("events", [])
        if not isinstance(events, list):
            raise AuditProtocolError("events must be a list")
        for raw in events:
            event = decode_event(raw)
            index = self.received
            self.received += 1
            try:
                future = audit.submit(event)
            except AuditUnavailable as exc:
                if strict:
                    self.done.append([index, str(exc)])
                else:
                    self.lost += 1  # the worker's submit already returned: lost, not refused
                continue
            if future is not None:
                future.add_done_callback(partial(self._resolved, index))
            elif strict:
                self.done.append([index, None])  # on_failure = drop
        lost = message.get("lost", 0)
        if not _is_int(lost) or lost < 0:
            raise AuditProtocolError("lost must be a non-negative integer")
        if lost:
            audit.add_lost(lost)
        token = message.get("flush")
        if token is not None:
            if not _is_int(token):
                raise AuditProtocolError("flush must be an integer")
            self.server.track(asyncio.ensure_future(self._flush(token)))

    def _resolved(self, index: int, future: asyncio.Future[int | None]) -> None:
        if self.closed:
            return
        if future.cancelled():
            self.done.append([index, "audit record cancelled"])
        elif (exc := future.exception()) is not None:
            self.done.append([index, str(exc)])
        else:
            self.done.append([index, future.result()])
        self.schedule()

    async def _flush(self, token: int) -> None:
        await self.server.log.flush()
        if not self.closed:
            self.flushed.append(token)
            self.schedule()

    def schedule(self) -> None:
        if not self.scheduled and not self.closed:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.send)

    def send(self) -> None:
        """Everything owed to this worker in one frame, one write."""
        self.scheduled = False
        if self.closed or self.transport is None:
            return
        message: dict[str, object] = {}
        if self.received != self.sent_received:
            message["n"] = self.sent_received = self.received
        if self.done:
            message["done"], self.done = self.done, []
        if self.lost:
            message["lost"], self.lost = self.lost, 0
        if self.status_due:
            self.status_due = False
            key = self.server.log.status_key()
            if key != self.sent_status:
                self.sent_status = key
                message.update(self.server.log.status())
        if self.flushed:
            message["flushed"], self.flushed = self.flushed, []
        if message:
            self.transport.write(frame(_dumps(message).encode("ascii")))

    def close(self, *, abort: bool = False) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)


class AuditServer:
    """Receives events from workers on the unix socket `path`, seals and writes them with one AuditLog.

    The keyword arguments are passed to the AuditLog (tests give the HMAC key directly).
    """

    def __init__(self, settings: AuditSettings, path: str, *, sink: Sink | None = None,
                 hmac_key: bytes | None = None, signer: Signer | None = None, instance_id: str | None = None,
                 retry_interval: float = 1.0) -> None:
        self.settings = settings
        self.path = str(path)
        self.log = AuditLog(settings, sink=sink, hmac_key=hmac_key, signer=signer, instance_id=instance_id,
                            retry_interval=retry_interval, on_commit=self._committed)
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"AuditServer(path={self.path!r}, sink={self.log.sink.name!r})"

    async def start(self) -> None:
        """Listen, then open the log (chain_start); raises AuditUnavailable like AuditLog.start."""
        sock = _listen_socket(self.path)
        try:
            await self.log.start()
            self._server = await asyncio.get_running_loop().create_unix_server(
                partial(_Connection, self), sock=sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise

    async def close(self) -> None:
        """Stop reading, write everything received, answer the workers, close the log (chain_end)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.pause_reading()
        try:
            await self.log.flush()
            for conn in list(self.connections):
                conn.send()  # the last acknowledgements, before the connection goes
                conn.close()
            for task in list(self._tasks):
                task.cancel()
            await server.wait_closed()
        finally:
            try:
                await self.log.close()
            finally:
                self._unlink()

    def stats(self) -> AuditStats:
        return self.log.stats()

    def track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _committed(self) -> None:
        for conn in self.connections:
            conn.status_due = True
            conn.schedule()

    def _unlink(self) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------- worker side

class _Channel(asyncio.Protocol):
    """One connection to the server, with the state of the events sent on it."""

    def __init__(self, owner: RemoteAuditLog) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(MAX_FRAME, AuditProtocolError)
        self.hello: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.next_index = 0
        self.taken = 0  # events the server has taken ("n")
        self.futures: dict[int, tuple[asyncio.Future[int | None], float]] = {}  # strict, by index
        self.times: deque[float] = deque()  # batched: when each event not yet taken was submitted
        self.outbox: list[bytes] = []
        self.lost = 0
        self.flushes: dict[int, asyncio.Future[None]] = {}
        self.flush_tokens: list[int] = []
        self.flush_counter = 0
        self.available = False
        self.retry_at = 0.0
        self.scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: a cast, not an isinstance check
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.reader.feed(data):
                self._handle(message)
        except (AuditProtocolError, KeyError, TypeError, ValueError) as exc:
            log.error("audit server %s: protocol error, closing the connection: %s: %s",
                      self.owner.path, type(exc).__name__, exc)
            self.abort()

    def _handle(self, message: dict[str, Any]) -> None:
        owner = self.owner
        if "hello" in message and not self.hello.done():
            if not isinstance(message["hello"], dict):
                raise AuditProtocolError("hello must be an object")
            self.hello.set_result(message["hello"])
        taken = message.get("n")
        if taken is not None:
            if not self.owner.strict:
                for _ in range(taken - self.taken):
                    self.times.popleft()
                owner.written += taken - self.taken
            self.taken = taken
            owner.room.set()
        for index, result in message.get("done", ()):
            entry = self.futures.pop(index, None)
            if entry is None:
                continue
            future = entry[0]
            if _is_int(result):
                owner.written += 1
                outcome: int | AuditUnavailable | None = result
            elif result is None or owner.drop:
                owner.dropped += 1
                outcome = None
            else:
                owner.refused += 1
                outcome = AuditUnavailable(str(result))
            if not future.done():  # the caller may have given up waiting
                if isinstance(outcome, AuditUnavailable):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        owner.dropped += message.get("lost", 0)
        state = message.get("state")
        if state is not None:
            self.available = bool(state[0])
            self.retry_at = time.monotonic() + float(state[1])
        if "seq" in message:
            owner.last_seq = int(message["seq"])
            owner.last_fsync = float(message["fsync"])
        for token in message.get("flushed", ()):
            waiter = self.flushes.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.send)

    def send(self) -> None:
        """What was submitted in this loop iteration, in one write (frames of about FRAME_TARGET bytes)."""
        self.scheduled = False
        if self.closed or self.transport is None:
            return
        outbox, self.outbox = self.outbox, []
        frames: list[bytes] = []
        start = size = 0
        for i, data in enumerate(outbox):
            size += len(data) + 1
            if size >= FRAME_TARGET and i + 1 < len(outbox):
                frames.append(frame(b'{"events":[' + b",".join(outbox[start:i + 1]) + b"]}"))
                start, size = i + 1, 0
        tail = [b'"events":[' + b",".join(outbox[start:]) + b"]"] if start < len(outbox) else []
        if self.lost:
            tail.append(b'"lost":%d' % self.lost)
            self.lost = 0
        for token in self.flush_tokens:  # one token per frame: the flush covers everything before it
            frames.append(frame(b"{" + b",".join([*tail, b'"flush":%d' % token]) + b"}"))
            tail = []
        self.flush_tokens = []
        if tail:
            frames.append(frame(b"{" + b",".join(tail) + b"}"))
        if frames:
            self.transport.write(b"".join(frames))

    def request_flush(self) -> asyncio.Future[None]:
        token = self.flush_counter
        self.flush_counter += 1
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.flushes[token] = waiter
        self.flush_tokens.append(token)
        self.schedule()
        return waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.hello.done():
            self.hello.set_exception(AuditUnavailable(f"audit server {self.owner.path}: connection closed"))
        self.owner.channel_lost(self)

    def fail_pending(self, error: AuditUnavailable) -> int:
        """Settle everything in flight on a lost connection; returns how many events were lost."""
        owner = self.owner
        lost = 0
        for future, _ in self.futures.values():
            if future.done():
                continue
            lost += 1
            if owner.drop:
                owner.dropped += 1
                future.set_result(None)
            else:
                owner.refused += 1
                future.set_exception(error)
        self.futures.clear()
        if not owner.strict:
            lost += self.next_index - self.taken
            owner.dropped += self.next_index - self.taken
            self.times.clear()
        for waiter in self.flushes.values():
            if not waiter.done():
                waiter.set_result(None)
        self.flushes.clear()
        return lost


class RemoteAuditLog:
    """Drop-in replacement for AuditLog in a worker process: events go to the AuditServer at `path`.

    Never loads the audit keys: sealing happens in the server only. `stats()` is this worker's view:
    records_written counts its records the server reported durable (strict) or took (batched).
    """

    def __init__(self, settings: AuditSettings, path: str, *, connect_timeout: float = 5.0,
                 reconnect_min: float = 0.05, reconnect_max: float = 2.0) -> None:
        self.settings = settings
        self.path = str(path)
        self.strict = settings.durability == "strict"
        self.drop = settings.on_failure == "drop"
        self._connect_timeout = connect_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._channel: _Channel | None = None
        self._running = False
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._sink_name = "audit server"
        self._offline_lost = 0
        self.room = asyncio.Event()
        self.written = 0
        self.dropped = 0
        self.refused = 0
        self.last_seq = 0
        self.last_fsync = 0.0

    def __repr__(self) -> str:
        return f"RemoteAuditLog(path={self.path!r}, sink={self._sink_name!r})"

    # -- public API (as AuditLog) --

    async def start(self) -> None:
        """Connect to the server; raises AuditUnavailable if it cannot be reached, AuditConfigError if
        its durability or on_failure differ from ours."""
        await self._connect()
        self._running = True

    def submit(self, event: AuditEvent) -> asyncio.Future[int | None] | None:
        """As AuditLog.submit: strict -> a future of the seq once durable; batched -> None."""
        channel = self._admit()
        if channel is None:
            return None
        if channel.next_index - channel.taken >= self.settings.queue_max:
            self._reject("audit queue full")
            return None
        return self._enqueue(channel, event)

    async def record(self, event: AuditEvent) -> int | None:
        """As AuditLog.record: waits for queue room in refuse mode, then (strict) for durability."""
        while True:
            channel = self._admit()
            if channel is None:
                return None
            if channel.next_index - channel.taken < self.settings.queue_max:
                break
            if self.drop:
                self._reject("audit queue full")
                return None
            self.room.clear()
            await self.room.wait()
        future = self._enqueue(channel, event)
        return await future if future is not None else None

    @property
    def accepting(self) -> bool:
        """Whether a statement may run now: False while the server's sink fails or the server is gone."""
        channel = self._channel
        return self.drop or (
            self._running and not self._closing and channel is not None
            and (channel.available or time.monotonic() >= channel.retry_at))

    async def flush(self) -> None:
        """Wait until every record submitted so far has been written (or failed)."""
        channel = self._channel
        if channel is None:
            return
        pending = [future for future, _ in channel.futures.values()]
        await channel.request_flush()
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Flush, then disconnect; records submitted afterwards raise AuditUnavailable."""
        if not self._running:
            return
        self._closing = True
        try:
            await self.flush()
        finally:
            self._running = False
            if self._reconnecting is not None:
                self._reconnecting.cancel()
                self._reconnecting = None
            channel, self._channel = self._channel, None
            if channel is not None and channel.transport is not None:
                channel.fail_pending(AuditUnavailable("audit log closed"))
                channel.transport.close()
            self.room.set()

    def stats(self) -> AuditStats:
        channel = self._channel
        oldest: float | None = None
        if channel is not None:
            if channel.futures:
                oldest = next(iter(channel.futures.values()))[1]
            elif channel.times:
                oldest = channel.times[0]
        return AuditStats(
            records_written=self.written, records_dropped=self.dropped, records_refused=self.refused,
            queue_depth=channel.next_index - channel.taken if channel is not None else 0,
            last_seq=self.last_seq, last_fsync_seconds=self.last_fsync,
            lag=time.monotonic() - oldest if oldest is not None else 0.0,
            available=channel is not None and channel.available)

    # -- internals --

    def _admit(self) -> _Channel | None:
        """The channel to send on, or None after counting a rejected record (see AuditLog._admit)."""
        if not self._running or self._closing:
            raise AuditUnavailable("audit log is not running")
        channel = self._channel
        if channel is None:
            self._reject("audit server unreachable")
            return None
        if not channel.available and time.monotonic() < channel.retry_at:
            self._reject("audit log unavailable")
            return None
        return channel

    def _reject(self, why: str) -> None:
        channel = self._channel
        if channel is not None:  # the server counts it in its next gap record
            channel.lost += 1
            channel.schedule()
        else:
            self._offline_lost += 1
        if self.drop:
            self.dropped += 1
            return
        self.refused += 1
        raise AuditUnavailable(f"{why} ({self._sink_name} via {self.path}): statement refused")

    def _enqueue(self, channel: _Channel, event: AuditEvent) -> asyncio.Future[int | None] | None:
        data = encode_event(event)
        index = channel.next_index
        channel.next_index = index + 1
        channel.outbox.append(data)
        channel.schedule()
        if not self.strict:
            channel.times.append(time.monotonic())
            return None
        future: asyncio.Future[int | None] = channel.loop.create_future()
        channel.futures[index] = (future, time.monotonic())
        return future

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        channel: _Channel | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, channel = await loop.create_unix_connection(partial(_Channel, self), self.path)
                hello = await channel.hello
        except (OSError, TimeoutError) as exc:
            if channel is not None:
                channel.hello.cancel()  # nobody awaits it any more
                channel.abort()
            why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise AuditUnavailable(f"audit server {self.path} unreachable: {why}") from exc
        mismatch = [f"{key} {hello.get(key)!r} (ours {getattr(self.settings, key)!r})"
                    for key in ("durability", "on_failure") if hello.get(key) != getattr(self.settings, key)]
        if hello.get("v") != PROTOCOL_VERSION or mismatch:
            channel.abort()
            what = "; ".join(mismatch) or f"protocol version {hello.get('v')!r}"
            raise AuditConfigError(f"audit server {self.path}: {what}")
        self._sink_name = str(hello.get("sink", "audit server"))
        self._channel = channel

    def channel_lost(self, channel: _Channel) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        lost = channel.fail_pending(
            AuditUnavailable(f"audit server {self.path}: connection lost: statement refused"))
        self.room.set()
        if self._running and not self._closing:
            log.error("audit server %s: connection lost (%d record(s) in flight lost); reconnecting",
                      self.path, lost)
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self._reconnect_min
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except AuditConfigError as exc:
                log.error("%s", exc)
            except AuditUnavailable:
                pass
            else:
                log.warning("audit server %s: reconnected; %d record(s) were rejected meanwhile",
                            self.path, self._offline_lost)
                self._offline_lost = 0
                self._reconnecting = None
                return
            delay = min(delay * 2, self._reconnect_max)
