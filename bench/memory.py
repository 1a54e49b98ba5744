"""Resident memory of a proxy process holding idle, logged-in client connections.

Clients are raw sockets that do the startup packet and the SCRAM exchange and then stay
silent. In session mode every tenantgate client also holds a PostgreSQL backend, so the
count that can really be opened is capped by ``max_connections``; the RSS per client is
the least-squares slope over the measured steps and the figure for the requested count
is an extrapolation from it, labelled as such.

>>> slope_and_intercept([(0, 100), (10, 300), (20, 500)])
(20.0, 100.0)
>>> slope_and_intercept([(0, 100), (0, 104)]) is None
True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tenantgate.proxy import codec

from .procs import rss_bytes


def slope_and_intercept(points: Sequence[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares line through (clients, bytes); None when fewer than two client counts were reached."""
    if len({p[0] for p in points}) < 2:
        return None
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    return round(float(slope), 1), round(float(intercept), 1)


def _settled_rss(pid: int) -> int:
    """RSS once the process has finished reacting to the last logins (two equal readings)."""
    last = rss_bytes(pid)
    for _ in range(20):
        time.sleep(0.1)
        now = rss_bytes(pid)
        if now == last:
            break
        last = now
    return last


def idle_clients_rss(port: int, pid: int, logins: Sequence[tuple[str, str]], database: str, *, measure: int,
                     requested: int, steps: int = 4) -> dict[str, Any]:
    """Open up to ``measure`` idle clients (round-robin over ``logins``) in ``steps`` steps, reading RSS."""
    # Imported here: tests/ is importable only from the repository root, which `python -m bench` runs from.
    from tests.harness import RawClient

    clients: list[RawClient] = []
    readings = [(0, _settled_rss(pid))]
    stopped: str | None = None
    try:
        for step in range(1, steps + 1):
            goal = measure * step // steps
            while len(clients) < goal:
                user, password = logins[len(clients) % len(logins)]
                client = RawClient(port, timeout=30)
                replies = client.login(user, password, database)
                failure = next((m for m in replies if isinstance(m, codec.ErrorResponse)), None)
                if failure is not None or not any(isinstance(m, codec.ReadyForQuery) for m in replies):
                    client.close()
                    detail = (f"{failure.sqlstate} {failure.get('M')}" if failure is not None
                              else "no ReadyForQuery")
                    stopped = f"login {len(clients) + 1} failed: {detail}"
                    break
                clients.append(client)
            readings.append((len(clients), _settled_rss(pid)))
            if stopped:
                break
    finally:
        for client in clients:
            client.close()
    figures: dict[str, Any] = {
        "requested_clients": requested,
        "measured_clients": len(clients),
        "readings": [{"clients": n, "rss_bytes": rss} for n, rss in readings],
        "stopped": stopped,
    }
    line = slope_and_intercept(readings)
    if line is not None:
        slope, intercept = line
        figures.update(rss_bytes_per_client=slope, rss_bytes_idle=intercept,
                       extrapolated_rss_bytes_at_requested=round(intercept + slope * requested))
    return figures
