"""A client for the admin port, for tools that drive a running proxy (``tenantgate tenant move``).

The admin console speaks the simple query protocol only, so this client sends Query
messages over the proxy's own backend-connection code (TLS per sslmode, SCRAM or md5)
and returns result sets as lists of {column: text} rows.
"""

from __future__ import annotations

from types import TracebackType

from tenantgate.keyring.errors import SqlStateError
from tenantgate.proxy import codec
from tenantgate.proxy.backend import Backend, BackendError, BackendTarget, connect
from tenantgate.proxy.codec import DataRow, ErrorResponse, ReadyForQuery, RowDescription
from tenantgate.proxy.conn import ConnectionLost

__all__ = ["AdminClient", "AdminCommandError"]


class AdminCommandError(SqlStateError):
    """The admin console refused a command (its SQLSTATE and message) or could not be reached."""

    def __str__(self) -> str:
        return f"{self.message} (SQLSTATE {self.sqlstate})"


class AdminClient:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @classmethod
    async def connect(cls, address: tuple[str, int], user: str, password: str, *, timeout: float = 10.0) -> AdminClient:
        host, port = address
        # a wildcard listen address is reached over loopback
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
        target = BackendTarget(host, port, user, password, sslmode="prefer", connect_timeout=timeout)
        try:
            backend = await connect(target, "tenantgate", {"application_name": "tenantgate-move"})
        except BackendError as exc:
            raise AdminCommandError(exc.error.sqlstate, f"admin port {host}:{port}: {exc.error.message}") from None
        return cls(backend)

    async def query(self, command: str) -> list[dict[str, str | None]]:
        """Run one admin command; its rows (empty for commands without a result set)."""
        conn = self._backend.conn
        conn.write(codec.Query(command).encode())
        columns: list[str] = []
        rows: list[dict[str, str | None]] = []
        failure: ErrorResponse | None = None
        while True:
            try:
                mtype, body = await conn.read_message()
            except (ConnectionLost, codec.ProtocolError) as exc:
                raise AdminCommandError("08006", f"{command}: the admin connection failed: {exc}") from None
            msg = codec.decode_backend(mtype, body)
            if isinstance(msg, RowDescription):
                columns = [f.name for f in msg.fields]
            elif isinstance(msg, DataRow):
                values = [None if v is None else bytes(v).decode() for v in msg.values]
                rows.append(dict(zip(columns, values, strict=True)))
            elif isinstance(msg, ErrorResponse) and not isinstance(msg, codec.NoticeResponse):
                failure = msg
            elif isinstance(msg, ReadyForQuery):
                if failure is not None:
                    raise AdminCommandError(failure.sqlstate, f"{command}: {failure.message}")
                return rows

    async def close(self) -> None:
        conn = self._backend.conn
        if not conn.is_closed:
            conn.write(codec.Terminate().encode())
            conn.close()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
