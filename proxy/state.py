"""The data plane's published, read-only state: what the metrics collector and the console
(admin port, metrics HTTP, worker supervision) read of a serving process.

Protocols of read-only properties, so this module imports none of the classes that satisfy
them (process.Proxy, client.ClientConnection, pool.BackendPool, limits.TenantLimiter) and
the modules those live in can depend on it without an import circle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Protocol

from tenantgate.audit.writer import AuditStats
from tenantgate.config import Config

from .backend import Backend, BackendTarget


class ClientView(Protocol):
    """One client connection, as the collector counts it."""

    @property
    def tenant(self) -> str | None: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def backend(self) -> Backend | None: ...


class PoolView(Protocol):
    """A transaction-mode pool: its idle backends are held by no session."""

    @property
    def idle(self) -> Collection[Backend]: ...


class LimiterView(Protocol):
    """A tenant's live limit state: backend connections its sessions hold."""

    @property
    def tenant(self) -> str: ...
    @property
    def backends(self) -> int: ...


class AuditView(Protocol):
    def stats(self) -> AuditStats: ...


class PlannerView(Protocol):
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
    def planner(self) -> PlannerView: ...
    @property
    def audit(self) -> AuditView | None: ...
    @property
    def stopping(self) -> asyncio.Event: ...
