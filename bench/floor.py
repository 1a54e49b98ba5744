"""The Python floor: the least a PostgreSQL proxy written in Python does, as a bench target.

``python -m bench.floor LISTEN_PORT BACKEND_PORT`` relays 127.0.0.1:LISTEN_PORT to PostgreSQL on
uvloop, one backend connection per client (session mode), and does per message only what any
proxy that inspects the protocol must: it cuts the backend's stream into whole messages (type and
length word) and writes the complete ones in one write per read. The client's side is forwarded
as it comes; an SSLRequest or GSSENCRequest is answered "N" (no TLS, as the bench's own proxies).
Nothing else: no authentication of its own, no statement decoding, no pooling, no backpressure.

Its proxy CPU per statement, divided by PgBouncer's in the same run, is the lowest ratio the
relay budget of issue 14 could reach in Python on this machine: the bench prints it beside that
budget (``python-floor``; bench/report.py).

>>> complete(b"Z\\x00\\x00\\x00\\x05IC\\x00\\x00")
6
>>> complete(b"C\\x00\\x00")
0
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import cast

import uvloop

_NO_TLS_CODES = (80877103, 80877104)  # SSLRequest, GSSENCRequest
_LENGTH = struct.Struct("!I")


def complete(buf: bytes) -> int:
    """How many leading bytes of a backend stream are whole messages."""
    end, size = 0, len(buf)
    while size - end >= 5:
        length = _LENGTH.unpack_from(buf, end + 1)[0]
        if size - end < 1 + length:
            break
        end += 1 + length
    return end


class _Backend(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        buf = self.rest + data if self.rest else data
        end = complete(buf)
        if end:
            self.client.write(buf[:end] if end < len(buf) else buf)
        self.rest = buf[end:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.transport: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.connecting = False
        self.early = b""  # what the client sent before the backend connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    async def _connect(self) -> None:
        client = self.transport
        assert client is not None
        try:
            backend, _ = await asyncio.get_running_loop().create_connection(lambda: _Backend(client), "127.0.0.1",
                                                                            self.backend_port)
        except OSError:
            client.close()
            return
        self.backend = backend
        backend.write(self.early)
        self.early = b""

    def data_received(self, data: bytes) -> None:
        if self.backend is not None:
            self.backend.write(data)
            return
        self.early += data
        # the backend is connected only after the first packet that is not a TLS request: PostgreSQL's
        # one-byte answer to one would break the framing of its side
        while not self.connecting and len(self.early) >= 8:
            if _LENGTH.unpack_from(self.early, 4)[0] in _NO_TLS_CODES:
                assert self.transport is not None
                self.transport.write(b"N")
                self.early = self.early[8:]
            else:
                self.connecting = True
                asyncio.get_running_loop().create_task(self._connect())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.close()


async def serve(listen_port: int, backend_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(backend_port), "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    listen_port, backend_port = (int(a) for a in argv)
    uvloop.run(serve(listen_port, backend_port))


if __name__ == "__main__":
    main(sys.argv[1:])
