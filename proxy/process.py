"""One serving process of the data plane: client listening sockets, shared state, startup checks,
reload, drain. The console (proxy/console/) starts its admin and metrics ports around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.record import AuditEvent
from tenantgate.audit.remote import RemoteAuditLog
from tenantgate.audit.settings import AuditSettings
from tenantgate.audit.writer import AuditLog
from tenantgate.config import Config, ConfigError
from tenantgate.keyring import Keyring
from tenantgate.keyring.quoting import quote_literal
from tenantgate.keyring.settings import EncryptedColumn
from tenantgate.rewriter import Policy, Rewriter

from .backend import Backend, BackendError, connect, simple_query
from .cancel import CancelRegistry
from .client import ClientConnection
from .counters import Metrics
from .crypto import build_keyring, resolve_columns
from .frontend import Fatal
from .limits import TenantLimiter
from .monitor.runtime import Monitor
from .monitor.signals import Response, Signals
from .monitor.tally import Window
from .oidc import JwksCache, load_serving_config, open_jwks
from .placement import Placement, backend_target
from .pool import BackendPool
from .tls import client_context

log = logging.getLogger("tenantgate")


def make_rewriter(config: Config, columns: dict[tuple[str, str], tuple[str, ...]] | None = None) -> Rewriter:
    """The rewriter for tenant sessions; ``columns``: the scoped tables' column names as the
    backend's catalog lists them (INSERT without a column list)."""
    policy = Policy.from_config(config.scoping, config.encryption, tenants=config.tenants.values())
    return Rewriter(replace(policy, columns=dict(columns or {})))


