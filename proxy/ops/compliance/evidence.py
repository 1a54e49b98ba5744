"""The per-tenant evidence pack: ``tenantgate compliance report --tenant T --since --until -o DIR``
writes ``evidence.json`` (the data) and ``evidence.html`` (the same data, one self-contained page)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenantgate.config import Config

from . import auditlog, check
from .html import render_html


async def build(config: Config, tenant: str, since: datetime | None, until: datetime | None,
                logs: Sequence[str] = ()) -> dict[str, Any]:
    """``logs``: one audit log per instance (auditlog.instance_logs; default: the configured ones)."""
    integrity = auditlog.integrity(config, logs)
    act = auditlog.summarize(auditlog.records(config, logs), config, tenant=tenant, since=since, until=until)
    controls = await check.run(config, tenant=tenant, act=act, chain=integrity)
    return {
        "tenant": tenant,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "period": {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                   "first_record": act.first.isoformat() if act.first else None,
                   "last_record": act.last.isoformat() if act.last else None},
        "integrity": {"ok": integrity.ok, "summary": integrity.summary, "records": integrity.records,
                      "last_seq": integrity.last_seq, "signed_markers": integrity.signatures,
                      "checkpoints_in_period": act.checkpoints, "instances": list(integrity.instances)},
        "access": {
            "events": act.events,
            "statements": act.statements,
            "users": dict(act.users.most_common()),
            "statement_kinds": dict(act.statement_kinds.most_common()),
            "encrypted_columns": dict(act.encrypted_access.most_common()),
            "encrypted_by_user": [{"column": c, "user": u, "read": act.encrypted_by_user[(c, u, "read")],
                                   "written": act.encrypted_by_user[(c, u, "written")]}
                                  for c, u in sorted({(c, u) for c, u, _ in act.encrypted_by_user})],
            "admin_actions": [dict(zip(("ts", "user", "command", "decision"), a, strict=True))
                              for a in act.admin_actions],
            "trusted_users": dict(act.trusted_access.most_common()),
        },
        "auth_failures": {"count": act.auth_failure_count,
                          "listed": [dict(zip(("ts", "user", "client", "reason"), a, strict=True))
                                     for a in act.auth_failures]},
        "refusals": dict(act.refusals.most_common()),
        "key_events": dict(sorted(act.key_events.items())),
        "config_changes": [dict(zip(("ts", "decision", "change"), r, strict=True)) for r in act.reloads],
        "limit_hits": dict(act.limit_hits.most_common()),
        "daily": [{"day": day, "allowed": act.daily[(day, "allowed")], "refused": act.daily[(day, "refused")]}
                  for day in sorted({d for d, _ in act.daily})],
        "controls": [asdict(c) for c in controls],
    }


def write(pack: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data, page = out / "evidence.json", out / "evidence.html"
    data.write_text(json.dumps(pack, indent=2) + "\n", encoding="utf-8")
    page.write_text(render_html(pack), encoding="utf-8")
    return data, page
