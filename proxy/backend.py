"""Backend (server-side) connections: connect, TLS, authenticate, read startup state.

Every failure becomes :class:`BackendError` carrying an ErrorResponse the client can
be shown as is: the backend's own one (wrong password, missing database keep their
SQLSTATE), or 08006 when the server cannot be reached at all.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from tenantgate.keyring.auth.scram import AuthError, ScramClient, md5_hash, md5_response

from . import codec, health
from .codec import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    Authentication,
    BackendKeyData,
    ErrorResponse,
    ParameterStatus,
    PasswordMessage,
    ProtocolError,
    ReadyForQuery,
    StartupMessage,
)
from .conn import ConnectionLost, PgConnection
from .tls import backend_context


class BackendError(Exception):
    """Connecting to or talking with the backend failed; ``error`` is what the client sees."""

    def __init__(self, error: ErrorResponse) -> None:
        super().__init__(error.message)
        self.error = error


def unreachable(message: str) -> BackendError:
    return BackendError(codec.error("08006", message))


@dataclass
class BackendTarget:
    """Where and as whom to connect (resolved from config)."""

    host: str
    port: int
    user: str
    password: str | None
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout: float = 5.0

    def __repr__(self) -> str:  # never show the password
        return f"BackendTarget({self.user}@{self.host}:{self.port}, sslmode={self.sslmode})"


@dataclass(eq=False)  # one connection: equal only to itself (the pool's deque.remove and sets compare it)
class Backend:
    """An authenticated backend connection and what it told us at startup."""

    conn: PgConnection
    target: BackendTarget
    database: str
    params: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    secret: int = 0
    status: str = "I"
    # settings the proxy applied with SET since connect (transaction pooling hand-overs)
    applied: dict[str, str] = field(default_factory=dict)
    unknown_settings: bool = False  # a setting the proxy could not name may differ: RESET ALL on hand-over
    prepared: set[str] = field(default_factory=set)  # content-addressed statements prepared here
    unnamed: object | None = None  # whose unnamed statement it holds (a pool.Prepared), if the proxy knows
    cancelled: bool = False  # a cancel was sent to it: never hand it to another client (it may land late)


async def _open(target: BackendTarget) -> PgConnection:
    loop = asyncio.get_running_loop()
    server = (target.host, target.port)
    refusal = health.servers.refusal(server)
    if refusal is not None:  # down a moment ago: fail fast, only this server's tenants (health.py)
        raise unreachable(refusal)
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: PgConnection("server"), target.host, target.port),
            target.connect_timeout,
        )
    except TimeoutError:
        health.servers.failed(server, "connection timed out")
        raise unreachable(f'connection to server at "{target.host}", port {target.port} timed out') from None
    except OSError as exc:
        health.servers.failed(server, str(exc.strerror or exc).lower())
        raise unreachable(
            f'connection to server at "{target.host}", port {target.port} failed: {exc.strerror or exc}'
        ) from None
    health.servers.ok(server)
    return proto


async def _negotiate_tls(conn: PgConnection, target: BackendTarget) -> None:
    if target.sslmode == "disable":
        return
    conn.write(codec.SSLRequest().encode())
    answer = await conn.read_byte()
    if answer == codec.type_byte(codec.MsgType.ACCEPT):
        try:
            await conn.start_tls(
                backend_context(target.sslmode, target.sslrootcert),
                server_side=False,
                server_hostname=target.host if target.sslmode == "verify-full" else None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise unreachable(f"SSL connection to the backend failed: {exc}") from None
    elif answer == codec.type_byte(codec.MsgType.REFUSE):
        if target.sslmode != "prefer":
            raise unreachable("the backend does not support SSL, but sslmode requires it")
    else:
        raise unreachable("the backend sent an invalid answer to the SSL request")


async def _authenticate(conn: PgConnection, target: BackendTarget) -> None:
    scram: ScramClient | None = None
    while True:
        mtype, body = await conn.read_message()
        if mtype == codec.MsgType.ERROR_RESPONSE:
            raise BackendError(codec.decode_backend(mtype, body))  # type: ignore[arg-type]
        if mtype == codec.MsgType.NEGOTIATE_PROTOCOL_VERSION:  # NegotiateProtocolVersion: we ask for nothing optional
            continue
        if mtype != codec.MsgType.AUTHENTICATION:
            raise ProtocolError("server", f"unexpected message {chr(mtype)!r} during authentication")
        auth = codec.decode_backend(mtype, body)
        assert isinstance(auth, Authentication)
        if auth.code == AUTH_OK:
            return
        password = target.password
        if auth.code in (AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL) and password is None:
            raise BackendError(codec.error("28P01", "the backend asked for a password, but none is configured"))
        assert password is not None or auth.code in (AUTH_SASL_CONTINUE, AUTH_SASL_FINAL)
        if auth.code == AUTH_CLEARTEXT:
            conn.write(PasswordMessage(password.encode() + b"\x00").encode())  # type: ignore[union-attr]
        elif auth.code == AUTH_MD5:
            if len(auth.data) != 4:
                raise ProtocolError("server", "malformed MD5 authentication request")
            resp = md5_response(md5_hash(target.user, password), auth.data)  # type: ignore[arg-type]
            conn.write(PasswordMessage(resp.encode() + b"\x00").encode())
        elif auth.code == AUTH_SASL:
            if "SCRAM-SHA-256" not in auth.mechanisms():
                raise unreachable(f"the backend offers no supported SASL mechanism: {auth.mechanisms()}")
            scram = ScramClient(password)  # type: ignore[arg-type]
            conn.write(codec.sasl_initial_response("SCRAM-SHA-256", scram.first()).encode())
        elif auth.code == AUTH_SASL_CONTINUE and scram is not None:
            conn.write(PasswordMessage(scram.final(auth.data)).encode())
        elif auth.code == AUTH_SASL_FINAL and scram is not None:
            scram.verify(auth.data)
        else:
            raise unreachable(f"the backend asked for an unsupported authentication method (code {auth.code})")


async def connect(target: BackendTarget, database: str, params: dict[str, str]) -> Backend:
    """Open, secure and authenticate a backend connection, up to its first ReadyForQuery."""
    conn = await _open(target)
    try:
        await _negotiate_tls(conn, target)
        startup = {"user": target.user, "database": database, **params}
        conn.write(StartupMessage(startup).encode())
        await _authenticate(conn, target)
        backend = Backend(conn, target, database)
        while True:
            mtype, body = await conn.read_message()
            msg = codec.decode_backend(mtype, body)
            if isinstance(msg, ParameterStatus):
                backend.params[msg.name] = msg.value
            elif isinstance(msg, BackendKeyData):
                backend.pid, backend.secret = msg.pid, msg.secret
            elif isinstance(msg, ReadyForQuery):
                backend.status = msg.status
                return backend
            elif isinstance(msg, ErrorResponse) and not isinstance(msg, codec.NoticeResponse):
                raise BackendError(msg)
    except AuthError as exc:
        conn.abort()
        raise BackendError(codec.error("28P01", f"authentication to the backend failed: {exc}")) from None
    except ProtocolError as exc:
        conn.abort()
        raise unreachable(str(exc)) from None
    except ConnectionLost:
        conn.abort()
        raise unreachable("the backend closed the connection during startup") from None
    except BaseException:
        conn.abort()
        raise


async def send_cancel(target: BackendTarget, pid: int, secret: int) -> None:
    """Deliver a CancelRequest with the backend's own key on a fresh connection."""
    conn = await _open(target)
    try:
        await _negotiate_tls(conn, target)
        conn.write(codec.CancelRequest(pid, secret).encode())
        # the server closes the connection once it has read the request
        await asyncio.wait_for(conn.closed_event.wait(), target.connect_timeout)
    finally:
        conn.close()


async def simple_query(backend: Backend, sql: str) -> list[tuple[str | None, ...]]:
    """Run one control statement (await mode) and return its rows as text."""
    conn = backend.conn
    conn.write(codec.Query(sql).encode())
    rows: list[tuple[str | None, ...]] = []
    failure: ErrorResponse | None = None
    while True:
        mtype, body = await conn.read_message()
        msg = codec.decode_backend(mtype, body)
        if isinstance(msg, codec.DataRow):
            rows.append(tuple(None if v is None else v.decode() for v in msg.values))
        elif isinstance(msg, ErrorResponse) and not isinstance(msg, codec.NoticeResponse):
            failure = msg
        elif isinstance(msg, ParameterStatus):
            backend.params[msg.name] = msg.value
        elif isinstance(msg, ReadyForQuery):
            backend.status = msg.status
            if failure is not None:
                raise BackendError(failure)
            return rows
