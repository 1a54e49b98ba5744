"""Activity report for auditors: Markdown, or HTML with an inline SVG chart (no JS, no CDN).

The numbers come from `Group`s: DuckDB's scan of the segment files (audit/columnar.py) or
`group_records` over parsed records (a PostgreSQL sink); `summarise` turns either into ReportData."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .columnar import ONE_BY_ONE, Group
from .lean import ts_us
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
    """Summarise event records (markers are skipped) of `tenant` in [since, until): for record
    streams (a PostgreSQL sink, tests); files go through DuckDB (`columnar.scan`) instead."""
    return summarise(group_records(records, tenant=tenant, since=since, until=until), tenant=tenant,
                     since=since, until=until, integrity=integrity)


def group_records(records: Iterable[dict[str, object]], *, tenant: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> list[Group]:
    """The groups `columnar.scan` makes, from parsed records."""
    counts: Counter[tuple[object, ...]] = Counter()
    spans: dict[tuple[object, ...], tuple[datetime, datetime]] = {}
    for rec in records:
        kind = rec.get("kind")
        if kind not in EVENT_KINDS or (tenant is not None and rec.get("tenant") != tenant):
            continue
        ts = _moment(rec["ts"])
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        one = kind in ONE_BY_ONE
        columns = rec.get("encrypted_columns")
        details = rec.get("details")
        key = (kind, _opt(rec.get("decision")), _opt(rec.get("reason")), _opt(rec.get("sqlstate")),
               str(rec.get("user") or "-"), rec.get("tenant") is None, ts.replace(minute=0, second=0, microsecond=0),
               tuple(str(c) for c in columns) if isinstance(columns, list) else (), ts if one else None,
               _opt(rec.get("client")) if one else None, _opt(rec.get("sql")) if one else None,
               json.dumps(details, sort_keys=True) if one and isinstance(details, dict) else None)
        counts[key] += 1
        first, last = spans.get(key, (ts, ts))
        spans[key] = (min(first, ts), max(last, ts))
    return [Group(*key, n, *spans[key]) for key, n in counts.items()]  # type: ignore[arg-type, call-arg]


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def summarise(groups: Iterable[Group], *, tenant: str | None = None, since: datetime | None = None,
              until: datetime | None = None, integrity: str | None = None) -> ReportData:
    data = ReportData(tenant, since, until)
    if integrity is not None:
        data.integrity = integrity
    hourly: Counter[tuple[datetime, str]] = Counter()
    singles: list[Group] = []
    for g in groups:
        data.total += g.count
        data.first = g.first if data.first is None else min(data.first, g.first)
        data.last = g.last if data.last is None else max(data.last, g.last)
        refused = g.refused
        data.by_kind[(g.kind, g.decision or ("refused" if refused else "-"))] += g.count
        hourly[(g.hour, "refused" if refused else "allowed")] += g.count
        if refused and g.kind != "auth_fail":
            data.refusals[g.reason or "(no reason)"] += g.count
        for column in g.encrypted_columns:
            data.encrypted[(column, g.user)] += g.count
        if g.at is not None:
            singles.append(g)
    for g in sorted(singles, key=lambda g: (g.at, g.kind)):
        if g.kind == "auth_fail":
            data.auth_failure_count += g.count
            if len(data.auth_failures) < _MAX_LISTED:
                data.auth_failures.append((_iso(g.at), g.user, g.client or "-", g.reason or "-"))
        elif g.kind == "key_event" and len(data.key_events) < _MAX_LISTED:
            details = json.loads(g.details) if g.details else None
            what = ", ".join(f"{k}={v}" for k, v in sorted(details.items())) if isinstance(details, dict) else ""
            data.key_events.append((_iso(g.at), g.reason or "-", what))
    start = since or data.first
    end = until or data.last
    if start is not None and end is not None and end - start > timedelta(days=2):
        data.bucket = timedelta(days=1)
    for (hour, outcome), n in hourly.items():
        data.timeline[(_floor(hour, data.bucket), outcome)] += n
    return data


def _iso(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment is not None else "-"


def _moment(ts: object) -> datetime:
    return _EPOCH + timedelta(microseconds=ts_us(ts if isinstance(ts, int) else str(ts)))


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
