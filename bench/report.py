"""results.md and the PNG plot, both made from the results.json dictionary alone.

>>> points = [
...     {"target": "direct", "workload": "w", "protocol": "simple", "clients": 8, "tps": 1000.0, "failed": 0},
...     {"target": "pgbouncer", "workload": "w", "protocol": "simple", "clients": 8, "tps": 800.0, "failed": 0},
...     {"target": "tg", "workload": "w", "protocol": "simple", "clients": 8, "tps": 500.0, "failed": 0,
...      "p50_ms": 1.5, "p99_ms": 4.25, "proc_cpu_us_per_stmt": 120.0},
... ]
>>> print(points_table(points).splitlines()[-1])
| w | simple | 8 | tg | 500 | 1.50 | 4.25 | 0 | 0.50 | 0.62 | 120 |
>>> flatten({"a": {"b": 1.23456, "c": [1, 2]}, "d": "x"})
[('a.b', '1.235'), ('a.c', '[1, 2]'), ('d', 'x')]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

POINT_KEY = ("workload", "protocol", "clients")
# Issue #7's goals are stated for scoping + batched audit, transaction-pooled over 20 backends.
GOAL_TARGET = "tenantgate-scoped-audit"


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if digits == 0 else f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "-"
    return f"{value / base:.2f}"


def points_table(points: list[dict[str, Any]]) -> str:
    """TPS, latency and CPU per point and target, with TPS ratios to direct and to PgBouncer."""
    rows = [
        "| workload | protocol | clients | target | TPS | p50 ms | p99 ms | failed | TPS ÷ direct "
        "| TPS ÷ PgBouncer | proxy CPU µs/stmt |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_point: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for p in points:
        by_point.setdefault(tuple(p[k] for k in POINT_KEY), {})[p["target"]] = p
    for key, targets in by_point.items():
        direct = targets.get("direct", {}).get("tps")
        bouncer = targets.get("pgbouncer", {}).get("tps")
        for name, p in targets.items():
            mark = " †" if p.get("errors") else ""
            rows.append(
                f"| {key[0]} | {key[1]} | {key[2]} | {name}{mark} | {_num(p['tps'])} | {_num(p.get('p50_ms'), 2)} "
                f"| {_num(p.get('p99_ms'), 2)} | {p['failed']} | {_ratio(p['tps'], direct)} "
                f"| {_ratio(p['tps'], bouncer)} | {_num(p.get('proc_cpu_us_per_stmt'))} |"
            )
    return "\n".join(rows)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**pass**" if ok else "**FAIL**")


def goals(results: dict[str, Any]) -> str:
    """Issue #7's goals for ``GOAL_TARGET``, each with the figure it is judged on.

    >>> points = [{"target": t, "workload": "select-only", "protocol": "simple", "clients": c, "tps": tps,
    ...            "failed": 0, "errors": []}
    ...           for t, c, tps in [("pgbouncer", 8, 100.0), (GOAL_TARGET, 8, 120.0), (GOAL_TARGET, 64, 200.0),
    ...                             (GOAL_TARGET, 512, 150.0)]]
    >>> print(goals({"points": points, "memory": {}}))  # doctest: +NORMALIZE_WHITESPACE
    | goal | point | figure | verdict |
    |---|---|---|---|
    | TPS ÷ PgBouncer ≥ 1.0 | select-only/simple/c8 | 1.20 | **pass** |
    | 512 clients: no errors, TPS ≥ 90% of 64 clients | select-only/simple | 0.75 of 64 clients, 0 failed | **FAIL** |
    """
    by_key = {(p["target"], p["workload"], p["protocol"], p["clients"]): p for p in results["points"]}
    rows = ["| goal | point | figure | verdict |", "|---|---|---|---|"]
    for protocol in ("simple", "extended"):
        for clients in (8, 64):
            mine = by_key.get((GOAL_TARGET, "select-only", protocol, clients))
            bouncer = by_key.get(("pgbouncer", "select-only", protocol, clients))
            if mine and bouncer and bouncer["tps"]:
                ratio = mine["tps"] / bouncer["tps"]
                rows.append(f"| TPS ÷ PgBouncer ≥ 1.0 | select-only/{protocol}/c{clients} | {ratio:.2f} "
                            f"| {_verdict(ratio >= 1.0 and not mine['errors'])} |")
    for (target, workload, protocol, clients), mine in by_key.items():
        if target == GOAL_TARGET and protocol == "prepared":
            direct = by_key.get(("direct", workload, protocol, clients))
            ratio = f"{mine['tps'] / direct['tps']:.2f} of direct" if direct and direct["tps"] else "no direct figure"
            works = mine["transactions"] > 0 and not mine["errors"] and not mine["failed"]
            rows.append(f"| -M prepared works, transaction pooling | {workload}/prepared/c{clients} | {ratio}, "
                        f"{mine['failed']} failed | {_verdict(works)} |")
    for (target, workload, protocol, clients), big in by_key.items():
        if target == GOAL_TARGET and clients == 512:
            base = by_key.get((GOAL_TARGET, workload, protocol, 64))
            if base and base["tps"]:
                share = big["tps"] / base["tps"]
                ok = share >= 0.9 and not big["errors"] and not big["failed"]
                rows.append(f"| 512 clients: no errors, TPS ≥ 90% of 64 clients | {workload}/{protocol} "
                            f"| {share:.2f} of 64 clients, {big['failed']} failed | {_verdict(ok)} |")
    if not any(p["target"] == GOAL_TARGET for p in results["points"]):
        rows.append(f"| all pgbench goals | - | {GOAL_TARGET} has no figures (not selected, or skipped: see the "
                    "notes) | not measured |")
    aim = results["memory"].get(GOAL_TARGET, {}).get("goal")
    if aim:
        figure = f"{aim['rss_bytes'] / 1e6:.0f} MB RSS ({aim['how']})" if "rss_bytes" in aim else aim["how"]
        rows.append(f"| {aim['clients']:,} idle clients < {aim['limit_bytes'] / 1e6:.0f} MB | memory | {figure} "
                    f"| {_verdict(aim['passed'])} |")
    return "\n".join(rows)


# Issue 14's budgets: (label, target, figure, baseline, clients, bound, at least?). "cpu": proxy CPU per
# statement ÷ the baseline's; "tps": TPS ÷ the baseline's. Judged per protocol, select-only. A bound of
# None is a reference row, not judged: where the Python floor (bench/floor.py) stands in the same run.
BUDGETS: tuple[tuple[str, str, str, str, int, float | None, bool], ...] = (
    ("relay (trusted user): CPU ÷ PgBouncer", "tenantgate-relay", "cpu", "pgbouncer", 8, 1.6, False),
    ("(reference) Python floor: CPU ÷ PgBouncer", "python-floor", "cpu", "pgbouncer", 8, None, False),
    ("(reference) relay: CPU ÷ Python floor", "tenantgate-relay", "cpu", "python-floor", 8, None, False),
    ("scoped + batched audit: CPU ÷ PgBouncer", GOAL_TARGET, "cpu", "pgbouncer", 8, 3.0, False),
    ("+ one encrypted column read: CPU ÷ PgBouncer", "tenantgate-scoped-audit-encrypted", "cpu", "pgbouncer", 8,
     3.5, False),
    ("scoped + batched audit: TPS ÷ PgBouncer", GOAL_TARGET, "tps", "pgbouncer", 8, 0.8, True),
    ("scoped + batched audit: TPS ÷ PgBouncer", GOAL_TARGET, "tps", "pgbouncer", 64, 0.8, True),
    ("strict audit: TPS ÷ batched", "tenantgate-scoped-audit-strict", "tps", GOAL_TARGET, 64, 0.7, True),
)


def budgets(results: dict[str, Any]) -> str:
    """Issue 14's budget table: each budget per protocol with the measured ratio from this run.

    >>> def pt(t, c, tps, cpu):
    ...     return {"target": t, "workload": "select-only", "protocol": "simple", "clients": c, "tps": tps,
    ...             "proc_cpu_us_per_stmt": cpu, "errors": []}
    >>> points = [pt("pgbouncer", 8, 100.0, 20.0), pt("tenantgate-relay", 8, 90.0, 30.0),
    ...           pt(GOAL_TARGET, 8, 70.0, 70.0)]
    >>> print("\\n".join(budgets({"points": points + [pt("python-floor", 8, 95.0, 24.0)]}).splitlines()[2:7]))
    | relay (trusted user): CPU ÷ PgBouncer | simple/c8 | 1.50 | ≤ 1.6 | **pass** |
    | (reference) Python floor: CPU ÷ PgBouncer | simple/c8 | 1.20 | - | reference |
    | (reference) relay: CPU ÷ Python floor | simple/c8 | 1.25 | - | reference |
    | scoped + batched audit: CPU ÷ PgBouncer | simple/c8 | 3.50 | ≤ 3.0 | **FAIL** |
    | + one encrypted column read: CPU ÷ PgBouncer | simple/c8 | - | ≤ 3.5 | not measured |
    """
    by_key = {(p["target"], p["protocol"], p["clients"]): p for p in results["points"]
              if p["workload"] == "select-only"}
    protocols = [p for p in ("simple", "extended", "prepared") if any(k[1] == p for k in by_key)] or ["simple"]
    rows = ["| budget | point | measured | bound | verdict |", "|---|---|---:|---|---|"]
    for protocol in protocols:
        for label, target, figure, baseline, clients, bound, at_least in BUDGETS:
            mine, base = by_key.get((target, protocol, clients)), by_key.get((baseline, protocol, clients))
            field = "proc_cpu_us_per_stmt" if figure == "cpu" else "tps"
            ratio = None
            if mine and base and mine.get(field) and base.get(field) and not mine.get("errors"):
                ratio = mine[field] / base[field]
            if bound is None:
                rows.append(f"| {label} | {protocol}/c{clients} | {_num(ratio, 2)} | - | reference |")
                continue
            ok = None if ratio is None else (ratio >= bound if at_least else ratio <= bound)
            rows.append(f"| {label} | {protocol}/c{clients} | {_num(ratio, 2)} | {'≥' if at_least else '≤'} {bound} "
                        f"| {_verdict(ok)} |")
    return "\n".join(rows)


def stages_table(stages: dict[str, Any]) -> str:
    """The data plane's per-stage micro-benchmarks (tenantgate.proxy.benchmark), µs per call.

    >>> print(stages_table({"framing_us": 1.234, "decrypt_field_us": "error: boom"}))
    | stage | µs per call |
    |---|---:|
    | framing | 1.23 |
    | decrypt_field | error: boom |
    """
    rows = ["| stage | µs per call |", "|---|---:|"]
    for name, value in stages.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        rows.append(f"| {name.removesuffix('_us')} | {shown} |")
    return "\n".join(rows)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, printed value) pairs; floats to 4 significant digits."""
    if isinstance(value, dict):
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, str(value))]


