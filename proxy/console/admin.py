"""The admin console: a PostgreSQL-protocol port for DBAs, driven with psql.

Only ``[admins.*]`` users log in, through the same SCRAM/md5 exchange as the main
port; anyone else (tenant users included) gets the same 28P01 as a wrong password.
TLS follows ``[tls]`` like the main port. Only the simple query protocol is served:
extended-protocol messages get 0A000 and, after Sync, ReadyForQuery as usual.

The command table is commands.py; this module is the connection that logs in, splits a
query string into commands and writes their answers. Every command is reported to ``proxy.record_admin(user,
command, ok, detail)`` when the proxy has one (the audit log) and counted in
``tenantgate_admin_commands_total``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from collections.abc import Callable
from importlib.metadata import version

from tenantgate.proxy import codec
from tenantgate.proxy.auth import AuthFailed, ClientAuth
from tenantgate.proxy.codec import CommandComplete, DataRow, FieldDescription, RowDescription, StartupMessage
from tenantgate.proxy.frontend import FrontendConnection
from tenantgate.proxy.process import Proxy

from .cluster import CLUSTER_WIDE, ClusterOps
from .commands import AdminError, Command, Result, parse
from .port import ConsolePort

log = logging.getLogger("tenantgate.admin")

MAX_ADMIN_MESSAGE = 1 << 20  # a command is a few words; nothing legitimate comes near this
# psql reads server_version to choose its catalog queries; the console speaks no SQL at all, so
# a fixed supported major plus our own name is as honest as any value can be.
SERVER_VERSION_BASE = "15.0"

_EXTENDED = frozenset(
    (codec.MsgType.PARSE, codec.MsgType.BIND, codec.MsgType.DESCRIBE, codec.MsgType.EXECUTE, codec.MsgType.CLOSE)
)

# ---------------------------------------------------------------------- formatting


def _cell(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"yes" if value else b"no"
    if isinstance(value, float):
        return f"{value:.3f}".encode()
    return str(value).encode()



def _notice(message: str) -> bytes:
    return codec.NoticeResponse(codec.error("01000", message, severity="WARNING").fields).encode()



class AdminConnection(FrontendConnection[Proxy]):
    """One psql session on the admin port (await mode throughout: low traffic, clarity first)."""

    kind = "admin"

    def __init__(self, proxy: Proxy, server: AdminServer) -> None:
        super().__init__(proxy)
        self.framer.max_size = min(self.framer.max_size, MAX_ADMIN_MESSAGE)
        self.server = server
        self.user = ""

    def connected(self) -> None:
        self.server.connections.add(self)

    def teardown(self) -> None:
        self.server.connections.discard(self)
        self.close()

    def terminate(self) -> None:
        self.fatal(codec.error("57P01", "terminating connection due to administrator command"))

    async def login(self, startup: StartupMessage) -> None:
        cfg = self.proxy.config
        name = startup.params["user"]
        admin = cfg.admins.get(name)
        # tenant users and unknown names run the same exchange against a fake verifier: 28P01
        auth = ClientAuth(name, admin, admin.auth if admin is not None else cfg.server.auth_method, self.proxy.secret)
        try:
            reply = await self.authenticate(auth)
        except AuthFailed:
            log.warning("admin login failed for user %r from %s", name, self.peer)
            self.proxy.metrics.admin_auth_failed()
            await self._record(name, "LOGIN", False, "password authentication failed")
            raise
        self.user = name
        log.info("admin %s logged in from %s", name, self.peer)
        await self._record(name, "LOGIN", True, "")
        params = {
            "server_version": f"{SERVER_VERSION_BASE} (tenantgate {version('tenantgate')})",
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "application_name": startup.params.get("application_name", ""),
        }
        out = bytearray(reply)
        for k, v in params.items():
            out += codec.ParameterStatus(k, v).encode()
        out += codec.BackendKeyData(secrets.randbelow(2**31 - 1) + 1, secrets.randbits(31)).encode()
        out += codec.ready("I")
        self.write(bytes(out))

    async def serve(self) -> None:
        failed_extended = False  # after an extended-protocol error, skip to Sync like PostgreSQL
        while True:
            mtype, body = await self.read_message()
            if mtype == codec.MsgType.QUERY:
                msg = codec.decode_frontend(mtype, body)
                assert isinstance(msg, codec.Query)
                after = await self._simple_query(msg.sql)
                self.write(codec.ready("I"))
                if after is not None:
                    after()
            elif mtype == codec.MsgType.TERMINATE:
                return
            elif mtype == codec.MsgType.SYNC:
                failed_extended = False
                self.write(codec.ready("I"))
            elif mtype == codec.MsgType.FLUSH:
                continue
            elif mtype in _EXTENDED:
                if not failed_extended:
                    failed_extended = True
                    self.write(self._unsupported().encode())
            elif mtype == codec.MsgType.FUNCTION_CALL:
                self.write(self._unsupported().encode() + codec.ready("I"))
            else:
                raise codec.ProtocolError("client", f"unexpected message type {chr(mtype)!r} on the admin port")

    @staticmethod
    def _unsupported() -> codec.ErrorResponse:
        return codec.error(
            "0A000", "the tenantgate admin console only supports the simple query protocol", hint="use psql"
        )

    async def _simple_query(self, sql: str) -> Callable[[], None] | None:
        """Run each ';'-separated command in order, stopping at the first error (like PostgreSQL)."""
        statements = [s.strip() for s in sql.split(";") if s.strip()]
        if not statements:
            self.write(codec.Simple(codec.type_byte(codec.MsgType.EMPTY_QUERY_RESPONSE)).encode())  # EmptyQueryResponse
            return None
        after: Callable[[], None] | None = None
        for text in statements:
            out, ok, follow_up = await self._execute(text)
            self.write(out)
            if not ok:
                break
            after = follow_up or after
        return after

    async def _execute(self, text: str) -> tuple[bytes, bool, Callable[[], None] | None]:
        """(reply bytes, succeeded, what to do once the reply is sent)."""
        words = " ".join(text.split())
        name = "unknown"
        try:
            cmd, args = parse(text)
            name = cmd.name
            result = await self.server.run(self, cmd, args)
        except AdminError as exc:
            await self._record(self.user, words, False, exc.message)
            self.proxy.metrics.admin_command(name, False)
            return codec.error(exc.sqlstate, exc.message).encode(), False, None
        except Exception:
            log.exception("admin command %r failed", words)
            await self._record(self.user, words, False, "internal error")
            self.proxy.metrics.admin_command(name, False)
            return codec.error("XX000", f"internal error running {name}").encode(), False, None
        await self._record(self.user, words, True, result.tag)
        self.proxy.metrics.admin_command(name, True)
        out = bytearray()
        for notice in result.notices:
            out += _notice(notice)
        if result.columns:
            out += RowDescription(tuple(FieldDescription(c) for c in result.columns)).encode()
            for row in result.rows:
                out += DataRow(tuple(_cell(v) for v in row)).encode()
        out += CommandComplete(result.tag).encode()
        return bytes(out), True, result.after

    async def _record(self, user: str, command: str, ok: bool, detail: str) -> None:
        record = getattr(self.proxy, "record_admin", None)
        if record is None:
            return
        outcome = record(user, command, ok, detail)
        if inspect.isawaitable(outcome):
            await outcome


class AdminServer(ConsolePort):
    """The admin port's listening socket and its open connections."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.connections: set[AdminConnection] = set()
        self.cluster: ClusterOps | None = None  # set when [cluster]: CLUSTER_WIDE commands reach every instance

    @classmethod
    async def start(cls, proxy: Proxy, host: str, port: int) -> AdminServer:
        self = cls(proxy)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: AdminConnection(proxy, self), host, port, reuse_address=True)
        log.info("admin console on %s:%d", host, self.port)
        return self

    async def run(self, conn: AdminConnection, cmd: Command, args: list[str]) -> Result:
        """Run one command on this instance, then, in a [cluster], on every other instance
        (console/cluster.py)."""
        result = await self.run_here(conn, cmd, args)
        if self.cluster is not None and cmd.name in CLUSTER_WIDE:
            return await self.cluster.fan_out(" ".join((cmd.name, *args)), result, conn.user)
        return result

    async def run_here(self, conn: AdminConnection, cmd: Command, args: list[str]) -> Result:
        """One command in this process (the supervisor of several workers fans it out over them)."""
        return await cmd.run(conn, args)

    async def wait_closed(self) -> None:
        """Stop accepting; connected admins are ended here (57P01)."""
        self.close()
        for conn in list(self.connections):
            conn.terminate()
        await super().wait_closed()
