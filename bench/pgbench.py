"""One measurement point: concurrent pgbench processes (one per tenant) against one target.

Figures come from pgbench's per-transaction logs (``--log``), whose lines are
``client_id transaction_no time_us script_no epoch_s epoch_us``, ``time_us`` being
``failed`` for a failed transaction. pgbench's ``-T`` clock includes logging in, which
through a proxy can take seconds for hundreds of clients, so each run gets an allowance
for it and TPS, latency percentiles, failures and CPU are all taken over the last
``duration`` seconds in which every process was running transactions (the steady
window). The measured process's CPU is sampled every 50 ms and read over that window,
so the connection phase (SCRAM, backend connects) is not charged to the statements.

>>> split_clients(10, 4)
[3, 3, 2, 2]
>>> split_clients(2, 4)
[1, 1]
>>> parse_summary("number of transactions actually processed: 120\\nnumber of failed transactions: 3 (2.4%)\\n"
...               "tps = 41.5 (without initial connection time)\\n")
{'transactions': 120, 'failed': 3, 'tps': 41.5}
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .procs import cpu_seconds, process_tree
from .targets import Target
from .workload import STATEMENTS

_SUMMARY = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "tps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
}
_SAMPLE_INTERVAL = 0.05
_TREE_INTERVAL = 1.0
# pgbench ends on its own at -T; past this many more seconds a target is taken to hang.
HANG_GRACE = 60.0


def split_clients(clients: int, tenants: int) -> list[int]:
    """Clients per pgbench process when ``clients`` are spread over up to ``tenants`` tenants."""
    used = min(clients, tenants)
    return [clients // used + (1 if i < clients % used else 0) for i in range(used)]


def parse_summary(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pattern in _SUMMARY.items():
        match = pattern.search(stdout)
        if match:
            out[key] = float(match.group(1)) if key == "tps" else int(match.group(1))
    return out


@dataclass
class Point:
    workload: str
    protocol: str
    clients: int
    duration: int

    @property
    def label(self) -> str:
        return f"{self.workload}/{self.protocol}/c{self.clients}"


class CpuSampler(threading.Thread):
    """(wall time, CPU seconds) of a process tree every 50 ms until stopped.

    The tree (the process and its descendants: a supervisor's workers, helper processes)
    is listed again every second; a process that exits keeps its last reading, so the sum
    never goes back.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.max_processes = 0
        self._last: dict[int, float] = {}
        self._stop_event = threading.Event()

    def _total(self, pids: list[int]) -> float:
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                self._last[pid] = cpu_seconds(pid)
        return sum(self._last.values())

    def run(self) -> None:
        pids: list[int] = []
        listed = 0.0
        while True:
            now = time.time()
            if now - listed >= _TREE_INTERVAL:
                pids, listed = process_tree(self.pid), now
                self.max_processes = max(self.max_processes, len(pids))
            self.samples.append((now, self._total(pids)))
            if self._stop_event.wait(_SAMPLE_INTERVAL):
                self.samples.append((time.time(), self._total(pids)))
                return

    def finish(self) -> None:
        self._stop_event.set()
        self.join()

    def between(self, start: float, end: float) -> float:
        """CPU seconds used between two wall-clock times (linear between samples)."""
        times = np.array([s[0] for s in self.samples])
        cpu = np.array([s[1] for s in self.samples])
        return float(np.interp(end, times, cpu) - np.interp(start, times, cpu))


def _read_logs(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """(latencies µs with -1 for a failed transaction, completion times s) from pgbench's logs under ``prefix``."""
    latencies, finished = array("q"), array("d")
    for name in glob.glob(f"{prefix}.*"):
        with open(name, encoding="ascii") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 6:
                    continue
                latencies.append(int(fields[2]) if fields[2].isdigit() else -1)
                finished.append(int(fields[4]) + int(fields[5]) / 1e6)
        os.unlink(name)  # logs of a 512-client point run to tens of MB
    return np.frombuffer(latencies, dtype=np.int64), np.frombuffer(finished, dtype=np.float64)


def connect_allowance(clients_per_process: int, seen: float | None = None) -> float:
    """Seconds added to ``-T`` for logging in: pgbench's -T clock includes its (serial) connects,
    and the processes that are done logging in already load the machine for those that are not.

    A guess per client of the largest process, raised to 1.3 x ``seen`` + 1 s when an earlier
    run against the same target and client count took longer until every process had a
    transaction done (``login_s``: that includes the first transactions, which through a proxy
    preparing statements for hundreds of fresh clients at once can take seconds).

    >>> connect_allowance(2), connect_allowance(128), connect_allowance(128, seen=16.0)
    (2.24, 17.36, 21.8)
    """
    guess = 2.0 + 0.12 * clients_per_process
    return round(max(guess, 1.3 * seen + 1.0) if seen is not None else guess, 2)


def steady_window(first: list[float], last: list[float], duration: float) -> tuple[float, float, bool]:
    """The last ``duration`` seconds in which every pgbench process was running transactions.

    Returns (start, end, complete); when the connection phase of some process reaches into
    that span, it is cut to start after it and ``complete`` is False.

    >>> steady_window([10.0, 11.0], [30.0, 29.5], 15)
    (14.5, 29.5, True)
    >>> steady_window([10.0, 20.0], [30.0, 29.5], 15)
    (20.0, 29.5, False)
    """
    end = min(last)
    start = end - duration
    if start >= max(first):
        return start, end, True
    return max(first), end, False


def run_point(pgbench: str, target: Target, point: Point, tenants: list[str], scripts: dict[str, Path],
              workdir: Path, database: str, *, login_seen: float | None = None) -> dict[str, Any]:
    """Run ``point`` against ``target``: one pgbench per tenant, all at once; returns the figures.

    Every figure (TPS, latency, failures, CPU) is taken over the same steady window of
    ``point.duration`` seconds, read from the per-transaction logs. ``login_seen``: see
    :func:`connect_allowance`.
    """
    logdir = workdir / "pgbench-logs"
    logdir.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    per_tenant = split_clients(point.clients, len(tenants))
    tenants = tenants[: len(per_tenant)]
    allowance = connect_allowance(max(per_tenant), login_seen)
    seconds = point.duration + allowance
    sampler = CpuSampler(target.pid) if target.pid is not None else None
    if sampler is not None:
        sampler.start()
    launched = time.time()
    try:
        for tenant, clients in zip(tenants, per_tenant, strict=True):
            user, password = target.login(tenant)
            threads = 1 if len(per_tenant) > 1 else min(clients, os.cpu_count() or 1)
            if point.protocol == "prepared" and point.workload != "select-only":
                # pgbench (<= 16) prepares with a blocking PQprepare that stalls every client of its thread;
                # with transaction pooling and fewer backends than clients, stalled clients inside a
                # multi-statement transaction can hold every backend the prepare waits for. One thread
                # per client cannot deadlock (single-statement transactions hold no backend between calls).
                threads = clients
            cmd = [
                pgbench, "-n", "-f", str(scripts[tenant]), "-M", point.protocol, "-c", str(clients),
                "-j", str(threads), "-T", str(round(seconds)), "--log", f"--log-prefix={logdir / tenant}",
                "-h", "127.0.0.1", "-p", str(target.port), "-U", user, database,
            ]  # fmt: skip
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password, "PGSSLMODE": "disable",
                   "PGAPPNAME": "tenantgate-bench"}
            procs.append((tenant, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                   env=env, cwd=logdir)))
        deadline = time.monotonic() + seconds + HANG_GRACE
        outputs = []
        for tenant, proc in procs:
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                stderr += f"\nbench: killed, still running {seconds + HANG_GRACE:.0f} s after the start (hung)"
            outputs.append((tenant, stdout, stderr, proc.returncode))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sampler is not None:
            sampler.finish()

    result: dict[str, Any] = {
        "target": target.name, "workload": point.workload, "protocol": point.protocol, "clients": point.clients,
        "duration_s": point.duration, "tenants": tenants, "tps": 0.0, "transactions": 0, "failed": 0,
        "allowance_s": allowance, "errors": [], "warnings": [],
    }  # fmt: skip
    pgbench_tps = 0.0
    for tenant, stdout, stderr, code in outputs:
        summary = parse_summary(stdout)
        pgbench_tps += summary.get("tps", 0.0)
        if code != 0 or "tps" not in summary:
            last = [line for line in (stderr.strip() or stdout.strip()).splitlines() if line][-3:]
            result["errors"].append(f"{tenant}: pgbench exited {code}: {' | '.join(last) or 'no output'}")
    result["pgbench_tps"] = round(pgbench_tps, 1)
    logs = [_read_logs(logdir / tenant) for tenant in tenants]
    if not all(finished.size for _, finished in logs):
        result["errors"].append("no transaction completed in at least one pgbench process")
        return result
    first = [float(f.min()) for _, f in logs]
    start, end, complete = steady_window(first, [float(f.max()) for _, f in logs], point.duration)
    # Until every process had its first transaction done: logging in, what the allowance is for.
    result["login_s"] = round(max(first) - launched, 2)
    if end <= start:
        result["errors"].append(f"logging in ({result['login_s']} s) took the whole run: no steady window")
        return result
    if not complete:
        result["warnings"].append(f"logging in ({result['login_s']} s) took longer than the allowance "
                                  f"({allowance} s): measured over {end - start:.1f} s")
    latencies = np.concatenate([lat for lat, _ in logs])
    finished = np.concatenate([fin for _, fin in logs])
    inside = (finished > start) & (finished <= end)
    ok = latencies[inside & (latencies >= 0)]
    window = end - start
    result.update(window_s=round(window, 2), transactions=int(ok.size), failed=int((inside & (latencies < 0)).sum()),
                  tps=round(ok.size / window, 1) if window > 0 else 0.0)
    if ok.size:
        p50, p99 = np.percentile(ok, [50, 99]) / 1000.0
        result.update(p50_ms=round(float(p50), 3), p99_ms=round(float(p99), 3),
                      mean_ms=round(float(ok.mean()) / 1000.0, 3))
    if sampler is not None and ok.size:
        cpu = sampler.between(start, end)
        result.update(
            proc_cpu_s=round(cpu, 3),
            proc_cpu_share=round(cpu / window, 3),
            proc_cpu_us_per_tx=round(cpu / ok.size * 1e6, 2),
            proc_cpu_us_per_stmt=round(cpu / ok.size / STATEMENTS[point.workload] * 1e6, 2),
            proc_processes=sampler.max_processes,
        )
    return result
