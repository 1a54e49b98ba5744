"""``python -m bench --profile``: where tenantgate's CPU goes under pgbench, sampled with py-spy.

The same setup as a bench run (throwaway PostgreSQL, tenant-scoped schema), one proxy:
``tenantgate-scoped-audit`` (scoping, batched audit, transaction pooling) with one worker
so that one process carries the load. pgbench runs select-only ``-M simple`` with 64
clients (``--protocols`` / ``--clients`` with one value each pick another point); once they
have logged in, ``py-spy record --format raw`` samples the proxy (and any child process:
``--subprocesses``) for the point's duration, without native frames. The collapsed stacks
are kept as ``profile.txt`` (speedscope.app and flamegraph.pl read them) and summed into
``profile.md`` (see ``stacks``); ``profile.json`` has the pgbench figures.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tenantgate.proxy.sandbox.pgcluster import find_pg_bin

from . import stacks
from .pgbench import Point, connect_allowance, run_point, split_clients
from .runner import DATABASE, Bench, Options, write_scripts
from .targets import VARIANTS

TARGET = "tenantgate-scoped-audit"
CLIENTS = 64
SECONDS = 15
RATE = 100  # samples per second (py-spy's default)


def adjust(opts: Options) -> None:
    """Turn parsed options into the profile run's: one target, one point, one worker unless overridden.

    ``--targets`` may name one other tenantgate variant to profile instead of ``TARGET``.
    """
    opts.mode = "profile"
    if "targets" not in opts.overrides:
        opts.targets = (TARGET,)
    elif len(opts.targets) != 1 or opts.targets[0] not in VARIANTS:
        raise SystemExit(f"--profile takes one tenantgate variant in --targets: {', '.join(VARIANTS)}")
    opts.workloads = ("select-only",)
    # --protocols / --clients pick the point (one each): e.g. the budgets' extended/c8
    if "protocols" not in opts.overrides or len(opts.protocols) != 1:
        opts.protocols = ("simple",)
    if "clients" not in opts.overrides or len(opts.clients) != 1:
        opts.clients = (CLIENTS,)
    if "duration" not in opts.overrides:
        opts.duration = SECONDS
    if opts.workers is None:
        opts.workers = 1
    opts.memory = opts.micro = False
    opts.encryption = VARIANTS[opts.targets[0]].encrypted  # the encrypted copy only for the variant that reads it


def ensure_pyspy(notes: list[str]) -> str:
    """The py-spy binary next to this Python (the venv) or on PATH; pip-installed into the venv if missing."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found:
        return found
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0 or not here.exists():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"py-spy is not installed and `pip install py-spy` failed: {tail[0]}")
    notes.append("py-spy was missing: installed into the venv with pip (the bench extra should list it)")
    return str(here)


