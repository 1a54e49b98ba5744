"""The control channel between the supervisor and its workers: JSON requests over unix sockets.

Each worker listens on ``<runtime dir>/worker-<index>.sock``; the runtime dir is the
supervisor's private 0700 directory, so only processes of the same user reach it. One
request per connection, each way one frame of length-prefixed JSON (audit/framing.py).
Traffic is low (admin commands, scrapes, forwarded cancels), so clarity wins over
connection reuse.

>>> encode({"op": "ping"})[4:], len(encode({"op": "ping"}))
(b'{"op":"ping"}', 17)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable

from tenantgate.audit import framing
from tenantgate.audit.framing import Message

log = logging.getLogger("tenantgate.control")

MAX_FRAME = 64 << 20  # a /metrics exposition or SHOW SESSIONS of many thousand sessions fits
CALL_TIMEOUT = 10.0

Handler = Callable[[Message], Awaitable[Message]]


class ControlError(Exception):
    """A worker could not be asked (not running, gone, or answered nonsense)."""


def socket_path(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"worker-{index}.sock")


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), default=str).encode()  # admin cells are shown as text
    if len(body) > MAX_FRAME:
        raise ControlError(f"control message of {len(body)} bytes is over the {MAX_FRAME} byte limit")
    return framing.frame(body)


async def read_frame(reader: asyncio.StreamReader) -> Message:
    return await framing.read_frame(reader, MAX_FRAME, ControlError)


async def call(path: str, request: Message, timeout: float = CALL_TIMEOUT) -> Message:
    """Send one request to the worker listening on ``path`` and return its answer."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_FRAME)
            try:
                writer.write(encode(request))
                await writer.drain()
                return await read_frame(reader)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        raise ControlError(f"{os.path.basename(path)}: {exc.__class__.__name__}: {exc}") from None


class ControlServer:
    """A worker's end: answers each request with ``handler``; an ``after`` callable in the
    answer (e.g. a shutdown) runs once the answer is written, and is not sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._server: asyncio.Server | None = None

    async def start(self, path: str) -> None:
        if os.path.exists(path):  # left by a worker of this index that died
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_FRAME)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        after: Callable[[], None] | None = None
        try:
            request = await read_frame(reader)
            try:
                answer = await self.handler(request)
            except Exception as exc:  # a failed request must not take the worker down
                log.exception("control request %r failed", request.get("op"))
                answer = {"failed": f"{exc.__class__.__name__}: {exc}"}
            after = answer.pop("after", None)
            writer.write(encode(answer))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ControlError, ValueError) as exc:
            log.warning("bad control request: %s", exc)
        finally:
            writer.close()
        if after is not None:
            after()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
