"""The shared tenant-isolation checker (../shared/isolation/check.py) through the real proxy.

Runs only when ../shared is present beside the repository (it is in CI); the project's
own tests for every attack family live in test_scoping_*.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, config_text, start_proxy

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "isolation" / "check.py"

pytestmark = pytest.mark.skipif(not CHECKER.exists(), reason="../shared/isolation is not beside the repository")

SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["customers", "orders"]\nreference = ["countries"]\n'


def test_public_isolation_cases(pg: PgServer, tmp_path: Path) -> None:
    role, password = "iso_app", "iso-app-pw"
    common = ["--admin-dsn", pg.admin_dsn, "--app-role", role, "--app-password", password]
    setup = subprocess.run(
        [sys.executable, str(CHECKER), "setup", *common], capture_output=True, text=True, timeout=120
    )
    assert setup.returncode == 0, setup.stderr
    port = free_port()
    backend = Backend(pg, "iso_main", role, password)
    proxy = start_proxy(tmp_path, config_text(backend, port, scoping=SCOPING), port)
    try:
        report = tmp_path / "verdicts.json"
        run = subprocess.run(
            [sys.executable, str(CHECKER), "run", *common, "--json", str(report), "--proxy-dsn", proxy.dsn("alice")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        proxy.stop()
    print(run.stdout)
    assert "0 leaks" in run.stdout, run.stdout + run.stderr
    assert run.returncode == 0, run.stdout + run.stderr
