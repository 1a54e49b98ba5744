"""The asyncio audit writer: bounded queue, group commit, failure handling and recovery.

`await log.record(event)`:
- durability "strict": returns the record's seq once it is durable (fsynced / committed). While one
  batch is being written, new records queue up and go out together in the next batch (group commit).
- durability "batched": returns None at once; the writer flushes every `flush_interval_ms`, so a
  crash can lose at most the records of the last interval (plus the one being written).

When the sink cannot be written, on_failure "refuse" makes record() raise AuditUnavailable (the
proxy refuses the statement); "drop" counts the record in `records_dropped` and carries on. Either
way the writer retries the sink every `retry_interval` seconds; when it works again the chain
continues from what is on storage and a signed `gap` record states how many records were lost.
The queue holds at most `queue_max` records: refuse mode waits for room (back-pressure), drop mode
drops.

Chain markers written by the log itself: chain_start (on start, linked to the stored head;
`unclean` when the previous run did not end with chain_end), checkpoint (every `checkpoint_every`
records), rotate (first record of a new file), gap (after a failure), chain_end (on close).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import AuditUnavailable
from .filesink import FileSink
from .keys import Signer, load_hmac_key, load_signing_key
from .lean import PLAN_KIND, SEGMENT_END, LeanSealer, now_us, plan_digest, split_template, template_digest, ts_us
from .record import GENESIS, AuditEvent, SealedRecord, Sealer, param_hash_key, utc_timestamp
from .settings import AuditSettings
from .sink import Head, Sink

_DIGESTS_MAX = 10_000


def _bounded(cache: dict[str, str]) -> dict[str, str]:
    """``cache``, emptied first when full (texts with values in them do not repeat)."""
    if len(cache) >= _DIGESTS_MAX:
        cache.clear()
    return cache


@dataclass(frozen=True, slots=True)
class AuditStats:
    records_written: int
    records_dropped: int
    records_refused: int
    queue_depth: int
    last_seq: int
    last_fsync_seconds: float
    lag: float
    available: bool


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    future: asyncio.Future[int | None] | None
    enqueued: float
    slot: bool  # holds a queue slot (record()); submit() bounds the queue by its length instead


def make_sink(settings: AuditSettings) -> Sink:
    # Lazy for start-up time: a file-sink proxy or CLI never loads asyncpg (pgsink imports it).
    if settings.sink == "postgres":
        from .pgsink import PostgresSink

        assert settings.dsn is not None
        return PostgresSink(settings.dsn, table=settings.table)
    return FileSink(settings.path, rotate_bytes=settings.rotate_bytes, rotate_seconds=settings.rotate_seconds,
                    compress=settings.compress == "zstd")


class AuditLog:
    """Tamper-evident, durable audit log (see module docstring). Use `start()` / `close()`."""

    def __init__(self, settings: AuditSettings, *, sink: Sink | None = None, hmac_key: bytes | None = None,
                 signer: Signer | None = None, instance_id: str | None = None,
                 retry_interval: float = 1.0, max_batch: int = 4096,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_commit = on_commit  # after every commit attempt, when the sink state may have changed (remote.py)
        self.sink = sink if sink is not None else make_sink(settings)
        key = hmac_key if hmac_key is not None else load_hmac_key(settings.key)
        if signer is None and settings.signing_key is not None:
            signer = load_signing_key(settings.signing_key)
        self._sealer = Sealer(key, signer)
        self._lean = LeanSealer(key, signer) if settings.format == 2 else None
        self._plans: set[str] = set()  # plan digests already stored in the current segment (format 2)
        self._digests: dict[str, str] = {}  # rewritten SQL stored whole -> digest (the proxy's plans repeat)
        self._templates: dict[str, str] = {}  # a shape's template, NUL-joined -> digest ("": seen once)
        self._param_key = param_hash_key(key)
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._strict = settings.durability == "strict"
        self._drop = settings.on_failure == "drop"
        self._interval = settings.flush_interval_ms / 1000
        self._retry_interval = retry_interval
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._slots = asyncio.Semaphore(settings.queue_max)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Chain state; replaced from the sink's head whenever the sink is (re)opened.
        self._seq = 0
        self._prev = GENESIS
        self._since_checkpoint = 0
        self._open = False
        self._unavailable_since: float | None = None
        self._unavailable_since_ts = ""
        self._retry_at = 0.0
        self._lost = 0  # records not written since the last successful write (reported in the gap record)
        self._refused = 0
        self._inflight_since: float | None = None
        self._written = 0
        self._dropped = 0
        self._last_fsync = 0.0

    def __repr__(self) -> str:
        return f"AuditLog(sink={self.sink.name!r}, instance={self.instance_id!r})"

    # -- public API --

    async def start(self) -> None:
        """Open the sink and write a signed chain_start record; raises AuditUnavailable on failure."""
        opened = await self.sink.open()
        self._adopt(opened.head)
        details: dict[str, object] = {"previous_seq": self._seq, "previous_hash": self._prev,
                                      "unclean": opened.head is not None and opened.head.kind != "chain_end"}
        if opened.repaired_bytes:
            details["repaired_bytes"] = opened.repaired_bytes
        if opened.previous_file:
            details["previous_file"] = opened.previous_file
        record = self._seal_marker("chain_start", details)
        await self._write([record])
        self._open = True
        self._task = asyncio.create_task(self._run(), name="tenantgate-audit-writer")

    async def record(self, event: AuditEvent) -> int | None:
        """Log one event: see the module docstring for what returning means in each mode."""
        if not self._admit():
            return None
        if self._drop and self._slots.locked():
            self._reject("audit queue full")
            return None
        await self._slots.acquire()
        future = self._enqueue(event, slot=True)
        return await future if future is not None else None

    def submit(self, event: AuditEvent) -> asyncio.Future[int | None] | None:
        """Queue an event without waiting (the proxy's per-statement path).

        Strict: a future that resolves once the record is durable (or fails with
        AuditUnavailable); batched: None. A full queue counts as unavailable.
        """
        if not self._admit():
            return None
        if len(self._queue) >= self.settings.queue_max:
            self._reject("audit queue full")
            return None
        return self._enqueue(event, slot=False)

    @property
    def accepting(self) -> bool:
        """Whether a statement may run now: False while the sink is failing (refuse mode)."""
        return self._drop or (
            self._task is not None
            and not self._closing
            and (self._unavailable_since is None or time.monotonic() >= self._retry_at)
        )

    def _admit(self) -> bool:
        if self._task is None or self._closing:
            raise AuditUnavailable("audit log is not running")
        if self._unavailable_since is not None and time.monotonic() < self._retry_at:
            self._reject("audit log unavailable")
            return False
        return True

    def _enqueue(self, event: AuditEvent, *, slot: bool) -> asyncio.Future[int | None] | None:
        future = asyncio.get_running_loop().create_future() if self._strict else None
        queue = self._queue
        if not queue:  # a queue with records in it has woken the writer already (_run: set only when empty)
            self._idle.clear()
            self._wakeup.set()
        queue.append(_Pending(event, future, time.monotonic(), slot))
        return future

    async def flush(self) -> None:
        """Wait until every record queued so far has been written (or failed)."""
        while self._queue or self._inflight_since is not None:
            await self._idle.wait()

    async def close(self) -> None:
        """Write what is queued and a signed chain_end record, then close the sink."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        await task
        try:
            await self._ensure_open()
            await self._write([self._seal_marker("chain_end", {"records_dropped": self._dropped})])
        finally:
            await self.sink.close()

    def stats(self) -> AuditStats:
        oldest = self._inflight_since if self._inflight_since is not None else (
            self._queue[0].enqueued if self._queue else None)
        return AuditStats(
            records_written=self._written, records_dropped=self._dropped, records_refused=self._refused,
            queue_depth=len(self._queue),
            last_seq=self._seq, last_fsync_seconds=self._last_fsync,
            lag=time.monotonic() - oldest if oldest is not None else 0.0,
            available=self._unavailable_since is None)

    # -- internals --

    def _reject(self, why: str) -> None:
        """Count a record that could not be queued; raise unless on_failure = "drop"."""
        self._lost += 1
        if self._drop:
            self._dropped += 1
            return
        self._refused += 1
        raise AuditUnavailable(f"{why} ({self.sink.name}): statement refused")

    def _adopt(self, head: Head | None) -> None:
        self._seq, self._prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
        self._plans.clear()

    def _seal(self, body: dict[str, object]) -> SealedRecord:
        body["seq"] = self._seq + 1
        body["instance"] = self.instance_id
        body["prev"] = self._prev
        record = self._sealer.seal(body)
        self._seq, self._prev = record.seq, record.hash
        return record

    def _seal_lean(self, ts: int, kind: str, details: dict[str, object]) -> SealedRecord:
        """A plan or marker record."""
        return self._seal_body({"seq": self._seq + 1, "ts": ts, "kind": kind, "details": details})

    def _seal_body(self, body: dict[str, object]) -> SealedRecord:
        """``body`` begins with seq, ts, kind and (statements) plan, in that order: see lean.py."""
        assert self._lean is not None
        mac, line = self._lean.seal(body, bytes.fromhex(self._prev))
        self._seq, self._prev = self._seq + 1, mac.hex()
        return SealedRecord(self._seq, self._prev, str(body["kind"]), body, line)

    def _seal_event(self, event: AuditEvent) -> list[SealedRecord]:
        """The event's record; in format 2 preceded by its plan's record the first time in a segment.
        Its body is built in place, in stored order (no field dict to merge: this runs per statement)."""
        if self._lean is None:
            return [self._seal(event.body(self.settings.log_parameters, self._param_key))]
        ts = ts_us(event.ts)
        rewritten = event.rewritten
        out: list[SealedRecord] = []
        digest: str | None = None
        literals: list[str] | None = None
        if rewritten is not None:
            digest, details, literals = self._plan_of(rewritten)
            if digest not in self._plans:
                self._plans.add(digest)
                out.append(self._seal_lean(ts, PLAN_KIND, details))
        body: dict[str, object] = {"seq": self._seq + 1, "ts": ts, "kind": event.kind}
        if digest is not None:
            body["plan"] = digest  # right after kind, the literals of a template's next: see lean.py
            if literals is not None:
                body["literals"] = literals
        out.append(self._seal_body(event.put_fields(body, self.settings.log_parameters, self._param_key,
                                                    rewritten=False)))
        return out

    def _plan_of(self, rewritten: str) -> tuple[str, dict[str, object], list[str] | None]:
        """(digest, plan record details, the statement's literals when its plan is a template): the
        first text of a shape is stored whole (and stays so when it repeats, as a Parse's does),
        the later texts of that shape name its template."""
        digest = self._digests.get(rewritten)
        if digest is None and (split := split_template(rewritten)) is not None:
            template, literals = split
            key = "\x00".join(template)
            shape = self._templates.get(key)
            if shape is not None:
                if not shape:
                    shape = self._templates[key] = template_digest(template)
                return shape, {"digest": shape, "template": template}, literals
            _bounded(self._templates)[key] = ""  # seen once: this text is stored whole
        if digest is None:
            digest = _bounded(self._digests)[rewritten] = plan_digest(rewritten)
        return digest, {"digest": digest, "sql": rewritten}, None

    def _seal_marker(self, kind: str, details: dict[str, object]) -> SealedRecord:
        if self._lean is None:
            return self._seal({"v": 1, "ts": utc_timestamp(), "kind": kind, "details": details})
        if kind in ("chain_start", "rotate"):
            details["instance"] = self.instance_id  # format 2 names the writer once per run/segment
        return self._seal_lean(now_us(), kind, details)

    async def _write(self, records: list[SealedRecord]) -> None:
        started = time.perf_counter()
        await self.sink.write(records)
        self._last_fsync = time.perf_counter() - started
        self._written += len(records)

    async def _ensure_open(self) -> None:
        """Reopen the sink after a failure; the chain continues from what is actually stored."""
        if self._open:
            return
        opened = await self.sink.open()
        self._adopt(opened.head)
        first: list[SealedRecord] = []
        if opened.previous_file is not None:
            first.append(self._seal_marker("rotate", {"previous_file": opened.previous_file,
                                                      "previous_seq": self._seq, "previous_hash": self._prev}))
        details: dict[str, object] = {"lost": self._lost, "since": self._unavailable_since_ts}
        if opened.repaired_bytes:
            details["repaired_bytes"] = opened.repaired_bytes
        first.append(self._seal_marker("gap", details))
        await self._write(first)
        self._open = True
        self._lost = 0

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self._max_batch and not self._closing:
                # batched: a full batch is not kept waiting for the interval; strict (group commit): what
                # the loop's next round of I/O brings goes in the same fsync (one step, no timer)
                await asyncio.sleep(0 if self._strict else self._interval)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            for item in batch:
                if item.slot:
                    self._slots.release()
            self._inflight_since = batch[0].enqueued
            try:
                await self._commit(batch)
            finally:
                self._inflight_since = None

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._commit_batch(batch)
        finally:
            if self.on_commit is not None:
                self.on_commit()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        if self._unavailable_since is not None and time.monotonic() < self._retry_at:
            self._fail(batch, AuditUnavailable(f"audit log unavailable ({self.sink.name})"))
            return
        saved = (self._seq, self._prev, self._since_checkpoint)
        try:
            await self._ensure_open()
            records: list[SealedRecord] = []
            if self.sink.rotation_due():
                if self._lean is not None:
                    # a signed end: the closed segment proves on its own that nothing was cut off it
                    await self._write([self._seal_marker(SEGMENT_END, {"records_dropped": self._dropped})])
                previous = await self.sink.rotate()
                self._plans.clear()
                records.append(self._seal_marker("rotate", {"previous_file": previous,
                                                            "previous_seq": self._seq,
                                                            "previous_hash": self._prev}))
            every = self.settings.checkpoint_every
            seqs: list[int] = []
            for item in batch:
                records.extend(self._seal_event(item.event))
                seqs.append(self._seq)
                self._since_checkpoint += 1
                if every and self._since_checkpoint >= every:
                    records.append(self._seal_marker("checkpoint", {"every": every}))
                    self._since_checkpoint = 0
            await self._write(records)
        except Exception as exc:
            self._seq, self._prev, self._since_checkpoint = saved
            self._mark_unavailable()
            error = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(
                f"audit sink {self.sink.name} failed: {type(exc).__name__}: {exc}")
            self._fail(batch, error)
            return
        self._unavailable_since = None
        for item, seq in zip(batch, seqs, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(seq)

    def add_lost(self, count: int) -> None:
        """Records lost before they reached this log (a worker's, rejected locally): the next gap
        record counts them."""
        self._lost += count

    def status_key(self) -> tuple[bool, float, int]:
        """What a sink-state report depends on: available, retry time, last seq."""
        return self._unavailable_since is None, self._retry_at, self._seq

    def status(self) -> dict[str, object]:
        """The sink state as the audit server reports it to workers (remote.py)."""
        available = self._unavailable_since is None
        retry_in = 0.0 if available else max(0.0, self._retry_at - time.monotonic())
        return {"state": [available, retry_in], "seq": self._seq, "fsync": self._last_fsync}

    def _mark_unavailable(self) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = time.time()
            self._unavailable_since_ts = utc_timestamp()
        self._retry_at = time.monotonic() + self._retry_interval
        # The next attempt reopens the sink, which re-reads the head actually on storage.
        self._open = False

    def _fail(self, batch: list[_Pending], error: AuditUnavailable) -> None:
        self._lost += len(batch)
        for item in batch:
            if item.future is None or self._drop:
                # Batched records were already acknowledged: they are lost, not refused.
                self._dropped += 1
                if item.future is not None and not item.future.done():
                    item.future.set_result(None)
            else:
                self._refused += 1
                if not item.future.done():
                    item.future.set_exception(error)
