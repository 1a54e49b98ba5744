"""The analysis of one proxy: folds the windows every interval, alerts, decides responses.

Off the hot path: a periodic task collects a :class:`Window` (in a single process, its own
Signals' (signals.py); in a supervisor of ``[listen] workers`` > 1, every worker's, merged)
and runs the :class:`Engine` over it: one Engine and one state file per proxy, whatever the
number of workers. Each finding becomes an :class:`Alert`: a signed ``alert`` audit record, a
count in ``tenantgate_alerts_total{detector,severity}``, a row of ``SHOW ALERTS``, a webhook
POST when configured, and the detector's response when one is configured (throttle the user,
pause the tenant, or end the user's sessions and refuse its logins), which lasts ``cooldown``
seconds and can be undone at once with ``UNDO ALERT <id>``. Whenever the responses in force
change, ``publish`` gets the whole list (the Signals of every serving process apply it).
Responses and their end are audited too (kind ``alert``, ``details.event`` = alert | response |
undo | expired | disabled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tenantgate.audit.record import AuditEvent
from tenantgate.config.monitoring import MonitoringSettings

from .detectors import SEVERITIES, Finding
from .engine import Engine
from .signals import Response
from .tally import Window
from .webhook import post_alert

log = logging.getLogger("tenantgate.monitor")

KEEP_ALERTS = 1000  # alerts SHOW ALERTS lists (the audit log keeps all of them)
SAVE_EVERY = 60.0  # seconds between writes of the state file (and one at shutdown)


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
    def __init__(self, settings: MonitoringSettings, registry: Any, record: Callable[[AuditEvent], None],
                 publish: Callable[[list[Response]], None]) -> None:
        self.settings = settings
        self.record = record  # the proxy's audit (a supervisor's goes to its AuditServer's chain)
        self.publish = publish
        self.engine, self._next_id = self._load()
        self.alerts: deque[Alert] = deque(maxlen=KEEP_ALERTS)
        self._saved_at = 0.0
        self._tasks: set[asyncio.Task[bool]] = set()  # webhook posts in flight
        self.registry = registry
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

    def configure(self, settings: MonitoringSettings) -> None:
        """A reload: knobs, detectors, responses and webhook apply from the next fold. The learned
        baselines stay; a new ``state_file`` that exists is loaded instead (one that does not is
        where the current baselines are written from now on)."""
        moved = settings.state_file != self.settings.state_file
        if moved:
            self.save()
        self.settings = settings
        if moved and settings.state_file is not None and os.path.exists(settings.state_file):
            engine, next_id = self._load()
            self.engine, self._next_id = engine, max(next_id, self._next_id)
        self.engine.settings = settings  # the Engine reads its settings at every step
        self._saved_at = 0.0  # written at the next fold

    # ------------------------------------------------------------------ the fold

    async def run(self, collect: Callable[[], Awaitable[Window]]) -> None:
        """Fold every interval until cancelled; the state is saved on the way out."""
        try:
            while True:
                await asyncio.sleep(self.settings.interval)
                try:
                    self.fold(time.time(), await collect())
                except Exception:  # a bug in analysis must never take the data path down
                    log.exception("monitoring fold failed")
        finally:
            self.save()

    def fold(self, now: float, window: Window) -> list[Alert]:
        alerts = [self.alert(f, now) for f in self.engine.step(now, window)]
        expired = self._expire(now)
        if expired or any(a.response != "none" for a in alerts):
            self.publish(self.responses())
        if now - self._saved_at >= SAVE_EVERY:
            self._saved_at = now
            self.save()
        return alerts

    def responses(self) -> list[Response]:
        """The responses in force now (what every serving process must hold)."""
        return [Response(a.id, a.response, a.finding.detector, a.finding.tenant, a.finding.user, a.until)
                for a in self.alerts if a.until is not None and a.undone is None]

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
        self.record(
            AuditEvent(kind="alert", tenant=f.tenant, user=f.user, reason=f.detector,
                       details={"event": event, "id": alert.id, **details})
        )

    # ------------------------------------------------------------------ responses

    def _respond(self, alert: Alert, action: str, now: float) -> None:
        """Decide the response (the Signals that ``publish`` feeds carry it out)."""
        f = alert.finding
        if f.tenant is None if action == "pause_tenant" else f.user is None:
            return  # no tenant to pause (trusted users, logins across tenants), or no one user to act on
        alert.response = action
        alert.until = now + self.settings.detector(f.detector).cooldown
        self._record("response", alert, {"action": action, "until": alert.until})

    def undo(self, alert_id: int, by: str) -> Alert:
        """End an alert's response now (UNDO ALERT); KeyError when no such response holds."""
        alert = next((a for a in self.alerts if a.id == alert_id), None)
        if alert is None or alert.response == "none" or alert.undone is not None:
            raise KeyError(alert_id)
        self._end(alert, f"undo by {by}")
        self.publish(self.responses())
        return alert

    def _end(self, alert: Alert, why: str) -> None:
        alert.undone = why
        event = "undo" if why.startswith("undo") else why.split()[-1]  # expired | disabled
        self._record(event, alert, {"action": alert.response, "by": why})

    def _expire(self, now: float) -> bool:
        ended = [a for a in self.alerts if a.until is not None and a.undone is None and now >= a.until]
        for alert in ended:
            self._end(alert, "expired")
        return bool(ended)

    def stop(self) -> None:
        """A reload switched monitoring off: the responses in force end, the alert counter goes (a
        new Monitor may register it again at once), the state is saved."""
        for alert in self.alerts:
            if alert.until is not None and alert.undone is None:
                self._end(alert, "monitoring disabled")
        self.publish([])
        self.registry.unregister(self.counter)
        self.save()

    async def close(self) -> None:
        """Stop: webhook posts get a moment, the state is saved."""
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)
        self.save()
