"""Length-prefixed JSON frames: a 4-byte big-endian length, then one JSON object.

The audit socket (audit/remote.py) and the supervisor's control socket
(proxy/console/control.py) both speak it; each passes the exception type its callers catch.
JSON, never pickle: a frame is data, whatever sends it.

>>> reader = FrameReader(1024, ValueError)
>>> data = frame(b'{"op":"ping"}') + frame(b'{"n":1}')
>>> reader.feed(data[:5]), reader.feed(data[5:])
([], [{'op': 'ping'}, {'n': 1}])
>>> FrameReader(64, ValueError).feed(frame(b'{"big":18446744073709551616,"nan":NaN}'))  # the stdlib's share
[{'big': 18446744073709551616, 'nan': nan}]
>>> FrameReader(4, ValueError).feed(frame(b'{"op":"ping"}'))
Traceback (most recent call last):
ValueError: frame of 13 bytes exceeds the limit of 4
>>> FrameReader(64, ValueError).feed(frame(b"[1]"))
Traceback (most recent call last):
ValueError: frame is not a JSON object
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")

Message = dict[str, Any]


def frame(payload: bytes) -> bytes:
    """``payload`` (an encoded JSON object) with its length in front."""
    return HEADER.pack(len(payload)) + payload


def decode(body: bytes | bytearray, error: type[Exception]) -> Message:
    """One frame's body as a JSON object; anything else raises ``error``."""
    try:
        message = orjson.loads(body)  # the audit socket's frames carry every statement: the fast parser first
    except orjson.JSONDecodeError:
        try:  # ... and the stdlib's for what only it takes (NaN, integers beyond 64 bits) or to say what is wrong
            message = json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise error(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise error("frame is not a JSON object")
    return message


def _check(size: int, limit: int, error: type[Exception]) -> None:
    if size > limit:
        raise error(f"frame of {size} bytes exceeds the limit of {limit}")


class FrameReader:
    """Incremental decoding for protocol callbacks (``data_received``): bytes in, whole frames out."""

    def __init__(self, limit: int, error: type[Exception]) -> None:
        self.limit = limit
        self.error = error
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """The complete frames received so far, decoded; raises ``error``."""
        buf = self._buf
        buf += data
        messages: list[Message] = []
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, pos)
            _check(size, self.limit, self.error)
            if len(buf) - pos - HEADER.size < size:
                break
            messages.append(decode(buf[pos + HEADER.size : pos + HEADER.size + size], self.error))
            pos += HEADER.size + size
        del buf[:pos]
        return messages


async def read_frame(reader: asyncio.StreamReader, limit: int, error: type[Exception]) -> Message:
    """One frame from a stream (raises asyncio.IncompleteReadError at a short read)."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    _check(size, limit, error)
    return decode(await reader.readexactly(size), error)
