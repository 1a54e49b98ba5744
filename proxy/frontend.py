"""What the client port and the admin port share: one frontend's life up to its login.

``run()`` negotiates SSL/GSSENC under ``server.startup_timeout``, hands the
StartupMessage to the subclass's ``login()``, then its ``serve()``; any failure is
answered as PostgreSQL would (a FATAL ErrorResponse with a real SQLSTATE) and closes
only this connection. Password exchanges go through :meth:`authenticate`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from tenantgate.config import Config
from tenantgate.keyring.errors import SqlStateError

from . import codec
from .auth import AuthFailed, ClientAuth
from .backend import BackendError
from .codec import CancelRequest, GSSENCRequest, PasswordMessage, ProtocolError, SSLRequest, StartupMessage
from .conn import ConnectionLost, PgConnection
from .startup import StartupRefused


class Host(Protocol):
    """What a frontend connection needs of the process that accepted it (process.Proxy)."""

    @property
    def config(self) -> Config: ...
    @property
    def client_tls(self) -> ssl.SSLContext | None: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


H = TypeVar("H", bound=Host)

log = logging.getLogger("tenantgate.frontend")


class Fatal(SqlStateError):
    """End the connection with this error."""

    def __init__(self, sqlstate: str, message: str, reason: str = "") -> None:
        super().__init__(sqlstate, message, reason)
        self.error = codec.error(sqlstate, message, severity="FATAL")


def fatal_bytes(err: codec.ErrorResponse) -> bytes:
    fields = tuple(("S", "FATAL") if k == "S" else ("V", "FATAL") if k == "V" else (k, v) for k, v in err.fields)
    return codec.ErrorResponse(fields).encode()


class FrontendConnection(PgConnection, Generic[H]):
    kind = "client"

    def __init__(self, proxy: H) -> None:
        super().__init__("client", proxy.config.server.max_message_size)
        self.proxy = proxy
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.connected()
        self.proxy.spawn(self.run())

    # ------------------------------------------------------------------ what subclasses provide

    def connected(self) -> None:
        """Called when the socket is accepted."""

    async def login(self, startup: StartupMessage) -> None:
        raise NotImplementedError

    async def serve(self) -> None:
        raise NotImplementedError

    async def cancel(self, request: CancelRequest) -> None:
        """A CancelRequest arrived instead of a StartupMessage (the connection is closed already)."""

    def teardown(self) -> None:
        self.close()

    def fatal(self, err: codec.ErrorResponse) -> None:
        self.write(fatal_bytes(err))
        self.close()

    # ------------------------------------------------------------------ the life of a frontend

    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout(self.proxy.config.server.startup_timeout):
                    startup = await self.negotiate()
                    if startup is None:
                        return
                    await self.login(startup)
            except TimeoutError:
                raise Fatal("08006", "timeout expired during connection startup") from None
            await self.serve()
        except (Fatal, AuthFailed, BackendError) as exc:
            self.fatal(exc.error)
        except StartupRefused as exc:
            self.fatal(codec.error(exc.sqlstate, exc.message))
        except ProtocolError as exc:
            self.fatal(codec.error(exc.sqlstate, exc.detail))
        except ConnectionLost:
            pass
        except Exception:
            log.exception("internal error in %s connection %s", self.kind, self.peer)
            self.fatal(codec.error("XX000", "internal error in tenantgate"))
        finally:
            self.teardown()

    async def negotiate(self) -> StartupMessage | None:
        """SSLRequest (TLS upgrade or 'N'), GSSENCRequest ('N'), CancelRequest, StartupMessage."""
        cfg = self.proxy.config
        limit = min(cfg.server.max_startup_packet, codec.MAX_STARTUP_PACKET)
        tls_done = False
        while True:
            packet = codec.decode_startup(await self.read_startup_packet(limit))
            if isinstance(packet, SSLRequest):
                if tls_done:
                    raise ProtocolError("client", "SSL request after TLS is already established")
                ctx = self.proxy.client_tls
                if ctx is None:
                    self.write(codec.type_byte(codec.MsgType.REFUSE))
                else:
                    self.write(codec.type_byte(codec.MsgType.ACCEPT))
                    await self.start_tls(ctx, server_side=True)
                    tls_done = True
            elif isinstance(packet, GSSENCRequest):
                self.write(codec.type_byte(codec.MsgType.REFUSE))
            elif isinstance(packet, CancelRequest):
                self.close()  # a cancel connection gets no answer either way
                await self.cancel(packet)
                return None
            else:
                assert isinstance(packet, StartupMessage)
                if cfg.tls.mode == "require" and not tls_done:
                    raise Fatal("28000", "tenantgate requires an SSL connection (tls mode = require)")
                return packet

    async def authenticate(
        self, auth: ClientAuth, before_step: Callable[[bytes], Awaitable[None]] | None = None
    ) -> bytes:
        """Run a password exchange to its end; returns the final reply (AuthenticationOk ...).

        ``before_step`` sees each password message first (JWT logins refresh the JWKS there).
        """
        self.write(auth.start())
        while True:
            mtype, body = await self.read_message()
            if mtype != codec.MsgType.PASSWORD:
                raise ProtocolError("client", f"expected password response, got message type {chr(mtype)!r}")
            msg = codec.decode_frontend(mtype, body)
            assert isinstance(msg, PasswordMessage)
            if before_step is not None:
                await before_step(msg.data)
            reply = auth.step(msg)
            if auth.done:
                return reply
            self.write(reply)
