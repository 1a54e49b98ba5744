"""The data path's side of monitoring in one serving process: its tally, and the responses in force.

Every serving process (the single process, or each worker of ``[listen] workers`` > 1) holds one
:class:`Signals`: sessions add to its :class:`Tally`; :meth:`Signals.window` folds it (plus the
bytes each live session sent since the last fold) into a :class:`Window` for the analysis
(runtime.py's Monitor, in the same process or in the supervisor); :meth:`Signals.apply` makes
the responses the analysis says are in force hold here (throttle a user, pause a tenant, end a
user's sessions and refuse its logins) and lifts the ones no longer listed. ``apply`` takes the
whole list each time, so a worker that restarted, or missed a message, is set right by the next.

A worker hands its windows over with :meth:`Signals.handoff`: the supervisor asks every interval
and acknowledges what it received with the next ask, and a window not acknowledged (the answer
was lost, the supervisor was busy) is sent again with the counts since: nothing counted twice,
nothing lost while the worker lives.

>>> class Alone:
...     sessions = ()
>>> s = Signals(Alone(), throttle_rate=1.0)
>>> s.tally.user("acme", "alice").completed(b"SELECT 5")
>>> first = s.handoff(None)
>>> first["seq"], Window.from_json(first["window"]).users[("acme", "alice")].rows_out
(1, 5)
>>> s.tally.user("acme", "alice").completed(b"SELECT 2")
>>> again = s.handoff(None)   # the first answer never arrived: its counts come again, with the new ones
>>> again["seq"], Window.from_json(again["window"]).users[("acme", "alice")].rows_out
(2, 7)
>>> Window.from_json(s.handoff([again["life"], 2])["window"]).users   # acknowledged: only what is new
{}
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .tally import Bucket, Tally, Window

ACTIONS = ("throttle", "pause_tenant", "block_user")
# Windows kept for a supervisor that does not acknowledge: past that the oldest two are merged (an ack
# of the older of them then releases neither, and it counts twice: better than memory without bound).
MAX_UNACKED = 64


def _merged(windows: Iterable[dict[str, object]]) -> dict[str, object]:
    """One window (as JSON) of several (as JSON): their counts added."""
    total = Window()
    for w in windows:
        total.merge(Window.from_json(w))
    return total.to_json()


class Host(Protocol):
    """What the signals need of their serving process (proxy/process.py's Proxy)."""

    sessions: Any

    def pause(self, tenant: str | None) -> None: ...
    def resume(self, tenant: str | None) -> None: ...
    def kill(self, clients: list[Any]) -> int: ...


@dataclass(frozen=True, slots=True)
class Response:
    """A response in force: alert ``id``'s ``action`` on ``tenant`` / ``user`` until ``until`` (epoch s)."""

    id: int
    action: str  # one of ACTIONS
    detector: str
    tenant: str | None
    user: str | None
    until: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Response:
        return cls(int(data["id"]), str(data["action"]), str(data["detector"]), data["tenant"], data["user"],
                   float(data["until"]))


class Signals:
    def __init__(self, host: Host, throttle_rate: float) -> None:
        self.host = host
        self.throttle_rate = throttle_rate  # statements/s a throttled user gets in this process
        self.tally = Tally()
        self._sent: dict[int, int] = {}  # id(client) -> bytes_out already counted
        self._applied: dict[int, Response] = {}  # alert id -> its response, holding here
        self.blocked: dict[tuple[str | None, str], Response] = {}  # logins refused until the response's ``until``
        self._unacked: list[tuple[int, dict[str, object]]] = []  # (seq, window) handed over, not acknowledged
        self._seq = 0
        self.life = f"{os.getpid()}-{secrets.token_hex(4)}"  # names this tally's hand-overs apart from others'

    # ------------------------------------------------------------------ the fold

    def session_closed(self, client: Any) -> None:
        """A session ends: the bytes it sent since the last fold still count."""
        sent = self._sent.pop(id(client), 0)
        if client.bytes_out > sent and client.user:
            self.tally.user(client.tenant, client.user).bytes_out += client.bytes_out - sent

    def window(self) -> Window:
        """What this process's sessions did since the last call."""
        tally = self.tally
        for client in list(self.host.sessions):
            key = id(client)
            sent = self._sent.get(key, 0)
            if client.bytes_out > sent and client.user:
                tally.user(client.tenant, client.user).bytes_out += client.bytes_out - sent
                self._sent[key] = client.bytes_out
        return tally.drain()

    def handoff(self, ack: list[Any] | None) -> dict[str, object]:
        """A worker's answer to the supervisor's fold: this window, with every one not acknowledged.

        ``ack``: ``[life, seq]`` of the last answer the supervisor received from this worker: the
        windows handed over up to ``seq`` are its. An ack of another life (the worker's previous
        process, or monitoring before a reload switched it off and on) acknowledges nothing here.
        """
        self._release(ack)
        self._seq += 1
        self._unacked.append((self._seq, self.window().to_json()))
        if len(self._unacked) > MAX_UNACKED:  # a supervisor that stopped answering: keep the memory bounded
            (_, older), (seq, newer) = self._unacked[0], self._unacked[1]
            self._unacked[:2] = [(seq, _merged([older, newer]))]
        return {"life": self.life, "seq": self._seq, "window": _merged(w for _, w in self._unacked)}

    def _release(self, ack: list[Any] | None) -> None:
        if ack is not None and len(ack) == 2 and ack[0] == self.life:
            self._unacked = [(seq, w) for seq, w in self._unacked if seq > int(ack[1])]

    def leftover(self) -> dict[str, object]:
        """At a worker's exit: the windows handed over but not acknowledged (the supervisor may have
        some of them: each with its seq) and the counts since."""
        return {"life": self.life, "unacked": [[seq, w] for seq, w in self._unacked], "fresh": self.window().to_json()}

    # ------------------------------------------------------------------ responses

    def apply(self, responses: Iterable[Response]) -> None:
        """Hold exactly these responses: impose the new ones, lift those no longer listed."""
        wanted = {r.id: r for r in responses}
        for gone in [r for i, r in self._applied.items() if i not in wanted]:
            del self._applied[gone.id]
            self._lift(gone)
        for response in wanted.values():
            if response.id not in self._applied:
                self._applied[response.id] = response
                self._impose(response)

    def _holding(self, action: str, tenant: str | None, user: str | None) -> Response | None:
        """Another response still in force with the same action on the same target."""
        return next((r for r in self._applied.values()
                     if r.action == action and r.tenant == tenant and (action == "pause_tenant" or r.user == user)),
                    None)

    def _impose(self, r: Response) -> None:
        if r.action == "throttle" and r.user is not None:
            self.tally.user(r.tenant, r.user).throttle = Bucket(self.throttle_rate)
        elif r.action == "pause_tenant" and r.tenant is not None:
            self.host.pause(r.tenant)
        elif r.action == "block_user" and r.user is not None:
            self.blocked[(r.tenant, r.user)] = r
            self.host.kill([c for c in self.host.sessions if c.user == r.user and c.tenant == r.tenant])

    def _lift(self, r: Response) -> None:
        other = self._holding(r.action, r.tenant, r.user)
        if r.action == "throttle" and r.user is not None and other is None:
            self.tally.user(r.tenant, r.user).throttle = None
        elif r.action == "pause_tenant" and r.tenant is not None and other is None:
            self.host.resume(r.tenant)
        elif r.action == "block_user" and r.user is not None:
            if other is None:
                self.blocked.pop((r.tenant, r.user), None)
            else:
                self.blocked[(r.tenant, r.user)] = other

    def set_rate(self, throttle_rate: float) -> None:
        """A reload changed ``throttle_rate``: throttled users get the new rate at once."""
        self.throttle_rate = throttle_rate
        for r in self._applied.values():
            if r.action == "throttle" and r.user is not None:
                self.tally.user(r.tenant, r.user).throttle = Bucket(throttle_rate)

    def clear(self) -> None:
        """Monitoring is switched off: nothing it imposed holds any longer."""
        self.apply(())

    def login_refusal(self, tenant: str | None, user: str) -> str | None:
        """Why a login is refused (a block_user response holds), or None."""
        r = self.blocked.get((tenant, user))
        if r is None or time.time() >= r.until:  # past its end even if the analysis never said so
            return None
        ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.until))
        return f"logins of user {user} are suspended by security monitoring until {ends} (alert {r.id}, {r.detector})"

