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


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    overrides = results["bench"]["overrides"]
    lines = [
        f"# tenantgate bench — {results['bench']['mode']} run"
        + (f" with overrides ({', '.join(overrides)})" if overrides else "") + f", {results['bench']['started']}",
        "",
        f"{env['nproc']} CPUs ({env['cpu_model']}), {env['memory_gb']} GB RAM; {env['postgresql']}; "
        f"{env['pgbench']}; PgBouncer {env['pgbouncer']}; tenantgate {env['tenantgate']} "
        f"(commit {env['git_commit']}); Python {env['python']}.",
        "",
        f"Every figure is taken from pgbench's per-transaction logs over a steady window of "
        f"{results['settings']['duration']} s (after all clients logged in), with clients spread over "
        f"{results['settings']['tenants_per_point']} tenants (one pgbench process each). Ratios: TPS of the row's "
        "target divided by TPS of direct PostgreSQL / PgBouncer at the same point. Proxy CPU: CPU seconds of "
        "the measured process (tenantgate or PgBouncer) in the window divided by the statements completed "
        "(BEGIN and END count).",
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
    """RSS readings per target, the per-client slope and the labelled extrapolation."""
    rows = ["| target | clients | RSS MiB |", "|---|---:|---:|"]
    notes = []
    for name, figures in memory.items():
        if "error" in figures:
            notes.append(f"- {name}: not measured: {figures['error']}")
            continue
        rows += [f"| {name} | {r['clients']} | {r['rss_bytes'] / 2**20:.1f} |" for r in figures["readings"]]
        if "rss_bytes_per_client" in figures:
            notes.append(
                f"- {name}: {figures['rss_bytes_per_client'] / 1024:.1f} KiB per idle client (least-squares slope); "
                f"**extrapolated** to {figures['requested_clients']:,} clients: "
                f"{figures['extrapolated_rss_bytes_at_requested'] / 2**20:.0f} MiB"
                + (f" ({figures['capped']})" if figures.get("capped") else "")
            )
        if figures["stopped"]:
            notes.append(f"- {name}: stopped early: {figures['stopped']}")
    return "\n".join([*rows, "", *notes])


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: TPS per target, one group per protocol/clients, one panel per workload."""
    import matplotlib

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