class Recorder:
    """``py-spy record`` of a process tree for ``seconds``, started after ``delay`` seconds."""

    def __init__(self, pyspy: str, pid: int, seconds: int, output: Path, log: Path) -> None:
        self.cmd = [pyspy, "record", "--pid", str(pid), "--subprocesses", "--rate", str(RATE),
                    "--duration", str(seconds), "--format", "raw", "--nolineno", "--output", str(output)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.timer: threading.Timer | None = None

    def start_after(self, delay: float) -> None:
        self.timer = threading.Timer(delay, self._launch)
        self.timer.start()

    def _launch(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float) -> int:
        """py-spy's exit status once it has written its output (SIGKILL past ``timeout``)."""
        assert self.timer is not None
        self.timer.join()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def report(profile: stacks.Profile, point: dict[str, Any], opts: Options, *, seconds: int) -> str:
    """profile.md: what was profiled, the pgbench figures, then the buckets and top functions."""
    expected = seconds * RATE
    lines = [
        f"# tenantgate profile — {point['target']}, {point['workload']} -M {point['protocol']}, "
        f"{point['clients']} clients",
        "",
        f"py-spy at {RATE} Hz for {seconds} s once the clients had logged in, Python frames only (`--native` "
        "off: time in C, such as a socket send, is charged to the Python frame that called it; time uvloop spends "
        "between callbacks shows under the event loop's own frame); samples py-spy sees as idle are dropped; "
        f"workers = {opts.workers}, every process of the proxy's tree sampled.",
        "",
        f"pgbench: {point['tps']:,.0f} TPS, p50 {point.get('p50_ms', float('nan')):.2f} ms, "
        f"p99 {point.get('p99_ms', float('nan')):.2f} ms, failed {point['failed']}, proxy CPU "
        f"{point.get('proc_cpu_us_per_stmt', float('nan')):.0f} µs per statement "
        f"({100 * point.get('proc_cpu_share', 0):.0f}% of a core)."
        + (f" pgbench errors: {'; '.join(point['errors'])}." if point["errors"] else ""),
        "",
        f"{profile.samples:,} samples ({RATE} Hz for {seconds} s: {expected:,} per busy thread). py-spy pauses "
        "the process for each sample, so the figures above were taken with that overhead. It drops most samples "
        "of a waiting thread, not all: the own time of the event loop's frame (`Runner.run`) and of an executor "
        "thread's `_worker` includes some waiting besides uvloop's and the thread's work in C.",
        "",
        stacks.markdown(profile),
    ]
    return "\n".join(lines)


def run(opts: Options) -> dict[str, Any]:
    """Set up, profile one point, write profile.txt, profile.md and profile.json into ``opts.out``."""
    opts.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(opts)
    pyspy = ensure_pyspy(bench.notes)
    raw = opts.out / "profile.txt"
    started = dt.datetime.now(dt.UTC)
    try:
        bench.setup()
        (name,) = opts.targets
        target = next((t for t in bench.targets if t.name == name), None)
        if target is None or target.pid is None:
            raise RuntimeError(f"{name} did not start: {'; '.join(bench.notes) or 'see the logs'}")
        pgbench = find_pg_bin("pgbench")
        scripts = write_scripts(bench.workdir, opts.scale, [target], opts.workloads)
        tenants = opts.scale.tenant_names()[: opts.spread]
        files = {t: scripts[("select-only", t, target.predicate, target.table)] for t in tenants}
        if opts.warmup:
            bench.log(f"warm-up: {opts.warmup} s")
            run_point(pgbench, target, Point("select-only", "simple", 8, opts.warmup), tenants, files,
                      bench.workdir, DATABASE)
        point = Point("select-only", opts.protocols[0], opts.clients[0], opts.duration)
        recorder = Recorder(pyspy, target.pid, opts.duration, raw, opts.out / "py-spy.log")
        recorder.start_after(connect_allowance(max(split_clients(opts.clients[0], len(tenants)))))
        bench.log(f"{point.label} -> {name} under py-spy ({opts.duration} s)")
        figures = run_point(pgbench, target, point, tenants, files, bench.workdir, DATABASE)
        status = recorder.wait(timeout=opts.duration + 60)
    finally:
        bench.close()
    if status != 0 or not raw.exists():
        log = (opts.out / "py-spy.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"py-spy record exited with {status}:\n{log}")
    profile = stacks.summarize(stacks.parse_collapsed(raw.read_text()))
    (opts.out / "profile.md").write_text(report(profile, figures, opts, seconds=opts.duration))
    results = {
        "bench": {"mode": "profile", "started": started.isoformat(timespec="seconds"), "target": name,
                  "workers": opts.workers, "rate_hz": RATE, "seconds": opts.duration},
        "point": figures,
        "samples": profile.samples,
        "buckets": dict(profile.buckets),
        "notes": bench.notes,
    }
    (opts.out / "profile.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(opts: Options) -> int:
    results = run(opts)
    print((opts.out / "profile.md").read_text())
    print(f"\nprofile: {opts.out}/profile.md, profile.txt (collapsed stacks), profile.json", file=sys.stderr)
    return 0 if not results["point"]["errors"] else 1
