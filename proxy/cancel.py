"""Cancel keys: each client's BackendKeyData holds a proxy-issued secret, never the backend's.

A session-pooled client is bound to one backend for its life, so its key carries that
backend's real pid (``pg_backend_pid()``, notification pids and ``pg_stat_activity``
agree, as with PgBouncer); a transaction-pooled client gets a proxy-issued pid (its
backend changes per transaction). Either way the secret is the proxy's own random one.

A CancelRequest is honoured only when both the pid and the secret match a live
session (secret compared in constant time); the session then cancels whatever its
own backend runs right now, with that backend's real key. A guessed or stale key
cancels nothing, and one tenant can never reach another tenant's backend. Keys are
(pid, secret) pairs: two backends with one pid on different hosts never collide.

With several worker processes the kernel hands a cancel connection to any of them,
so secrets encode their owner: ``unsigned(secret) % worker_count == worker_index``
(the pid may be a backend's, which the proxy does not choose). A worker that receives
another worker's key hands the raw pid and secret to ``forward`` (the control channel
to the owner), which does the constant-time check itself.

With several instances ([cluster], behind a load balancer that does not route by key) the
secret encodes the owning instance too: ``unsigned(secret) % instances`` is the instance,
``unsigned(secret) // instances % workers`` its worker. A key of another instance goes to
``forward_peer`` (the authenticated peer channel, proxy/peers.py); the owner checks it.

>>> two = CancelRegistry(worker_index=1, worker_count=2, instance_index=2, instance_count=3)
>>> keys = [two.register(object())[1] for _ in range(50)]  # type: ignore[arg-type]
>>> {(two.instance_of(s), two.owner(s)) for s in keys}
{(2, 1)}

>>> reg = CancelRegistry(worker_index=1, worker_count=3)
>>> all(reg.owner(reg.register(object())[1]) == 1 for _ in range(50))  # type: ignore[arg-type]
True
>>> reg.register(object(), pid=4242)[0]  # type: ignore[arg-type]
4242
>>> MIN_ISSUED_PID <= reg.register(object())[0] <= MAX_PID  # type: ignore[arg-type]
True
>>> reg.owner(7), reg.owner(-2)  # -2 is 2**32 - 2 unsigned
(1, 2)
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

MAX_PID = 2**31 - 1
# Proxy-issued pids lie above every pid a Linux backend can have (pid_max is at most 2**22), so
# one is never mistaken for a real backend's (e.g. in a notification).
MIN_ISSUED_PID = 2**22 + 1

Forward = Callable[[int, int, int], Awaitable[None]]  # (owner worker or instance, pid, secret)


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


def _signed(value: int) -> int:
    """An unsigned 32-bit value as BackendKeyData's signed Int32."""
    return value - 2**32 if value >= 2**31 else value


class CancelRegistry:
    def __init__(
        self,
        worker_index: int = 0,
        worker_count: int = 1,
        forward: Forward | None = None,
        *,
        instance_index: int = 0,
        instance_count: int = 1,
        forward_peer: Forward | None = None,
    ) -> None:
        if not 0 <= worker_index < worker_count:
            raise ValueError(f"worker index {worker_index} out of range for {worker_count} workers")
        if not 0 <= instance_index < instance_count:
            raise ValueError(f"instance index {instance_index} out of range for {instance_count} instances")
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.forward = forward
        self.instance_index = instance_index
        self.instance_count = instance_count
        self.forward_peer = forward_peer
        # pid -> secret -> session: looked up by pid, then every secret compared in constant time
        self._sessions: dict[int, dict[int, Cancellable]] = {}

    def owner(self, secret: int) -> int:
        """The worker (of the owning instance) whose sessions are issued this secret."""
        return (secret & 0xFFFFFFFF) // self.instance_count % self.worker_count

    def instance_of(self, secret: int) -> int:
        """The instance (index in [cluster] peers) whose sessions are issued this secret."""
        return (secret & 0xFFFFFFFF) % self.instance_count

    def _new_secret(self) -> int:
        # secrets of this worker: value % (instances * workers) == worker * instances + instance
        n = self.worker_count * self.instance_count
        index = self.worker_index * self.instance_count + self.instance_index
        while True:  # uniform over the secrets this worker owns (a redraw past the top)
            value = secrets.randbits(32)
            value += (index - value) % n  # the next value at or above it that this worker owns
            if value < 2**32:
                return _signed(value)

    def register(self, session: Cancellable, pid: int | None = None) -> tuple[int, int]:
        """A new key for ``session``: with its backend's real ``pid`` (session pooling), else a
        proxy-issued one. The secret is always new, so a reused pid never revives an old key."""
        while True:
            key_pid = pid if pid is not None else MIN_ISSUED_PID + secrets.randbelow(MAX_PID - MIN_ISSUED_PID + 1)
            secret = self._new_secret()
            by_secret = self._sessions.setdefault(key_pid, {})
            if secret not in by_secret:
                by_secret[secret] = session
                return key_pid, secret

    def unregister(self, key: tuple[int, int]) -> None:
        pid, secret = key
        by_secret = self._sessions.get(pid)
        if by_secret is not None:
            by_secret.pop(secret, None)
            if not by_secret:
                del self._sessions[pid]

    def lookup(self, pid: int, secret: int) -> Cancellable | None:
        """The session a key cancels; another instance's or worker's key yields its forwarder
        (None without one)."""
        instance = self.instance_of(secret)
        if instance != self.instance_index:
            return None if self.forward_peer is None else _Forwarded(self.forward_peer, instance, pid, secret)
        owner = self.owner(secret)
        if owner != self.worker_index:
            return None if self.forward is None else _Forwarded(self.forward, owner, pid, secret)
        return self.local(pid, secret)

    def local(self, pid: int, secret: int) -> Cancellable | None:
        """The session of this very worker a key cancels, never a forwarder: what a cancel that was
        forwarded here may reach (so a forged or stale forward never travels on)."""
        if self.instance_of(secret) != self.instance_index or self.owner(secret) != self.worker_index:
            return None
        found: Cancellable | None = None
        given = secret.to_bytes(4, "big", signed=True)
        for expected, session in self._sessions.get(pid, {}).items():
            if hmac.compare_digest(expected.to_bytes(4, "big", signed=True), given):
                found = session
        return found
