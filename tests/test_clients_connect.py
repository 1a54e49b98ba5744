"""Real clients' connect sequences and goodbyes through the real proxy (issue 20), cheap enough for
every run: what ActiveRecord and pgJDBC send at connect time, a LATIN1 session, and no frame after
a client's Terminate. Each real client (ruby, javac, node) is skipped with a reason when missing
(tests/peer/install_clients.sh installs them); the replicas in Python always run.

Each test names the issue 20 item it guards (items 1-4: they failed before those fixes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import USERS, Backend, ProxyProcess, RawClient, errors, start_proxy
from .peer.env import TENANT, TENANT_USER, TRUSTED_USER, create_backend, install_rls, proxy_config

CLIENTS = Path(__file__).parent / "peer" / "clients"
NODE_MODULES = Path(__file__).parent / "peer" / "node" / "node_modules"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
MODES = ["session", "transaction"]


# ActiveRecord 6.1's PostgreSQLAdapter#configure_connection, statement by statement (USE_TZ: UTC).
ACTIVERECORD_SETS = [
    "SET client_min_messages TO 'warning'",
    "SET standard_conforming_strings = on",
    "SET intervalstyle = iso_8601",
    "SET SESSION timezone TO 'UTC'",
]
# pgJDBC 42.x after the startup packet (assumeMinServerVersion unset, the default).
JDBC_SETS = ["SET extra_float_digits = 3", "SET application_name = 'PostgreSQL JDBC Driver'"]


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return create_backend(pg, "clients_connect")


@pytest.fixture(scope="module")
def bare_backend(pg: PgServer) -> Backend:
    """The same tables without RLS: the rewriter alone must hold."""
    return create_backend(pg, "clients_connect_bare")


@dataclass
class Gate:
    """A running proxy and the database it serves."""

    proxy: ProxyProcess
    backend: Backend

    def connect(self, user: str = TENANT_USER, **kw: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.proxy.dsn(user, self.backend.database), autocommit=True, **kw)

    def env(self, user: str = TENANT_USER) -> dict[str, str]:
        """What our client programs read (libpq's variables, and the tenant whose rows they must see)."""
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.proxy.port), PGUSER=user,
                    PGPASSWORD=USERS[user][1], PGDATABASE=self.backend.database, PGSSLMODE="disable",
                    PEER_TENANT=TENANT, PEER_OPTIONS="")


@contextmanager
def gate(tmp: Path, backend: Backend, mode: str, *, rls: bool = True, pool_size: int = 4,
         pool_timeout: float = 10) -> Iterator[Gate]:
    port = free_port()
    proxy = start_proxy(tmp, proxy_config(backend, port, mode, pool_size, pool_timeout), port)
    try:
        if rls:
            install_rls(proxy, backend)
        yield Gate(proxy, backend)
    finally:
        proxy.stop()


