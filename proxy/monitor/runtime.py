"""The monitor of one serving process: folds the tally every interval, alerts, responds.

Off the hot path: a periodic task drains the worker's :class:`Tally` (sessions add to it),
adds the bytes each live session sent since the last fold, and runs the :class:`Engine`.
Each finding becomes an :class:`Alert`: a signed ``alert`` audit record, a count in
``tenantgate_alerts_total{detector,severity}``, a row of ``SHOW ALERTS``, a webhook POST when
configured, and the detector's response when one is configured (throttle the user, pause the
tenant, or end the user's sessions and refuse its logins), which lasts ``cooldown`` seconds
and can be undone at once with ``UNDO ALERT <id>``. Responses and their end are audited too
(kind ``alert``, ``details.event`` = alert | response | undo | expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantgate.audit.record import AuditEvent
from tenantgate.config.monitoring import MonitoringSettings

from .detectors import SEVERITIES, Finding
from .engine import Engine
from .tally import Bucket, Tally
from .webhook import post_alert

log = logging.getLogger("tenantgate.monitor")

KEEP_ALERTS = 1000  # alerts SHOW ALERTS lists (the audit log keeps all of them)
SAVE_EVERY = 60.0  # seconds between writes of the state file (and one at shutdown)


class Host(Protocol):
    """What the monitor needs of its serving process (proxy/process.py's Proxy)."""

    sessions: Any
    paused: set[str]

    def record(self, event: AuditEvent) -> None: ...
    def pause(self, tenant: str | None) -> None: ...
    def resume(self, tenant: str | None) -> None: ...
    def kill(self, clients: list[Any]) -> int: ...


@dataclass
class Alert:
    id: int
    at: float
    finding: Finding
    response: str = "none"  # the action taken
    until: float | None = None  # when the response ends by itself
    undone: str | None = None  # "undo by <admin>" | "expired"

    def to_json(self) -> dict[str, object]:
        f = self.finding
        return {
            "id": self.id,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "detector": f.detector,
            "severity": f.severity,
            "tenant": f.tenant,
            "user": f.user,
            "observed": f.observed,
            "baseline": f.center,
            "threshold": f.threshold,
            "evidence": dict(f.evidence),
            "response": self.response,
        }


class _Counts(Collector):
    """``tenantgate_alerts_total{detector,severity}``: both label sets are fixed words, so bounded."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("tenantgate_alerts", "Security monitoring alerts", labels=("detector", "severity"))]

    def collect(self) -> Iterator[Metric]:
        family = self.describe()[0]
        assert isinstance(family, CounterMetricFamily)
        for (detector, severity), n in sorted(self.counts.items()):
            family.add_metric((detector, severity), float(n))
        yield family


class Monitor:
    def __init__(self, host: Host, settings: MonitoringSettings, registry: Any) -> None:
        self.host = host
        self.settings = settings
        self.tally = Tally()
        self.engine, self._next_id = self._load()
        self.alerts: deque[Alert] = deque(maxlen=KEEP_ALERTS)
        self.blocked: dict[tuple[str | None, str], Alert] = {}  # logins refused until the alert's ``until``
        self._sent: dict[int, int] = {}  # id(client) -> bytes_out already counted
        self._saved_at = 0.0
        self._tasks: set[asyncio.Task[bool]] = set()  # webhook posts in flight
        self.counter = _Counts()
        registry.register(self.counter)

    # ------------------------------------------------------------------ state

    def _load(self) -> tuple[Engine, int]:
        """The persisted engine and the next alert id (ids stay unique across restarts)."""
        path = self.settings.state_file
        if path is None or not os.path.exists(path):
            return Engine(self.settings), 1
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return Engine.from_state(self.settings, data), int(data.get("next_alert_id", 1))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken file: start learning again
            log.error("monitoring state %s unreadable (%s): baselines start afresh", path, exc)
            return Engine(self.settings), 1

    def save(self) -> None:
        path = self.settings.state_file
        if path is None:
            return
        data = self.engine.state()
        data["next_alert_id"] = self._next_id
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as exc:
            log.error("monitoring state %s not written: %s", path, exc)

    # ------------------------------------------------------------------ the fold

    async def run(self) -> None:
        """Fold every interval until cancelled; the state is saved on the way out."""
        try:
            while True:
                await asyncio.sleep(self.settings.interval)
                try:
                    self.fold(time.time())
                except Exception:  # a bug in analysis must never take the data path down
                    log.exception("monitoring fold failed")
        finally:
            self.save()

    def session_closed(self, client: Any) -> None:
        """A session ends: the bytes it sent since the last fold still count."""
        sent = self._sent.pop(id(client), 0)
        if client.bytes_out > sent and client.user:
            self.tally.user(client.tenant, client.user).bytes_out += client.bytes_out - sent

    def fold(self, now: float) -> list[Alert]:
        tally = self.tally
        for client in list(self.host.sessions):
            key = id(client)
            sent = self._sent.get(key, 0)
            if client.bytes_out > sent:
                tally.user(client.tenant, client.user).bytes_out += client.bytes_out - sent
                self._sent[key] = client.bytes_out
        alerts = [self.alert(f, now) for f in self.engine.step(now, tally.drain())]
        self._expire(now)
        if now - self._saved_at >= SAVE_EVERY:
            self._saved_at = now
            self.save()
        return alerts

    # ------------------------------------------------------------------ alerts

    def alert(self, finding: Finding, now: float) -> Alert:
        alert = Alert(self._next_id, now, finding)
        self._next_id += 1
        self.alerts.append(alert)
        key = (finding.detector, finding.severity if finding.severity in SEVERITIES else "warning")
        self.counter.counts[key] = self.counter.counts.get(key, 0) + 1
        log.warning("security alert %d: %s tenant=%s user=%s observed=%g threshold=%g", alert.id,
                    finding.detector, finding.tenant, finding.user, finding.observed, finding.threshold)
        response = self.settings.detector(finding.detector).response
        self._record("alert", alert, {"alert": alert.to_json()})
        if response != "none":
            self._respond(alert, response, now)
        if self.settings.webhook_url is not None and self.settings.webhook_secret is not None:
            task = asyncio.get_running_loop().create_task(
                post_alert(self.settings.webhook_url, self.settings.webhook_secret, alert.to_json(),
                           retries=self.settings.webhook_retries, timeout=self.settings.webhook_timeout)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return alert

    def _record(self, event: str, alert: Alert, details: dict[str, object]) -> None:
        f = alert.finding
        self.host.record(
            AuditEvent(kind="alert", tenant=f.tenant, user=f.user, reason=f.detector,
                       details={"event": event, "id": alert.id, **details})
        )

    # ------------------------------------------------------------------ responses

    def _respond(self, alert: Alert, action: str, now: float) -> None:
        f = alert.finding
        if f.tenant is None if action == "pause_tenant" else f.user is None:
            return  # no tenant to pause (trusted users, logins across tenants), or no one user to act on
        alert.response = action
        alert.until = now + self.settings.detector(f.detector).cooldown
        if action == "throttle":
            assert f.user is not None
            self.tally.user(f.tenant, f.user).throttle = Bucket(self.settings.throttle_rate)
        elif action == "pause_tenant":
            self.host.pause(f.tenant)
        elif action == "block_user":
            assert f.user is not None
            self.blocked[(f.tenant, f.user)] = alert
            self.host.kill([c for c in self.host.sessions if c.user == f.user and c.tenant == f.tenant])
        self._record("response", alert, {"action": action, "until": alert.until})

    def undo(self, alert_id: int, by: str) -> Alert:
        """End an alert's response now (UNDO ALERT); KeyError when no such response holds."""
        alert = next((a for a in self.alerts if a.id == alert_id), None)
        if alert is None or alert.response == "none" or alert.undone is not None:
            raise KeyError(alert_id)
        self._end(alert, f"undo by {by}")
        return alert

    def _end(self, alert: Alert, why: str) -> None:
        f = alert.finding
        alert.undone = why
        if alert.response == "throttle" and f.user is not None:
            self.tally.user(f.tenant, f.user).throttle = None
        elif alert.response == "pause_tenant":
            self.host.resume(f.tenant)
        elif alert.response == "block_user" and self.blocked.get((f.tenant, f.user or "")) is alert:
            del self.blocked[(f.tenant, f.user or "")]
        self._record("undo" if why.startswith("undo") else "expired", alert, {"action": alert.response, "by": why})

    def _expire(self, now: float) -> None:
        for alert in self.alerts:
            if alert.until is not None and alert.undone is None and now >= alert.until:
                self._end(alert, "expired")

    def login_refusal(self, tenant: str | None, user: str) -> str | None:
        """Why a login is refused (a block_user response holds), or None."""
        alert = self.blocked.get((tenant, user))
        if alert is None:
            return None
        assert alert.until is not None
        ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(alert.until))
        return (f"logins of user {user} are suspended by security monitoring until {ends} "
                f"(alert {alert.id}, {alert.finding.detector})")

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)
        self.save()
