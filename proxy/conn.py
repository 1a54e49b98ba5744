"""The asyncio layer: one Protocol per socket that only moves bytes.

A connection starts in *await mode* (startup, TLS and authentication read whole
messages with ``await``) and then switches to *relay mode*, where every read is
framed and handed synchronously to a callback: no task switch and no copy per
message on the hot path. Write-buffer pressure is forwarded to the peer so that a
slow reader pauses the other side instead of making us buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from mypy_extensions import mypyc_attr

from .codec import DEFAULT_MAX_MESSAGE, Framer, ProtocolError, peek_message, read_startup

log = logging.getLogger("tenantgate.conn")

FrameHandler = Callable[[bytes, list[tuple[int, int, int]]], None]

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# The kernel's buffers on the proxy's side of a result's path (backend socket: receive, client socket:
# send). Left to autotuning they grow to megabytes each, so a backend could finish a big result the
# client stopped reading, and a cancel the client sends then (psycopg, leaving a COPY TO early) finds
# nothing to cancel where it would directly. Capped, the proxy holds about what one socket would.
RESULT_SOCKET_BUFFER = 128 * 1024


class ConnectionLost(Exception):
    """The peer closed the socket (or it broke) while we waited for it."""


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (proxy/native.py); FrontendConnection's are not
class PgConnection(asyncio.Protocol):
    """One side of the proxy: a client socket or a backend socket."""

    def __init__(self, side: str, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.side = side  # who sends to us: "client" or "server"
        self.framer = Framer(side, max_message)
        self.transport: asyncio.Transport | None = None
        self._raw = b""  # await mode: bytes not yet consumed
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._exc: BaseException | None = None
        self.on_frames: FrameHandler | None = None
        self.on_lost: Callable[[BaseException | None], None] | None = None
        # the peer whose reading we pause when our write buffer fills up
        self.backpressure_peer: PgConnection | None = None
        self.closed_event = asyncio.Event()
        self.bytes_in = 0
        self.bytes_out = 0

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "set_write_buffer_limits")  # uvloop's transports are not subclasses
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            option = socket.SO_RCVBUF if self.side == "server" else socket.SO_SNDBUF
            sock.setsockopt(socket.SOL_SOCKET, option, RESULT_SOCKET_BUFFER)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        handler = self.on_frames
        if handler is None:
            self._raw += data
            self._wake()
            return
        try:
            buf, frames = self.framer.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if frames:
            try:
                handler(buf, frames)
            except Exception as exc:  # a bug or bad input must end this connection only
                if not isinstance(exc, ProtocolError):
                    log.exception("internal error relaying a message; closing this connection")
                self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._exc = exc
        self.closed_event.set()
        self._wake()
        if self.on_lost is not None:
            cb, self.on_lost = self.on_lost, None
            cb(exc)

    def pause_writing(self) -> None:
        peer = self.backpressure_peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.backpressure_peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    # ---------------------------------------------------------------- helpers

    def _fail(self, exc: BaseException) -> None:
        self._exc = exc
        if self.on_lost is not None:
            cb, self.on_lost = self.on_lost, None
            cb(exc)
        self.close()  # not abort(): let the error the callback queued reach the peer

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        if self._closed:
            raise ConnectionLost(f"{self.side} closed the connection") from self._exc
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    @property
    def is_closed(self) -> bool:
        return self._closed or self.transport is None or self.transport.is_closing()

    def has_buffered(self) -> bool:
        """Bytes received and not yet read (an idle backend that spoke: see pool._usable)."""
        return bool(self._raw)

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            self.bytes_out += len(data)
            t.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------- await mode

    async def read_startup_packet(self, limit: int) -> bytes:
        """One untyped startup-phase packet (length word included)."""
        while True:
            n = read_startup(self._raw, self.side, limit)
            if n is not None:
                packet, self._raw = self._raw[:n], self._raw[n:]
                return packet
            await self._wait()

    async def read_byte(self) -> bytes:
        """The single-byte answer to an SSLRequest / GSSENCRequest."""
        while not self._raw:
            await self._wait()
        b, self._raw = self._raw[:1], self._raw[1:]
        return b

    async def read_message(self) -> tuple[int, bytes]:
        """One typed message as (type, body)."""
        while True:
            head = peek_message(self._raw, self.side, self.framer.max_size)
            if head is not None:
                mtype, end = head
                body, self._raw = self._raw[5:end], self._raw[end:]
                return mtype, body
            await self._wait()

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        if self._raw:
            # bytes sent after SSLRequest before the handshake: a MITM could inject them
            raise ProtocolError(self.side, "received unencrypted data after SSL request")
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        new = await loop.start_tls(
            self.transport, self, context, server_side=server_side, server_hostname=server_hostname
        )
        assert new is not None
        self.transport = new  # type: ignore[assignment]
        new.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def enter_relay(self, handler: FrameHandler) -> None:
        """Switch to relay mode; bytes already buffered are framed and handled at once."""
        self.on_frames = handler
        pending, self._raw = self._raw, b""
        if pending:
            self.data_received(pending)
            self.bytes_in -= len(pending)

    @property
    def ssl_in_use(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None
