"""Shared fixtures: a real PostgreSQL server (``pg``), free ports and a test PKI.

``pg`` comes from, in order: ``TENANTGATE_TEST_DSN`` (an existing server, superuser
URL), a ``postgres:15`` container when a Docker engine answers, or a throwaway
cluster made with the machine's ``initdb`` with TLS on (certificate from a test CA).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tenantgate.proxy import native
from tenantgate.proxy.sandbox.pgcluster import ExternalServer, PgServer, ThrowawayCluster
from tenantgate.proxy.sandbox.pgcluster import free_port as _free_port

from .certs import Pki, make_pki

# A compiled module older than its source (edited since `make install`) would test old code: the
# run takes the sources instead, here and in every proxy it starts (TENANTGATE_PURE is inherited).
_STALE = native.status()["stale"]
if _STALE:
    os.environ["TENANTGATE_PURE"] = "1"
    native.honour_pure_switch()


def pytest_report_header() -> list[str]:
    if _STALE:
        return [f"tenantgate: pure Python (compiled {', '.join(_STALE)} older than the source: make install)"]
    return [f"tenantgate: {native.describe()}"]


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        probe = subprocess.run([docker, "info"], capture_output=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def _container_server() -> Iterator[PgServer]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers releases before the community namespace
        from testcontainers.postgres import PostgresContainer

    with PostgresContainer(
        "postgres:15", username="postgres", password=secrets.token_urlsafe(16), dbname="postgres"
    ) as container:

        def install_hba(role_lines: list[str]) -> None:
            # Per-role lines ahead of the image's own rules; the server is reloaded by the caller.
            script = (
                'f="$PGDATA/pg_hba.conf"; grep -v " # tenantgate-role$" "$f" > "$f.old"; '
                '{ for line in "$@"; do printf "%s # tenantgate-role\\n" "$line"; done; cat "$f.old"; } > "$f"; '
                'rm -f "$f.old"'
            )
            result = container.exec(["sh", "-c", script, "sh", *role_lines])
            if result.exit_code != 0:
                raise RuntimeError(f"writing pg_hba.conf in the container failed: {result.output!r}")

        yield ExternalServer(container.get_connection_url(driver=None), hba_installer=install_hba)


@pytest.fixture(scope="session")
def tmp_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + server (SANs 127.0.0.1, localhost) + client certificates for client-facing TLS tests."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A real PostgreSQL server with superuser access (see the module docstring for the source)."""
    dsn = os.environ.get("TENANTGATE_TEST_DSN")
    if dsn:
        yield ExternalServer(dsn)
    elif _docker_answers():
        yield from _container_server()
    else:
        pki = make_pki(tmp_path_factory.mktemp("pg-pki"))
        log = tmp_path_factory.getbasetemp() / "postgres.log"
        with ThrowawayCluster(ssl=pki.server, ssl_ca=pki.ca_cert, log_to=log) as cluster:
            yield cluster


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a TCP port on 127.0.0.1 that is free right now."""
    return _free_port
