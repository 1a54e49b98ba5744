"""The control channel between the supervisor and its workers: JSON requests over unix sockets.

Each worker listens on ``<runtime dir>/worker-<index>.sock``; the runtime dir is the
supervisor's private 0700 directory, so only processes of the same user reach it. One
request per connection, each way one frame: a 4-byte big-endian length, then a JSON
object. JSON, never pickle: a frame is data, whatever sends it. Traffic is low (admin
commands, scrapes, forwarded cancels), so clarity wins over connection reuse.

>>> decode(encode({"op": "ping"})[4:])
{'op': 'ping'}
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tenantgate.control")

MAX_FRAME = 64 << 20  # a /metrics exposition or SHOW SESSIONS of many thousand sessions fits
CALL_TIMEOUT = 10.0

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message]]


class ControlError(Exception):
    """A worker could not be asked (not running, gone, or answered nonsense)."""


def socket_path(runtime_dir: str, index: int) -> str:
    return os.path.join(runtime_dir, f"worker-{index}.sock")


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), default=str).encode()  # admin cells are shown as text
    if len(body) > MAX_FRAME:
        raise ControlError(f"control message of {len(body)} bytes is over the {MAX_FRAME} byte limit")
    return struct.pack("!I", len(body)) + body


def decode(body: bytes) -> Message:
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ControlError("control message is not a JSON object")
    return message


async def read_frame(reader: asyncio.StreamReader) -> Message:
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if length > MAX_FRAME:
        raise ControlError(f"control frame of {length} bytes is over the {MAX_FRAME} byte limit")
    return decode(await reader.readexactly(length))


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
