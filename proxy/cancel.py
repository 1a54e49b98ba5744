"""Cancel keys: each client gets the proxy's own BackendKeyData, never the backend's.

A CancelRequest is honoured only when both the pid and the secret match a live
session (secret compared in constant time); the session then cancels whatever its
own backend runs right now, with that backend's real key. A guessed or stale key
cancels nothing, and one tenant can never reach another tenant's backend.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from .backend import new_key


class Cancellable(Protocol):
    async def cancel_backend(self) -> None: ...


class CancelRegistry:
    def __init__(self) -> None:
        self._sessions: dict[int, tuple[int, Cancellable]] = {}

    def register(self, session: Cancellable) -> tuple[int, int]:
        while True:
            pid, secret = new_key()
            if pid not in self._sessions:
                self._sessions[pid] = (secret, session)
                return pid, secret

    def unregister(self, pid: int) -> None:
        self._sessions.pop(pid, None)

    def lookup(self, pid: int, secret: int) -> Cancellable | None:
        entry = self._sessions.get(pid)
        if entry is None:
            return None
        expected, session = entry
        ok = hmac.compare_digest(expected.to_bytes(4, "big", signed=True), secret.to_bytes(4, "big", signed=True))
        return session if ok else None
