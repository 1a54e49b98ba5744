"""``tenantgate compliance check``: every control of the enabled frameworks against the config, the
live backend and the audit log; one row per control (pass / fail / manual) with its evidence."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from tenantgate.config import Config
from tenantgate.config.compliance import Control
from tenantgate.config.controls import evaluate

from . import auditlog
from .auditlog import Activity
from .runtime import Finding, run_checks

PASS, FAIL, MANUAL = "pass", "fail", "manual"


@dataclass(slots=True)
class ControlResult:
    framework: str
    id: str
    requirement: str
    status: str
    evidence: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    manual: str | None = None


# evidence that is one count: name -> (the count, what it counts)
_COUNTED: dict[str, tuple[Callable[[Activity], int], str]] = {
    "auth_failures": (lambda a: a.auth_failure_count, "failed login(s) recorded"),
    "admin_actions": (lambda a: len(a.admin_actions), "admin action(s) recorded"),
    "trusted_access": (lambda a: sum(a.trusted_access.values()), "statement(s) by trusted users recorded"),
    "encrypted_access": (lambda a: sum(a.encrypted_access.values()), "access(es) to encrypted columns recorded"),
    "reloads": (lambda a: len(a.reloads), "configuration reload(s) recorded"),
    "limit_hits": (lambda a: sum(a.limit_hits.values()), "limit hit(s) recorded"),
}


def evidence_line(name: str, act: Activity) -> str:
    """One sentence of audit-log evidence for a control (tenantgate.config.compliance.EVIDENCE_QUERIES)."""
    if name in _COUNTED:
        count, what = _COUNTED[name]
        return f"{count(act)} {what}"
    if name == "statements":
        return f"{act.statements} statement(s) by {len(act.users)} user(s) logged with who, what, when, outcome"
    if name == "refusals":
        top = ", ".join(f"{r} x{n}" for r, n in act.refusals.most_common(3))
        return f"{sum(act.refusals.values())} refused statement(s) recorded" + (f" ({top})" if top else "")
    if name == "key_events":
        events = ", ".join(f"{k} x{n}" for k, n in sorted(act.key_events.items())) or "none"
        return f"key lifecycle events: {events}"
    if name == "reviews":
        return f"last log review recorded {act.reviews[-1]}" if act.reviews else "no log review recorded in the log"
    if name == "retention":
        if act.first is None:
            return "no audit records yet"
        days = (datetime.now(UTC) - act.first).days
        return f"oldest audit record {act.first.isoformat()} ({days} day(s) of log on hand)"
    raise ValueError(f"unknown evidence query {name!r}")


def judge(control: Control, config: Config, findings: dict[str, Finding], act: Activity) -> ControlResult:
    result = ControlResult(control.framework, control.id, control.requirement, PASS, manual=control.manual)
    for req in control.config:
        ok, fact = evaluate(req, config)
        (result.evidence if ok else result.missing).append(
            f"{fact.key}: {req.describe()}" + ("" if ok else f" (is {fact.value!r})")
        )
    for name in control.runtime:
        finding = findings[name]
        (result.evidence if finding.passed else result.missing).append(f"{name}: {finding.evidence}")
    result.evidence += [evidence_line(name, act) for name in control.evidence]
    if result.missing:
        result.status = FAIL
    elif control.manual is not None:
        result.status = MANUAL
    return result


async def run(config: Config, *, tenant: str | None = None, act: Activity | None = None,
              chain: auditlog.Integrity | None = None) -> list[ControlResult]:
    """``chain``: the audit logs already verified (an evidence pack's, maybe given as paths)."""
    controls = config.compliance.controls() if config.compliance else []
    names = {name for c in controls for name in c.runtime}
    findings = await run_checks(config, names - {"audit_chain"} if chain is not None else names)
    if chain is not None and "audit_chain" in names:
        findings["audit_chain"] = Finding(chain.ok, chain.summary)
    if act is None:
        act = auditlog.summarize(auditlog.records(config), config, tenant=tenant)
    return [judge(c, config, findings, act) for c in controls]


def render_text(results: Sequence[ControlResult]) -> str:
    rows = [("CONTROL", "STATUS", "EVIDENCE / MISSING")]
    for r in results:
        lines = [f"MISSING {m}" for m in r.missing] + r.evidence
        if r.status == MANUAL and r.manual:
            lines.insert(0, f"operator: {r.manual}")
        rows.append((f"{r.framework} {r.id}", r.status.upper(), lines[0] if lines else ""))
        rows += [("", "", line) for line in lines[1:]]
    width = max(len(row[0]) for row in rows)
    out = [f"{a:<{width}}  {b:<6}  {c}".rstrip() for a, b, c in rows]
    failed = sum(r.status == FAIL for r in results)
    out.append(f"\n{len(results)} control(s): {len(results) - failed - sum(r.status == MANUAL for r in results)} "
               f"pass, {failed} fail, {sum(r.status == MANUAL for r in results)} manual")
    return "\n".join(out) + "\n"


def render_json(results: Sequence[ControlResult]) -> str:
    return json.dumps(
        {"controls": [asdict(r) for r in results], "failed": [f"{r.framework} {r.id}" for r in results
                                                              if r.status == FAIL]},
        indent=2,
    ) + "\n"
