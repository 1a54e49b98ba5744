"""A tenant's ``statement_timeout``, the proxy's backstop (sans-IO but for the loop's timer).

The backend enforces the tenant's statement_timeout itself (a session setting the proxy
applies); this backstop fires a little later, from the start of a busy period (the first
request nothing has answered yet) to its end, and covers a client that raised its own
setting: it cancels the backend's statement with the backend's key. Either way the 57014
that follows is counted as a hit of the limit, and one the backstop caused says which limit.

>>> from tenantgate.config.schema import Limits
>>> from tenantgate.proxy import codec
>>> hits = []
>>> t = StatementTimeout(lambda: Limits(statement_timeout=2.0), hits.append, lambda: None)
>>> t.error(codec.error("57014", "canceling statement due to statement timeout")), hits
(None, ['statement_timeout'])
>>> t.error(codec.error("57014", "canceling statement due to user request")), hits
(None, ['statement_timeout'])
>>> t.grace(2.0), t.grace(60.0)
(0.5, 6.0)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tenantgate.config.schema import Limits

from . import codec
from .backend import Backend, BackendError, send_cancel
from .codec import ErrorResponse

__all__ = ["StatementTimeout"]

log = logging.getLogger("tenantgate.session")


class StatementTimeout:
    """One session's backstop timer and what its cancels answer."""

    __slots__ = ("_backend", "_hit", "_limits", "_timed_out", "_timer")

    def __init__(
        self, limits: Callable[[], Limits], hit: Callable[[str], None], backend: Callable[[], Backend | None]
    ) -> None:
        self._limits = limits  # the tenant's live limits
        self._hit = hit  # counts a hit of the named limit
        self._backend = backend  # the backend the session holds now
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False  # the backstop cancelled: the next 57014 is its answer

    @staticmethod
    def grace(seconds: float) -> float:
        """How much later than the backend's own timeout the backstop fires."""
        return max(0.5, seconds * 0.1)

    def start(self) -> None:
        """A busy period starts."""
        seconds = self._limits().statement_timeout
        if seconds is not None:
            self._timer = asyncio.get_running_loop().call_later(seconds + self.grace(seconds), self._fire)

    def stop(self) -> None:
        """The busy period is over (everything answered), or the session ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        backend = self._backend()
        if backend is None or backend.conn.is_closed:
            return
        self._timed_out = True
        backend.cancelled = True  # a pooled backend with a cancel in flight is never handed on
        asyncio.get_running_loop().create_task(_cancel(backend))

    def error(self, err: ErrorResponse) -> bytes | None:
        """A 57014 from the backend: counted when the tenant's timeout caused it; what replaces it
        when the backstop did (None: relayed as it is)."""
        seconds = self._limits().statement_timeout
        if seconds is None:
            return None
        ours, self._timed_out = self._timed_out, False
        if not ours and "statement timeout" not in err.message:
            return None
        self._hit("statement_timeout")
        if not ours:
            return None
        return codec.error(
            "57014", f"canceling statement due to statement timeout (tenant limit {seconds:g} s)"
        ).encode()


async def _cancel(backend: Backend) -> None:
    try:
        await send_cancel(backend.target, backend.pid, backend.secret)
    except (BackendError, OSError, TimeoutError) as exc:
        log.warning("cancelling a statement past the tenant's statement_timeout failed: %s", exc)
