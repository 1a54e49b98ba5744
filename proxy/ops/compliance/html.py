"""The evidence pack as one self-contained HTML page: inline CSS and SVG charts, no script, no
external resource (a Content-Security-Policy of default-src 'none' makes any slip fail closed)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.pass{color:#176f2c}.fail{color:#b00020;font-weight:bold}.manual{color:#8a5a00}svg{margin:.5em 0}"""


def _e(value: object) -> str:
    return html.escape(str(value))


def table(headers: Iterable[str], rows: Iterable[Iterable[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def bar_chart(title: str, values: Mapping[str, int], width: int = 640) -> str:
    """Horizontal bars, one per key; an empty mapping draws the axis and 'no data'."""
    bar, gap, label_w = 18, 6, 220
    items = list(values.items())[:20]
    height = max(1, len(items)) * (bar + gap) + 30
    top = max((v for _, v in items), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>',
             f'<text x="0" y="14" font-weight="bold">{_e(title)}</text>']
    if not items:
        parts.append('<text x="0" y="40">no data</text>')
    for i, (name, value) in enumerate(items):
        y = 24 + i * (bar + gap)
        length = round((width - label_w - 60) * value / top)
        parts.append(f'<text x="0" y="{y + 13}">{_e(name)[:32]}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y}" width="{length}" height="{bar}" fill="#3b6ea5"/>'
                     f'<text x="{label_w + length + 4}" y="{y + 13}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(pack: Mapping[str, Any]) -> str:
    acc, period, integ = pack["access"], pack["period"], pack["integrity"]
    daily = {d["day"]: d["allowed"] + d["refused"] for d in pack["daily"]}
    controls = pack["controls"]
    sections = [
        f"<h1>Evidence pack: tenant {_e(pack['tenant'])}</h1>",
        table(["period from", "until", "first record", "last record", "generated"],
              [[period["since"] or "-", period["until"] or "-", period["first_record"] or "-",
                period["last_record"] or "-", pack["generated"]]], "period"),
        "<h2>Integrity</h2>",
        f'<p class="{"pass" if integ["ok"] else "fail"}" id="integrity">{_e(integ["summary"])}</p>',
        table(["records verified", "last seq", "signed markers", "checkpoints in period"],
              [[integ["records"], integ["last_seq"], integ["signed_markers"], integ["checkpoints_in_period"]]]),
        table(["each instance's chain"], [[line] for line in integ.get("instances", ())], "instances"),
        "<h2>Activity</h2>",
        bar_chart("Events per day", daily),
        bar_chart("Statements by kind", acc["statement_kinds"]),
        table(["user", "statements"], acc["users"].items(), "users"),
        "<h2>Encrypted-column access</h2>", table(["column", "statements"], acc["encrypted_columns"].items()),
        table(["column", "user", "statements that read it (decrypted)", "that wrote or compared it (encrypted)"],
              [[a["column"], a["user"], a["read"], a["written"]] for a in acc.get("encrypted_by_user", ())]),
        "<h2>Privileged and admin actions</h2>",
        table(["time", "admin", "command", "decision"], [a.values() for a in acc["admin_actions"]]),
        "<h2>Trusted-user access (reaches this tenant's rows)</h2>",
        table(["trusted user", "statements"], acc["trusted_users"].items()),
        f"<h2>Authentication failures ({pack['auth_failures']['count']})</h2>",
        table(["time", "user", "client", "reason"], [a.values() for a in pack["auth_failures"]["listed"]]),
        "<h2>Refusals by reason</h2>", bar_chart("Refusals by reason", pack["refusals"]),
        table(["reason", "count"], pack["refusals"].items(), "refusals"),
        "<h2>Key lifecycle</h2>", table(["event", "count"], pack["key_events"].items()),
        "<h2>Configuration changes</h2>",
        table(["time", "decision", "digest before -> after / notes"], [c.values() for c in pack["config_changes"]]),
        "<h2>Limit hits</h2>", table(["limit", "count"], pack["limit_hits"].items()),
        "<h2>Controls</h2>",
        '<table class="controls"><thead><tr><th>control</th><th>status</th><th>evidence / missing</th></tr>'
        "</thead><tbody>"
        + "".join(
            f'<tr><td>{_e(c["framework"])} {_e(c["id"])}<br><small>{_e(c["requirement"])}</small></td>'
            f'<td class="{_e(c["status"])}">{_e(c["status"])}</td><td>'
            + "<br>".join([f"MISSING {_e(m)}" for m in c["missing"]] + [_e(e) for e in c["evidence"]])
            + "</td></tr>"
            for c in controls
        )
        + "</tbody></table>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>tenantgate evidence: {_e(pack['tenant'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
