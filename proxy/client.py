"""Client connections: startup negotiation, TLS, authentication, then the relay.

Everything before the relay runs under ``server.startup_timeout``. Failures are
answered as PostgreSQL would (a FATAL ErrorResponse with a real SQLSTATE) and close
only this connection.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from tenantgate.audit.record import AuditEvent
from tenantgate.audit.remote import RemoteAuditLog
from tenantgate.audit.writer import AuditLog
from tenantgate.keyring import Keyring, KeyringError
from tenantgate.keyring.quoting import quote_literal
from tenantgate.keyring.settings import EncryptedColumn
from tenantgate.rewriter import Rewriter
from tenantgate.rewriter.roles import read_only_settings

from . import codec
from .auditing import SessionAudit
from .auth import JWT, AuthFailed, ClientAuth
from .backend import Backend, BackendError, connect, send_cancel
from .cancel import CancelRegistry
from .codec import (
    BackendKeyData,
    CancelRequest,
    ParameterStatus,
    ProtocolError,
    StartupMessage,
)
from .counters import Metrics
from .crypto import CryptoSetupError, SessionCrypto
from .encoding import ClientEncoding, EncodingError, canonical_name, client_encoding
from .frontend import Fatal, FrontendConnection, Host, fatal_bytes
from .limits import LimitExceeded, TenantLimiter
from .monitor.signals import Signals
from .oidc import JwksCache, jwt_verifier
from .placement import Placement
from .pool import BackendPool
from .session import Session
from .startup import filter_params
from .state import SessionSnapshot


class Process(Host, Protocol):
    """What a client connection needs of its serving process (process.Proxy)."""

    @property
    def metrics(self) -> Metrics: ...
    @property
    def cancels(self) -> CancelRegistry: ...
    @property
    def sessions(self) -> set[ClientConnection]: ...
    @property
    def secret(self) -> bytes: ...
    @property
    def audit(self) -> AuditLog | RemoteAuditLog | None: ...
    @property
    def keyring(self) -> Keyring | None: ...
    @property
    def paused(self) -> set[str]: ...
    @property
    def signals(self) -> Signals | None: ...
    @property
    def rewriter(self) -> Rewriter: ...
    @property
    def jwks(self) -> JwksCache | None: ...
    def record(self, event: AuditEvent) -> None: ...
    def pool_for(self, database: str, placement: Placement) -> BackendPool | None: ...
    def limiter(self, tenant: str) -> TenantLimiter: ...
    async def check_backend_role(self, backend: Backend, allow_superuser: bool) -> None: ...
    async def columns_for(self, placement: Placement, database: str) -> dict[tuple[int, int], EncryptedColumn]: ...

log = logging.getLogger("tenantgate.client")


_ids = itertools.count(1)


def number_sessions(first: int, step: int) -> None:
    """Session ids unique across worker processes: worker i of n issues i+1, i+1+n, ... (KILL SESSION routing)."""
    global _ids
    _ids = itertools.count(first, step)


class ClientConnection(FrontendConnection[Process]):
    def __init__(self, proxy: Process) -> None:
        super().__init__(proxy)
        self.id = next(_ids)
        self.connected_at = time.time()
        self.database = ""
        self._login_backend: Backend | None = None  # until the session owns it
        self.session: Session | None = None
        self.user = ""
        self.tenant: str | None = None
        self.key: tuple[int, int] | None = None
        self.params: dict[str, str] = {}
        self.limiter: TenantLimiter | None = None  # set once the tenant's limits admitted this session
        self._holds_backend = False  # session pooling: the session's backend counts against the tenant
        self._requested_database: str | None = None

    def connected(self) -> None:
        self.proxy.metrics.client_connected()

    async def serve(self) -> None:
        await self.closed_event.wait()  # the session relays from here on

    def fatal(self, err: codec.ErrorResponse) -> None:
        if self.session is None:  # refused before its session started (KILL/shutdown come later)
            self.proxy.metrics.client_refused(err.sqlstate)
        super().fatal(err)

    def teardown(self) -> None:
        if self.limiter is not None:
            self.limiter.client_closed(self._holds_backend)
            self.limiter = None
        if self.key is not None:
            self.proxy.cancels.unregister(self.key)
        if self in self.proxy.sessions:
            self.proxy.sessions.discard(self)
            self.proxy.metrics.session_ended(self.tenant, self.bytes_in, self.bytes_out)
            if self.proxy.signals is not None:
                self.proxy.signals.session_closed(self)
        self.proxy.metrics.client_closed()
        if self.session is not None:
            self.session.detach()
        elif self._login_backend is not None:
            self._login_backend.conn.abort()
        self.close()

    # ------------------------------------------------------------------ startup

    async def cancel(self, req: CancelRequest) -> None:
        target = self.proxy.cancels.lookup(req.pid, req.secret)
        if target is None:
            log.info("cancel request with an unknown key ignored")
            return
        await target.cancel_backend()

    async def login(self, startup: StartupMessage) -> None:
        cfg = self.proxy.config
        name = startup.params["user"]
        user = cfg.users.get(name)
        settings, extensions = filter_params(startup.params)
        method = user.auth if user is not None else cfg.server.auth_method
        oidc = cfg.oidc
        verify = before = None
        if oidc is not None and (method == JWT or (user is None and oidc.dynamic_users)):
            if not self.ssl_in_use:  # the token goes in cleartext: never without TLS
                raise Fatal("28000", "JWT login requires TLS")
            jwks = self.proxy.jwks
            assert jwks is not None  # the Proxy opens the JWKS of every config with an [oidc]
            method, verify = JWT, jwt_verifier(cfg, jwks, name)
            before = jwks.refresh_for  # a token naming a kid the cached JWKS lacks: the IdP rotated its keys
        auth = ClientAuth(name, user, method, self.proxy.secret, verify)
        try:
            reply = await self.authenticate(auth, before)
        except (AuthFailed, ProtocolError) as exc:
            reason = exc.reason if isinstance(exc, AuthFailed) else str(exc)
            if self.proxy.signals is not None:
                tenant = user.tenant if user is not None and not user.trusted else None
                self.proxy.signals.tally.login(tenant, name, _address(self.peer), ok=False)
            self.proxy.record(
                AuditEvent(kind="auth_fail", user=name, client=self.peer, decision="refused", reason=reason)
            )
            raise
        if auth.identity is not None:  # a token login: tenant and role come from its claims
            self.tenant, readonly = auth.identity.tenant, auth.identity.readonly
        else:
            assert user is not None  # unknown users never finish the exchange
            self.tenant, readonly = (None if user.trusted else user.tenant), user.role == "readonly"
        self.user = name
        self.params = settings
        signals = self.proxy.signals
        if signals is not None:
            if (why := signals.login_refusal(self.tenant, name)) is not None:
                raise Fatal("28000", why)
            signals.tally.login(self.tenant, name, _address(self.peer), ok=True)
        log.info("authenticated user %s (tenant %s) from %s", name, self.tenant or "-", self.peer)
        self.proxy.record(
            AuditEvent(kind="auth_ok", user=name, tenant=self.tenant, client=self.peer, decision="allowed")
        )

        placement = Placement.of(cfg, self.tenant)
        self._requested_database = startup.params.get("database")
        database = self._route(placement)
        self.database = database
        requested_encoding = _requested_encoding(settings)
        session_settings = dict(settings)
        if self.tenant is not None:
            # defence in depth: RLS policies read it; the session's reset value, so RESET ALL keeps it
            session_settings["tenantgate.tenant"] = self.tenant
            session_settings["search_path"] = placement.search_path
            timeout = cfg.tenant(self.tenant).limits.statement_timeout
            if timeout is not None:  # the backend enforces it too; the session cancels past it regardless
                session_settings["statement_timeout"] = str(max(1, round(timeout * 1000)))
        else:
            session_settings["tenantgate.trusted"] = "on"  # see proxy/ops/rls.py
        if readonly:  # second lock: the backend itself refuses what the proxy lets through
            session_settings = read_only_settings(session_settings)
        # trusted service users always hold their backend (session pooling)
        pool = self.proxy.pool_for(database, placement) if self.tenant is not None else None
        if pool is not None and not any(k.lower() == "application_name" for k in session_settings):
            session_settings["application_name"] = ""  # PostgreSQL's default for the client, not the pool's name
        if self.tenant is not None:
            limiter = self.proxy.limiter(self.tenant)
            try:
                limiter.admit_client(holds_backend=pool is None)
            except LimitExceeded as exc:
                self.proxy.metrics.limit_hit(self.tenant, exc.limit)
                self.proxy.record(
                    AuditEvent(
                        kind="refusal",
                        user=name,
                        tenant=self.tenant,
                        client=self.peer,
                        decision="refused",
                        sqlstate=exc.sqlstate,
                        reason=exc.limit,
                    )
                )
                raise Fatal(exc.sqlstate, exc.message) from None
            self.limiter, self._holds_backend = limiter, pool is None
        backend: Backend | None = None
        if pool is None:
            backend = await connect(placement.target, database, session_settings)
        elif pool.params is None:
            backend = await pool.acquire()  # the first login proves the database is reachable
        self._login_backend = backend
        if backend is not None:
            await self.proxy.check_backend_role(backend, placement.backend.allow_superuser)
        server_params = backend.params if backend is not None else dict(pool.params or {} if pool else {})
        if self.tenant is not None and server_params.get("standard_conforming_strings", "on") != "on":
            raise Fatal("55000", "the backend has standard_conforming_strings off; tenantgate requires it on")
        # the backend's own encoding at connect: the session's when the client names none, and
        # what RESET ALL / DISCARD ALL return a pooled backend to
        default = canonical_name(server_params.get("client_encoding", "UTF8")) or "?"
        encoding = requested_encoding or _supported(default)
        if backend is not None and pool is None and default != encoding.name:
            raise Fatal("08006", f"the backend chose client_encoding {default}, not the session's {encoding.name}")
        if pool is not None and requested_encoding is None:  # hand-overs set it like every session setting
            session_settings["client_encoding"] = encoding.name
        crypto = await self._session_crypto(server_params, placement)
        if crypto is not None and crypto.columns and encoding.name != "UTF8":
            # ciphertext binds the plaintext's bytes: they must not depend on the client's encoding
            raise Fatal("0A000", "field encryption requires client_encoding UTF8 for this tenant")

        # session pooling: the backend's real pid, as PostgreSQL would report it (see proxy/cancel.py)
        self.key = self.proxy.cancels.register(self, pid=backend.pid if pool is None and backend is not None else None)
        out = bytearray(reply)
        if extensions:
            out += codec.NegotiateProtocolVersion(0, tuple(extensions)).encode()
        reported = dict(server_params)
        if pool is not None:  # the client's own values of reported settings (as the backends spell them)
            by_lower = {k.lower(): k for k in reported}
            for k, v in session_settings.items():
                if k.lower() in by_lower:
                    reported[by_lower[k.lower()]] = pool.spellings.get((k.lower(), quote_literal(v)), v)
        for k, v in reported.items():
            out += ParameterStatus(k, v).encode()
        out += BackendKeyData(*self.key).encode()
        out += codec.ready("I")
        self.write(bytes(out))

        rewriter = self.proxy.rewriter if self.tenant is not None else None
        audit = None
        if self.proxy.audit is not None:
            audit = SessionAudit(
                self.proxy.audit,
                tenant=self.tenant,
                user=name,
                client=self.peer,
                session=str(self.id),
                database=database,
                crypto=crypto,
            )
        self.session = session = Session(
            self,
            None,
            user=name,
            tenant=self.tenant,
            rewriter=rewriter,
            paused=self.proxy.paused,
            audit=audit,
            pool=pool,
            settings=session_settings if pool is not None else None,
            metrics=self.proxy.metrics,
            crypto=crypto,
            limiter=self.limiter,
            encoding=encoding,
            reset_encoding=default,
            client_pid=self.key[0],
        )
        session.readonly = readonly
        if signals is not None:
            session.signals = signals.tally.user(self.tenant, name)
        session.told = reported
        self._login_backend = None
        if pool is None:
            assert backend is not None
            session.attach(backend)  # held for the whole session
        elif backend is not None:
            pool.release(backend)
        self.proxy.sessions.add(self)
        self.on_lost = self._client_lost
        self.enter_relay(session.on_client)

    async def _session_crypto(self, server_params: dict[str, str], placement: Placement) -> SessionCrypto | None:
        """Field encryption for a tenant session, with the tenant's keys loaded."""
        if self.tenant is None or self.proxy.keyring is None:
            return None
        try:
            columns = await self.proxy.columns_for(placement, self.database)
        except CryptoSetupError as exc:
            log.error("encrypted columns of tenant %s cannot be resolved: %s", self.tenant, exc)
            raise Fatal("55000", "the encrypted columns of this tenant's tables are not set up") from None

        def timezone() -> str:
            current = self.session.backend if self.session is not None else None
            return (current.params if current is not None else server_params).get("TimeZone", "UTC")

        on_op: Callable[[str, bool], None] = self.proxy.metrics.crypto
        if self.proxy.signals is not None:  # decryptions count for the user too (encrypted_reads)
            on_op = _both(on_op, self.proxy.signals.tally.user(self.tenant, self.user).decrypted)
        crypto = SessionCrypto(self.proxy.keyring, self.tenant, columns, timezone, on_op=on_op, home=placement.schema)
        try:
            await crypto.refresh()
        except KeyringError as exc:
            log.error("keys of tenant %s cannot be loaded: %s", self.tenant, exc)
            raise Fatal(exc.sqlstate, "the encryption keys of this tenant cannot be loaded") from None
        return crypto

    def _route(self, placement: Placement) -> str:
        """The backend database of this session. A tenant's is always its configured one: the name
        the client gives is mapped to it, like a PgBouncer database entry (one connection string,
        e.g. ``/app``, serves every tier), so no tenant reaches another tier's database through the
        backend role. A tenant whose backend has no database configured is refused."""
        if self.tenant is None:
            return placement.database(self._requested_database, self.user)
        configured = placement.backend.database
        if configured is None:
            raise Fatal("3D000", f"no database is configured for tenant {self.tenant}")
        return configured

    def placement_changed(self) -> None:
        """The tenant moved (reload): its session follows at its next transaction boundary."""
        if self.session is None or self.tenant is None:
            return
        placement = Placement.of(self.proxy.config, self.tenant)
        try:
            database = self._route(placement)
        except Fatal as exc:
            self.terminate(exc.error.sqlstate, exc.error.message)
            return
        self.database = database
        # encrypted columns are resolved per placement at login: such sessions reconnect instead
        pool = self.proxy.pool_for(database, placement) if self.proxy.keyring is None else None
        self.session.move_to(pool, placement.search_path)

    # ------------------------------------------------------------------ relay mode events

    def _client_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, ProtocolError) and not self.is_closed:
            self.write(fatal_bytes(codec.error(exc.sqlstate, exc.detail)))

    @property
    def snapshot(self) -> SessionSnapshot | None:
        """Its session's published state (the console reads this, never the session); None: logging in."""
        return self.session.snapshot() if self.session is not None else None

    @property
    def backend(self) -> Backend | None:
        """The backend this client holds right now (None between transactions when pooled)."""
        return self.session.backend if self.session is not None else self._login_backend

    async def cancel_backend(self) -> None:
        backend = self.backend
        if backend is None or backend.conn.is_closed:
            return
        backend.cancelled = True  # a late cancel must not hit the next client of a pooled backend
        try:
            await send_cancel(backend.target, backend.pid, backend.secret)
        except (BackendError, OSError, TimeoutError) as exc:
            log.warning("forwarding a cancel request failed: %s", exc)

    def terminate(self, sqlstate: str, message: str) -> None:
        """Close this session now with a FATAL error (shutdown, KILL)."""
        self.fatal(codec.error(sqlstate, message))


def _address(peer: str) -> str:
    """The client's address without its port (logins are watched per address).

    >>> _address("10.0.0.7:50432"), _address("::1:50432"), _address("unix")
    ('10.0.0.7', '::1', 'unix')
    """
    return peer.rpartition(":")[0] or peer


def _both(first: Callable[[str, bool], None], second: Callable[[str, bool], None]) -> Callable[[str, bool], None]:
    def both(op: str, ok: bool = True) -> None:
        first(op, ok)
        second(op, ok)

    return both


def _supported(name: str) -> ClientEncoding:
    """The session's encoding, or a clear refusal at startup (no faithful codec, unknown name)."""
    try:
        return client_encoding(name)
    except EncodingError as exc:
        raise Fatal("0A000", f"{exc}; connect with a supported client_encoding (for example UTF8)") from None


def _requested_encoding(settings: dict[str, str]) -> ClientEncoding | None:
    """The client_encoding the client asked for at startup, now spelled as PostgreSQL spells it."""
    for key in list(settings):
        if key.lower() == "client_encoding":
            encoding = _supported(settings.pop(key))
            # one spelling of the name, so that a pooled hand-over never SETs it and RESETs it again
            settings["client_encoding"] = encoding.name
            return encoding
    return None
