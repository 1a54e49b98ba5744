"""BackendPool's wait for a free backend (no sockets): the timeout, and a waiter cancelled just after it was served."""

from __future__ import annotations

import asyncio

import pytest

from tenantgate.proxy.backend import Backend, BackendTarget
from tenantgate.proxy.conn import PgConnection
from tenantgate.proxy.pool import BackendPool, PoolTimeout


class _Conn(PgConnection):
    """A backend's connection without a socket: what the pool reads of it."""

    def __init__(self) -> None:
        super().__init__("server")
        self.shut = False

    @property
    def is_closed(self) -> bool:
        return self.shut

    def abort(self) -> None:
        self.shut = True


def _pool(timeout: float) -> tuple[BackendPool, Backend]:
    target = BackendTarget("127.0.0.1", 1, "app", None)
    pool = BackendPool(target, "db", size=1, timeout=timeout)
    backend = Backend(_Conn(), target, "db")
    pool.busy.add(backend)  # the pool is full: the next acquire waits
    return pool, backend


def test_wait_times_out_with_pool_timeout() -> None:
    async def main() -> None:
        pool, _ = _pool(0.05)
        with pytest.raises(PoolTimeout, match="pool_timeout"):
            await pool.acquire()
        assert not pool.waiters

    asyncio.run(main())


@pytest.mark.parametrize("cancel_first", [False, True], ids=["served", "cancelled-after-served"])
def test_waiter_served_or_cancelled_never_loses_the_backend(cancel_first: bool) -> None:
    async def main() -> None:
        pool, backend = _pool(5.0)
        task = asyncio.get_running_loop().create_task(pool.acquire())
        await asyncio.sleep(0)  # waiting in line
        pool.release(backend)  # handed to the waiter
        if cancel_first:  # ... and its task cancelled before it resumed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert list(pool.idle) == [backend] and not pool.busy
        else:
            assert await task is backend and backend in pool.busy
        assert not pool.waiters

    asyncio.run(main())


@pytest.mark.parametrize("outcome", ["served", "timeout"])
def test_wait_calls_back_without_a_task(outcome: str) -> None:
    """A session's wait (BackendPool.wait): one callback with the backend or PoolTimeout; off the line either way."""
    async def main() -> None:
        pool, backend = _pool(0.05 if outcome == "timeout" else 5.0)
        got: list[asyncio.Future[Backend]] = []
        tasks = len(asyncio.all_tasks())
        pool.wait(got.append)
        assert len(asyncio.all_tasks()) == tasks and list(pool.waiters)  # waits in line, no task of its own
        if outcome == "served":
            pool.release(backend)
            await asyncio.sleep(0)
            assert [f.result() for f in got] == [backend] and backend in pool.busy
        else:
            await asyncio.sleep(0.2)
            (future,) = got
            assert isinstance(future.exception(), PoolTimeout) and "pool_timeout" in str(future.exception())
        assert not pool.waiters and pool.max_wait > 0

    asyncio.run(main())


def test_one_timer_times_the_line_out_in_order_and_never_early() -> None:
    """No timer per waiter: the head's timer fails each waiter after its own full pool_timeout, not before."""
    async def main() -> None:
        pool, backend = _pool(0.2)
        first = pool.wait(None)
        await asyncio.sleep(0.1)
        second, third = pool.wait(None), pool.wait(None)
        pool.release(backend)  # the head is served: the others keep their own deadlines
        assert first.result() is backend
        await asyncio.sleep(0.15)  # past the head's deadline, not the others'
        assert not second.done() and not third.done()
        await asyncio.sleep(0.1)
        assert isinstance(second.exception(), PoolTimeout) and isinstance(third.exception(), PoolTimeout)
        assert not pool.waiters and pool._timer is None

    asyncio.run(main())