def _pairs_table(pairs: Iterable[tuple[str, str]]) -> str:
    return "\n".join(["| figure | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in pairs)])


def _native(env: dict[str, Any]) -> str:
    native = env.get("native") or {}  # results from before the compiled build have none
    if not native.get("compiled"):
        return "compiled: no"
    stale = f", {len(native['stale'])} STALE" if native.get("stale") else ""
    return f"compiled: yes, {len(native['modules'])} modules with mypyc{stale}"


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    overrides = results["bench"]["overrides"]
    lines = [
        f"# tenantgate bench — {results['bench']['mode']} run"
        + (f" with overrides ({', '.join(overrides)})" if overrides else "") + f", {results['bench']['started']}",
        "",
        f"{env['nproc']} CPUs ({env['cpu_model']}), {env['memory_gb']} GB RAM; {env['postgresql']}; "
        f"{env['pgbench']}; PgBouncer {env['pgbouncer']}; tenantgate {env['tenantgate']} "
        f"(commit {env['git_commit']}, {_native(env)}); Python {env['python']}.",
        "",
        f"Every figure is taken from pgbench's per-transaction logs over a steady window of "
        f"{results['settings']['duration']} s (after all clients logged in), with clients spread over "
        f"{results['settings']['tenants_per_point']} tenants (one pgbench process each). Ratios: TPS of the row's "
        "target divided by TPS of direct PostgreSQL / PgBouncer at the same point. Proxy CPU: CPU seconds of "
        "the measured process tree (tenantgate's supervisor, workers and helpers, or PgBouncer) in the window "
        "divided by the statements completed (BEGIN and END count). tenantgate workers: "
        f"{results['settings']['workers'] or 'the proxy default'}.",
        "",
        f"## Goals (issue #7) for {GOAL_TARGET}",
        "",
        goals(results),
        "",
        "## Budgets (issue 14): ratios from this run",
        "",
        budgets(results),
        "",
        "## pgbench",
        "",
        points_table(results["points"]),
        "",
        "† pgbench reported errors at this point (listed below); its figures cover what completed.",
    ]
    if results["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {s['target']} {s['point']}: {s['reason']}" for s in results["skipped"]]
    for kind in ("errors", "warnings"):
        found = [f"- {p['target']} {p['workload']}/{p['protocol']}/c{p['clients']}: {e}"
                 for p in results["points"] for e in p.get(kind, [])]
        if found:
            lines += ["", f"pgbench {kind}:", "", *found]
    if results["memory"]:
        lines += ["", "## Memory with idle clients", "", memory_table(results["memory"])]
    if results["micro"]:
        lines += ["", "## Micro-benchmarks", ""]
    for name, entry in results["micro"].items():
        lines.append(f"### {name} (`{entry['module']}`)")
        lines.append("")
        if "unavailable" in entry:
            lines.append(entry["unavailable"])
        elif "error" in entry:
            lines.append(f"failed: {entry['error']}")
        else:
            lines.append(_pairs_table(flatten(entry["result"])))
        lines.append("")
    if results["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in results["notes"])]
    return "\n".join(lines) + "\n"


def memory_table(memory: dict[str, dict[str, Any]]) -> str:
    """Memory readings per target (summed over its process tree), the per-client slope and the goal line."""
    rows = ["| target | clients | processes | RSS MiB | PSS MiB | logins s |", "|---|---:|---:|---:|---:|---:|"]
    notes = []
    for name, figures in memory.items():
        if "error" in figures:
            notes.append(f"- {name}: not measured: {figures['error']}")
            continue
        rows += [f"| {name} | {r['clients']:,} | {r['processes']} | {r['rss_bytes'] / 2**20:.1f} "
                 f"| {_num(r['pss_bytes'] / 2**20 if r['pss_bytes'] is not None else None, 1)} "
                 f"| {r['seconds']:.1f} |" for r in figures["readings"]]
        if "rss_bytes_per_client" in figures:
            pss = figures.get("pss_bytes_per_client")
            line = (f"- {name}: {figures['rss_bytes_per_client'] / 1024:.1f} KiB RSS per idle client "
                    + (f"({pss / 1024:.1f} KiB PSS) " if pss is not None else "") + "(least-squares slope)")
            if figures["measured_clients"] < figures["requested_clients"]:
                line += (f"; **extrapolated** to {figures['requested_clients']:,} clients: "
                         f"{figures['extrapolated_rss_bytes_at_requested'] / 2**20:.0f} MiB"
                         + (f" ({figures['capped']})" if figures.get("capped") else ""))
            notes.append(line)
        if figures["stopped"]:
            notes.append(f"- {name}: stopped early: {figures['stopped']}")
        aim = figures.get("goal")
        if aim and aim["passed"] is not None and name.startswith("tenantgate"):
            notes.append(f"- {name}: goal {aim['clients']:,} idle clients under {aim['limit_bytes'] / 1e6:.0f} MB "
                         f"RSS: **{'pass' if aim['passed'] else 'FAIL'}** ({aim['how']}: "
                         f"{aim['rss_bytes'] / 1e6:.0f} MB)")
    return "\n".join([*rows, "", *notes])


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: TPS per target, one group per protocol/clients, one panel per workload."""
    import matplotlib  # lazy: an optional dependency (the bench extra), and Agg must precede pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    targets = list(dict.fromkeys(p["target"] for p in points))
    fig, axes = plt.subplots(len(workloads), 1, squeeze=False,
                             figsize=(max(6.0, 1.6 * len({(p["protocol"], p["clients"]) for p in points})),
                                      4.2 * len(workloads)))
    width = 0.8 / max(1, len(targets))
    for ax, workload in zip(axes[:, 0], workloads, strict=True):
        mine = [p for p in points if p["workload"] == workload]
        groups = list(dict.fromkeys((p["protocol"], p["clients"]) for p in mine))
        tps = {(p["protocol"], p["clients"], p["target"]): p["tps"] for p in mine}
        for i, target in enumerate(targets):
            xs = [g + (i - (len(targets) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [tps.get((*group, target), 0.0) for group in groups], width, label=target)
        ax.set_xticks(range(len(groups)), [f"{proto}\n{clients} clients" for proto, clients in groups])
        ax.set_ylabel("transactions/s")
        ax.set_title(f"{workload} ({results['environment']['nproc']} CPUs, {mine[0]['duration_s']} s per bar)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize="small", ncols=min(3, len(targets)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
