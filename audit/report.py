"""Activity report for auditors: Markdown, or HTML with an inline SVG chart (no JS, no CDN)."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .lean import ts_text, ts_us
from .record import EVENT_KINDS

_MAX_LISTED = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class ReportData:
    tenant: str | None
    since: datetime | None
    until: datetime | None
    integrity: str = "not verified (no audit key given)"
    total: int = 0
    first: datetime | None = None
    last: datetime | None = None
    by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    encrypted: Counter[tuple[str, str]] = field(default_factory=Counter)
    auth_failures: list[tuple[str, str, str, str]] = field(default_factory=list)
    auth_failure_count: int = 0
    key_events: list[tuple[str, str, str]] = field(default_factory=list)
    timeline: Counter[tuple[datetime, str]] = field(default_factory=Counter)
    bucket: timedelta = timedelta(hours=1)


def build_report(records: Iterable[dict[str, object]], *, tenant: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 integrity: str | None = None) -> ReportData:
    """Summarise event records (markers are skipped) of `tenant` in [since, until)."""
    data = ReportData(tenant, since, until)
    if integrity is not None:
        data.integrity = integrity
    events: list[tuple[datetime, str]] = []
    for rec in records:
        kind = rec.get("kind")
        if kind not in EVENT_KINDS or (tenant is not None and rec.get("tenant") != tenant):
            continue
        ts = _moment(rec["ts"])
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        assert isinstance(kind, str)
        data.total += 1
        data.first = ts if data.first is None else min(data.first, ts)
        data.last = ts if data.last is None else max(data.last, ts)
        refused = rec.get("decision") == "refused" or kind in ("refusal", "auth_fail")
        decision = str(rec.get("decision") or ("refused" if refused else "-"))
        data.by_kind[(kind, decision)] += 1
        events.append((ts, "refused" if refused else "allowed"))
        if refused and kind != "auth_fail":
            data.refusals[str(rec.get("reason") or "(no reason)")] += 1
        columns = rec.get("encrypted_columns")
        if isinstance(columns, list):
            for column in columns:
                data.encrypted[(str(column), str(rec.get("user") or "-"))] += 1
        if kind == "auth_fail":
            data.auth_failure_count += 1
            if len(data.auth_failures) < _MAX_LISTED:
                data.auth_failures.append((_text(rec["ts"]), str(rec.get("user") or "-"),
                                           str(rec.get("client") or "-"), str(rec.get("reason") or "-")))
        if kind == "key_event" and len(data.key_events) < _MAX_LISTED:
            details = rec.get("details")
            what = ", ".join(f"{k}={v}" for k, v in sorted(details.items())) if isinstance(details, dict) else ""
            data.key_events.append((_text(rec["ts"]), str(rec.get("reason") or "-"), what))
    start = since or data.first
    end = until or data.last
    if start is not None and end is not None and end - start > timedelta(days=2):
        data.bucket = timedelta(days=1)
    for ts, outcome in events:
        data.timeline[(_floor(ts, data.bucket), outcome)] += 1
    return data


def _moment(ts: object) -> datetime:
    return _EPOCH + timedelta(microseconds=ts_us(ts if isinstance(ts, int) else str(ts)))


def _text(ts: object) -> str:
    return ts_text(ts) if isinstance(ts, int) else str(ts)


def _floor(ts: datetime, bucket: timedelta) -> datetime:
    if bucket >= timedelta(days=1):
        return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    return ts.replace(minute=0, second=0, microsecond=0)


def _period(data: ReportData) -> str:
    since = data.since.isoformat() if data.since else "beginning"
    until = data.until.isoformat() if data.until else "end"
    return f"{since} to {until}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: ReportData) -> str:
    out = [f"# tenantgate audit report: {data.tenant or 'all tenants'}", "",
           f"- Period: {_period(data)}", f"- Integrity: {data.integrity}", f"- Events: {data.total}", "",
           "## Events by kind and decision", "", "| kind | decision | count |", "|---|---|---:|"]
    out += [f"| {k} | {d} | {n} |" for (k, d), n in sorted(data.by_kind.items())]
    out += ["", "## Refusals by reason", "", "| reason | count |", "|---|---:|"]
    out += [f"| {_md(r)} | {n} |" for r, n in data.refusals.most_common()]
    out += ["", "## Access to encrypted columns", "", "| column | user | statements |", "|---|---|---:|"]
    out += [f"| {_md(c)} | {_md(u)} | {n} |" for (c, u), n in sorted(data.encrypted.items())]
    out += ["", f"## Authentication failures ({data.auth_failure_count})", "",
            "| time | user | client | reason |", "|---|---|---|---|"]
    out += [f"| {t} | {_md(u)} | {_md(c)} | {_md(r)} |" for t, u, c, r in data.auth_failures]
    out += ["", "## Key events", "", "| time | event | details |", "|---|---|---|"]
    out += [f"| {t} | {_md(r)} | {_md(d)} |" for t, r, d in data.key_events]
    return "\n".join(out) + "\n"


def render_svg(data: ReportData, width: int = 720, height: int = 240) -> str:
    """Stacked bars of allowed/refused events per time bucket."""
    buckets = sorted({b for b, _ in data.timeline})
    left, bottom, top = 50, 30, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((data.timeline[(b, "allowed")] + data.timeline[(b, "refused")] for b in buckets), default=0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="events over time">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
             f'<text x="{left - 5}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>',
             f'<text x="{left - 5}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>']
    if buckets and peak:
        step = plot_w / len(buckets)
        bar = max(step * 0.8, 1.0)
        for i, b in enumerate(buckets):
            x = left + i * step + (step - bar) / 2
            y = float(top + plot_h)
            for outcome, colour in (("allowed", "#4a7fb5"), ("refused", "#c0392b")):
                n = data.timeline[(b, outcome)]
                h = plot_h * n / peak
                y -= h
                parts.append(f'<rect class="{outcome}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                             f'height="{h:.1f}" fill="{colour}"><title>{b.isoformat()} {outcome}: {n}'
                             '</title></rect>')
        label_every = max(1, len(buckets) // 6)
        fmt = "%Y-%m-%d" if data.bucket >= timedelta(days=1) else "%m-%d %H:00"
        for i in range(0, len(buckets), label_every):
            parts.append(f'<text x="{left + (i + 0.5) * step:.1f}" y="{height - 10}" text-anchor="middle" '
                         f'font-size="10">{buckets[i].strftime(fmt)}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{top - 6}" text-anchor="end" font-size="11">'
                 '<tspan fill="#4a7fb5">allowed</tspan> / <tspan fill="#c0392b">refused</tspan></text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: ReportData) -> str:
    title = html.escape(f"tenantgate audit report: {data.tenant or 'all tenants'}")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>",
        f"<h1>{title}</h1>",
        f"<p>Period: {html.escape(_period(data))}<br>Integrity: {html.escape(data.integrity)}<br>"
        f"Events: {data.total}</p>",
        f"<h2>Events over time (per {'day' if data.bucket >= timedelta(days=1) else 'hour'})</h2>",
        render_svg(data),
        "<h2>Events by kind and decision</h2>",
        _table(["kind", "decision", "count"], ((k, d, n) for (k, d), n in sorted(data.by_kind.items()))),
        "<h2>Refusals by reason</h2>", _table(["reason", "count"], data.refusals.most_common()),
        "<h2>Access to encrypted columns</h2>",
        _table(["column", "user", "statements"], ((c, u, n) for (c, u), n in sorted(data.encrypted.items()))),
        f"<h2>Authentication failures ({data.auth_failure_count})</h2>",
        _table(["time", "user", "client", "reason"], data.auth_failures),
        "<h2>Key events</h2>", _table(["time", "event", "details"], data.key_events),
        "</body></html>", ""])
