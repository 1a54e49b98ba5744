"""Bad input, failures and security edges of the proxy core, against a real PostgreSQL.

Each case checks the precise error the client gets, that other clients keep being
served, and that no backend connection is left behind (pg_stat_activity).
"""

from __future__ import annotations

import signal
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, RawClient, config_text, errors, launch, start_proxy


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    b = Backend.create(pg, "robust")
    with psycopg.connect(b.direct_dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    return b


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = launch(tmp_path_factory.mktemp("robust"), backend)
    yield p
    p.stop()


def backend_sessions(backend: Backend) -> int:
    rows = backend.pg.fetch("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", backend.role)
    return int(rows[0][0])


def wait_sessions(backend: Backend, expected: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while (n := backend_sessions(backend)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def login_error(proxy: ProxyProcess, user: str = "svc", password: str = "svc-pw", **params: str) -> codec.ErrorResponse:
    """The ErrorResponse a login attempt ends with (libpq hides the SQLSTATE of connection errors)."""
    c = RawClient(proxy.port)
    c.send(codec.StartupMessage({"user": user, **params}).encode())
    msg = c.recv_message()
    if isinstance(msg, codec.Authentication):
        c.pending.insert(0, msg)
        c.sock.close()
        c = RawClient(proxy.port)
        msgs = c.login(user, password)
    else:
        msgs = [msg]
    (err,) = errors(msgs)
    c.close()
    return err


def still_serving(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------- startup garbage


def test_garbage_instead_of_startup(proxy: ProxyProcess, backend: Backend) -> None:
    c = RawClient(proxy.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    err = c.recv_message()
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "08P01"
    assert "startup packet length" in err.message
    assert c.closed()
    still_serving(proxy)
    assert wait_sessions(backend, 0) == 0


def test_oversized_startup_packet(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.send(struct.pack("!ii", 20_000, codec.PROTOCOL_V3))
    err = c.recv_message()
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "08P01"
    assert c.closed()


def test_unsupported_protocol_version(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.send(codec.StartupMessage({"user": "svc"}, protocol=2 << 16).encode())
    err = c.recv_message()
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "0A000"


def test_startup_timeout_drops_silent_client(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    t0 = time.monotonic()
    err = c.recv_message()  # the config gives clients 3 s
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "08006"
    assert 2 < time.monotonic() - t0 < 9
    assert c.closed()


def test_gssenc_and_ssl_refused_when_tls_disabled(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.send(codec.GSSENCRequest().encode())
    assert c.sock.recv(1) == b"N"
    c.send(codec.SSLRequest().encode())
    assert c.sock.recv(1) == b"N"
    assert codec.ReadyForQuery("I") in c.login("svc", "svc-pw")


# ---------------------------------------------------------------------------- authentication


def test_wrong_password_and_unknown_user_look_the_same(proxy: ProxyProcess, backend: Backend) -> None:
    replies = []
    for user, password in (("alice", "nope"), ("mallory", "nope")):
        c = RawClient(proxy.port)
        (err,) = errors(c.login(user, password))
        assert err.sqlstate == "28P01"
        assert err.message == f'password authentication failed for user "{user}"'
        assert c.closed()
        replies.append(err.message.replace(user, "X"))
    assert replies[0] == replies[1]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn("svc").replace("svc-pw", "wrong"))
    assert wait_sessions(backend, 0) == 0


@pytest.mark.parametrize(
    "options",
    ["-c role=postgres", "-c search_path=evil", "--tenantgate.tenant=globex", "-csession_authorization=postgres"],
)
def test_startup_options_that_change_identity_are_refused(proxy: ProxyProcess, options: str) -> None:
    assert login_error(proxy, options=options).sqlstate == "42501"
    with pytest.raises(psycopg.OperationalError, match="may not be set by a client"):
        psycopg.connect(proxy.dsn("svc"), options=options)


def test_direct_startup_setting_refused(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.send(codec.StartupMessage({"user": "alice", "search_path": "pg_temp"}).encode())
    # refused before any password is asked: the setting, not the user, is at fault
    msgs = []
    while True:
        m = c.recv_message()
        msgs.append(m)
        if isinstance(m, codec.ErrorResponse | codec.Authentication):
            break
    assert isinstance(msgs[-1], codec.ErrorResponse) and msgs[-1].sqlstate == "42501"


def test_allowed_startup_settings_reach_the_backend(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("svc"), options="-c TimeZone=Asia/Tokyo", application_name="probe") as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
        assert conn.execute("SHOW application_name").fetchone() == ("probe",)


# ---------------------------------------------------------------------------- bad input after login


def test_function_call_refused_keeps_transaction_semantics(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    c.send(codec.FunctionCall(1598, (), (), 0).encode())  # oid of md5(text), any function
    msgs = c.until_ready()
    (err,) = errors(msgs)
    assert err.sqlstate == "42501" and "function call protocol" in err.message
    assert msgs[-1] == codec.ReadyForQuery("I")
    # inside a transaction the refusal aborts it, exactly as a PostgreSQL error would
    assert c.query("BEGIN")[-1] == codec.ReadyForQuery("T")
    c.send(codec.FunctionCall(1598, (), (), 0).encode())
    assert c.until_ready()[-1] == codec.ReadyForQuery("E")
    assert c.query("ROLLBACK")[-1] == codec.ReadyForQuery("I")
    assert any(isinstance(m, codec.DataRow) for m in c.query("SELECT 1"))


def test_oversized_message_after_login(proxy: ProxyProcess, backend: Backend) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    c.send(b"Q" + struct.pack("!I", 64 * 1024 * 1024))  # over the configured 8 MiB cap
    err = c.recv_message()
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "08P01"
    assert "invalid message length" in err.message
    assert c.closed()
    still_serving(proxy)
    assert wait_sessions(backend, 0) == 0


def test_invalid_message_type_after_login(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    c.send(b"\x07\x00\x00\x00\x04")
    err = c.recv_message()
    assert isinstance(err, codec.ErrorResponse) and err.sqlstate == "08P01"


def test_disconnect_mid_message_leaks_nothing(proxy: ProxyProcess, backend: Backend) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    assert wait_sessions(backend, 1) == 1
    c.send(codec.Query("SELECT 1").encode()[:7])
    c.close()
    assert wait_sessions(backend, 0) == 0
    still_serving(proxy)


def test_disconnect_mid_transaction_rolls_back(proxy: ProxyProcess, backend: Backend) -> None:
    c = RawClient(proxy.port)
    c.login("svc", "svc-pw")
    c.query("BEGIN")
    assert c.query("INSERT INTO t VALUES (4242, 'half')")[-1] == codec.ReadyForQuery("T")
    c.close()
    assert wait_sessions(backend, 0) == 0
    assert backend.pg.fetch("SELECT count(*) FROM t WHERE id = 4242", dbname=backend.database) == [(0,)]


def test_wrong_cancel_key_cancels_nothing(proxy: ProxyProcess) -> None:
    c = RawClient(proxy.port)
    msgs = c.login("svc", "svc-pw")
    key = next(m for m in msgs if isinstance(m, codec.BackendKeyData))
    c.send(codec.Query("SELECT pg_sleep(1.5)").encode())
    time.sleep(0.3)
    bad = RawClient(proxy.port)
    bad.send(codec.CancelRequest(key.pid, key.secret ^ 1).encode())
    assert bad.closed()
    result = c.until_ready()
    assert not errors(result)  # the sleep completed
    c.send(codec.Query("SELECT pg_sleep(30)").encode())
    time.sleep(0.3)
    good = RawClient(proxy.port)
    good.send(codec.CancelRequest(key.pid, key.secret).encode())
    (err,) = errors(c.until_ready())
    assert err.sqlstate == "57014"


# ---------------------------------------------------------------------------- backend failures


def test_backend_down_gives_08006(backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    dead = Backend(backend.pg, backend.database, backend.role, backend.password)
    text = config_text(dead, port).replace(f"port = {backend.pg.port}", f"port = {free_port()}")
    p = start_proxy(tmp_path, text, port)
    try:
        err = login_error(p)
        assert err.sqlstate == "08006" and "failed" in err.message
    finally:
        assert p.stop() == 0


def test_backend_wrong_password_and_missing_database(backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    text = config_text(backend, port).replace(f'password = "{backend.password}"', 'password = "wrong"', 1)
    p = start_proxy(tmp_path, text, port)
    try:
        assert login_error(p).sqlstate == "28P01"
    finally:
        p.stop()
    port = free_port()
    text = config_text(backend, port).replace(f'database = "{backend.database}"', 'database = "nope"')
    p = start_proxy(tmp_path / "..", text, port)
    try:
        assert login_error(p).sqlstate == "3D000"
    finally:
        p.stop()


@pytest.mark.parametrize("method", ["md5", "password", "trust"])
def test_backend_auth_methods(pg: PgServer, method: str, tmp_path: Path) -> None:
    b = Backend.create(pg, f"auth_{method}", method=method)  # type: ignore[arg-type]
    p = launch(tmp_path, b)
    try:
        with psycopg.connect(p.dsn("svc")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (b.role,)
    finally:
        p.stop()


def test_superuser_backend_role_refused(pg: PgServer, tmp_path: Path) -> None:
    b = Backend.create(pg, "superbackend")
    pg.execute(f'ALTER ROLE "{b.role}" SUPERUSER')
    port = free_port()
    config = tmp_path / "t.toml"
    config.write_text(config_text(b, port))
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "tenantgate.proxy.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "superuser or BYPASSRLS" in out.stderr


# ---------------------------------------------------------------------------- TLS


def test_client_tls_required(backend: Backend, tmp_pki: object, tmp_path: Path) -> None:
    cert, key = tmp_pki.server  # type: ignore[attr-defined]
    tls = f'[tls]\nmode = "require"\ncert = "{cert}"\nkey = "{key}"\n'
    p = launch(tmp_path, backend, tls=tls)
    try:
        dsn = p.dsn("svc").replace("sslmode=disable", f"sslmode=verify-full&sslrootcert={tmp_pki.ca_cert}")  # type: ignore[attr-defined]
        with psycopg.connect(dsn) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert login_error(p).sqlstate == "28000"
    finally:
        p.stop()


def test_backend_tls_verify_full(pg: PgServer, backend: Backend, tmp_path: Path) -> None:
    if pg.ssl_ca is None:
        pytest.skip("the test server has no TLS")
    extra = f'sslmode = "verify-full"\nsslrootcert = "{pg.ssl_ca}"'
    p = launch(tmp_path, backend, backend_extra=extra)
    try:
        with psycopg.connect(p.dsn("svc")) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    finally:
        p.stop()


def test_backend_tls_wrong_ca_refused(pg: PgServer, backend: Backend, tmp_pki: object, tmp_path: Path) -> None:
    if pg.ssl_ca is None:
        pytest.skip("the test server has no TLS")
    extra = f'sslmode = "verify-full"\nsslrootcert = "{tmp_pki.ca_cert}"'  # type: ignore[attr-defined]
    p = launch(tmp_path, backend, backend_extra=extra)
    try:
        err = login_error(p)
        assert err.sqlstate == "08006" and "certificate verify failed" in err.message
    finally:
        p.stop()


# ---------------------------------------------------------------------------- shutdown


def test_sigterm_lets_the_transaction_finish(backend: Backend, tmp_path: Path) -> None:
    p = launch(tmp_path, backend)
    busy = psycopg.connect(p.dsn("svc"))
    idle = psycopg.connect(p.dsn("svc"), autocommit=True)
    busy.execute("INSERT INTO t VALUES (9001, 'in flight')")  # opens a transaction
    p.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")  # idle sessions are closed at once (57P01)
    busy.commit()  # the open transaction may finish
    assert backend.pg.fetch("SELECT v FROM t WHERE id = 9001", dbname=backend.database) == [("in flight",)]
    assert p.proc.wait(15) == 0
    busy.close()
    idle.close()