async def scoped_columns(backend: Backend, tables: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(schema, table) -> its live column names in order, for the scoped tables that exist."""
    if not tables:
        return {}
    values = ", ".join(f"({quote_literal(schema)}, {quote_literal(name)})" for schema, name in tables)
    rows = await simple_query(
        backend,
        "SELECT n.nspname, c.relname, a.attname FROM (VALUES " + values + ") AS v(s, t) "
        "JOIN pg_catalog.pg_namespace n ON n.nspname = v.s JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid "
        "AND c.relname = v.t JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY n.nspname, c.relname, a.attnum",
    )
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for schema, table, column in rows:
        key = (str(schema), str(table))
        found[key] = (*found.get(key, ()), str(column))
    return found


def instance_audit(config: Config) -> AuditSettings:
    """[audit] of this instance: in a [cluster], ``{instance}`` in the log path becomes its id (instances
    sharing one host and one config keep their own chains)."""
    assert config.audit is not None
    if config.cluster is None:
        return config.audit
    return replace(config.audit, path=Path(str(config.audit.path).replace("{instance}", config.cluster.instance)))


class BackendRoleRefused(Exception):
    pass


class Proxy:
    """One serving process: with ``[listen] workers`` > 1, one of several (see console/workers.py).

    ``port`` overrides the configured client port (the supervisor's resolved port 0);
    ``audit_socket`` sends audit events to the supervisor's AuditServer instead of a local log.
    """

    def __init__(
        self,
        config: Config,
        *,
        worker_index: int = 0,
        worker_count: int = 1,
        port: int | None = None,
        audit_socket: str | None = None,
    ) -> None:
        self.config = config
        self.jwks: JwksCache | None = open_jwks(config)  # fetched now for a jwks_url: fails closed
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.listen_port = port
        self.backend_target = backend_target(config.backend)
        self.client_tls: ssl.SSLContext | None = (
            client_context(config.tls.cert, config.tls.key) if config.tls.mode != "disable" else None
        )
        self.secret = self._load_secret()
        cluster = config.cluster
        self.cancels = CancelRegistry(
            worker_index,
            worker_count,
            instance_index=cluster.index if cluster is not None else 0,
            instance_count=cluster.size if cluster is not None else 1,
        )
        self.sessions: set[ClientConnection] = set()
        self._rewriter: Rewriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._roles_checked: set[str] = set()  # backend targets whose role passed check_backend_role
        self.limiters: dict[str, TenantLimiter] = {}
        self.stopping = asyncio.Event()
        self.config_path: str | None = None
        self.paused: set[str] = set()  # tenants whose new statements wait; "*" = all
        self.pools: dict[tuple[str, str], BackendPool] = {}
        self.metrics = Metrics(proxy=self)
        self.signals: Signals | None = None  # what this process's sessions did (monitor/signals.py)
        self.monitor: Monitor | None = None  # the analysis (monitor/runtime.py): here or in the supervisor
        self._monitoring: asyncio.Task[None] | None = None  # the analysis' fold loop
        self._monitor_live = False  # start_monitoring was called: (re)configured monitoring runs at once
        # set by SIGTERM/SIGINT and the admin SHUTDOWN command; serve() then drains for stop_timeout
        self.stop_requested = asyncio.Event()
        self.stop_timeout = config.server.shutdown_timeout
        self.audit: AuditLog | RemoteAuditLog | None = None
        if config.audit is not None:
            if audit_socket is None:
                cluster = config.cluster  # its stable id in every record (audit verify --per-instance)
                self.audit = AuditLog(instance_audit(config), instance_id=cluster.instance if cluster else None)
            else:  # one hash chain for all workers: the supervisor seals and writes
                self.audit = RemoteAuditLog(config.audit, audit_socket)
        self.keyring: Keyring | None = None  # when [encryption] is configured (built at start)
        self.encrypted_columns: dict[tuple[int, int], EncryptedColumn] = {}  # in [backend]'s database
        self._columns: dict[tuple[str, str, str | None], dict[tuple[int, int], EncryptedColumn]] = {}
        # scoped tables' columns in [backend]'s database, read at start (empty if unreachable then)
        self.table_columns: dict[tuple[str, str], tuple[str, ...]] = {}
        self.configure_monitoring()

    def _load_secret(self) -> bytes:
        secret = self.config.server.secret
        return secret.reveal().encode() if secret is not None else secrets.token_bytes(32)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool_for(self, database: str, placement: Placement) -> BackendPool | None:
        """The transaction-mode pool of a database on the placement's backend (None in session mode).

        ``pool_size`` is the total per database: each of N workers gets ceil(pool_size / N).
        """
        b = placement.backend
        if b.pool_mode != "transaction":
            return None
        key = (database, repr(placement.target))
        pool = self.pools.get(key)
        if pool is None:
            size = -(-b.pool_size // self.worker_count)
            pool = self.pools[key] = BackendPool(placement.target, database, size, b.pool_timeout)
        return pool

    @property
    def instance_count(self) -> int:
        """Instances of this [cluster] (1 without one): limits split over all of them (limits.py)."""
        return self.config.cluster.size if self.config.cluster is not None else 1

    def limiter(self, tenant: str) -> TenantLimiter:
        """The live limit state of a tenant (created on its first session)."""
        found = self.limiters.get(tenant)
        if found is None:
            found = self.limiters[tenant] = TenantLimiter(
                tenant, self.config.tenant(tenant).limits, workers=self.worker_count * self.instance_count
            )
        return found

    @property
    def rewriter(self) -> Rewriter:
        """The tenant sessions' rewriter, built on first use and after each reload."""
        if self._rewriter is None:
            self._rewriter = make_rewriter(self.config, self.table_columns)
        return self._rewriter

    # ------------------------------------------------------------------ checks

    async def check_backend_role(self, backend: Backend, allow_superuser: bool) -> None:
        """Row scoping's second lock (RLS) means nothing to a superuser or BYPASSRLS role."""
        key = repr(backend.target)
        if key in self._roles_checked:
            return
        rows = await simple_query(
            backend, "SELECT rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user"
        )
        if rows and "t" in rows[0]:
            if not allow_superuser:
                log.error(
                    "backend role of %r is superuser or BYPASSRLS: refusing"
                    " (set allow_superuser = true on that backend to override)",
                    backend.target,
                )
                raise Fatal("42501", "tenantgate refuses a backend role that is superuser or has BYPASSRLS")
            log.warning("backend role of %r is superuser or BYPASSRLS (allowed by config)", backend.target)
        self._roles_checked.add(key)

    async def _startup_backend(self, unreachable: str) -> Backend | None:
        """One backend connection for a start-up check; None, with ``unreachable % error`` logged, if
        the backend cannot be reached (a warning, not a stop: sessions connect on their own later)."""
        try:
            return await connect(self.backend_target, self.config.backend.database or "postgres", {})
        except BackendError as exc:
            log.warning(unreachable, exc)
            return None

    async def preflight(self) -> None:
        """Connect once at start; a superuser backend role stops the proxy, an unreachable one is a warning."""
        backend = await self._startup_backend("backend not reachable at start (%s); sessions will retry")
        if backend is None:
            return
        try:
            await self.check_backend_role(backend, self.config.backend.allow_superuser)
        except Fatal as exc:
            raise BackendRoleRefused(str(exc)) from None
        finally:
            backend.conn.close()

    # ------------------------------------------------------------------ security monitoring

    @property
    def serves(self) -> bool:
        """This process has client sessions (their counts go to its Signals)."""
        return True

    @property
    def analyses(self) -> bool:
        """This process runs the analysis: a single process; with workers, the supervisor (console/workers.py)."""
        return self.worker_count == 1

    def configure_monitoring(self) -> None:
        """Apply the config's [monitoring] (at start and at each reload): start monitoring, retune it
        (the learned baselines stay), or stop it (state saved, the responses it imposed end)."""
        settings = self.config.monitoring
        if settings is None or not settings.enabled:
            self._stop_monitoring()
            return
        if self.serves:
            rate = settings.throttle_rate / self.worker_count  # each worker lets a throttled user through at its share
            if self.signals is None:
                self.signals = Signals(self, rate)
                for client in self.sessions:  # sessions already open count from their next statement
                    if client.session is not None and client.user:
                        client.session.signals = self.signals.tally.user(client.tenant, client.user)
            elif rate != self.signals.throttle_rate:
                self.signals.set_rate(rate)
        if self.analyses:
            if self.monitor is None:
                self.monitor = Monitor(settings, self.metrics.registry, self.record, self.publish_responses)
            else:
                self.monitor.configure(settings)
        if self._monitor_live:
            self.start_monitoring()

    def start_monitoring(self) -> None:
        """Run the analysis' fold loop (once serving; again after a reload switched monitoring on)."""
        self._monitor_live = True
        if self.monitor is not None and self._monitoring is None:
            self._monitoring = asyncio.get_running_loop().create_task(self.monitor.run(self.collect_window))

    async def collect_window(self) -> Window:
        """What the sessions did since the last fold (a supervisor asks its workers instead)."""
        assert self.signals is not None
        return self.signals.window()

    def publish_responses(self, responses: list[Response]) -> None:
        """The analysis changed the responses in force: hold them here (a supervisor: in every worker)."""
        if self.signals is not None:
            self.signals.apply(responses)

    def _stop_monitoring(self) -> None:
        if self.signals is not None:
            self.signals.clear()
            for client in self.sessions:
                if client.session is not None:
                    client.session.signals = None
            self.signals = None
        monitor, task = self.monitor, self._monitoring
        self.monitor = self._monitoring = None
        if task is not None:
            task.cancel()
        if monitor is not None:
            monitor.stop()  # now: a reload that switches it on again finds the state saved
            self.spawn(monitor.close())

    async def close_monitoring(self) -> None:
        """At shutdown: stop the fold loop, fold what was counted since, save the state."""
        if self._monitoring is not None:
            self._monitoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitoring
            self._monitoring = None
        if self.monitor is not None:
            try:
                self.monitor.fold(time.time(), await self.collect_window())
            except Exception:  # shutting down: monitoring never holds that up
                log.exception("monitoring's last fold failed")
            await self.monitor.close()

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
        if self.audit is not None:
            await self.audit.start()  # a log that cannot be written stops the start (AuditUnavailable)
        if self.config.encryption is not None:
            await self.start_encryption()
        await self.load_table_columns()
        loop = asyncio.get_running_loop()
        self.start_monitoring()
        host, port = self.config.listen.address
        port = port if self.listen_port is None else self.listen_port
        several = self.worker_count > 1  # every worker binds the one port; the kernel spreads connections
        self._servers.append(
            await loop.create_server(
                lambda: ClientConnection(self), host, port, reuse_address=True, reuse_port=several or None
            )
        )
        sock = self.config.listen.unix_socket if self.worker_index == 0 else None  # a path has one owner
        if sock:
            if os.path.exists(sock):
                os.unlink(sock)
            self._servers.append(await loop.create_unix_server(lambda: ClientConnection(self), sock))
        log.info("listening on %s:%d%s", host, self.port, f" and {sock}" if sock else "")

    async def start_encryption(self) -> None:
        """Build the keyring and find the encrypted columns' (table oid, attnum) on the backend."""
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

    async def load_table_columns(self) -> None:
        """Read the scoped tables' column lists; without them, an INSERT needs its own column list."""
        scoping = self.config.scoping
        tables = sorted({(t.schema or "public", t.name) for t in scoping.tables})
        backend = await self._startup_backend(
            "scoped tables' columns not read (%s): INSERT without a column list is refused"
        )
        if backend is None:
            return
        try:
            self.table_columns = await scoped_columns(backend, tables)
        finally:
            backend.conn.close()
        self._rewriter = None

    async def columns_for(self, placement: Placement, database: str) -> dict[tuple[int, int], EncryptedColumn]:
        """The encrypted columns as (table OID, attnum) in the database a placement's sessions use.

        OIDs differ between databases and schemas: a dedicated tenant's database and a schema-tier
        tenant's schema are resolved on their first session (and again after a reload)."""
        settings = self.config.encryption
        if settings is None:
            return {}
        main = placement.target == self.backend_target and database == (self.config.backend.database or "postgres")
        if main and placement.schema is None:
            return self.encrypted_columns
        key = (repr(placement.target), database, placement.schema)
        found = self._columns.get(key)
        if found is None:
            backend = await connect(placement.target, database, {})
            try:
                found = self._columns[key] = await resolve_columns(backend, settings, placement.schema)
            finally:
                backend.conn.close()
        return found

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
            new, jwks = load_serving_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the old configuration:\n%s", exc)
            self.record(AuditEvent(kind="reload", decision="refused", reason=str(exc)))
            return False, str(exc).splitlines()
        notes = [
            f"listen.{name} changed: needs a restart"
            for name in ("address", "unix_socket", "admin", "metrics", "workers")
            if getattr(new.listen, name) != getattr(self.config.listen, name)
        ]
        moved = {
            name
            for name in set(self.config.tenants) | set(new.tenants)
            if Placement.of(self.config, name).key != Placement.of(new, name).key
        }
        digests = {"digest_before": self.config.digest, "digest_after": new.digest}
        self.config, self.jwks = new, jwks
        self.backend_target = backend_target(new.backend)
        self.configure_monitoring()
        self._rewriter = None
        self._roles_checked.clear()
        self._columns.clear()
        for name, limiter in self.limiters.items():
            limiter.configure(new.tenant(name).limits)
        for client in self.sessions:  # existing sessions follow the new rules from their next statement
            session = client.session
            if session is not None and client.tenant is not None:
                session.rewriter = self.rewriter
                if client.tenant in moved:
                    client.placement_changed()
        if moved:
            notes.append(f"placement changed for tenant(s) {', '.join(sorted(moved))}")
        self._close_unplaced_pools()
        log.info("configuration reloaded from %s", self.config_path)
        self.record(AuditEvent(kind="reload", decision="allowed", details={"notes": notes, **digests}))
        for note in notes:
            log.warning("%s", note)
        return True, notes

    def _close_unplaced_pools(self) -> None:
        """Close the idle backends of pools no placement routes to any more (a tenant moved away or
        deleted): its old database can then be dropped, and no connection to it is left open."""
        live = {repr(backend_target(self.config.backend))}
        live |= {repr(Placement.of(self.config, name).target) for name in self.config.tenants}
        for key, pool in list(self.pools.items()):
            if key[1] not in live:
                if not pool.busy and not pool.opening:  # else kept: its busy backends come back to it
                    del self.pools[key]
                self.spawn(pool.close())

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
        """Drain (see drain), then close (see close)."""
        await self.drain(timeout)
        await self.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; idle sessions end now, busy ones when idle or at the timeout (57P01)."""
        self.stopping.set()
        for server in self._servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            for client in list(self.sessions):
                session = client.session
                if session is None or session.at_boundary:
                    client.terminate("57P01", "terminating connection due to administrator command")
            await asyncio.sleep(0.05)
        for client in list(self.sessions):
            client.terminate("57P01", "terminating connection due to administrator command")

    async def close(self) -> None:
        """After drain: wait for the listening sockets and tasks, close the pools and the audit log."""
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        for pool in self.pools.values():
            await pool.close()
        await self.close_monitoring()  # before the audit log: its last records go there
        if self.audit is not None:
            await self.audit.close()

