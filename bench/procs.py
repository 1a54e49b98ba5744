"""Process facts read from /proc: CPU seconds and memory of a process tree; open-files limit; waiting for a listener.

tenantgate may run as a supervisor with forked workers (and helper processes such as an
out-of-process audit writer), so CPU and memory are summed over the serve process and
all its descendants. RSS counts pages shared between forked processes once per process;
PSS (proportional set size, from /proc/PID/smaps_rollup) splits each shared page between
its sharers, so the PSS sum is what the tree really occupies.

>>> cpu_seconds(os.getpid()) > 0 and rss_bytes(os.getpid()) > 0
True
>>> os.getpid() in process_tree(os.getpid())
True
>>> mem = tree_memory(os.getpid())
>>> mem["processes"] >= 1 and mem["rss_bytes"] >= rss_bytes(os.getpid())
True
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol, TypeVar

_TICKS = os.sysconf("SC_CLK_TCK")
# 10,000 idle clients: the bench holds one socket per client and the proxy one more, plus its backends.
NOFILE_WANTED = 32_768


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the parenthesised command name (which may contain spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat utime + stime)."""
    fields = _stat_fields(pid)
    # utime and stime are fields 14 and 15 of the whole line; state (field 3) is fields[0] here.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of process ``pid`` (None where the kernel has no smaps_rollup)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (parents read from /proc/*/stat), root first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):  # exited while we read
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo += sorted(children.get(pid, []))
    return tree


def tree_memory(root: int) -> dict[str, Any]:
    """RSS and PSS summed over ``root``'s process tree; ``pss_bytes`` None when PSS is unavailable."""
    rss, pss, count, pss_known = 0, 0, 0, True
    for pid in process_tree(root):
        try:
            rss += rss_bytes(pid)
            share = pss_bytes(pid)
        except (OSError, RuntimeError):  # exited between listing and reading
            continue
        count += 1
        if share is None:
            pss_known = False
        else:
            pss += share
    return {"processes": count, "rss_bytes": rss, "pss_bytes": pss if pss_known else None}


def raise_nofile(wanted: int = NOFILE_WANTED) -> int:
    """Raise the open-files limit of this process (children inherit it); returns the soft limit now.

    The soft limit goes up to the hard limit; as root, a hard limit below ``wanted`` is
    raised to ``wanted`` first. Also used as a ``preexec_fn`` for the proxies.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):  # above fs.nr_open: keep the hard limit we have
            pass
    target = wanted if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)

def listening_or_stopped(started: _S, port: int, proc: subprocess.Popen[bytes], log: Path) -> _S:
    """``started`` once its process listens on ``port``; stopped (and the error raised) if it never does."""
    try:
        wait_listening(port, proc, log)
    except BaseException:
        started.stop()
        raise
    return started


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; fail with the log tail if ``proc`` exits."""
    # 90 s: a proxy that exits is reported at once; a slow start is the 2-core machine under load
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s; see {log}")
