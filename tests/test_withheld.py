"""proxy/withheld.py without sockets: strict audit's client output behind completion records.

The same class runs through the real proxy in tests/test_strict_pooled.py and tests/test_audit_*.py
(durability = "strict", SIGKILL mid-load, a failing audit sink)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tenantgate.proxy.conn import HIGH_WATER
from tenantgate.proxy.withheld import Withheld


class Client:
    """What the session wires to Withheld: the client's writes, its close, the backend's reading."""

    def __init__(self, *, can_pause: bool = True) -> None:
        self.out: list[bytes] = []
        self.events: list[str] = []
        self.closed = False
        self.can_pause = can_pause
        self.w = Withheld(self.out.append, closed=lambda: self.closed, failed=lambda: self.events.append("failed"),
                          drained=lambda: self.events.append("drained"), pause=self._pause,
                          resume=lambda: self.events.append("resume"))

    def _pause(self) -> bool:
        self.events.append("pause")
        return self.can_pause


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_nothing_pending_goes_straight_out(loop: asyncio.AbstractEventLoop) -> None:
    c = Client()
    c.w.write(b"a")
    c.w.write(b"b")
    assert c.out == [b"a", b"b"] and not c.w.holding and c.events == []


def test_output_waits_for_every_record_before_it_in_order(loop: asyncio.AbstractEventLoop) -> None:
    c = Client()
    first, second = loop.create_future(), loop.create_future()
    c.w.write(b"rows1 ")
    c.w.behind(first)
    c.w.write(b"done1 rows2 ")
    c.w.behind(second)
    c.w.write(b"done2 ")
    second.set_result(2)  # the later record first: nothing may pass the earlier one
    settle(loop)
    assert c.out == [b"rows1 "] and c.w.holding
    first.set_result(1)
    settle(loop)
    assert c.out == [b"rows1 ", b"done1 rows2 ", b"done2 "] and c.events == ["drained"] and not c.w.holding
    c.w.write(b"next")
    assert c.out[-1] == b"next"


@pytest.mark.parametrize("how", ["exception", "cancelled"])
def test_a_failed_record_withholds_its_result_and_everything_after_it(loop: asyncio.AbstractEventLoop,
                                                                      how: str) -> None:
    c = Client()
    first, second = loop.create_future(), loop.create_future()
    c.w.behind(first)
    c.w.write(b"secret result")
    c.w.behind(second)
    c.w.write(b"more")
    second.set_result(2)
    if how == "exception":
        first.set_exception(OSError("disk full"))
    else:
        first.cancel()
    settle(loop)
    assert c.out == [] and c.events == ["failed"]
    c.w.write(b"after the failure")  # the session is closing: nothing reaches the client any more
    assert c.out == []


def test_a_closed_client_gets_nothing_released(loop: asyncio.AbstractEventLoop) -> None:
    c = Client()
    record = loop.create_future()
    c.w.behind(record)
    c.w.write(b"result")
    c.closed = True
    record.set_result(1)
    settle(loop)
    assert c.out == [] and c.events == [] and not c.w.holding


def test_backpressure_pauses_the_backend_once_and_resumes_it_when_drained(loop: asyncio.AbstractEventLoop) -> None:
    c = Client()
    record = loop.create_future()
    c.w.behind(record)
    chunk = b"x" * (HIGH_WATER // 4)
    for _ in range(8):
        c.w.write(chunk)
    assert c.events == ["pause"] and c.w.paused
    record.set_result(1)
    settle(loop)
    assert c.events == ["pause", "resume", "drained"] and not c.w.paused
    assert b"".join(c.out) == chunk * 8


def test_a_backend_that_cannot_pause_is_asked_again(loop: asyncio.AbstractEventLoop) -> None:
    c = Client(can_pause=False)
    record = loop.create_future()
    c.w.behind(record)
    c.w.write(b"x" * (HIGH_WATER + 1))
    c.w.write(b"y")
    assert c.events == ["pause", "pause"] and not c.w.paused
    record.set_result(1)
    settle(loop)
    assert c.events[-1] == "drained" and "resume" not in c.events
