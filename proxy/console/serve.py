"""The single-process assembly: the data plane (process.Proxy), then the admin and metrics
ports around it; the reverse on shutdown. (Several workers: console/workers.py.)"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.config import load_config
from tenantgate.proxy.process import BackendRoleRefused, Proxy

from .admin import AdminServer
from .cluster import ClusterOps
from .metrics import MetricsServer

log = logging.getLogger("tenantgate")


@dataclass
class Ports:
    """The console's listening ports of one process (either may be unconfigured)."""

    admin: AdminServer | None = None
    metrics: MetricsServer | None = None

    def stop_accepting(self) -> None:
        if self.admin is not None:
            self.admin.close()  # admins already connected can watch the drain

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.wait_closed()
        if self.metrics is not None:  # last: /readyz says "shutting down" while draining
            self.metrics.close()
            await self.metrics.wait_closed()


async def open_ports(
    proxy: Proxy, admin: type[AdminServer] = AdminServer, metrics: type[MetricsServer] = MetricsServer
) -> Ports:
    """The configured ports, served by ``admin`` and ``metrics`` (a supervisor's aggregating kinds)."""
    listen = proxy.config.listen
    ports = Ports()
    if listen.admin is not None:
        ports.admin = await admin.start(proxy, *listen.admin)
    if listen.metrics is not None:
        ports.metrics = await metrics.start(proxy, *listen.metrics)
    return ports


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
    ports = await open_ports(proxy)
    cluster = ClusterOps(proxy) if config.cluster is not None else None
    if cluster is not None:
        await cluster.channel.start()
        if ports.admin is not None:
            ports.admin.cluster = cluster
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGINT, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    await proxy.stop_requested.wait()
    log.info("shutting down: waiting up to %.0fs for sessions", proxy.stop_timeout)
    ports.stop_accepting()
    await proxy.drain(proxy.stop_timeout)
    await ports.close()
    if cluster is not None:
        cluster.channel.close()
    await proxy.close()
    return 0
