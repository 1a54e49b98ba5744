"""`make demo` (`tenantgate demo`): the commands its banner prints work against the running demo."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tenantgate.proxy.sandbox.pgcluster import free_port

CLI = [sys.executable, "-m", "tenantgate.proxy.cli"]


@contextmanager
def running_demo() -> Iterator[str]:
    """Start `tenantgate demo`, yield its banner; on exit stop it (Ctrl-C) and check it cleaned up."""
    proc = subprocess.Popen([*CLI, "demo", "--port", str(free_port())], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = ""
    deadline = time.monotonic() + 90
    try:
        while "Press Ctrl-C" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                chunk = os.read(fd, 65536)  # unbuffered: a buffered readline could hide lines from select
                if not chunk:
                    break
                output += chunk.decode(errors="replace")
        assert "Press Ctrl-C" in output, output
        yield output
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    config = re.search(r"config: (\S+)", output)
    assert config is not None and not os.path.exists(config.group(1))


def printed(banner: str, command: str) -> list[str]:
    """The banner's `tenantgate COMMAND ...` line as arguments for the CLI module."""
    line = next(line for line in banner.splitlines() if line.strip().startswith(f"tenantgate {command}"))
    return line.split()[1:]


def test_demo_prints_audit_commands_that_work() -> None:
    with running_demo() as banner:
        alice = re.search(r"'(postgresql://alice:[^']+)'", banner)
        assert alice is not None
        with psycopg.connect(alice.group(1), autocommit=True) as conn:
            conn.execute("SELECT * FROM orders").fetchall()
        time.sleep(0.5)  # batched durability: on disk within flush_interval_ms

        def run(command: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run([*CLI, *printed(banner, command)], capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            return result

        verify = run("audit verify").stdout
        assert "OK:" in verify and "log open" in verify and "FAILED" not in verify
        report = run("audit report").stdout
        assert "Integrity: verified through seq" in report and "log open" in report
        assert re.search(r"- Events: [1-9]", report), report
        review = run("audit review").stdout
        assert "recorded: seq" in review and "verification:" in review.lower(), review
