"""The bench end to end at a tiny size, the profile's stack parsing, and the bench modules' doctests.

The smoke run is ``python -m bench`` as a user runs it (a subprocess from the repository
root): its own throwaway PostgreSQL, one select-only point of 2 s against direct
PostgreSQL, the Python floor (bench/floor.py) and the transaction-pooled tenantgate-scoped-pooled
with one worker, the
idle-client memory path at 20 clients, then results.json, results.md and the PNG.
"""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import stacks
from tenantgate.proxy.sandbox.pgcluster import PgBinaryNotFound, find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["encryption", "environment", "floor", "memory", "micro", "monitor_cost", "pgbench", "pgbouncer", "procs",
           "profile", "report", "runner", "stacks", "targets", "workload"]


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


# py-spy --format raw --subprocesses, as the profile reads it: a process root frame, line numbers,
# library frames under tenantgate ones, a recursive function, a stack with no tenantgate frame.
COLLAPSED = """\
process 41:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:30);run (uvloop/__init__.py:82);\
data_received (proxy/conn.py:140);Framer.feed (proxy/codec.py:185) 40
process 41:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:30);run (uvloop/__init__.py:82);\
data_received (proxy/conn.py:141);Session.on_client (proxy/session.py:310);Planner.plan (rewriter/cache.py:88);\
walk (sqlglot/expressions.py:500);walk (sqlglot/expressions.py:510) 20
process 41:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:30);run (uvloop/__init__.py:82);\
data_received (proxy/conn.py:141);Session.on_client (proxy/session.py:312);Auditor.record (proxy/auditing.py:60);\
new (hmac.py:184) 25
process 42:"python -m tenantgate.audit.remote";<module> (audit/remote.py:10);Server.write (audit/writer.py:99) 5
process 41:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:30);run (uvloop/__init__.py:82);\
Session.on_client (proxy/session.py:315);Registry.observe (proxy/counters.py:70) 6
process 41:"python -m tenantgate.proxy.cli serve";<module> (proxy/cli.py:30);run (uvloop/__init__.py:82) 3
<module> (threading.py:1000) 1
"""


def test_profile_stack_parsing() -> None:
    profile = stacks.summarize(stacks.parse_collapsed(COLLAPSED))
    assert profile.samples == 100
    assert profile.buckets == {"codec/framing": 40, "rewriter plan cache": 20, "audit": 30, "metrics": 6,
                               "uvloop/transport": 3, "other": 1}
    # own time: the leaf, line numbers folded into one function
    assert profile.own[stacks.Frame("Framer.feed", "proxy/codec.py")] == 40
    assert profile.own[stacks.Frame("walk", "sqlglot/expressions.py")] == 20
    # cumulative: once per sample even when the function recurses; the process frame is not a function
    assert profile.cumulative[stacks.Frame("walk", "sqlglot/expressions.py")] == 20
    assert profile.cumulative[stacks.Frame("data_received", "proxy/conn.py")] == 85
    assert profile.cumulative[stacks.Frame("<module>", "proxy/cli.py")] == 94
    assert not any(f.function.startswith("process ") for f in profile.cumulative)
    text = stacks.markdown(profile, top=3)
    assert "| audit | 30 | 30.0 |" in text and "| session pipeline | 0 | 0.0 |" in text
    own_section = text.split("by own time")[1].split("## ")[0]
    assert "| 1 | `Framer.feed` | proxy/codec.py | 40 | 40.0 |" in own_section
    assert "| 4 |" not in own_section


def test_profile_stack_parsing_edges() -> None:
    with pytest.raises(ValueError, match="line 2 "):
        stacks.parse_collapsed("a (x.py) 3\nb (y.py);c (z.py)\n")
    # py-spy --idle writes samples without a Python frame as an empty stack: nothing to attribute
    assert stacks.parse_collapsed(" 2\na (x.py) 1\n") == [((stacks.Frame("a", "x.py"),), 1)]


@pytest.mark.skipif(not _have_postgres(), reason="needs PostgreSQL's initdb and pgbench")
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "bench", "--out", str(out), "--duration", "2", "--warmup", "0",
        "--targets", "direct,python-floor,tenantgate-scoped-pooled", "--workloads", "select-only",
        "--protocols", "extended",
        "--clients", "4", "--tenants", "2", "--accounts", "500", "--no-micro", "--no-encryption",
        "--idle-clients", "20", "--workers", "1",
    ]  # fmt: skip
    # The whole run, PostgreSQL included, must stay under a minute.
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=55)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "expect about" in run.stderr

    results = json.loads((out / "results.json").read_text())
    points = {p["target"]: p for p in results["points"]}
    assert set(points) == {"direct", "python-floor", "tenantgate-scoped-pooled"}
    for name, point in points.items():
        assert point["tps"] > 0, (name, point)
        assert point["transactions"] > 0 and point["errors"] == [], (name, point)
        assert 0 < point["p50_ms"] <= point["p99_ms"], (name, point)
    # the proxy's own CPU (its whole process tree) is measured, PostgreSQL's is not ours to charge
    assert points["tenantgate-scoped-pooled"]["proc_cpu_us_per_stmt"] > 0
    assert points["tenantgate-scoped-pooled"]["proc_processes"] >= 1
    assert points["python-floor"]["proc_cpu_us_per_stmt"] > 0  # bench/floor.py, relaying real pgbench
    assert "proc_cpu_us_per_stmt" not in points["direct"]
    assert results["environment"]["nproc"] >= 1
    assert results["settings"]["workers"] == 1
    (proxy,) = [t for t in results["targets"] if t["name"] == "tenantgate-scoped-pooled"]
    assert (proxy["workers"], proxy["pool_mode"], proxy["pool_size"]) == (1, "transaction", 20)

    # idle clients: held by the pooled proxy in 4 steps, memory summed over its process tree
    memory = results["memory"]["tenantgate-scoped-pooled"]
    assert memory["stopped"] is None, memory
    assert [r["clients"] for r in memory["readings"]] == [0, 5, 10, 15, 20]
    assert all(r["rss_bytes"] > 0 and r["processes"] >= 1 for r in memory["readings"])
    assert memory["goal"]["how"] == "extrapolated" and memory["goal"]["clients"] == 10_000
    assert "direct" not in results["memory"]  # PostgreSQL is not ours to measure

    png = out / "tps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert "| select-only | extended | 4 | tenantgate-scoped-pooled |" in markdown
    assert "| tenantgate-scoped-pooled | 20 |" in markdown
    # the table is also printed at the end
    assert "| select-only | extended | 4 | direct |" in run.stdout


def test_proxy_stages_measure_every_stage() -> None:
    # bench --quick prints these: each stage must measure (an error string here is a broken stage).
    from tenantgate.proxy import benchmark

    stages = benchmark.run(iterations=50)
    assert set(stages) == {"framing_us", "plan_cache_hit_us", "audit_worker_us", "audit_sealer_us", "decrypt_field_us",
                           "session_scoped_us"}
    assert all(isinstance(v, float) and v > 0 for v in stages.values()), stages
