"""bench/cluster.py end to end at a tiny size: three instances, HAProxy, pgbench, ratios written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import cluster
from tenantgate.proxy.sandbox.pgcluster import PgBinaryNotFound, find_pg_bin


def _have_pgbench() -> bool:
    try:
        find_pg_bin("pgbench")
    except PgBinaryNotFound:
        return False
    return True


@pytest.mark.skipif(shutil.which("haproxy") is None or not _have_pgbench(), reason="needs haproxy and pgbench")
def test_cluster_bench_reports_tps_and_ratios_for_one_two_three(tmp_path: Path) -> None:
    summary = cluster.run(duration=1, clients=3, out=tmp_path)
    assert set(summary["tps"]) == {"1", "2", "3"}  # type: ignore[arg-type]
    assert all(v > 0 for v in summary["tps"].values())  # type: ignore[attr-defined]
    assert summary["ratio_to_one"]["1"] == 1.0  # type: ignore[index]
    assert json.loads((tmp_path / "cluster.json").read_text()) == summary
