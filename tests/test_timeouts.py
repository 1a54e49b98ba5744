"""proxy/timeouts.py without sockets: the statement_timeout backstop's timer and its 57014 answers.

Through the real proxy (a client that raised its own statement_timeout, the backstop cancelling
its backend statement): tests/test_limits.py."""

from __future__ import annotations

import asyncio

from tenantgate.config.schema import Limits
from tenantgate.proxy import codec
from tenantgate.proxy.codec import ErrorResponse
from tenantgate.proxy.timeouts import StatementTimeout

BACKEND_TIMEOUT = codec.error("57014", "canceling statement due to statement timeout")
USER_CANCEL = codec.error("57014", "canceling statement due to user request")


def timeout(seconds: float | None, backend: object = None) -> tuple[StatementTimeout, list[str], list[Limits]]:
    hits: list[str] = []
    live = [Limits(statement_timeout=seconds)]
    return StatementTimeout(lambda: live[0], hits.append, lambda: backend), hits, live  # type: ignore[return-value]


def test_the_backends_own_timeout_is_counted_and_relayed_as_it_is() -> None:
    t, hits, _ = timeout(2.0)
    assert t.error(BACKEND_TIMEOUT) is None and hits == ["statement_timeout"]


def test_a_users_cancel_is_not_the_tenants_limit() -> None:
    t, hits, _ = timeout(2.0)
    assert t.error(USER_CANCEL) is None and hits == []


def test_without_a_limit_nothing_is_counted_or_armed() -> None:
    t, hits, _ = timeout(None)

    async def run() -> None:
        t.start()
        assert t._timer is None

    asyncio.run(run())
    assert t.error(BACKEND_TIMEOUT) is None and hits == []


class _Conn:
    is_closed = True


class _Backend:
    conn = _Conn()
    cancelled = False


def test_the_backstop_fires_after_the_grace_and_answers_its_own_cancel() -> None:
    """The timer fires past the limit plus its grace; with the backend already closed it sends no
    cancel, and a backend still open would be marked cancelled (never handed on) first."""
    t, hits, _ = timeout(0.01, _Backend())

    async def run() -> None:
        t.start()
        await asyncio.sleep(0.01 + t.grace(0.01) + 0.1)

    asyncio.run(run())
    assert t._timer is None and not _Backend.cancelled  # closed: nothing to cancel
    t._timed_out = True  # as _fire sets it for an open backend
    answer = t.error(USER_CANCEL)  # the cancel's answer, whatever words the backend chose
    assert answer is not None and hits == ["statement_timeout"]
    err = codec.decode_backend(codec.MsgType.ERROR_RESPONSE, answer[5:])
    assert isinstance(err, ErrorResponse) and err.sqlstate == "57014" and "tenant limit 0.01 s" in err.message
    assert t.error(USER_CANCEL) is None  # once


def test_stop_disarms() -> None:
    t, _, _ = timeout(0.01, _Backend())

    async def run() -> None:
        t.start()
        t.stop()
        await asyncio.sleep(0.6)

    asyncio.run(run())
    assert t._timer is None and not t._timed_out
