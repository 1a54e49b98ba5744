"""``python -m bench monitor-cost``: what security monitoring costs the data path (issue 17's figure).

Two proxies in one run, on one throwaway PostgreSQL: ``tenantgate-scoped-audit`` (scoping,
batched audit, transaction pooling) and the same with a ``[monitoring]`` section
(``tenantgate-scoped-audit-monitored``: every detector on, a fold every second). pgbench -S
(select-only) runs against them interleaved for ``--rounds`` rounds of four runs, ABBA then
BAAB, so that the shared machine's noise (and whatever favours the first or the second run of a
pair) hits both alike; each round gives the TPS ratio on/off (its two runs of each summed) and
the ratio of proxy CPU per statement, and the report is the median of the rounds (the
acceptance: TPS ratio >= 0.95). Then, without sockets or other processes, the hot path alone:
``tenantgate.proxy.benchmark.monitoring_cost`` times one scoped session relaying select-only
statements without and with monitoring's counts, alternating (µs per statement, medians).
Writes monitor-cost.json into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tenantgate.proxy.sandbox.pgcluster import find_pg_bin

from .micro import MODULES
from .pgbench import Point, run_point
from .runner import DATABASE, RESULTS_DIR, Bench, Options, write_scripts
from .workload import Scale

OFF, ON = "tenantgate-scoped-audit", "tenantgate-scoped-audit-monitored"
TARGET_RATIO = 0.95


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench monitor-cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of two runs per configuration (8)")
    parser.add_argument("--duration", type=int, default=6, help="seconds per run (6)")
    parser.add_argument("--clients", type=int, default=16, help="pgbench clients over 4 tenants (16)")
    parser.add_argument("--protocol", choices=("simple", "extended", "prepared"), default="simple")
    parser.add_argument("--workers", type=int, default=1, help="[listen] workers of both proxies (1)")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/monitor-cost-<time>/)")
    return parser.parse_args(argv)


def _round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One round's figures per configuration: its runs' transactions and proxy CPU summed.

    >>> _round([{"target": OFF, "transactions": 100, "window_s": 1.0, "proc_cpu_s": 0.5, "errors": []},
    ...         {"target": OFF, "transactions": 300, "window_s": 1.0, "proc_cpu_s": 1.5, "errors": []}])[OFF]
    {'tps': 200.0, 'proc_cpu_us_per_stmt': 5000.0, 'errors': []}
    """
    out: dict[str, Any] = {}
    for name in (OFF, ON):
        mine = [r for r in runs if r["target"] == name]
        tx, window = sum(r["transactions"] for r in mine), sum(r.get("window_s", 0.0) for r in mine)
        cpu = sum(r.get("proc_cpu_s", 0.0) for r in mine)
        out[name] = {"tps": round(tx / window, 1) if window else 0.0,
                     "proc_cpu_us_per_stmt": round(cpu / tx * 1e6, 2) if tx else None,
                     "errors": [e for r in mine for e in r["errors"]]}
    return out


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Median ratios over the rounds that both configurations completed without errors.

    >>> r = [{OFF: {"tps": 100.0, "proc_cpu_us_per_stmt": 50.0, "errors": []},
    ...       ON: {"tps": 97.0, "proc_cpu_us_per_stmt": 52.0, "errors": []}}]
    >>> s = summarize(r * 3)
    >>> s["tps_ratio"], s["cpu_per_stmt_ratio"], s["passed"]
    (0.97, 1.04, True)
    """
    ok = [r for r in rounds if not r[OFF]["errors"] and not r[ON]["errors"] and r[OFF]["tps"] > 0]
    if not ok:
        return {"rounds": 0, "passed": False}
    tps = [r[ON]["tps"] / r[OFF]["tps"] for r in ok]
    cpu = [r[ON]["proc_cpu_us_per_stmt"] / r[OFF]["proc_cpu_us_per_stmt"] for r in ok
           if r[OFF].get("proc_cpu_us_per_stmt") and r[ON].get("proc_cpu_us_per_stmt")]
    ratio = round(statistics.median(tps), 3)
    return {
        "rounds": len(ok),
        "tps_off": round(statistics.median(r[OFF]["tps"] for r in ok), 1),
        "tps_on": round(statistics.median(r[ON]["tps"] for r in ok), 1),
        "tps_ratio": ratio,
        "tps_ratios": [round(x, 3) for x in tps],
        "cpu_per_stmt_ratio": round(statistics.median(cpu), 3) if cpu else None,
        "passed": ratio >= TARGET_RATIO,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    opts = Options.preset(quick=True, out=args.out)
    if args.out is None:
        opts.out = RESULTS_DIR / f"monitor-cost-{opts.out.name}"
    opts.mode, opts.targets, opts.workers = "monitor-cost", (OFF, ON), args.workers
    opts.scale = Scale(tenants=4, accounts=20_000)
    opts.memory = opts.micro = opts.encryption = False
    opts.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(opts)
    rounds: list[dict[str, dict[str, Any]]] = []
    runs: list[list[dict[str, Any]]] = []
    try:
        bench.setup()
        targets = {t.name: t for t in bench.targets}
        if set(targets) != {OFF, ON}:
            raise SystemExit(f"a proxy did not start: {'; '.join(bench.notes)}")
        pgbench = find_pg_bin("pgbench")
        scripts = write_scripts(bench.workdir, opts.scale, list(targets.values()), ("select-only",))
        tenants = opts.scale.tenant_names()[: opts.spread]

        def run(name: str, seconds: int) -> dict[str, Any]:
            target = targets[name]
            files = {t: scripts[("select-only", t, target.predicate, target.table)] for t in tenants}
            return run_point(pgbench, target, Point("select-only", args.protocol, args.clients, seconds), tenants,
                             files, bench.workdir, DATABASE)

        for name in (OFF, ON):  # warm both (plan caches, pools) before anything is recorded
            run(name, 3)
        for index in range(args.rounds):
            order = (OFF, ON, ON, OFF) if index % 2 == 0 else (ON, OFF, OFF, ON)  # ABBA BAAB ...
            runs.append([run(name, args.duration) for name in order])
            figures = _round(runs[-1])
            rounds.append(figures)
            bench.log(f"round {index + 1}: off {figures[OFF]['tps']:,.0f} tps, on {figures[ON]['tps']:,.0f} tps "
                      f"(ratio {figures[ON]['tps'] / max(figures[OFF]['tps'], 1e-9):.3f})")
    finally:
        bench.close()
    summary = summarize(rounds)
    bench.log("hot path alone: one scoped session without and with monitoring's counts")
    summary["hot_path_us_per_statement"] = importlib.import_module(MODULES["proxy"]).monitoring_cost()
    results = {"summary": summary, "rounds": rounds, "runs": runs, "clients": args.clients, "protocol": args.protocol,
               "duration_s": args.duration, "workers": args.workers, "notes": bench.notes}
    (opts.out / "monitor-cost.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"\nresults in {opts.out}/monitor-cost.json", file=sys.stderr)
    return 0 if summary["passed"] else 1
