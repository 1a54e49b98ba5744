"""The hand-over of monitoring windows from workers to the supervisor (proxy/console/watch.py) over
real control sockets, in one process: every count arrives once, whether an answer is lost, a
worker stops before its window was acknowledged, or it stops after; responses reach every worker
and an older list arriving late changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tenantgate.audit.framing import Message
from tenantgate.proxy.console.control import ControlServer, socket_path
from tenantgate.proxy.console.watch import Hub, WorkerWatch
from tenantgate.proxy.monitor.signals import Response, Signals
from tenantgate.proxy.monitor.tally import Window


class Host:
    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.paused: set[str] = set()

    def pause(self, tenant: str | None) -> None:
        self.paused.add(tenant or "*")

    def resume(self, tenant: str | None) -> None:
        self.paused.discard(tenant or "*")

    def kill(self, clients: list[Any]) -> int:
        return len(clients)


class FakeWorker:
    """One worker's monitoring end on its real control socket."""

    def __init__(self, runtime: Path, index: int) -> None:
        self.runtime, self.index = runtime, index
        self.host = Host()
        self.signals = Signals(self.host, throttle_rate=1.0)
        self.watch = WorkerWatch(str(runtime), index)
        self.server = ControlServer(self.handle)
        self.running = False

    async def handle(self, request: Message) -> Message:
        if request["op"] == "monitor_fold":
            return self.watch.fold(self.signals, request)
        self.watch.respond(self.signals, request)
        return {}

    async def start(self) -> None:
        await self.server.start(socket_path(str(self.runtime), self.index))
        self.running = True

    def stop(self) -> None:
        """As run_worker ends: the control socket closes, the unacknowledged counts are left."""
        self.server.close()
        self.running = False
        self.watch.leave(self.signals)

    def read(self, rows: int, user: str = "alice") -> None:
        self.signals.tally.user("acme", user).completed(f"SELECT {rows}".encode())


def rows(window: Window, user: str = "alice") -> int:
    facts = window.users.get(("acme", user))
    return facts.rows_out if facts is not None else 0


def lost_answer(worker: FakeWorker) -> None:
    """A fold whose answer never reached the supervisor."""
    worker.watch.fold(worker.signals, {"version": -1, "responses": [], "ack": None})


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    return tmp_path


def test_every_count_arrives_once(runtime: Path) -> None:
    async def scenario() -> None:
        workers = [FakeWorker(runtime, 0), FakeWorker(runtime, 1)]
        for w in workers:
            await w.start()
        hub = Hub(str(runtime), 2, lambda i: workers[i].running)
        workers[0].read(5)
        workers[1].read(7)
        assert rows(await hub.collect()) == 12  # one user on two workers: one sum
        assert rows(await hub.collect()) == 0  # acknowledged: not again

        lost_answer(workers[0])  # counted 0 so far; now 3 rows sent, never received
        workers[0].read(3)
        assert rows(await hub.collect()) == 3  # sent again, once
        workers[0].read(1)
        lost_answer(workers[0])
        workers[0].read(2)
        assert rows(await hub.collect()) == 3

        # a worker stops after the supervisor received its last window (not acknowledged yet)
        workers[1].read(4)
        assert rows(await hub.collect()) == 4
        workers[1].read(6)
        workers[1].stop()
        workers[1] = FakeWorker(runtime, 1)  # its restart: a new process, a new tally
        await workers[1].start()
        workers[1].read(1)
        assert rows(await hub.collect()) == 7  # the 6 it left and the 1 of the new process, the 4 not again

        # a worker stops with a window the supervisor never received
        workers[0].read(8)
        lost_answer(workers[0])
        workers[0].read(2)
        workers[0].stop()
        assert rows(await hub.collect()) == 10
        assert rows(await hub.collect()) == 0
        workers[1].stop()
        assert rows(await hub.collect()) == 0

    asyncio.run(scenario())


def test_responses_reach_every_worker_and_a_late_older_list_changes_nothing(runtime: Path) -> None:
    async def scenario() -> None:
        workers = [FakeWorker(runtime, 0), FakeWorker(runtime, 1)]
        for w in workers:
            await w.start()
        hub = Hub(str(runtime), 2, lambda i: workers[i].running)
        block = Response(1, "block_user", "probing", "acme", "bob", until=4e9)
        pause = Response(2, "pause_tenant", "new_shapes", "globex", "erin", until=4e9)
        hub.publish([block, pause])
        assert await hub.settled() == []
        for w in workers:
            assert w.signals.login_refusal("acme", "bob") is not None
            assert w.host.paused == {"globex"}
        stale = {"op": "monitor_respond", "version": hub.version, "responses": []}
        hub.publish([pause])  # the block undone
        await hub.settled()
        for w in workers:
            w.watch.respond(w.signals, {**stale, "version": hub.version - 1})  # the older list, late
            assert w.signals.login_refusal("acme", "bob") is None
            assert w.host.paused == {"globex"}
        workers[1].stop()
        workers[1] = FakeWorker(runtime, 1)  # restarted: it holds the responses from its first fold on
        await workers[1].start()
        await hub.collect()
        assert workers[1].host.paused == {"globex"}
        for w in workers:
            w.stop()

    asyncio.run(scenario())
