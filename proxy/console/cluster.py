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
"""

from __future__ import annotations

import logging

from tenantgate.audit.framing import Message
from tenantgate.proxy.peers import PeerChannel, PeerError
from tenantgate.proxy.process import Proxy

from .commands import AdminError, Result, parse

log = logging.getLogger("tenantgate.cluster")

CLUSTER_WIDE = frozenset({"RELOAD", "PAUSE", "RESUME", "KILL TENANT", "SHOW SESSIONS", "SHOW CLIENTS"})
# listed from every instance, with an ``instance`` column (a move waits for open transactions on all)
LISTED = frozenset({"SHOW SESSIONS", "SHOW CLIENTS"})


class _Caller:
    """The commands.Caller a peer's command runs as: the commands only use its proxy."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy


class ClusterOps:
    """This instance's part: answers peers' requests and fans cluster-wide commands out."""

    def __init__(self, proxy: Proxy) -> None:
        assert proxy.config.cluster is not None
        self.proxy = proxy
        self.channel = PeerChannel(proxy.config.cluster, self.handle)
        proxy.cancels.forward_peer = self.channel.forward_cancel

    async def handle(self, request: Message) -> Message:
        op = request.get("op")
        if op == "cancel":
            pid, secret = int(request["pid"]), int(request["secret"])
            cancels = self.proxy.cancels
            # only a key of this instance: a forwarded cancel is never forwarded again
            target = cancels.lookup(pid, secret) if cancels.instance_of(secret) == cancels.instance_index else None
            if target is None:
                log.info("forwarded cancel request with an unknown key ignored")
            else:
                await target.cancel_backend()
            return {}
        if op == "admin":
            text, by = str(request["command"]), str(request.get("by", "?"))  # by: admin@instance
            cmd, args = parse(text)
            if cmd.name not in CLUSTER_WIDE:
                return {"error": ["42501", f"{cmd.name} is not a cluster-wide command"]}
            try:
                result = await cmd.run(_Caller(self.proxy), args)
            except AdminError as exc:
                self.proxy.record_admin(by, text, False, exc.message)
                return {"error": [exc.sqlstate, exc.message]}
            self.proxy.record_admin(by, text, True, result.tag)  # this instance's audit shows who asked
            return {"tag": result.tag, "notices": result.notices, "rows": [list(r) for r in result.rows]}
        return {"failed": f"unknown peer operation {op!r}"}

    async def fan_out(self, text: str, local: Result, user: str) -> Result:
        """``local`` (this instance's result) once every other instance ran ``text`` too."""
        failures: list[str] = []
        notices = list(local.notices)
        me = self.channel.cluster.instance
        rows = [(*row, me) for row in local.rows]
        replies = await self.channel.broadcast({"op": "admin", "command": text, "by": f"{user}@{me}"})
        for name, reply in replies.items():
            if isinstance(reply, PeerError):
                failures.append(str(reply))
            elif "error" in reply or "failed" in reply:
                failures.append(f"instance {name}: {reply.get('error') or reply.get('failed')}")
            else:
                notices += [f"instance {name}: {n}" for n in reply.get("notices", [])]
                rows += [(*row, name) for row in reply.get("rows", [])]
        if failures:  # a listing missing an instance would hide its sessions: fail closed too
            done = ", ".join(n for n in self.channel.cluster.peers if all(n not in f for f in failures))
            raise AdminError("08006", f"{text}: done on {done}; not on: " + "; ".join(failures))
        if " ".join(text.split()[:2]) in LISTED:
            return Result(local.tag, (*local.columns, "instance"), rows, notices)
        return Result(local.tag, local.columns, local.rows, notices, local.after)
