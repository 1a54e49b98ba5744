"""Security monitoring with ``[listen] workers`` > 1: one analysis in the supervisor, the counts in the workers.

A user's sessions land on any worker, so no worker alone sees what the user does. Each worker
keeps only the data path's side (monitor/signals.py: its tally, the responses in force); the
supervisor runs the one Monitor (monitor/runtime.py), with the one ``state_file``, and every
interval asks every worker for its window over the control channel (``monitor_fold``), merges
them (facts per (tenant, user) summed, shapes and addresses united: tally.Window.merge) and
folds the merged window. Alerts are raised there once: its audit records go into the
supervisor's AuditServer chain, ``tenantgate_alerts_total`` is counted in the supervisor's
exposition only, SHOW ALERTS / UNDO ALERT run there, and so does the webhook.

Responses go the other way: whenever the ones in force change (an alert's response, an undo,
an expiry) the whole list goes to every worker (``monitor_respond``), numbered so that an older
list arriving late is ignored; every fold request carries it too, so a worker that restarted or
missed one holds the right responses from its first fold on.

Windows are handed over at least once and counted once: a worker keeps what it sent until the
next request acknowledges it (signals.Signals.handoff), and a worker that stops (a restart, a
shutdown) leaves what was not acknowledged in ``monitor-<index>.json`` in the runtime directory,
which the next fold takes in. Only a worker that is killed loses its last interval's counts. The
supervisor only asks: a worker never waits on it, so monitoring cannot hold up the data path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from tenantgate.audit.framing import Message
from tenantgate.proxy.monitor.signals import Response, Signals
from tenantgate.proxy.monitor.tally import Window

from .control import ControlError, call, socket_path

log = logging.getLogger("tenantgate.monitor")

FOLD_TIMEOUT = 5.0  # a worker that does not hand its window over by then is asked again next fold


def leftover_path(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"monitor-{index}.json")


class WorkerWatch:
    """A worker's end: answers the supervisor's monitoring requests from its Proxy's Signals."""

    def __init__(self, runtime_dir: str, index: int) -> None:
        self.path = leftover_path(runtime_dir, index)
        self.version = -1  # of the last response list applied

    def respond(self, signals: Signals | None, request: Message) -> None:
        version = int(request["version"])
        if signals is not None and version >= self.version:
            self.version = version
            signals.apply(Response.from_json(r) for r in request["responses"])

    def fold(self, signals: Signals | None, request: Message) -> Message:
        self.respond(signals, request)
        if signals is None:  # monitoring is off here (a reload is on its way)
            return {}
        return signals.handoff(request.get("ack"))

    def leave(self, signals: Signals | None) -> None:
        """The worker stops: what the supervisor has not acknowledged is left for its next fold."""
        if signals is None:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(signals.leftover(), f)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("monitoring counts of this worker not left for the supervisor: %s", exc)


class Hub:
    """The supervisor's end: collects and merges the workers' windows, sends the responses."""

    def __init__(self, runtime_dir: str, count: int, running: Any) -> None:
        self.runtime_dir = runtime_dir
        self.count = count
        self.running = running  # index -> whether that worker runs
        self.acks: dict[int, list[Any]] = {}  # worker -> [life, seq] of its last window received
        self.responses: list[Response] = []
        self.version = 0
        self._push: asyncio.Task[list[str]] | None = None
        self._silent: set[int] = set()  # workers whose last fold got no answer (logged once per outage)

    def _message(self, op: str) -> Message:
        return {"op": op, "version": self.version, "responses": [r.to_json() for r in self.responses]}

    async def collect(self) -> Window:
        """Every worker's window since the last fold, merged (plus what stopped workers left)."""
        merged = Window()
        indexes = [i for i in range(self.count) if self.running(i)]
        answers = await asyncio.gather(
            *(call(socket_path(self.runtime_dir, i), {**self._message("monitor_fold"), "ack": self.acks.get(i)},
                   timeout=FOLD_TIMEOUT) for i in indexes),
            return_exceptions=True,
        )
        for index in range(self.count):
            self._take_leftover(index, merged)
        for index, answer in zip(indexes, answers, strict=True):
            if isinstance(answer, ControlError):
                if index not in self._silent:
                    self._silent.add(index)
                    log.info("worker %d handed no monitoring window over (asked again each fold): %s", index, answer)
            elif isinstance(answer, BaseException):
                raise answer
            elif "window" in answer:
                self._silent.discard(index)
                merged.merge(Window.from_json(answer["window"]))
                self.acks[index] = [answer["life"], answer["seq"]]
        return merged

    def _take_leftover(self, index: int, merged: Window) -> None:
        path = leftover_path(self.runtime_dir, index)
        try:
            with open(path, encoding="utf-8") as f:
                left = json.load(f)
            os.unlink(path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("monitoring counts left by worker %d unreadable: %s", index, exc)
            return
        merged.merge(Window.from_json(left["fresh"]))
        life, acked = self.acks.get(index, [None, 0])
        for seq, window in left["unacked"]:
            if life != left["life"] or seq > acked:  # handed over, but the answer never arrived
                merged.merge(Window.from_json(window))

    def publish(self, responses: list[Response]) -> None:
        """The responses in force changed: every worker gets the new list (see :meth:`settled`)."""
        self.responses = list(responses)
        self.version += 1
        self._push = asyncio.get_running_loop().create_task(self._broadcast())

    async def _broadcast(self) -> list[str]:
        message = self._message("monitor_respond")
        indexes = [i for i in range(self.count) if self.running(i)]
        answers = await asyncio.gather(*(call(socket_path(self.runtime_dir, i), message) for i in indexes),
                                       return_exceptions=True)
        notes = []
        for index, answer in zip(indexes, answers, strict=True):
            if isinstance(answer, BaseException):
                notes.append(f"worker {index} not told yet (it is at its next fold): {answer}")
        for note in notes:
            log.warning("monitoring responses: %s", note)
        return notes

    async def settled(self) -> list[str]:
        """Wait until the last list reached every worker (UNDO ALERT answers then); the ones not reached."""
        return await self._push if self._push is not None else []
