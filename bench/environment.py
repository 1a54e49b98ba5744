"""What the figures were measured on: machine, versions, commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("tenantgate", "uvloop", "sqlglot", "pglast", "cryptography", "asyncpg", "matplotlib")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git_dirty(repo: Path) -> bool | None:
    """Whether tracked files differ from the commit (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _native() -> dict[str, Any]:
    """Which hot modules the proxy loads compiled (proxy/native.py; asked in a child: bench never
    imports the serving process)."""
    out = subprocess.run([sys.executable, "-m", "tenantgate.proxy.native", "status", "--json"],
                         capture_output=True, text=True, check=False, timeout=60)
    try:
        found: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        return {"compiled": None, "modules": [], "stale": [], "error": out.stderr.strip()[-300:]}
    return found


def describe(*, postgresql: str, pgbench: str, pgbouncer: str) -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgresql,
        "pgbench": _first_line([pgbench, "--version"]),
        "pgbouncer": pgbouncer,
        "tenantgate": _package("tenantgate"),
        "native": _native(),
        "packages": {name: _package(name) for name in PACKAGES},
        "git_commit": _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
        "git_dirty": _git_dirty(repo),
    }
