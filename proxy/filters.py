"""What a session's concerns see of the backend's answers: the response-filter protocol.

A session relays backend frames as they come; the few concerns that must look at some of
them (row limit, field encryption, tenant channels) are *filters*, each over the message
types it names in ``responses``, knowing nothing of the others. The session (proxy/session.py)
runs each watched frame through its chain, in order, with these rules, kept here once:

- ``on_response`` returns None to relay the frame unchanged, ``b""`` to drop it, or the bytes
  that replace it (whole frames: one or more);
- a frame dropped, or replaced by an ErrorResponse, goes no further: later filters and the
  session's own bookkeeping never see it (an error replacing a statement's completion is what
  that statement ended with: counted and audited as its SQLSTATE);
- any other replacement goes on as the frame it replaced (a truncated result is still its
  statement's completion);
- a later filter's replacement of the same frame wins (they see the frame as the backend sent it);
- a filter that told the client its transaction failed sets ``abort_pending``; the chain clears it
  and the session makes the backend's transaction fail too.

Only frames some filter (or the session itself) watches leave the relay's fast path: the set of
watched types is the union of the chain's ``responses``.

>>> from tenantgate.proxy.codec import MsgType
>>> class Upper:
...     responses = frozenset((MsgType.DATA_ROW,))
...     abort_pending = False
...     def on_response(self, mtype: int, body: bytes) -> bytes | None:
...         return body.upper()
>>> run_chain((Upper(),), MsgType.DATA_ROW, b"abc")
(b'ABC', False, False)
>>> run_chain((Upper(),), MsgType.COMMAND_COMPLETE, b"SELECT 1\\x00")
(None, False, False)
"""

from __future__ import annotations

from typing import Protocol

from .codec import ErrorResponse

__all__ = ["ResponseFilter", "run_chain"]


class ResponseFilter(Protocol):
    """One concern over some of the backend's frames (see the module's rules)."""

    abort_pending: bool  # the client was told its transaction failed: fail the backend's (run_chain clears it)

    @property
    def responses(self) -> frozenset[int]: ...

    def on_response(self, mtype: int, body: bytes) -> bytes | None: ...


def run_chain(chain: tuple[ResponseFilter, ...], mtype: int, body: bytes) -> tuple[bytes | None, bool, bool]:
    """The frame's replacement after the filters of ``chain`` that watch ``mtype`` (None: unchanged),
    whether it goes no further (dropped, or replaced by an error), and whether a filter asked for
    the backend's transaction to fail."""
    replacement: bytes | None = None
    abort = False
    for f in chain:
        if mtype not in f.responses:
            continue
        answer = f.on_response(mtype, body)
        if f.abort_pending:
            f.abort_pending = False
            abort = True
        if answer is None:
            continue
        replacement = answer
        if not answer or answer[:1] == ErrorResponse.TYPE:
            return replacement, True, abort
    return replacement, False, abort
