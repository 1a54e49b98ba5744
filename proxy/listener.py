"""The proxy process: listening sockets, shared state, startup checks, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.writer import AuditLog
from tenantgate.config import Config, ConfigError, load_config
from tenantgate.keyring import Keyring
from tenantgate.keyring.settings import EncryptedColumn

from .backend import Backend, BackendError, BackendTarget, simple_query
from .cancel import CancelRegistry
from .pool import BackendPool
from .tls import client_context

if TYPE_CHECKING:
    from .client import ClientConnection

log = logging.getLogger("tenantgate")


def backend_target(config: Config) -> BackendTarget:
    b = config.backend
    return BackendTarget(
        host=b.host,
        port=b.port,
        user=b.user,
        password=b.password.reveal() if b.password is not None else None,
        sslmode=b.sslmode,
        sslrootcert=b.sslrootcert,
        connect_timeout=b.connect_timeout,
    )


def make_planner(config: Config) -> Any:
    """The rewriter for tenant sessions."""
    from tenantgate.rewriter import Policy, Rewriter

    return Rewriter(Policy.from_config(config.scoping, config.encryption))


class BackendRoleRefused(Exception):
    pass


class Proxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.backend_target = backend_target(config)
        self.client_tls: ssl.SSLContext | None = (
            client_context(config.tls.cert, config.tls.key) if config.tls.mode != "disable" else None
        )
        self.secret = self._load_secret()
        self.cancels = CancelRegistry()
        self.sessions: set[ClientConnection] = set()
        self._planner: Any | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._role_checked = False
        self.stopping = asyncio.Event()
        self.started_at = time.time()
        self.config_path: str | None = None
        self.paused: set[str] = set()  # tenants whose new statements wait; "*" = all
        self.pools: dict[tuple[str, str], BackendPool] = {}
        from .admin import AdminServer
        from .metrics import Metrics, MetricsServer

        self.metrics = Metrics(proxy=self)
        self.admin_server: AdminServer | None = None
        self.metrics_server: MetricsServer | None = None
        # set by SIGTERM/SIGINT and the admin SHUTDOWN command; serve() then drains for stop_timeout
        self.stop_requested = asyncio.Event()
        self.stop_timeout = config.server.shutdown_timeout
        self.audit: AuditLog | None = AuditLog(config.audit) if config.audit is not None else None
        self.keyring: Keyring | None = None  # when [encryption] is configured (built at start)
        self.encrypted_columns: dict[tuple[int, int], EncryptedColumn] = {}

    def _load_secret(self) -> bytes:
        secret = self.config.server.secret
        return secret.reveal().encode() if secret is not None else secrets.token_bytes(32)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool_for(self, database: str) -> BackendPool | None:
        """The transaction-mode pool of a database (None in session mode)."""
        b = self.config.backend
        if b.pool_mode != "transaction":
            return None
        key = (database, repr(self.backend_target))
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = BackendPool(self.backend_target, database, b.pool_size, b.pool_timeout)
        return pool

    @property
    def planner(self) -> Any:
        """The tenant sessions' rewriter, built on first use and after each reload."""
        if self._planner is None:
            self._planner = make_planner(self.config)
        return self._planner

    # ------------------------------------------------------------------ checks

    async def check_backend_role(self, backend: Backend) -> None:
        """Row scoping's second lock (RLS) means nothing to a superuser or BYPASSRLS role."""
        if self._role_checked:
            return
        rows = await simple_query(
            backend, "SELECT rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
        )
        if rows and "t" in rows[0]:
            if not self.config.backend.allow_superuser:
                from .client import Fatal

                log.error(
                    "backend role %r is superuser or BYPASSRLS: refusing"
                    " (set backend.allow_superuser = true to override)",
                    self.config.backend.user,
                )
                raise Fatal("42501", "tenantgate refuses a backend role that is superuser or has BYPASSRLS")
            log.warning("backend role %r is superuser or BYPASSRLS (allowed by config)", self.config.backend.user)
        self._role_checked = True

    async def preflight(self) -> None:
        """Connect once at start; a superuser backend role stops the proxy, an unreachable one is a warning."""
        from .backend import connect
        from .client import Fatal

        try:
            backend = await connect(self.backend_target, self.config.backend.database or "postgres", {})
        except BackendError as exc:
            log.warning("backend not reachable at start (%s); sessions will retry", exc)
            return
        try:
            await self.check_backend_role(backend)
        except Fatal as exc:
            raise BackendRoleRefused(str(exc)) from None
        finally:
            backend.conn.close()

    # ------------------------------------------------------------------ serving

    def record(self, event: AuditEvent) -> None:
        """Audit an event that no statement waits on (auth, admin, reload); never raises."""
        if self.audit is None:
            return
        try:
            self.audit.submit(event)
        except AuditUnavailable as exc:
            log.warning("audit record of %s lost: %s", event.kind, exc)

    def record_admin(self, user: str, command: str, ok: bool, detail: str = "") -> None:
        self.record(
            AuditEvent(
                kind="admin",
                user=user,
                sql=command,
                decision="allowed" if ok else "refused",
                reason=detail or None,
            )
        )

    async def start(self) -> None:
        from .client import ClientConnection

        if self.audit is not None:
            await self.audit.start()  # a log that cannot be written stops the start (AuditUnavailable)
        if self.config.encryption is not None:
            await self.start_encryption()
        loop = asyncio.get_running_loop()
        host, port = self.config.listen.address
        self._servers.append(await loop.create_server(lambda: ClientConnection(self), host, port, reuse_address=True))
        sock = self.config.listen.unix_socket
        if sock:
            if os.path.exists(sock):
                os.unlink(sock)
            self._servers.append(await loop.create_unix_server(lambda: ClientConnection(self), sock))
        log.info("listening on %s:%d%s", host, port, f" and {sock}" if sock else "")
        from .admin import AdminServer
        from .metrics import MetricsServer

        if self.config.listen.admin is not None:
            self.admin_server = await AdminServer.start(self, *self.config.listen.admin)
        if self.config.listen.metrics is not None:
            self.metrics_server = await MetricsServer.start(self, *self.config.listen.metrics)

    async def start_encryption(self) -> None:
        """Build the keyring and find the encrypted columns' (table oid, attnum) on the backend."""
        from .backend import connect
        from .crypto import build_keyring, resolve_columns

        settings = self.config.encryption
        assert settings is not None

        def key_event(kind: str, **fields: object) -> None:
            tenant = fields.get("tenant")
            self.record(AuditEvent(kind="key_event", reason=kind, tenant=str(tenant) if tenant else None))

        self.keyring = build_keyring(settings, self.backend_target, self.config.backend.database, on_event=key_event)
        backend = await connect(self.backend_target, self.config.backend.database or "postgres", {})
        try:
            self.encrypted_columns = await resolve_columns(backend, settings)
        finally:
            backend.conn.close()

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the config asks for port 0)."""
        return int(self._servers[0].sockets[0].getsockname()[1])

    def reload(self) -> tuple[bool, list[str]]:
        """Apply the config file again to new sessions: (applied, messages).

        An invalid file is refused with its problems and the old config stays; settings
        that only a restart can change are reported as such.
        """
        if self.config_path is None:
            return False, ["no config file to reload"]
        try:
            new = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the old configuration:\n%s", exc)
            self.record(AuditEvent(kind="reload", decision="refused", reason=str(exc)))
            return False, str(exc).splitlines()
        notes = [
            f"listen.{name} changed: needs a restart"
            for name in ("address", "unix_socket", "admin", "metrics", "workers")
            if getattr(new.listen, name) != getattr(self.config.listen, name)
        ]
        self.config = new
        self.backend_target = backend_target(new)
        self._planner = None
        log.info("configuration reloaded from %s", self.config_path)
        self.record(AuditEvent(kind="reload", decision="allowed", details={"notes": notes}))
        for note in notes:
            log.warning("%s", note)
        return True, notes

    def sessions_of(self, tenant: str | None) -> list[ClientConnection]:
        return [c for c in self.sessions if tenant is None or c.tenant == tenant]

    def pause(self, tenant: str | None) -> None:
        self.paused.add(tenant or "*")

    def resume(self, tenant: str | None) -> None:
        self.paused.discard(tenant or "*")
        if tenant is None:
            self.paused.clear()
        for client in self.sessions_of(tenant):
            if client.session is not None and not client.session.is_paused:
                client.session.resume()

    def kill(self, clients: list[ClientConnection]) -> int:
        for client in clients:
            client.terminate("57P01", "terminating connection due to administrator command")
        return len(clients)

    def request_stop(self, wait: bool) -> None:
        """Ask serve() to shut down: draining for server.shutdown_timeout (wait) or at once."""
        self.stop_timeout = self.config.server.shutdown_timeout if wait else 0.0
        self.stop_requested.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; idle sessions end now, busy ones when idle or at the timeout (57P01)."""
        self.stopping.set()
        for server in self._servers:
            server.close()
        if self.admin_server is not None:
            self.admin_server.close()  # admins already connected can watch the drain
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            for client in list(self.sessions):
                session = client.session
                if session is None or (session.status == "I" and session.cycles_done == session.cycles_sent):
                    client.terminate("57P01", "terminating connection due to administrator command")
            await asyncio.sleep(0.05)
        for client in list(self.sessions):
            client.terminate("57P01", "terminating connection due to administrator command")
        if self.admin_server is not None:
            await self.admin_server.wait_closed()
        if self.metrics_server is not None:  # last: /readyz says "shutting down" while draining
            self.metrics_server.close()
            await self.metrics_server.wait_closed()
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        for pool in self.pools.values():
            await pool.close()
        if self.audit is not None:
            await self.audit.close()


async def serve(config_path: str) -> int:
    config = load_config(config_path)
    proxy = Proxy(config)
    proxy.config_path = config_path
    try:
        await proxy.preflight()
        await proxy.start()
    except (BackendRoleRefused, AuditUnavailable) as exc:
        log.error("%s", exc)
        return 1
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGINT, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    await proxy.stop_requested.wait()
    log.info("shutting down: waiting up to %.0fs for sessions", proxy.stop_timeout)
    await proxy.shutdown(proxy.stop_timeout)
    return 0
