"""Cancel keys: each client gets the proxy's own BackendKeyData, never the backend's.

A CancelRequest is honoured only when both the pid and the secret match a live
session (secret compared in constant time); the session then cancels whatever its
own backend runs right now, with that backend's real key. A guessed or stale key
cancels nothing, and one tenant can never reach another tenant's backend.

With several worker processes the kernel hands a cancel connection to any of them,
so pids encode their owner: ``pid % worker_count == worker_index``. A worker that
receives another worker's pid hands the raw pid and secret to ``forward`` (the
control channel to the owner), which does the constant-time check itself.

>>> reg = CancelRegistry(worker_index=1, worker_count=3)
>>> all(reg.register(object())[0] % 3 == 1 for _ in range(50))  # type: ignore[arg-type]
True
>>> reg.owner(7), reg.owner(9)
(1, 0)
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Protocol

from .backend import new_key

MAX_PID = 2**31 - 1

Forward = Callable[[int, int, int], Awaitable[None]]  # (owner worker, pid, secret)


class Cancellable(Protocol):
    async def cancel_backend(self) -> None: ...


class _Forwarded:
    """A cancel for another worker's session: delivered there, checked there."""

    __slots__ = ("_forward", "_owner", "_pid", "_secret")

    def __init__(self, forward: Forward, owner: int, pid: int, secret: int) -> None:
        self._forward, self._owner, self._pid, self._secret = forward, owner, pid, secret

    def __repr__(self) -> str:  # the secret stays out of logs
        return f"_Forwarded(owner={self._owner}, pid={self._pid})"

    async def cancel_backend(self) -> None:
        await self._forward(self._owner, self._pid, self._secret)


class CancelRegistry:
    def __init__(self, worker_index: int = 0, worker_count: int = 1, forward: Forward | None = None) -> None:
        if not 0 <= worker_index < worker_count:
            raise ValueError(f"worker index {worker_index} out of range for {worker_count} workers")
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.forward = forward
        self._sessions: dict[int, tuple[int, Cancellable]] = {}

    def owner(self, pid: int) -> int:
        """The worker whose sessions are issued this pid."""
        return pid % self.worker_count

    def register(self, session: Cancellable) -> tuple[int, int]:
        n, index = self.worker_count, self.worker_index
        while True:
            pid, secret = new_key()
            pid += (index - pid) % n  # the next pid at or above it that this worker owns
            if pid <= MAX_PID and pid not in self._sessions:
                self._sessions[pid] = (secret, session)
                return pid, secret

    def unregister(self, pid: int) -> None:
        self._sessions.pop(pid, None)

    def lookup(self, pid: int, secret: int) -> Cancellable | None:
        """The session a key cancels; another worker's pid yields its forwarder (None without one)."""
        owner = self.owner(pid)
        if owner != self.worker_index:
            return None if self.forward is None else _Forwarded(self.forward, owner, pid, secret)
        entry = self._sessions.get(pid)
        if entry is None:
            return None
        expected, session = entry
        ok = hmac.compare_digest(expected.to_bytes(4, "big", signed=True), secret.to_bytes(4, "big", signed=True))
        return session if ok else None
