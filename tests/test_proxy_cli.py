"""The command line, the demo, the unix socket, logs without secrets, and backpressure."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.keyring.auth.scram import ScramServer, ScramVerifier
from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin, free_port

from .harness import Backend, ProxyProcess, RawClient, config_text, launch, start_proxy
from .test_demo import CLI, printed, running_demo


def run_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "clitest")


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = launch(tmp_path_factory.mktemp("cli"), backend)
    yield p
    p.stop()


def test_version_and_help() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and re.fullmatch(r"tenantgate \d+\.\d+\.\d+\n", out.stdout)
    helptext = run_cli("--help").stdout
    for command in ("serve", "demo", "check-config", "hash-password"):
        assert command in helptext


def test_hash_password_prints_a_working_verifier() -> None:
    out = run_cli("hash-password", "--stdin", input="s3cret\n")
    assert out.returncode == 0
    verifier = ScramVerifier.parse(out.stdout.strip())
    assert verifier.iterations == 4096 and "s3cret" not in out.stdout
    ScramServer(verifier)  # usable as a user's `scram = ...`
    md5 = run_cli("hash-password", "--stdin", "--md5", "--user", "alice", input="s3cret\n")
    assert re.fullmatch(r"md5[0-9a-f]{32}\n", md5.stdout)


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[listen]\naddress = "nowhere"\n[backend]\nhost = "127.0.0.1"\nport = "5432"\nuser = "app"\n'
        'password = "hunter2"\n[users.alice]\ntenant = "nope"\npassword = "pw"\n[scoping]\ncolumn = "tenant_id"\n'
    )
    out = run_cli("check-config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: listen.address:" in out.stderr
    assert f"{bad}: backend.port:" in out.stderr
    assert f"{bad}: users.alice.tenant:" in out.stderr
    assert "hunter2" not in out.stderr
    serve = run_cli("serve", "--config", str(bad))
    assert serve.returncode == 2 and "users.alice.tenant" in serve.stderr


def test_check_config_ok(proxy: ProxyProcess) -> None:
    out = run_cli("check-config", str(proxy.config_path))
    assert out.returncode == 0 and "OK" in out.stdout


def test_unix_socket(backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    sock_dir = Path(f"/tmp/tg-sock-{port}")
    sock_dir.mkdir()
    extra = f'\n[listen]\naddress = "127.0.0.1:{port}"\nunix_socket = "{sock_dir}/.s.PGSQL.{port}"\n'
    text = config_text(backend, port).replace(f'[listen]\naddress = "127.0.0.1:{port}"\n', extra)
    p = start_proxy(tmp_path, text, port)
    try:
        with psycopg.connect(host=str(sock_dir), port=port, user="svc", password="svc-pw", dbname="x") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (backend.role,)
    finally:
        p.stop()
        for f in sock_dir.iterdir():
            f.unlink()
        sock_dir.rmdir()


def test_logs_hold_no_secrets(proxy: ProxyProcess, backend: Backend) -> None:
    for password in ("svc-pw", "wrong-password-123"):
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(proxy.dsn("svc").replace("svc-pw", password)).close()
    time.sleep(0.2)
    log = proxy.log()
    assert "authenticated user svc" in log
    for secret in ("svc-pw", "wrong-password-123", "alice-pw", backend.password):
        assert secret not in log


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_client_does_not_make_the_proxy_buffer(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    before = rss_kib(proxy.proc.pid)
    # about 800 MB of result that the client never reads
    c.send(codec.Query("SELECT repeat('x', 1000) FROM generate_series(1, 800000)").encode())
    time.sleep(3)
    grown = rss_kib(proxy.proc.pid) - before
    assert grown < 64 * 1024, f"proxy grew by {grown} KiB while the client did not read"
    c.close()
    with psycopg.connect(proxy.dsn("svc")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_demo_starts_and_cleans_up() -> None:
    with running_demo() as output:
        psql_line = next(line for line in output.splitlines() if "ops:ops-secret" in line)
        dsn = re.search(r"'(postgresql://[^']+)'", psql_line)
        assert dsn is not None
        out = subprocess.run(
            [find_pg_bin("psql"), dsn.group(1), "-At", "-c", "SELECT count(DISTINCT tenant_id) FROM orders"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.stdout.strip() == "2", out.stderr
        carol = re.search(r"'(postgresql://carol:[^']+)'", output)
        assert carol is not None  # the schema-tier tenant: its own rows, and nothing outside its schema
        psql_cmd = [find_pg_bin("psql"), carol.group(1), "-At", "-c"]
        mine = subprocess.run([*psql_cmd, "SELECT note FROM orders"], capture_output=True, text=True, timeout=30)
        assert mine.stdout.strip() == "TPS covers", mine.stderr
        other = subprocess.run([*psql_cmd, "SELECT note FROM public.orders"], capture_output=True, text=True,
                               timeout=30)
        assert other.returncode != 0 and "outside this tenant's schema t_initech" in other.stderr
        # the demo enables compliance frameworks, meets them, and prints the command that shows it
        result = subprocess.run([*CLI, *printed(output, "compliance check")], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and " 0 fail" in result.stdout, result.stdout + result.stderr
