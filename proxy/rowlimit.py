"""A tenant's ``max_rows``: rows of one statement past the cap never reach the client (a filter,
see proxy/filters.py).

The cap is read from the tenant's live limits on every statement, so a reload applies to the
next one. A statement that returned more than the cap ends as the limits say: ``truncate`` keeps
the rows up to the cap and says so in a WARNING (the completion tag counts what was relayed),
otherwise the completion becomes an error (54000) and the backend's transaction is made to fail
too, as the client was told.

>>> from tenantgate.config.schema import Limits
>>> from tenantgate.proxy.codec import MsgType
>>> hits = []
>>> f = RowLimit(lambda: Limits(max_rows=2, max_rows_action="truncate"), lambda limit: hits.append(limit))
>>> [f.on_response(MsgType.DATA_ROW, b"") for _ in range(3)]
[None, None, b'']
>>> out = f.on_response(MsgType.COMMAND_COMPLETE, b"SELECT 3\\x00")
>>> out.endswith(b"SELECT 2\\x00"), hits, f.abort_pending
(True, ['max_rows'], False)
>>> f.on_response(MsgType.DATA_ROW, b""), f.on_response(MsgType.COMMAND_COMPLETE, b"SELECT 1\\x00")
(None, None)
"""

from __future__ import annotations

from collections.abc import Callable

from tenantgate.config.schema import Limits

from . import codec
from .codec import MsgType

_ROWS = frozenset((MsgType.DATA_ROW, MsgType.COPY_DATA))  # what the cap counts
_ENDS = frozenset((MsgType.COMMAND_COMPLETE, MsgType.PORTAL_SUSPENDED, MsgType.ERROR_RESPONSE,
                   MsgType.EMPTY_QUERY_RESPONSE))  # where a statement's count starts again
_TAGGED = ("SELECT", "FETCH", "COPY")  # completion tags that count rows


class RowLimit:
    """Counts one statement's rows; drops those past the cap; rewrites the statement's end."""

    __slots__ = ("_hit", "_limits", "_over", "_rows", "abort_pending")

    def __init__(self, limits: Callable[[], Limits], hit: Callable[[str], None]) -> None:
        self._limits = limits  # the tenant's live limits
        self._hit = hit  # counts a hit of the named limit (the limiter's and the metrics')
        self._rows = 0
        self._over = False
        self.abort_pending = False

    @property
    def responses(self) -> frozenset[int]:
        return _ROWS | _ENDS

    @property
    def active(self) -> bool:
        """Whether a cap is set now (none: the session leaves rows on its fast path)."""
        return self._limits().max_rows is not None

    def on_response(self, mtype: int, body: bytes) -> bytes | None:
        cap = self._limits().max_rows
        if cap is None:
            return None
        if mtype in _ROWS:
            self._rows += 1
            if self._rows > cap:
                self._over = True
                return b""
            return None
        over, self._rows, self._over = self._over, 0, False
        if not over or mtype == MsgType.ERROR_RESPONSE:
            return None
        return self._ended_over(mtype, body, cap)

    def _ended_over(self, mtype: int, body: bytes, cap: int) -> bytes:
        """What replaces the CommandComplete/PortalSuspended of a statement that returned more than ``cap``."""
        self._hit("max_rows")
        if self._limits().max_rows_action == "truncate":
            message = f"result truncated to {cap} rows (tenant limit max_rows)"
            notice = codec.NoticeResponse(codec.error("01000", message, severity="WARNING").fields).encode()
            if mtype == MsgType.PORTAL_SUSPENDED:
                return notice + codec.type_byte(MsgType.PORTAL_SUSPENDED) + b"\x00\x00\x00\x04"
            verb, _, count = body[:-1].decode().rpartition(" ")
            tag = f"{verb} {cap}" if verb in _TAGGED and count.isdigit() else body[:-1].decode()
            return notice + codec.CommandComplete(tag).encode()
        self.abort_pending = True  # a transaction block fails, as the client is told
        return codec.error("54000", f"statement returned more than {cap} rows (tenant limit max_rows)").encode()
