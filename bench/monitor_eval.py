"""``python -m bench monitor-eval [--tenants N] [--days D] [--seed S]``: security monitoring on a
simulated week (issue 17's acceptance).

A normal multi-tenant workload is replayed on an accelerated clock straight into the monitor's
pure engine (proxy/monitor/engine.py, the code each proxy runs once per interval), window by
window as the tally would hand it over: per tenant two application users (every day, a daily
curve with noise, nightly reports, a deploy that adds two statement shapes) and two people
(weekdays, 8:00-18:00 UTC with jitter, the odd typo at login and ad-hoc query). From day 2 on,
attacks of every kind are injected at seeded random times. Reported per detector: detected /
injected, time to detect (simulated seconds from the attack's first window to its alert), and
false alerts per tenant-day on the attack-free part (the first day, the warm-up, excluded and
reported apart). Targets: every attack within 60 s, at most 1 false alert per tenant-day.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenantgate.config.monitoring import MonitoringSettings
from tenantgate.proxy.monitor.detectors import Finding
from tenantgate.proxy.monitor.engine import DAY, Engine
from tenantgate.proxy.monitor.tally import Facts, Window

START = 1_795_996_800.0  # Monday 2026-11-30 00:00 UTC
KINDS = ("exfiltration", "credential_stuffing", "password_guessing", "probing", "new_shapes",
         "encrypted_reads", "off_hours")
TARGET_SECONDS = 60.0
TARGET_FALSE_PER_TENANT_DAY = 1.0
ATTACK_SECONDS = 120.0  # an attack lasts two minutes; alerts up to 5 minutes after it still belong to it


@dataclass
class Attack:
    kind: str
    tenant: str
    user: str
    start: float
    address: str
    detected_at: float | None = None

    def matches(self, f: Finding) -> bool:
        if f.detector != self.kind:
            return False
        if self.kind == "credential_stuffing":
            return f.evidence.get("address") == self.address
        return (f.tenant, f.user) == (self.tenant, self.user)

    def active(self, now: float) -> bool:
        return self.start <= now < self.start + ATTACK_SECONDS + 300


@dataclass
class Result:
    injected: dict[str, int] = field(default_factory=dict)
    detected: dict[str, int] = field(default_factory=dict)
    delays: dict[str, list[float]] = field(default_factory=dict)
    false_alerts: list[Finding] = field(default_factory=list)
    warmup_alerts: list[Finding] = field(default_factory=list)
    tenant_days: float = 0.0
    seconds: float = 0.0

    @property
    def false_per_tenant_day(self) -> float:
        return len(self.false_alerts) / self.tenant_days if self.tenant_days else 0.0

    @property
    def passed(self) -> bool:
        all_found = all(self.detected.get(k, 0) == n for k, n in self.injected.items())
        fast = all(d <= TARGET_SECONDS for ds in self.delays.values() for d in ds)
        return all_found and fast and self.false_per_tenant_day <= TARGET_FALSE_PER_TENANT_DAY

    def table(self) -> str:
        lines = [f"{'detector':22} {'detected':>9} {'max s':>6} {'mean s':>7}"]
        for kind in KINDS:
            ds = self.delays.get(kind, [])
            worst = f"{max(ds):.0f}" if ds else "-"
            mean = f"{sum(ds) / len(ds):.0f}" if ds else "-"
            found = f"{self.detected.get(kind, 0):>4}/{self.injected.get(kind, 0):<4}"
            lines.append(f"{kind:22} {found} {worst:>6} {mean:>7}")
        lines.append(f"false alerts: {len(self.false_alerts)} in {self.tenant_days:g} tenant-days after the warm-up "
                     f"= {self.false_per_tenant_day:.2f} per tenant-day (target <= {TARGET_FALSE_PER_TENANT_DAY:g}); "
                     f"{len(self.warmup_alerts)} during the warm-up day")
        for f in self.false_alerts[:10]:
            lines.append(f"  false: {f.detector} {f.tenant}/{f.user} observed {f.observed:g} > {f.threshold:g}")
        lines.append(f"{'PASS' if self.passed else 'FAIL'} ({self.seconds:.1f} s wall clock)")
        return "\n".join(lines)


class Workload:
    """The attack-free behaviour of every user, one window at a time (seeded)."""

    def __init__(self, tenants: int, rng: random.Random, interval: float) -> None:
        self.rng = rng
        self.interval = interval
        self.tenants = [f"t{i:02d}" for i in range(tenants)]
        self.apps = {t: [f"{t}_app{j}" for j in range(2)] for t in self.tenants}
        self.people = {t: [f"{t}_person{j}" for j in range(2)] for t in self.tenants}
        self.shapes = {t: [f"SELECT c{k} FROM t{k % 5} WHERE id = {k}" for k in range(20)] for t in self.tenants}
        self.seen: set[tuple[str, str]] = set()  # (tenant, shape) the plan cache holds
        self.deploy = {t: START + DAY * rng.uniform(2.5, 5.5) for t in self.tenants}
        self.workday = {(t, p, d): (8 + rng.uniform(-0.75, 0.5), 18 + rng.uniform(-0.75, 0.5))
                        for t in self.tenants for p in self.people[t] for d in range(8)}

    def _shapes(self, tenant: str, texts: list[str]) -> list[str]:
        new = [s for s in texts if (tenant, s) not in self.seen]
        self.seen.update((tenant, s) for s in new)
        return new

    def _poisson(self, mean: float) -> int:
        if mean <= 0:
            return 0
        if mean > 30:
            return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))
        n, p, limit = 0, 1.0, math.exp(-mean)
        while True:
            p *= self.rng.random()
            if p <= limit:
                return n
            n += 1

    def window(self, now: float) -> Window:
        w = Window()
        hour = now % DAY / 3600
        day = int((now - START) // DAY)
        weekday = day % 7 < 5
        curve = 0.25 + 0.75 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.25
        for t in self.tenants:
            for j, app in enumerate(self.apps[t]):
                n = self._poisson(40 * curve * (0.6 if not weekday else 1.0))
                rows = self._poisson(3 * n)
                report = 0 <= hour - 2 < self.interval / 3600 * 6 and j == 0  # a nightly report, one minute
                big = self.rng.randint(300, 1500) if report else self.rng.randint(0, 40)
                deployed = [f"SELECT v2 FROM {t}x", f"SELECT v3 FROM {t}x"] if now >= self.deploy[t] else []
                texts = self.shapes[t] + deployed
                f = Facts(statements=n, rows_out=rows + big, rows_changed=self._poisson(n / 4), max_rows=big,
                          bytes_out=(rows + big) * 120, decrypts=self._poisson(rows / 10),
                          shapes=self._shapes(t, self.rng.sample(texts, min(len(texts), 3)) if n else []))
                if self.rng.random() < 0.002:
                    f.refusals["catalog"] = 1
                if self.rng.random() < 0.01:
                    f.addresses[f"10.{j}.0.{self.rng.randint(1, 3)}"] = 1
                w.users[(t, app)] = f
            for j, person in enumerate(self.people[t]):
                begin, end = self.workday[(t, person, day % 8)]
                if not (weekday and begin <= hour < end):
                    continue
                n = self._poisson(3)
                rows = self._poisson(6 * n)
                f = Facts(statements=n, rows_out=rows, max_rows=min(rows, 200), bytes_out=rows * 200,
                          decrypts=self._poisson(rows / 5))
                if self.rng.random() < 0.0005:  # an ad-hoc query: one shape the tenant never ran
                    f.shapes = self._shapes(t, [f"SELECT adhoc{self.rng.randint(0, 10**9)} FROM t0"])
                if self.rng.random() < 0.003:
                    f.addresses[f"192.168.{j}.7"] = 1
                if n or f.addresses:
                    w.users[(t, person)] = f
                if self.rng.random() < 0.0003:  # a typo at login
                    w.auth_failures[(t, person, f"192.168.{j}.7")] = 1
        return w


def _inject(attack: Attack, now: float, w: Window, rng: random.Random) -> None:
    """The attack's share of this window (it runs for ATTACK_SECONDS from its start)."""
    if not attack.start <= now < attack.start + ATTACK_SECONDS:
        return
    key = (attack.tenant, attack.user)
    f = w.users.setdefault(key, Facts())
    step = int((now - attack.start) // 10)
    if attack.kind == "exfiltration":
        f.statements += 1
        f.rows_out += 60_000
        f.max_rows = max(f.max_rows, 60_000)
        f.bytes_out += 60_000 * 120
    elif attack.kind == "encrypted_reads":
        f.statements += 1
        f.decrypts += 3000
    elif attack.kind == "probing":
        f.statements += 2
        f.refusals["catalog"] = f.refusals.get("catalog", 0) + 4
    elif attack.kind == "new_shapes":
        f.statements += 3
        f.shapes += [f"SELECT recon{step}_{i} FROM pg_class_{rng.randint(0, 10**9)}" for i in range(3)]
    elif attack.kind == "off_hours":
        f.statements += 5
        f.addresses["203.0.113.50"] = 1
    elif attack.kind == "credential_stuffing":
        for i in range(3):
            w.auth_failures[(None, f"victim{step}_{i}", attack.address)] = 1
    elif attack.kind == "password_guessing":
        for i in range(2):
            w.auth_failures[(attack.tenant, attack.user, f"198.51.100.{step * 2 + i}")] = 1


def _attacks(load: Workload, days: int, per_kind: int, rng: random.Random) -> list[Attack]:
    out = []
    for kind in KINDS:
        for n in range(per_kind):
            tenant = rng.choice(load.tenants)
            user = rng.choice(load.people[tenant] if kind in ("off_hours", "password_guessing") else load.apps[tenant])
            if kind == "off_hours":  # 02:00-04:00 once the person has been watched for a day
                day = rng.randint(2, days - 1)
                start = START + day * DAY + rng.uniform(2 * 3600, 4 * 3600)
            else:
                start = START + DAY + rng.uniform(0, (days - 1) * DAY - 3600)
            out.append(Attack(kind, tenant, user, start, f"203.0.113.{n + 1}"))
    return out


def evaluate(tenants: int = 4, days: int = 7, seed: int = 17, per_kind: int = 3,
             settings: MonitoringSettings | None = None, progress: Callable[[str], None] | None = None) -> Result:
    settings = settings or MonitoringSettings()  # the defaults, as shipped
    rng = random.Random(seed)
    load = Workload(tenants, rng, settings.interval)
    attacks = _attacks(load, days, per_kind, rng)
    engine = Engine(settings)
    result = Result(tenant_days=float(tenants * (days - 1)))
    for a in attacks:
        result.injected[a.kind] = result.injected.get(a.kind, 0) + 1
    started = time.perf_counter()
    now, end = START, START + days * DAY
    while now < end:
        window = load.window(now)
        for a in attacks:
            _inject(a, now, window, rng)
        for f in engine.step(now, window):
            owner = next((a for a in attacks if a.active(now) and a.matches(f)), None)
            if owner is not None:
                if owner.detected_at is None:
                    owner.detected_at = now
            elif now < START + DAY:
                result.warmup_alerts.append(f)
            else:
                result.false_alerts.append(f)
        now += settings.interval
        if progress is not None and int((now - START) % DAY) == 0:
            progress(f"day {int((now - START) // DAY)} done")
    for a in attacks:
        if a.detected_at is not None:
            result.detected[a.kind] = result.detected.get(a.kind, 0) + 1
            # the window at `start` holds the attack's first 10 s: it is seen when that window is folded
            result.delays.setdefault(a.kind, []).append(a.detected_at - a.start + settings.interval)
    result.seconds = time.perf_counter() - started
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench monitor-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--attacks", type=int, default=3, help="attacks injected per kind")
    parser.add_argument("--seed", type=int, default=17)
    opts = parser.parse_args(argv)
    if opts.days < 3:
        parser.error("--days must be at least 3 (the first is the warm-up; off-hours needs a day of history)")
    result = evaluate(opts.tenants, opts.days, opts.seed, opts.attacks,
                      progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(result.table())
    return 0 if result.passed else 1
