"""ThrowawayCluster against the real server programs: startup, TLS, per-role auth, cleanup."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import ExternalServer, ThrowawayCluster, find_pg_bin, free_port

from .certs import Pki, make_ca

CERT_USER = "certuser"


@pytest.fixture(scope="module")
def cluster(tmp_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayCluster]:
    log = tmp_path_factory.mktemp("pglog") / "server.log"
    with ThrowawayCluster(
        port=free_port(),
        ssl=tmp_pki.server,
        ssl_ca=tmp_pki.ca_cert,
        settings={"work_mem": "8MB", "log_connections": True, "application_name": "it's"},
        hba=[f"hostssl all {CERT_USER} 127.0.0.1/32 cert"],
        log_to=log,
    ) as c:
        yield c


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=10, **kwargs)


def test_find_pg_bin_returns_an_executable_server_program() -> None:
    path = find_pg_bin("initdb")
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "PostgreSQL" in out


def test_cluster_runs_with_throwaway_settings(cluster: ThrowawayCluster, tmp_path: Path) -> None:
    rows = cluster.fetch(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit'),"
        " current_setting('full_page_writes'), current_setting('max_connections'),"
        " current_setting('listen_addresses'), current_setting('unix_socket_directories'),"
        " current_setting('work_mem'), current_setting('log_connections'),"
        " current_setting('application_name'), current_setting('server_encoding'),"
        " current_setting('lc_collate')"
    )
    assert rows == [
        ("off", "off", "off", "300", "127.0.0.1", str(cluster.socket_dir), "8MB", "on", "it's", "UTF8", "C")
    ]
    assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()
    assert cluster.host == "127.0.0.1"
    assert cluster.log_path.read_text().strip()  # the server logs to the file we chose
    if os.geteuid() == 0:
        assert cluster.datadir.stat().st_uid == pwd.getpwnam("postgres").pw_uid


def test_superuser_password_is_required_over_tcp(cluster: ThrowawayCluster) -> None:
    with connect(cluster.admin_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(cluster.dsn("postgres", "not-the-password"))


def test_repr_does_not_leak_the_superuser_password(cluster: ThrowawayCluster) -> None:
    password = str(psycopg.conninfo.conninfo_to_dict(cluster.admin_dsn)["password"])
    assert password
    assert password not in repr(cluster)


def test_tls_verify_full_against_the_test_ca(cluster: ThrowawayCluster, tmp_pki: Pki) -> None:
    assert cluster.ssl_ca == tmp_pki.ca_cert
    for host in ("127.0.0.1", "localhost"):
        dsn = cluster.admin_dsn.replace("@127.0.0.1:", f"@{host}:")
        with connect(dsn, sslmode="verify-full", sslrootcert=tmp_pki.ca_cert) as conn:
            row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row == (True,)


def test_tls_verify_full_rejects_another_ca(cluster: ThrowawayCluster, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(cluster.admin_dsn, sslmode="verify-full", sslrootcert=other_ca)


def test_extra_hba_line_allows_client_certificate_login(cluster: ThrowawayCluster, tmp_pki: Pki) -> None:
    cluster.execute(f"CREATE ROLE {CERT_USER} LOGIN")
    cert, key = tmp_pki.issue(CERT_USER, sans=())
    tls = {"sslmode": "verify-full", "sslrootcert": tmp_pki.ca_cert}
    with connect(cluster.dsn(CERT_USER), sslcert=cert, sslkey=key, **tls) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CERT_USER,)
    with pytest.raises(psycopg.OperationalError):
        connect(cluster.dsn(CERT_USER), sslcert=tmp_pki.client[0], sslkey=tmp_pki.client[1], **tls)


@pytest.mark.parametrize(
    ("method", "require_auth", "stored_prefix"),
    [
        ("scram-sha-256", "scram-sha-256", "SCRAM-SHA-256$"),
        ("md5", "md5", "md5"),
        ("password", "password", "SCRAM-SHA-256$"),
        ("trust", "none", "SCRAM-SHA-256$"),
    ],
)
def test_role_logs_in_with_its_method(
    cluster: ThrowawayCluster, method: str, require_auth: str, stored_prefix: str
) -> None:
    name = "r_" + method.replace("-", "_")
    cluster.create_role(name, "right'pass\\", method=method)  # type: ignore[arg-type]
    stored = cluster.fetch("SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
    assert stored[0][0].startswith(stored_prefix)
    # require_auth makes libpq refuse any other exchange, so this proves the hba line took effect.
    with connect(cluster.dsn(name, "right'pass\\"), sslmode="disable", require_auth=require_auth) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)
    if method == "trust":
        with connect(cluster.dsn(name, "anything"), sslmode="disable") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (name,)
    else:
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            connect(cluster.dsn(name, "wrong"), sslmode="disable")


def test_role_attributes(cluster: ThrowawayCluster) -> None:
    cluster.create_role("boss", "pw", superuser=True, bypassrls=True)
    cluster.create_role("plain", "pw")
    rows = cluster.fetch(
        "SELECT rolname, rolsuper, rolbypassrls, rolcanlogin FROM pg_roles"
        " WHERE rolname IN ('boss', 'plain') ORDER BY rolname"
    )
    assert rows == [("boss", True, True, True), ("plain", False, False, True)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": 'x"; DROP ROLE postgres; --', "password": "p"}, "role name"),
        ({"name": "all", "password": "p", "method": "ident"}, "auth method"),
        ({"name": "nopass", "password": None, "method": "md5"}, "needs a password"),
    ],
)
def test_create_role_rejects_bad_input(cluster: ThrowawayCluster, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster.create_role(**kwargs)


def test_create_database_with_owner(cluster: ThrowawayCluster) -> None:
    cluster.create_role("dbowner", "pw")
    cluster.create_database("owned_db", owner="dbowner")
    cluster.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)", dbname="owned_db")
    assert cluster.fetch("SELECT sum(x) FROM t", dbname="owned_db") == [(3,)]
    owner = cluster.fetch("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", "owned_db")
    assert owner == [("dbowner",)]


def test_helpers_work_inside_a_running_event_loop(cluster: ThrowawayCluster) -> None:
    async def main() -> list[tuple[object, ...]]:
        return cluster.fetch("SELECT 40 + $1::int", 2)

    assert asyncio.run(main()) == [(42,)]


def test_external_server_uses_the_given_superuser_url(cluster: ThrowawayCluster) -> None:
    server = ExternalServer(cluster.admin_dsn)
    assert not server.supports_hba
    assert server.fetch("SELECT current_user, inet_server_port()") == [("postgres", cluster.port)]
    server.create_role("ext_role", "pw")
    with connect(server.dsn("ext_role", "pw")) as conn:  # the catch-all scram line
        assert conn.execute("SELECT current_user").fetchone() == ("ext_role",)
    assert "ext_role" not in (cluster.datadir / "pg_hba.conf").read_text()


def test_stop_removes_the_directory_and_is_idempotent() -> None:
    c = ThrowawayCluster()
    c.start()
    top = c.socket_dir
    assert (c.datadir / "PG_VERSION").exists()
    c.stop()
    assert not top.exists()
    c.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = c.datadir


def test_stop_after_the_server_already_stopped() -> None:
    c = ThrowawayCluster()
    c.start()
    top = c.socket_dir
    pg_ctl = [find_pg_bin("pg_ctl"), "stop", "-D", str(c.datadir), "-m", "immediate", "-w"]
    run_as = "postgres" if os.geteuid() == 0 else None
    subprocess.run(pg_ctl, check=True, capture_output=True, cwd=top, user=run_as)
    c.stop()
    assert not top.exists()


@pytest.mark.parametrize("ending", ["return", "sigterm"])
def test_interpreter_exit_and_sigterm_clean_up(ending: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from tenantgate.proxy.sandbox.pgcluster import ThrowawayCluster
        c = ThrowawayCluster()
        c.start()
        print(c.socket_dir, c.port, flush=True)
        if {ending == "sigterm"!r}:
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    top, port = done.stdout.split()
    if ending == "sigterm":
        assert done.returncode == -15
    else:
        assert done.returncode == 0, done.stderr
    assert not Path(top).exists()
    isready = [find_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", port]
    assert subprocess.run(isready, capture_output=True, check=False).returncode == 2  # no response
