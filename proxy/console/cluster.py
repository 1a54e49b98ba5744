"""Operations across the instances of one [cluster], over the peer channel (proxy/peers.py).

An admin command that changes what sessions may do — RELOAD, PAUSE, RESUME, KILL TENANT —
runs on the instance that received it and then on every other instance before its answer is
sent: so when RELOAD returns, all instances serve the new config, and a tenant move (its
PAUSE, SHOW SESSIONS until no transaction is open, RELOAD, RESUME through one admin console)
switches every instance before resuming. SHOW SESSIONS lists every instance's sessions with an
``instance`` column. A peer that is down or refuses makes the command fail (08006) naming it,
after the instances that answered applied it. Other commands (other SHOWs, KILL SESSION,
ROTATE KEY) stay local.

The peer channel also delivers CancelRequests whose key names another instance.

"On this instance" is ``run`` and ``cancel``: a single process runs the command in itself and
checks the key itself; a supervisor of several workers (workers.py) serves the channel and runs
the command on every worker, and hands a cancel to the worker the key names.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenantgate.audit.framing import Message
from tenantgate.proxy.peers import PeerChannel, PeerError
from tenantgate.proxy.process import Proxy

from .commands import AdminError, Command, ProxyCaller, Result, parse

log = logging.getLogger("tenantgate.cluster")

CLUSTER_WIDE = frozenset({"RELOAD", "PAUSE", "RESUME", "KILL TENANT", "SHOW SESSIONS", "SHOW CLIENTS"})
# listed from every instance, with an ``instance`` column (a move waits for open transactions on all)
LISTED = frozenset({"SHOW SESSIONS", "SHOW CLIENTS"})


Listed = list[tuple[str, list[str], list[list[object]]]]  # (instance, its columns, its rows)
RunHere = Callable[[Command, list[str]], Awaitable[Result]]  # a command, on every worker of this instance
CancelHere = Callable[[int, int], Awaitable[None]]  # a forwarded key: to its session here, if live


class ClusterOps:
    """This instance's part: answers peers' requests and fans cluster-wide commands out."""

    def __init__(self, proxy: Proxy, run: RunHere | None = None, cancel: CancelHere | None = None) -> None:
        assert proxy.config.cluster is not None
        self.proxy = proxy
        self.channel = PeerChannel(proxy.config.cluster, self.handle)
        self.run_here = run or self._run_in_process
        self.cancel_here = cancel or self._cancel_in_process
        proxy.cancels.forward_peer = self.channel.forward_cancel

    async def _run_in_process(self, cmd: Command, args: list[str]) -> Result:
        return await cmd.run(ProxyCaller(self.proxy), args)

    async def _cancel_in_process(self, pid: int, secret: int) -> None:
        # only a key of this process: a forwarded cancel is never forwarded again
        target = self.proxy.cancels.local(pid, secret)
        if target is None:
            log.info("forwarded cancel request with an unknown key ignored")
        else:
            await target.cancel_backend()

    async def handle(self, request: Message) -> Message:
        op = request.get("op")
        if op == "cancel":
            await self.cancel_here(int(request["pid"]), int(request["secret"]))
            return {}
        if op == "admin":
            text, by = str(request["command"]), str(request.get("by", "?"))  # by: admin@instance
            cmd, args = parse(text)
            if cmd.name not in CLUSTER_WIDE:
                return {"error": ["42501", f"{cmd.name} is not a cluster-wide command"]}
            try:
                result = await self.run_here(cmd, args)
            except AdminError as exc:
                self.proxy.record_admin(by, text, False, exc.message)
                return {"error": [exc.sqlstate, exc.message]}
            self.proxy.record_admin(by, text, True, result.tag)  # this instance's audit shows who asked
            return {
                "tag": result.tag,
                "notices": result.notices,
                "columns": list(result.columns),
                "rows": [list(r) for r in result.rows],
            }
        return {"failed": f"unknown peer operation {op!r}"}

    async def fan_out(self, text: str, local: Result, user: str) -> Result:
        """``local`` (this instance's result) once every other instance ran ``text`` too."""
        failures: list[str] = []
        notices = list(local.notices)
        me = self.channel.cluster.instance
        listed: Listed = [(me, list(local.columns), [list(r) for r in local.rows])]
        replies = await self.channel.broadcast({"op": "admin", "command": text, "by": f"{user}@{me}"})
        for name, reply in replies.items():
            if isinstance(reply, PeerError):
                failures.append(str(reply))
            elif "error" in reply or "failed" in reply:
                failures.append(f"instance {name}: {reply.get('error') or reply.get('failed')}")
            else:
                notices += [f"instance {name}: {n}" for n in reply.get("notices", [])]
                listed.append((name, list(reply.get("columns", local.columns)), list(reply.get("rows", []))))
        if failures:  # a listing missing an instance would hide its sessions: fail closed too
            done = ", ".join(n for n in self.channel.cluster.peers if all(n not in f for f in failures))
            raise AdminError("08006", f"{text}: done on {done}; not on: " + "; ".join(failures))
        if " ".join(text.split()[:2]) in LISTED:
            columns, rows = _by_column(listed)
            return Result(local.tag, (*columns, "instance"), rows, notices)
        return Result(local.tag, local.columns, local.rows, notices, local.after)


def _by_column(listed: Listed) -> tuple[list[str], list[tuple[object, ...]]]:
    """Every instance's rows under the union of their columns, each with its instance's name: an
    instance of several workers lists a ``worker`` column that one of a single process has not.

    >>> _by_column([("a", ["id"], [[1]]), ("b", ["id", "worker"], [[2, 0]])])
    (['id', 'worker'], [(1, None, 'a'), (2, 0, 'b')])
    """
    columns: list[str] = []
    for _, names, _ in listed:
        columns += [c for c in names if c not in columns]
    rows = [
        (*(dict(zip(names, row, strict=True)).get(c) for c in columns), name)
        for name, names, found in listed
        for row in found
    ]
    return columns, rows