@pytest.fixture(scope="module", params=[(m, rls) for m in MODES for rls in ("rls", "bare")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    mode, rls = request.param
    backend: Backend = request.getfixturevalue("backend" if rls == "rls" else "bare_backend")
    with gate(tmp_path_factory.mktemp(f"clients-{mode}-{rls}"), backend, mode, rls=rls == "rls") as g:
        yield g


@pytest.fixture
def small_pool(backend: Backend, tmp_path: Path) -> Iterator[Gate]:
    """Transaction pooling with two backends and a short wait: a third pinned client gets 53300."""
    with gate(tmp_path, backend, "transaction", pool_size=2, pool_timeout=2) as g:
        yield g


def tenants_seen(conn: psycopg.Connection[tuple[Any, ...]]) -> list[Any]:
    return [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM peer_items ORDER BY 1")]


def check_lines(done: subprocess.CompletedProcess[str]) -> None:
    """Our client programs print ``ok NAME`` / ``FAIL NAME: reason``: every line must be ``ok``."""
    lines = done.stdout.splitlines()
    failed = [line for line in lines if not line.startswith("ok ")]
    assert lines and not failed and done.returncode == 0, done.stdout + done.stderr[-2000:]


# -- ActiveRecord ---------------------------------------------------------------------------------

def test_activerecord_connect_sequence_replica(proxy: Gate) -> None:
    with proxy.connect() as conn:
        for sql in ACTIVERECORD_SETS:
            conn.execute(sql)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW intervalstyle").fetchone() == ("iso_8601",)
        assert tenants_seen(conn) == [TENANT]


def test_activerecord_refuses_turning_off_standard_strings(proxy: Gate) -> None:
    """Only the value the proxy requires is acceptable: turning it off stays refused, the session usable."""
    with proxy.connect() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET standard_conforming_strings = off")
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)


@pytest.fixture(scope="module")
def ruby() -> str:
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (tests/peer/install_clients.sh)")
    if subprocess.run(["ruby", "-e", 'require "active_record"; require "pg"'], capture_output=True).returncode:
        pytest.skip("ruby-activerecord / ruby-pg are not installed (tests/peer/install_clients.sh)")
    return "ruby"


def test_activerecord_connects(proxy: Gate, ruby: str) -> None:
    done = subprocess.run([ruby, str(CLIENTS / "ar_client.rb")], env=proxy.env() | {"CONNECT_ONLY": "1"},
                          capture_output=True, text=True, timeout=60)
    check_lines(done)


def test_activerecord_three_connections_on_a_pool_of_two(small_pool: Gate, ruby: str) -> None:
    done = subprocess.run([ruby, str(CLIENTS / "ar_client.rb")], env=small_pool.env() | {"CONNECTIONS": "3"},
                          capture_output=True, text=True, timeout=60)
    check_lines(done)


def test_activerecord_connections_share_backends(small_pool: Gate) -> None:
    conns = []
    try:
        for _ in range(3):
            conn = small_pool.connect()
            conns.append(conn)
            for sql in ACTIVERECORD_SETS:
                conn.execute(sql)
        for conn in conns:
            assert conn.execute("SHOW intervalstyle").fetchone() == ("iso_8601",)
            assert tenants_seen(conn) == [TENANT]
    finally:
        for conn in conns:
            conn.close()


# -- pgJDBC ---------------------------------------------------------------------------------------

def test_jdbc_connect_sequence_replica_shares_backends(small_pool: Gate) -> None:
    """Three clients doing pgJDBC's connect-time SETs, held open together on a pool of two."""
    conns = []
    try:
        for _ in range(3):
            conn = small_pool.connect()
            conns.append(conn)
            for sql in JDBC_SETS:
                conn.execute(sql)
            assert tenants_seen(conn) == [TENANT]
        for conn in conns:  # each still sees what it set, whichever backend serves it now
            assert conn.execute("SHOW extra_float_digits").fetchone() == ("3",)
            assert conn.execute("SHOW application_name").fetchone() == ("PostgreSQL JDBC Driver",)
    finally:
        for conn in conns:
            conn.close()


@pytest.fixture(scope="module")
def jdbc_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or not JDBC_JAR.is_file():
        pytest.skip("javac or libpostgresql-jdbc-java is not installed (tests/peer/install_clients.sh)")
    out = tmp_path_factory.mktemp("jdbc")
    subprocess.run(["javac", "-d", str(out), "-cp", str(JDBC_JAR), str(CLIENTS / "JdbcClient.java")],
                   check=True, timeout=120)
    return out


def test_jdbc_three_connections_on_a_pool_of_two(small_pool: Gate, jdbc_classes: Path) -> None:
    done = subprocess.run(["java", "-cp", f"{jdbc_classes}:{JDBC_JAR}", "JdbcClient", "connections", "3"],
                          env=small_pool.env(), capture_output=True, text=True, timeout=60)
    check_lines(done)


# -- client encodings -----------------------------------------------------------------------------

# Text that each encoding can carry, and SJIS's 0x5C trail byte ('表' is 0x95 0x5C: a backslash to a
# parser that reads the bytes as UTF-8 or ASCII).
ENCODED = {"LATIN1": "café", "WIN1252": "œuvre €5", "LATIN9": "€ façade", "SJIS": "表示"}


ENCODING_CASES = [(enc, how, TENANT_USER) for enc in sorted(ENCODED) for how in ("startup", "set")] + [
    ("LATIN1", how, TRUSTED_USER) for how in ("startup", "set")]


@pytest.mark.parametrize(("encoding", "how", "user"), ENCODING_CASES, ids=["-".join(c) for c in ENCODING_CASES])
def test_non_utf8_session(proxy: Gate, encoding: str, how: str, user: str) -> None:
    """Issue 20 item 4. A tenant session's encoding is fixed at connect (README "The encoding rule"):
    a SET to another one is refused cleanly and the session goes on in its own; trusted users may SET it."""
    text = ENCODED[encoding]
    kw = {"client_encoding": encoding} if how == "startup" or user == TENANT_USER else {}
    if how == "set" and user == TENANT_USER:
        with proxy.connect(user) as conn:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="connection string"):
                conn.execute(f"SET client_encoding = '{encoding}'")
            conn.rollback()
            assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
    with proxy.connect(user, **kw) as conn:
        if how == "set" and user != TENANT_USER:
            conn.execute(f"SET client_encoding = '{encoding}'")
        assert conn.execute("SHOW client_encoding").fetchone() == (encoding,)
        assert conn.execute(f"SELECT '{text}', length('{text}')").fetchone() == (text, len(text))
        with conn.transaction():
            if user == TENANT_USER:
                conn.execute("INSERT INTO peer_items (name) VALUES (%s)", [text])
            else:
                conn.execute("INSERT INTO peer_items (tenant_id, name) VALUES (%s, %s)", [TENANT, text])
            assert conn.execute("SELECT tenant_id FROM peer_items WHERE name = %s", [text]).fetchall() == [(TENANT,)]
            conn.execute("DELETE FROM peer_items WHERE name = %s", [text])


# -- Terminate --------------------------------------------------------------------------------------

def _goodbyes(g: Gate, rounds: int) -> list[str]:
    """Log in, query, Terminate, read to EOF: anything the proxy writes after Terminate is a stray frame."""
    stray = []
    for i in range(rounds):
        client = RawClient(g.proxy.port)
        try:
            assert not errors(client.login(TENANT_USER, USERS[TENANT_USER][1], g.backend.database))
            client.query("SELECT 1")
            client.send(codec.Terminate().encode())
            left = b""
            try:
                while chunk := client.sock.recv(65536):
                    left += chunk
            except ConnectionResetError:
                pass
            if left:
                stray.append(f"client {i}: {left[:80]!r}")
        finally:
            client.close()
    return stray


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_nothing_after_terminate(backend: Backend, tmp_path: Path, mode: str) -> None:
    with gate(tmp_path, backend, mode) as g:
        stray = _goodbyes(g, 200)
    assert not stray, f"{len(stray)} of 200: {stray[0]}"


@pytest.mark.skipif(shutil.which("node") is None or not (NODE_MODULES / "pg").is_dir(),
                    reason="node or node-postgres is not installed (tests/peer/install_clients.sh)")
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_node_postgres_terminate_race(backend: Backend, tmp_path: Path, mode: str) -> None:
    """200 node-postgres clients (10 at a time) connect, query, end(): no 'error' event after end()."""
    with gate(tmp_path, backend, mode) as g:
        done = subprocess.run(["node", str(CLIENTS / "node_terminate_race.js"), "200", "10"],
                              env=g.env() | {"NODE_PATH": str(NODE_MODULES)}, capture_output=True, text=True,
                              timeout=120)
    check_lines(done)
