"""One small rule per attack. Pure: numbers and sets in, a :class:`Finding` (or None) out.

Each rule compares what a user did in the last minute with a threshold: the larger of the
detector's ``minimum`` (config/monitoring.py) and the upper band of the user's baseline
(baseline.py). The finding carries both, so every alert says why it fired.

>>> f = exceeds("exfiltration", "acme", "alice", 90000.0, (1200.0, 8000.0), 5000.0)
>>> f.observed, f.center, f.threshold, f.severity
(90000.0, 1200.0, 8000.0, 'critical')
>>> exceeds("exfiltration", "acme", "alice", 6000.0, (1200.0, 8000.0), 5000.0) is None
True
>>> stuffing({("acme", "u1", "10.0.0.9"): 2, ("acme", "u2", "10.0.0.9"): 1, ("acme", "u3", "10.0.0.9"): 1},
...          3)[0].evidence
{'address': '10.0.0.9', 'users': ['u1', 'u2', 'u3'], 'failures': 4}
>>> guessing({("acme", "bob", f"10.0.0.{i}"): 1 for i in range(4)}, 4)[0].user
'bob'
>>> off_hours("acme", "alice", 3, [0] * 8 + [5] * 10 + [0] * 6, 12, 1.0) is not None
True
>>> off_hours("acme", "alice", 7, [0] * 8 + [5] * 10 + [0] * 6, 12, 1.0) is None   # next to a worked hour
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "critical")
CRITICAL_RATIO = 3.0  # observed at this many times the threshold: critical


@dataclass(frozen=True, slots=True)
class Finding:
    detector: str
    tenant: str | None  # None: trusted users, or failed logins spanning tenants
    user: str | None  # None: many users (credential stuffing)
    observed: float
    center: float  # the baseline's center (0 when there is no baseline)
    threshold: float  # what ``observed`` had to exceed
    severity: str = "warning"
    evidence: Mapping[str, object] = field(default_factory=dict)


def exceeds(
    detector: str,
    tenant: str | None,
    user: str | None,
    observed: float,
    band: tuple[float, float],
    minimum: float,
    evidence: Mapping[str, object] | None = None,
) -> Finding | None:
    """A finding when ``observed`` is above both the band's upper bound and the minimum."""
    center, high = band
    threshold = max(high, minimum)
    if observed <= threshold:
        return None
    severity = "critical" if observed >= CRITICAL_RATIO * threshold else "warning"
    return Finding(detector, tenant, user, observed, center, threshold, severity, dict(evidence or {}))


def _tenant_of(keys: list[tuple[str | None, str, str]]) -> str | None:
    tenants = {t for t, _, _ in keys}
    return tenants.pop() if len(tenants) == 1 else None


def stuffing(failures: Mapping[tuple[str | None, str, str], int], minimum: float) -> list[Finding]:
    """Credential stuffing: failed logins for at least ``minimum`` distinct users from one address."""
    by_address: dict[str, list[tuple[str | None, str, str]]] = {}
    for key in failures:
        by_address.setdefault(key[2], []).append(key)
    found = []
    for address, keys in sorted(by_address.items()):
        users = sorted({u for _, u, _ in keys})
        if len(users) >= minimum:
            total = sum(failures[k] for k in keys)
            evidence = {"address": address, "users": users[:20], "failures": total}
            found.append(Finding("credential_stuffing", _tenant_of(keys), None, float(len(users)), 0.0,
                                 minimum, "critical", evidence))
    return found


def guessing(failures: Mapping[tuple[str | None, str, str], int], minimum: float) -> list[Finding]:
    """Password guessing: one user failing to log in from at least ``minimum`` distinct addresses."""
    by_user: dict[tuple[str | None, str], list[str]] = {}
    for tenant, user, address in failures:
        by_user.setdefault((tenant, user), []).append(address)
    found = []
    for (tenant, user), addresses in sorted(by_user.items(), key=lambda kv: kv[0][1]):
        if len(addresses) >= minimum:
            total = sum(failures[(tenant, user, a)] for a in addresses)
            evidence = {"addresses": sorted(addresses)[:20], "failures": total}
            found.append(Finding("password_guessing", tenant, user, float(len(addresses)), 0.0, minimum,
                                 "critical", evidence))
    return found


def probing(
    tenant: str | None, user: str, refusals: Mapping[str, int], band: tuple[float, float], minimum: float
) -> Finding | None:
    """A burst of refused statements (catalog enumeration, denied functions, cross-tenant writes)."""
    top = dict(sorted(refusals.items(), key=lambda kv: -kv[1])[:5])
    return exceeds("probing", tenant, user, float(sum(refusals.values())), band, minimum, {"reasons": top})


def new_shapes(
    tenant: str | None, user: str, shapes: list[tuple[str, str]], stable: bool, minimum: float
) -> Finding | None:
    """Statement shapes (fingerprint, literal-free text) never seen for the tenant, from a user whose
    statements had been the same for the warm-up period."""
    if not stable or len(shapes) < minimum:
        return None
    evidence = {"fingerprints": [fp for fp, _ in shapes[:10]], "shapes": [text[:200] for _, text in shapes[:5]]}
    return Finding("new_shapes", tenant, user, float(len(shapes)), 0.0, minimum, "warning", evidence)


def off_hours(
    tenant: str | None, user: str, hour: int, days_by_hour: list[int], statements: int, minimum: float
) -> Finding | None:
    """Activity in an hour of the day (and next to one) the user never worked in before."""
    if statements < minimum or any(days_by_hour[(hour + d) % 24] for d in (-1, 0, 1)):
        return None
    worked = [h for h in range(24) if days_by_hour[h]]
    evidence = {"hour_utc": hour, "worked_hours_utc": worked}
    return Finding("off_hours", tenant, user, float(statements), 0.0, minimum, "warning", evidence)
