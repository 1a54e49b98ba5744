"""`audit review`: the daily log review of PCI DSS 10.4.1, as text and as a dict the evidence pack embeds.

What it lists for the period: the verification result of the whole log, authentication failures,
refusals by reason, privileged actions (admin console commands, configuration reloads), access by
trusted users (sessions not bound to a tenant: they see every tenant's rows), key events and limit
hits (refusals whose SQLSTATE is 53300/53400/54000 or whose reason names a `max_*` limit). The
numbers come from the same grouped scan as `audit report` (audit/columnar.py).

Running a review is itself evidence: `record_review` appends an `admin` event ("audit review",
period, verification result, SHA-256 of the review's JSON) to the review log
`<log stem>.reviews.jsonl` beside the audit log: its own hash chain under the same keys, because
the live log has exactly one writer (the proxy).

>>> [_iso(t) for t in review_period("yesterday", None, now=datetime(2026, 12, 3, 5, 0, tzinfo=UTC))]
['2026-12-02T00:00:00.000000Z', '2026-12-03T00:00:00.000000Z']
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .cliopts import parse_utc
from .columnar import Group

LIMIT_SQLSTATES = frozenset({"53300", "53400", "54000"})
_LISTED = 100


@dataclass(slots=True)
class Review:
    since: datetime
    until: datetime
    verification: str
    verified: bool
    events: Counter[str] = field(default_factory=Counter)
    auth_failures: list[dict[str, object]] = field(default_factory=list)
    auth_failure_count: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    privileged: list[dict[str, object]] = field(default_factory=list)
    trusted_access: Counter[str] = field(default_factory=Counter)
    key_events: list[dict[str, object]] = field(default_factory=list)
    limit_hits: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (the evidence pack's "daily review" section)."""
        return {
            "since": _iso(self.since), "until": _iso(self.until),
            "verification": {"ok": self.verified, "result": self.verification},
            "events": dict(sorted(self.events.items())),
            "auth_failures": {"count": self.auth_failure_count, "listed": self.auth_failures},
            "refusals_by_reason": dict(self.refusals.most_common()),
            "privileged_actions": self.privileged,
            "trusted_user_access": dict(self.trusted_access.most_common()),
            "key_events": self.key_events,
            "limit_hits": dict(self.limit_hits.most_common()),
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    def render_text(self) -> str:
        out = [f"tenantgate daily audit review {_iso(self.since)} .. {_iso(self.until)}",
               f"verification: {self.verification}",
               "events: " + (", ".join(f"{k} {n}" for k, n in sorted(self.events.items())) or "none"),
               f"authentication failures: {self.auth_failure_count}"]
        out += [f"  {a['at']} {a['user']} from {a['client']}: {a['reason']}" for a in self.auth_failures]
        out.append(f"refusals by reason: {sum(self.refusals.values())}")
        out += [f"  {n:8d}  {reason}" for reason, n in self.refusals.most_common()]
        out.append(f"privileged actions: {len(self.privileged)}")
        out += [f"  {p['at']} {p['kind']} {p['user']} {p['decision']}: {p['what']}" for p in self.privileged]
        out.append(f"trusted-user access: {sum(self.trusted_access.values())} event(s)")
        out += [f"  {n:8d}  {user}" for user, n in self.trusted_access.most_common()]
        out.append(f"key events: {len(self.key_events)}")
        out += [f"  {k['at']} {k['event']} {k['details']}" for k in self.key_events]
        out.append(f"limit hits: {sum(self.limit_hits.values())}")
        out += [f"  {n:8d}  {limit}" for limit, n in self.limit_hits.most_common()]
        return "\n".join(out) + "\n"


def review_period(since: str, until: str | None, *, now: datetime | None = None) -> tuple[datetime, datetime]:
    """`yesterday` / `today` (UTC days) or ISO times; `until` defaults to the end of that day or now."""
    now = now or datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    named = {"yesterday": (today - timedelta(days=1), today), "today": (today, now)}
    start, end = named.get(since, (None, None))
    if start is None:
        start, end = _parse(since), now
    assert end is not None
    return start, _parse(until) if until else end


def _parse(text: str) -> datetime:
    try:
        return parse_utc(text)
    except ValueError:
        raise ValueError(f"not 'yesterday', 'today' or an ISO 8601 time: {text!r}") from None


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment is not None else "-"


def build_review(groups: Iterable[Group], *, since: datetime, until: datetime, verification: str,
                 verified: bool) -> Review:
    review = Review(since, until, verification, verified)
    for g in sorted(groups, key=lambda g: (g.at or g.first, g.kind)):
        review.events[g.kind] += g.count
        if g.kind == "auth_fail":
            review.auth_failure_count += g.count
            if len(review.auth_failures) < _LISTED:
                review.auth_failures.append({"at": _iso(g.at), "user": g.user, "client": g.client or "-",
                                             "reason": g.reason or "-", "count": g.count})
        elif g.refused:
            review.refusals[g.reason or "(no reason)"] += g.count
        if g.refused and (g.sqlstate in LIMIT_SQLSTATES or (g.reason or "").startswith("max_")):
            review.limit_hits[(g.reason or g.sqlstate or "-").split(":")[0]] += g.count
        if g.kind in ("admin", "reload") and len(review.privileged) < _LISTED:
            review.privileged.append({"at": _iso(g.at), "kind": g.kind, "user": g.user,
                                      "decision": g.decision or "-", "what": g.sql or g.reason or "-",
                                      "count": g.count})
        if g.kind == "key_event" and len(review.key_events) < _LISTED:
            review.key_events.append({"at": _iso(g.at), "event": g.reason or "-", "details": g.details or ""})
        if g.tenantless and g.kind in ("statement", "auth_ok") and g.user != "-":
            review.trusted_access[g.user] += g.count
    return review


def review_log_path(active: Path) -> Path:
    return active.with_name(f"{active.stem}.reviews{active.suffix}")
