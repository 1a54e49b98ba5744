"""Windows in, findings out: the analysis the monitor runs once per interval, off the hot path.

The engine keeps, per (tenant, user): the windows of the last minute (what the rules look
at), the minute being filled (folded into the baselines when it ends), which hours of the day
the user worked on how many days, and when a shape new to the tenant was last seen; per tenant
the fingerprints of its statement shapes (the plan cache's literal-free digest). ``state()``
is plain JSON data (persisted across restarts); the recent windows are not (a minute).

>>> from tenantgate.config.monitoring import MonitoringSettings
>>> eng = Engine(MonitoringSettings(warmup=0.0))
>>> calm = Window({("acme", "alice"): Facts(statements=10, rows_out=50, shapes=["SELECT 1"])})
>>> [eng.step(t, calm) for t in (0.0, 10.0)]
[[], []]
>>> loud = Window({("acme", "alice"): Facts(statements=2, rows_out=90000)})
>>> [(f.detector, f.tenant, f.user, f.observed) for f in eng.step(20.0, loud)]
[('exfiltration', 'acme', 'alice', 90100.0)]
>>> eng.step(30.0, loud)    # the same alert again only after realert_after
[]
>>> Engine.from_state(eng.settings, eng.state()).users[("acme", "alice")].first_seen
0.0
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tenantgate.config.monitoring import MonitoringSettings
from tenantgate.rewriter.literals import lift

from . import detectors
from .baseline import Baseline
from .detectors import Finding
from .tally import Facts, Window

SPAN = 60.0  # seconds the rules look back
SERIES = ("rows_out", "bytes_out", "max_rows", "decrypts", "refused")
MAX_SHAPES_PER_TENANT = 20_000  # fingerprints remembered per tenant (a bound on state, not a tuning knob)
DAY = 86400.0


def fingerprint(sql: str) -> tuple[str, str]:
    """(fingerprint, literal-free text) of a statement: the plan cache's digest, hashed.

    >>> fingerprint("SELECT * FROM t WHERE id = 1") == fingerprint("SELECT * FROM t WHERE id = 2")
    True
    >>> fingerprint("SELECT * FROM t WHERE name = 'secret'")[1]
    'SELECT * FROM t WHERE name = ?s'
    """
    lifted = lift(sql)
    text = lifted.digest if lifted is not None else "(statement that does not scan)"
    return hashlib.sha256((lifted.digest if lifted is not None else sql).encode()).hexdigest()[:16], text


def _value(facts: Facts, series: str) -> float:
    return float(sum(facts.refusals.values()) if series == "refused" else getattr(facts, series))


@dataclass
class UserModel:
    first_seen: float
    last_new_shape: float
    series: dict[str, Baseline] = field(default_factory=lambda: {s: Baseline() for s in SERIES})
    days_by_hour: list[int] = field(default_factory=lambda: [0] * 24)  # days the user worked in each hour
    last_day: list[int] = field(default_factory=lambda: [-1] * 24)
    minute: int = -1
    acc: dict[str, float] = field(default_factory=dict)  # the current minute's sums (max for max_rows)
    hour: int = -1  # the hour since the epoch being filled, and the statements run in it so far
    hour_statements: int = 0
    # the last minute's windows, each with the shapes new to the tenant it brought while the user was stable
    recent: deque[tuple[float, Facts, list[tuple[str, str]]]] = field(default_factory=deque)

    def state(self) -> dict[str, object]:
        return {
            "first_seen": self.first_seen,
            "last_new_shape": self.last_new_shape,
            "series": {name: b.state() for name, b in self.series.items()},
            "days_by_hour": self.days_by_hour,
            "last_day": self.last_day,
        }

    @classmethod
    def from_state(cls, data: dict[str, object]) -> UserModel:
        model = cls(float(data["first_seen"]), float(data["last_new_shape"]))  # type: ignore[arg-type]
        series: dict[str, dict[str, object]] = data.get("series", {})  # type: ignore[assignment]
        for name, b in series.items():
            if name in model.series:
                model.series[name] = Baseline.from_state(b)
        model.days_by_hour = [int(v) for v in data.get("days_by_hour", model.days_by_hour)]  # type: ignore[attr-defined]
        model.last_day = [int(v) for v in data.get("last_day", model.last_day)]  # type: ignore[attr-defined]
        return model

    def roll(self, now: float, facts: Facts, worked: float) -> None:
        """Add a window to the current minute; a finished minute goes into the baselines. The hour
        of the day counts as worked (once a day) when ``worked`` statements ran in it, however the
        folds cut them: a login alone is not work, and the off-hours rule judges the same count."""
        minute = int(now // 60)
        if minute != self.minute:
            if self.minute >= 0 and self.acc:
                for name, value in self.acc.items():
                    self.series[name].observe(self.minute * 60.0, value)
            self.minute, self.acc = minute, {}
        for name in SERIES:
            value = _value(facts, name)
            old = self.acc.get(name, 0.0)
            self.acc[name] = max(old, value) if name == "max_rows" else old + value
        if int(now // 3600) != self.hour:
            self.hour, self.hour_statements = int(now // 3600), 0
        self.hour_statements += facts.statements
        if self.hour_statements >= worked:
            hour, day = int(now % DAY // 3600), int(now // DAY)
            if self.last_day[hour] != day:
                self.last_day[hour] = day
                self.days_by_hour[hour] += 1


class Engine:
    def __init__(self, settings: MonitoringSettings) -> None:
        self.settings = settings
        self.users: dict[tuple[str | None, str], UserModel] = {}
        self.shapes: dict[str | None, dict[str, None]] = {}  # tenant -> fingerprints (insertion-ordered)
        self.last_alert: dict[tuple[str, str | None, str | None], float] = {}
        self._failures: deque[tuple[float, dict[tuple[str | None, str, str], int]]] = deque()

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, object]:
        return {
            "version": 1,
            "users": [[t, u, m.state()] for (t, u), m in self.users.items()],
            "shapes": [[t, list(fps)] for t, fps in self.shapes.items()],
            "last_alert": [[d, t, u, at] for (d, t, u), at in self.last_alert.items()],
        }

    @classmethod
    def from_state(cls, settings: MonitoringSettings, data: dict[str, object]) -> Engine:
        eng = cls(settings)
        for t, u, m in data.get("users", []):  # type: ignore[attr-defined]
            eng.users[(t, u)] = UserModel.from_state(m)
        for t, fps in data.get("shapes", []):  # type: ignore[attr-defined]
            eng.shapes[t] = dict.fromkeys(fps)
        for d, t, u, at in data.get("last_alert", []):  # type: ignore[attr-defined]
            eng.last_alert[(d, t, u)] = float(at)
        return eng

    # ------------------------------------------------------------------ analysis

    def step(self, now: float, window: Window) -> list[Finding]:
        """Fold one interval's window; the findings that are due (each detector, tenant and user at
        most once per realert_after)."""
        found: list[Finding] = []
        for (tenant, user), facts in window.users.items():
            found += self._user(now, tenant, user, facts)
        found += self._logins(now, window.auth_failures)
        return [f for f in found if self._due(now, f)]

    def _due(self, now: float, f: Finding) -> bool:
        key = (f.detector, f.tenant, f.user)
        last = self.last_alert.get(key)
        if last is not None and now - last < self.settings.realert_after:
            return False
        self.last_alert[key] = now
        return True

    def _new_shapes(self, tenant: str | None, texts: Iterable[str]) -> list[tuple[str, str]]:
        known = self.shapes.setdefault(tenant, {})
        new = []
        for sql in texts:
            fp, text = fingerprint(sql)
            if fp not in known:
                known[fp] = None
                new.append((fp, text))
        while len(known) > MAX_SHAPES_PER_TENANT:
            del known[next(iter(known))]
        return new

    def _user(self, now: float, tenant: str | None, user: str, facts: Facts) -> list[Finding]:
        s = self.settings
        model = self.users.get((tenant, user))
        if model is None:
            model = self.users[(tenant, user)] = UserModel(now, now)
        warm = now - model.first_seen >= s.warmup
        stable = warm and now - model.last_new_shape >= s.warmup
        new = self._new_shapes(tenant, facts.shapes) if tenant is not None else []
        if new and not stable:  # still learning the user's statements: new shapes push stability out
            model.last_new_shape = now
            new = []
        recent = model.recent
        recent.append((now, facts, new))
        while recent and recent[0][0] <= now - SPAN:
            recent.popleft()
        minute = Facts()
        shapes: list[tuple[str, str]] = []
        for _, f, n in recent:
            minute.add(f)
            shapes += n
        minute.shapes = []
        hour = int(now % DAY // 3600)
        days_before = list(model.days_by_hour)
        model.roll(now, facts, s.detector("off_hours").minimum)
        found: list[Finding | None] = []

        def band(series: str, k: float) -> tuple[float, float]:
            return model.series[series].band(now, k)

        d = s.detector
        if d("probing").enabled:  # an absolute rule from the first minute: attackers have no history
            k = d("probing").sensitivity
            found.append(detectors.probing(tenant, user, minute.refusals, band("refused", k) if warm else (0, 0),
                                           d("probing").minimum))
        if not warm:
            return [f for f in found if f is not None]
        addresses = sorted(minute.addresses)[:10]
        if d("exfiltration").enabled:
            cfg = d("exfiltration")
            evidence = {"rows_out": minute.rows_out, "bytes_out": minute.bytes_out, "max_rows": minute.max_rows,
                        "statements": minute.statements, "addresses": addresses}
            for series, observed, minimum in (
                ("rows_out", minute.rows_out, cfg.minimum),
                ("bytes_out", minute.bytes_out, 100 * cfg.minimum),
                ("max_rows", minute.max_rows, cfg.minimum),
            ):
                hit = detectors.exceeds("exfiltration", tenant, user, float(observed), band(series, cfg.sensitivity),
                                        minimum, {"series": series, **evidence})
                if hit is not None:
                    found.append(hit)
                    break
        if d("encrypted_reads").enabled:
            cfg = d("encrypted_reads")
            found.append(detectors.exceeds("encrypted_reads", tenant, user, float(minute.decrypts),
                                           band("decrypts", cfg.sensitivity), cfg.minimum,
                                           {"statements": minute.statements, "rows_out": minute.rows_out}))
        if d("new_shapes").enabled and tenant is not None:
            hit = detectors.new_shapes(tenant, user, shapes, stable, d("new_shapes").minimum)
            if hit is not None:  # alert once, then learn the user's new statements for a warm-up period
                model.last_new_shape = now
                for _, _, n in recent:
                    n.clear()
            found.append(hit)
        if d("off_hours").enabled and now - model.first_seen >= max(s.warmup, DAY):
            found.append(detectors.off_hours(tenant, user, hour, days_before, model.hour_statements,
                                             d("off_hours").minimum))
        return [f for f in found if f is not None]

    def _logins(self, now: float, failures: dict[tuple[str | None, str, str], int]) -> list[Finding]:
        if failures:
            self._failures.append((now, failures))
        while self._failures and self._failures[0][0] <= now - SPAN:
            self._failures.popleft()
        if not failures:  # nothing new: whatever the last minute holds was judged already
            return []
        minute: dict[tuple[str | None, str, str], int] = {}
        for _, window in self._failures:
            for key, n in window.items():
                minute[key] = minute.get(key, 0) + n
        d = self.settings.detector
        found = []
        if d("credential_stuffing").enabled:
            found += detectors.stuffing(minute, d("credential_stuffing").minimum)
        if d("password_guessing").enabled:
            found += detectors.guessing(minute, d("password_guessing").minimum)
        return found
