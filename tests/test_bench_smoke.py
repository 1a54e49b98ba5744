"""The bench end to end at a tiny size, and the bench modules' doctests.

The smoke run is ``python -m bench`` as a user runs it (a subprocess from the repository
root): its own throwaway PostgreSQL, one select-only point of 2 s against direct
PostgreSQL and tenantgate-scoped, then results.json, results.md and the PNG.
"""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenantgate.proxy.pgcluster import PgBinaryNotFound, find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["encryption", "environment", "memory", "micro", "pgbench", "pgbouncer", "procs", "report", "runner",
           "targets", "workload"]


@pytest.mark.parametrize("name", MODULES)
def test_bench_doctests(name: str) -> None:
    # bench/ is not a pytest testpath (it is not part of the tenantgate package): run its doctests here.
    module = importlib.import_module(f"bench.{name}")
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def _have_postgres() -> bool:
    try:
        find_pg_bin("initdb")
        find_pg_bin("pgbench")
    except PgBinaryNotFound:
        return False
    return True


@pytest.mark.skipif(not _have_postgres(), reason="needs PostgreSQL's initdb and pgbench")
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "bench", "--out", str(out), "--duration", "2", "--warmup", "0",
        "--targets", "direct,tenantgate-scoped", "--workloads", "select-only", "--protocols", "extended",
        "--clients", "4", "--tenants", "2", "--accounts", "500", "--no-micro", "--no-memory", "--no-encryption",
    ]  # fmt: skip
    # The whole run, PostgreSQL included, must stay under a minute.
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert run.returncode == 0, run.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    points = {p["target"]: p for p in results["points"]}
    assert set(points) == {"direct", "tenantgate-scoped"}
    for name, point in points.items():
        assert point["tps"] > 0, (name, point)
        assert point["transactions"] > 0 and point["errors"] == [], (name, point)
        assert 0 < point["p50_ms"] <= point["p99_ms"], (name, point)
    # the proxy's own CPU is measured, PostgreSQL's is not ours to charge
    assert points["tenantgate-scoped"]["proc_cpu_us_per_stmt"] > 0
    assert "proc_cpu_us_per_stmt" not in points["direct"]
    assert results["environment"]["nproc"] >= 1

    png = out / "tps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "| select-only | extended | 4 | tenantgate-scoped |" in markdown
    # the table is also printed at the end
    assert "| select-only | extended | 4 | direct |" in run.stdout
