"""The data plane's published, read-only state: what the metrics collector and the console
(admin port, metrics HTTP, worker supervision) read of a serving process.

Protocols of read-only properties, so this module imports none of the classes that satisfy
them (process.Proxy, client.ClientConnection, pool.BackendPool, limits.TenantLimiter) and
the modules those live in can depend on it without an import circle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tenantgate.audit.writer import AuditStats
from tenantgate.config import Config

from .backend import Backend, BackendTarget


class PoolView(Protocol):
    """A transaction-mode pool of one (backend, database): its idle backends are held by no session."""

    @property
    def database(self) -> str: ...
    @property
    def target(self) -> BackendTarget: ...
    @property
    def idle(self) -> Collection[Backend]: ...
    @property
    def busy(self) -> Collection[Backend]: ...
    @property
    def waiters(self) -> Collection[Any]: ...
    @property
    def max_wait(self) -> float: ...


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A logged-in client's statement pipeline at one instant, as the session publishes it
    (Session.snapshot): what the console reads, taken at once so that its fields agree."""

    status: str  # the backend's transaction status: I, T or E
    busy_since: float | None  # monotonic start of the oldest unanswered request
    held_since: float | None  # monotonic time PAUSE first held a message
    held: str | None  # why it holds the client's messages now (pool wait, PAUSE, strict audit, ...), None: it does not
    statements: int
    refused: int
    pinned: bool  # transaction pooling: its backend is its own until it ends (session state); session pooling: always
    pool: PoolView | None  # transaction pooling: the pool it borrows from


class ClientView(Protocol):
    """One client connection."""

    @property
    def id(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def database(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def params(self) -> Mapping[str, str]: ...
    @property
    def ssl_in_use(self) -> bool: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def backend(self) -> Backend | None: ...
    @property
    def snapshot(self) -> SessionSnapshot | None: ...  # None: not logged in yet


class LimiterView(Protocol):
    """A tenant's live limit state: backend connections its sessions hold."""

    @property
    def tenant(self) -> str: ...
    @property
    def backends(self) -> int: ...
    @property
    def hits(self) -> Mapping[str, int]: ...  # limit name -> times it refused or delayed


class AuditView(Protocol):
    def stats(self) -> AuditStats: ...


class RewriterView(Protocol):
    def stats(self) -> dict[str, int]: ...


class ProxyView(Protocol):
    """One serving process (process.Proxy), read-only."""

    @property
    def config(self) -> Config: ...
    @property
    def backend_target(self) -> BackendTarget: ...
    @property
    def sessions(self) -> Collection[ClientView]: ...
    @property
    def pools(self) -> Mapping[tuple[str, str], PoolView]: ...
    @property
    def limiters(self) -> Mapping[str, LimiterView]: ...
    @property
    def rewriter(self) -> RewriterView: ...
    @property
    def audit(self) -> AuditView | None: ...
    @property
    def stopping(self) -> asyncio.Event: ...
    @property
    def paused(self) -> Collection[str]: ...  # tenants whose new statements wait; "*" = all
