"""Strict audit on the way back: a result waits for its completion record (sans-IO: futures and
callables, no sockets).

With ``durability = "strict"`` no client sees a statement complete before the record saying
so is durable. The session hands every byte meant for its client to :class:`Withheld`: while
no completion record is pending it goes straight out; from a completion whose record is not
yet durable on, everything waits behind that record, in order, and goes out as each record
becomes durable. A record that failed withholds its result and everything after it for good
(``failed``: the session ends). So much held that it passes the transport's high-water mark
stops reading the backend (``pause``), as a slow client would, until it drains.

>>> import asyncio
>>> loop = asyncio.new_event_loop()
>>> sent = []
>>> w = Withheld(sent.append, closed=lambda: False, failed=lambda: sent.append(b"FAILED"),
...              drained=lambda: sent.append(b"drained"), pause=lambda: True, resume=lambda: None)
>>> w.write(b"row1 ")
>>> record = loop.create_future()
>>> w.behind(record); w.write(b"done "); sent
[b'row1 ']
>>> record.set_result(1); loop.run_until_complete(asyncio.sleep(0)); sent
[b'row1 ', b'done ', b'drained']
>>> loop.close()
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .conn import HIGH_WATER

__all__ = ["Withheld"]


class Withheld:
    """A session's client output, in order, behind the completion records not yet durable."""

    __slots__ = ("_behind", "_bytes", "_closed", "_dead", "_drained", "_failed", "_pause", "_resume", "_write",
                 "paused")

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        closed: Callable[[], bool],
        failed: Callable[[], None],
        drained: Callable[[], None],
        pause: Callable[[], bool],
        resume: Callable[[], None],
    ) -> None:
        self._write = write  # to the client
        self._closed = closed  # the client is gone: nothing is released any more
        self._failed = failed  # a record could not be written: its result is withheld for good
        self._drained = drained  # nothing is held any more
        self._pause = pause  # stop reading the backend; False: it could not
        self._resume = resume
        self._behind: deque[tuple[asyncio.Future[int | None], bytearray]] = deque()  # (record, bytes after it)
        self._bytes = 0
        self._dead = False  # a record failed: nothing is written any more
        self.paused = False  # the backend is not read until this drains

    @property
    def holding(self) -> bool:
        """Output waits for a completion record."""
        return bool(self._behind)

    def behind(self, durable: asyncio.Future[int | None]) -> None:
        """What is written from now on waits for ``durable`` (and for every record before it)."""
        self._behind.append((durable, bytearray()))
        durable.add_done_callback(self._release)

    def write(self, data: bytes) -> None:
        """Bytes for the client: now, or behind the last record not yet durable."""
        if not self._behind:
            if not self._dead:
                self._write(data)
            return
        self._behind[-1][1].extend(data)
        self._bytes += len(data)
        if self._bytes > HIGH_WATER and not self.paused:
            self.paused = self._pause()

    def _release(self, _durable: asyncio.Future[int | None]) -> None:
        """A record is durable (or failed): release, in order, what waited for it and is due."""
        if self._dead:  # the session ended with the failure: later records release nothing, drain nothing
            return
        behind = self._behind
        while behind and behind[0][0].done():
            durable, data = behind.popleft()
            if self._closed():
                behind.clear()
                return
            if durable.cancelled() or durable.exception() is not None:
                behind.clear()
                self._dead = True
                self._failed()
                return
            self._bytes -= len(data)
            if data:
                self._write(bytes(data))
        if behind:
            return
        if self.paused:
            self.paused = False
            self._resume()
        self._drained()
