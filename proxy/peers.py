"""The peer channel between tenantgate instances of one [cluster]: authenticated JSON over TCP.

Instances behind a load balancer must reach each other for what one instance alone cannot do:
a CancelRequest that landed on the wrong instance (cancel.py encodes the owner in the key) and
admin commands that must reach every instance (RELOAD, PAUSE, RESUME, KILL TENANT; see
console/admin.py). Each instance listens on its own ``[cluster] peers`` address.

Every frame (audit/framing.py: length-prefixed JSON) carries an HMAC-SHA256 over the sender,
a timestamp, a fresh nonce and the body, keyed with the cluster's shared secret. A receiver
refuses a frame whose MAC does not verify (constant-time compare), whose sender is not a
configured peer, whose timestamp is more than ``MAX_SKEW`` seconds away, or whose nonce it has
already seen (a replay); the refusal is logged and counted, and nothing of the request runs.
Answers are MAC'd over the request's nonce, so a caller never acts on a forged reply either.
Traffic is tiny (cancels, admin commands): one request per connection.

>>> key = b"k" * 32
>>> frame = sign(key, "a", {"op": "ping"}, now=100.0, nonce="n1")
>>> verify(key, frame, {"a"}, now=101.0)
{'op': 'ping'}
>>> verify(key, {**frame, "body": {"op": "cancel"}}, {"a"}, now=101.0)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
  ...
tenantgate.proxy.peers.PeerRefused: bad MAC
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from tenantgate.audit import framing
from tenantgate.audit.framing import Message
from tenantgate.config.schema import Cluster

log = logging.getLogger("tenantgate.peers")

MAX_FRAME = 1 << 20  # admin command answers are tags and notices, never row sets
MAX_SKEW = 30.0  # seconds between a frame's timestamp and the receiver's clock
CALL_TIMEOUT = 10.0

Handler = Callable[[Message], Awaitable[Message]]


class PeerRefused(Exception):
    """A frame that did not authenticate (the reason is for logs, never sent to the peer in full)."""


class PeerError(Exception):
    """A peer could not be asked (down, refused us, or answered nonsense)."""


def _mac(key: bytes, sender: str, ts: float, nonce: str, body: Any) -> str:
    text = json.dumps([sender, ts, nonce, body], separators=(",", ":"), sort_keys=True, default=str)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, sender: str, body: Message, *, now: float | None = None, nonce: str | None = None) -> Message:
    ts = time.time() if now is None else now
    nonce = secrets.token_hex(16) if nonce is None else nonce
    return {"from": sender, "ts": ts, "nonce": nonce, "body": body, "mac": _mac(key, sender, ts, nonce, body)}


def verify(key: bytes, frame: Message, senders: Collection[str], *, now: float | None = None) -> Message:
    """The body of an authentic frame from one of ``senders``; PeerRefused otherwise."""
    try:
        sender, ts, nonce, body, mac = frame["from"], float(frame["ts"]), frame["nonce"], frame["body"], frame["mac"]
    except (KeyError, TypeError, ValueError):
        raise PeerRefused("malformed frame") from None
    if not isinstance(mac, str) or not hmac.compare_digest(mac.encode(), _mac(key, sender, ts, nonce, body).encode()):
        raise PeerRefused("bad MAC")
    if sender not in senders:
        raise PeerRefused(f"unknown sender {sender!r}")
    if abs((time.time() if now is None else now) - ts) > MAX_SKEW:
        raise PeerRefused("timestamp too far from this instance's clock")
    if not isinstance(body, dict):
        raise PeerRefused("malformed body")
    return body


class PeerChannel:
    """One instance's end of the channel: serves requests with ``handler``, calls the others.

    The process that serves it (the instance, or its supervisor of workers) has the handler; a
    worker of a supervisor only calls (``handler`` None: it forwards cancels for other instances)."""

    def __init__(self, cluster: Cluster, handler: Handler | None = None) -> None:
        self.cluster = cluster
        self.key = cluster.secret.reveal().encode()
        self.handler = handler
        self.refused = 0  # frames that did not authenticate (tests and logs)
        self._seen: dict[str, float] = {}  # nonce -> timestamp, kept for MAX_SKEW (replays)
        self._server: asyncio.Server | None = None

    @property
    def others(self) -> list[str]:
        return [name for name in self.cluster.peers if name != self.cluster.instance]

    async def start(self) -> None:
        if self.handler is None:
            raise ValueError("a peer channel without a handler only calls")
        host, port = self.cluster.bind
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_FRAME, reuse_address=True)
        log.info("peer channel of instance %s on %s:%d", self.cluster.instance, host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _fresh(self, frame: Message) -> None:
        now = time.time()
        self._seen = {n: t for n, t in self._seen.items() if now - t <= 2 * MAX_SKEW}
        nonce = str(frame["nonce"])
        if nonce in self._seen:
            raise PeerRefused("replayed nonce")
        self._seen[nonce] = now

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            frame = await framing.read_frame(reader, MAX_FRAME, PeerError)
            try:
                body = verify(self.key, frame, self.others)
                self._fresh(frame)
            except PeerRefused as exc:
                self.refused += 1
                peer = writer.get_extra_info("peername")
                log.warning("peer request from %s refused: %s", peer, exc)
                answer: Message = {"refused": "not authenticated"}
            else:
                try:
                    assert self.handler is not None  # start() served nothing without one
                    answer = await self.handler(body)
                except Exception as exc:  # a failed request must not take the instance down
                    log.exception("peer request %r failed", body.get("op"))
                    answer = {"failed": f"{exc.__class__.__name__}: {exc}"}
            reply = sign(self.key, self.cluster.instance, answer, nonce=f"re:{frame.get('nonce')}")
            writer.write(framing.frame(json.dumps(reply, separators=(",", ":"), default=str).encode()))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, PeerError, ValueError) as exc:
            log.warning("bad peer request: %s", exc)
        finally:
            writer.close()

    async def call(self, name: str, body: Message, timeout: float = CALL_TIMEOUT) -> Message:
        """Ask instance ``name``; its authenticated answer (PeerError when down or refused)."""
        host, port = self.cluster.peers[name]
        request = sign(self.key, self.cluster.instance, body)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_FRAME)
                try:
                    writer.write(framing.frame(json.dumps(request, separators=(",", ":")).encode()))
                    await writer.drain()
                    frame = await framing.read_frame(reader, MAX_FRAME, PeerError)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise PeerError(f"instance {name}: {exc.__class__.__name__}: {exc}") from None
        if frame.get("nonce") != f"re:{request['nonce']}":
            raise PeerError(f"instance {name}: answer is not for this request")
        try:
            answer = verify(self.key, frame, {name})
        except PeerRefused as exc:
            raise PeerError(f"instance {name}: answer did not authenticate ({exc})") from None
        if "refused" in answer:
            raise PeerError(f"instance {name} refused the request: {answer['refused']}")
        return answer

    async def broadcast(self, body: Message) -> dict[str, Message | PeerError]:
        """Ask every other instance at once: instance id -> its answer or the error."""
        names = self.others
        replies = await asyncio.gather(*(self.call(n, body) for n in names), return_exceptions=True)
        out: dict[str, Message | PeerError] = {}
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, BaseException) and not isinstance(reply, PeerError):
                raise reply
            out[name] = reply
        return out

    async def forward_cancel(self, instance: int, pid: int, secret: int) -> None:
        """cancel.Forward: a CancelRequest for a session of instance number ``instance``."""
        names = list(self.cluster.peers)
        if not 0 <= instance < len(names) or names[instance] == self.cluster.instance:
            return
        try:
            await self.call(names[instance], {"op": "cancel", "pid": pid, "secret": secret})
        except PeerError as exc:
            log.warning("forwarding a cancel request to instance %s failed: %s", names[instance], exc)
