"""The admin console through psql and a raw protocol client, against the real proxy."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin

from .certs import Pki
from .harness import Backend, ProxyProcess, RawClient, errors, launch_with_ports

ADMIN_PW = "dba-pw"


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "ops_admin")


@pytest.fixture(scope="module")
def ops(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, int]]:
    proxy, ports = launch_with_ports(tmp_path_factory.mktemp("admin"), backend, "admin")
    yield proxy, ports["admin"]
    proxy.stop()


def admin_dsn(port: int, user: str = "dba", password: str = ADMIN_PW, sslmode: str = "disable") -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/admin?sslmode={sslmode}"


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_pg_bin("psql"), dsn, "-X", "-A", "-F", "\t", "-P", "footer=off", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )


def table(port: int, sql: str) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of one admin command as psql prints them (NULL prints as '')."""
    out = psql(admin_dsn(port), sql)
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    columns = header.split("\t")
    return columns, [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]


def admin_error(port: int, sql: str) -> codec.ErrorResponse:
    """The ErrorResponse one command gets, read with a raw client to see its SQLSTATE."""
    c = RawClient(port)
    try:
        assert not errors(c.login("dba", ADMIN_PW))
        reply = c.query(sql)
        assert isinstance(reply[-1], codec.ReadyForQuery) and reply[-1].status == "I"
        (err,) = errors(reply)
        return err
    finally:
        c.close()


def connect(proxy: ProxyProcess, user: str, app: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(proxy.dsn(user, application_name=app), autocommit=True)


def session_row(port: int, app: str) -> dict[str, str]:
    (row,) = [r for r in table(port, "SHOW SESSIONS")[1] if r["application_name"] == app]
    return row


def wait_for(check: object, what: str, attempts: int = 200) -> None:
    """Poll ``check()`` until true (an event to wait for, not a time limit being tested)."""
    stop = threading.Event()
    for _ in range(attempts):
        if check():  # type: ignore[operator]
            return
        stop.wait(0.05)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------------------- SHOW


SESSION_COLUMNS = [
    "id",
    "user",
    "tenant",
    "database",
    "addr",
    "state",
    "tx",
    "statement_age_s",
    "application_name",
    "tls",
    "connected_at",
    "statements",
    "refused",
    "held",
    "pinned",
]
COLUMNS = {
    "SHOW HELP": ["command", "description"],
    "SHOW VERSION": ["version"],
    "SHOW TENANTS": [
        "tenant",
        "tier",
        "schema",
        "backend",
        "region",
        "sessions",
        "backend_connections",
        "statements",
        "refusals",
        "bytes_in",
        "bytes_out",
        "paused",
        "limits",
        "limit_hits",
    ],
    "SHOW USERS": ["user", "tenant", "trusted", "role", "auth"],
    "SHOW SESSIONS": SESSION_COLUMNS,
    "SHOW CLIENTS": SESSION_COLUMNS,
    "SHOW SERVERS": ["id", "database", "user", "addr", "port", "pid", "state", "tls"],
    "SHOW POOLS": [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait",
        "pool_mode",
    ],
    "SHOW STATS": ["tenant", "statements", "refused", "bytes_in", "bytes_out", "avg_statement_ms"],
    "SHOW CONFIG": ["key", "value"],
    "SHOW KEYS": ["tenant", "version", "created_at", "destroyed_at"],
    "SHOW AUDIT": ["sink", "path", "queue_depth", "last_seq", "records_written", "records_dropped", "lag_s"],
}


@pytest.mark.parametrize("command", sorted(COLUMNS))
def test_show_columns(ops: tuple[ProxyProcess, int], command: str) -> None:
    _, port = ops
    assert table(port, command.lower() + ";")[0] == COLUMNS[command]


def test_show_static_values(ops: tuple[ProxyProcess, int]) -> None:
    _, port = ops
    help_rows = table(port, "SHOW HELP")[1]
    assert {r["command"] for r in help_rows} >= {"KILL SESSION <id>", "PAUSE [tenant]", "SHUTDOWN [WAIT]"}
    assert table(port, "SHOW VERSION")[1][0]["version"].startswith("tenantgate ")
    users = {r["user"]: r for r in table(port, "SHOW USERS")[1]}
    assert users["alice"] == {
        "user": "alice",
        "tenant": "acme",
        "trusted": "no",
        "role": "readwrite",
        "auth": "scram-sha-256",
    }
    assert users["svc"]["trusted"] == "yes" and users["svc"]["tenant"] == ""
    assert "dba" not in users  # admins are not tenant users
    tenants = {r["tenant"]: r for r in table(port, "SHOW TENANTS")[1]}
    assert set(tenants) == {"acme", "globex"} and tenants["acme"]["tier"] == "shared"
    # no keyring and no audit in this config
    assert table(port, "SHOW KEYS")[1] == []
    (audit,) = table(port, "SHOW AUDIT")[1]
    assert audit["sink"] == "disabled"


def test_show_config_masks_every_secret(ops: tuple[ProxyProcess, int], backend: Backend) -> None:
    proxy, port = ops
    out = psql(admin_dsn(port), "SHOW CONFIG")
    assert out.returncode == 0, out.stderr
    config = dict(line.split("\t", 1) for line in out.stdout.splitlines()[1:])
    assert config["backend.password"] == "***"
    assert config["users.alice.scram"] == "***" and config["admins.dba.scram"] == "***"
    assert config["listen.address"] == f"127.0.0.1:{proxy.port}"
    assert config["backend.database"] == backend.database
    for secret in ("dba-pw", "alice-pw", "bob-pw", "svc-pw", backend.password, "SCRAM-SHA-256$"):
        assert secret not in out.stdout


def test_sessions_servers_pools_describe_live_sessions(ops: tuple[ProxyProcess, int], backend: Backend) -> None:
    proxy, port = ops
    with connect(proxy, "alice", "ops-alice") as alice, connect(proxy, "svc", "ops-svc") as svc:
        alice.execute("SELECT 1")
        alice.execute("SELECT 2")
        svc.execute("BEGIN")
        (backend_pid,) = svc.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]

        a = session_row(port, "ops-alice")
        assert (a["user"], a["tenant"], a["database"], a["tls"]) == ("alice", "acme", backend.database, "no")
        assert (a["state"], a["tx"], a["statement_age_s"]) == ("idle", "I", "")
        assert a["statements"] == "2" and a["refused"] == "0"
        assert a["addr"].startswith("127.0.0.1:")
        s = session_row(port, "ops-svc")
        assert (s["state"], s["tx"], s["tenant"]) == ("idle in transaction", "T", "")
        assert table(port, "SHOW CLIENTS")[1] == table(port, "SHOW SESSIONS")[1]

        servers = {r["id"]: r for r in table(port, "SHOW SERVERS")[1]}
        assert servers[s["id"]]["pid"] == str(backend_pid)
        assert servers[s["id"]]["user"] == backend.role and servers[s["id"]]["port"] == str(backend.pg.port)
        assert servers[s["id"]]["state"] == "idle in transaction"

        pools = {(r["database"], r["user"]): r for r in table(port, "SHOW POOLS")[1]}
        assert pools[(backend.database, "alice")]["cl_active"] == "1"
        assert pools[(backend.database, "alice")]["pool_mode"] == "session"
        assert pools[(backend.database, "svc")]["sv_active"] == "1"  # in a transaction

        acme = {r["tenant"]: r for r in table(port, "SHOW TENANTS")[1]}["acme"]
        assert acme["sessions"] == "1" and acme["statements"] == "2" and int(acme["bytes_in"]) > 0
        svc.execute("ROLLBACK")


def test_running_statement_is_active_and_kill_session_ends_only_it(ops: tuple[ProxyProcess, int]) -> None:
    proxy, port = ops
    with connect(proxy, "svc", "ops-victim") as victim, connect(proxy, "svc", "ops-bystander") as bystander:
        failure: list[BaseException] = []

        def sleep() -> None:
            try:
                victim.execute("SELECT pg_sleep(60)")
            except psycopg.Error as exc:
                failure.append(exc)

        worker = threading.Thread(target=sleep)
        worker.start()
        wait_for(lambda: session_row(port, "ops-victim")["state"] == "active", "the sleep shows as active")
        row = session_row(port, "ops-victim")
        assert float(row["statement_age_s"]) >= 0

        out = psql(admin_dsn(port), f"KILL SESSION {row['id']}")
        assert out.returncode == 0 and out.stdout.strip() == "KILL 1", out.stderr
        worker.join(30)
        assert not worker.is_alive()
        assert failure and "administrator command" in str(failure[0])
        assert bystander.execute("SELECT 42").fetchone() == (42,)
        ids = {r["id"] for r in table(port, "SHOW SESSIONS")[1]}
        assert row["id"] not in ids and session_row(port, "ops-bystander")["id"] in ids


def test_kill_tenant_ends_that_tenants_sessions(ops: tuple[ProxyProcess, int]) -> None:
    proxy, port = ops
    with (
        connect(proxy, "bob", "ops-bob-1") as b1,
        connect(proxy, "bob", "ops-bob-2") as b2,
        connect(proxy, "alice", "ops-alice-k") as alice,
    ):
        out = psql(admin_dsn(port), "kill tenant globex;")
        assert out.returncode == 0 and out.stdout.strip() == "KILL 2", out.stderr
        for conn in (b1, b2):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert alice.execute("SELECT 7").fetchone() == (7,)


def test_pause_holds_a_tenant_until_resume(ops: tuple[ProxyProcess, int]) -> None:
    proxy, port = ops
    with connect(proxy, "alice", "ops-paused") as alice, connect(proxy, "bob", "ops-running") as bob:
        assert psql(admin_dsn(port), "PAUSE acme").stdout.strip() == "PAUSE"
        try:
            assert {r["tenant"]: r["paused"] for r in table(port, "SHOW TENANTS")[1]} == {"acme": "yes", "globex": "no"}
            result: list[object] = []
            finished = threading.Event()

            def query() -> None:
                result.append(alice.execute("SELECT 'released'").fetchone())
                finished.set()

            worker = threading.Thread(target=query)
            worker.start()
            # the other tenant is served meanwhile, and the paused query has not come back
            assert bob.execute("SELECT 'globex runs'").fetchone() == ("globex runs",)
            assert not finished.wait(0.5)
        finally:
            assert psql(admin_dsn(port), "RESUME acme").stdout.strip() == "RESUME"
        worker.join(30)
        assert result == [("released",)]
        assert alice.execute("SELECT 1").fetchone() == (1,)


def test_wired_pools_count_clients_held_by_pause(ops: tuple[ProxyProcess, int], backend: Backend) -> None:
    """Depends on Session.held_since (set when PAUSE first holds a message, cleared on resume)."""
    proxy, port = ops
    with connect(proxy, "bob", "ops-held") as bob:
        assert psql(admin_dsn(port), "PAUSE globex").returncode == 0
        try:
            worker = threading.Thread(target=lambda: bob.execute("SELECT 1"))
            worker.start()
            wait_for(
                lambda: (
                    {(r["database"], r["user"]): r for r in table(port, "SHOW POOLS")[1]}[(backend.database, "bob")][
                        "cl_waiting"
                    ]
                    == "1"
                ),
                "the held client shows as waiting",
            )
            # the session's published snapshot says why it holds
            assert session_row(port, "ops-held")["held"] == "PAUSE"
        finally:
            assert psql(admin_dsn(port), "RESUME globex").returncode == 0
        worker.join(30)
        pool = {(r["database"], r["user"]): r for r in table(port, "SHOW POOLS")[1]}[(backend.database, "bob")]
        assert (pool["cl_active"], pool["cl_waiting"]) == ("1", "0")


# ---------------------------------------------------------------------------- errors and protocol


def test_unknown_commands_and_bad_arguments(ops: tuple[ProxyProcess, int]) -> None:
    _, port = ops
    out = psql(admin_dsn(port), "SHOW NOTHING")
    assert out.returncode != 0
    for valid in ("SHOW TENANTS", "RELOAD", "PAUSE [tenant]", "KILL SESSION <id>", "SHUTDOWN [WAIT]"):
        assert valid in out.stderr
    assert admin_error(port, "SELECT 1").sqlstate == "42601"
    assert admin_error(port, "KILL SESSION").sqlstate == "42601"
    assert admin_error(port, "KILL SESSION abc").sqlstate == "22P02"
    assert admin_error(port, "KILL SESSION 999999").sqlstate == "42704"
    assert admin_error(port, "SHUTDOWN NOW").sqlstate == "42601"
    err = admin_error(port, "PAUSE nope")
    assert err.sqlstate == "42704" and "acme, globex" in err.message
    assert admin_error(port, "KILL TENANT nope").sqlstate == "42704"
    err = admin_error(port, "ROTATE KEY acme")
    assert (err.sqlstate, err.message) == ("0A000", "no keyring configured")


def test_simple_query_batches_and_extended_protocol(ops: tuple[ProxyProcess, int]) -> None:
    _, port = ops
    c = RawClient(port)
    try:
        assert not errors(c.login("dba", ADMIN_PW))
        # extended protocol: one 0A000, everything up to Sync skipped, then ReadyForQuery
        c.send(
            codec.Parse("", "SHOW VERSION").encode()
            + codec.Bind("", "", (), (), ()).encode()
            + codec.Execute("", 0).encode()
            + codec.Sync().encode()
        )
        reply = c.until_ready()
        assert [type(m) for m in reply] == [codec.ErrorResponse, codec.ReadyForQuery]
        assert errors(reply)[0].sqlstate == "0A000"

        tags = [m.tag for m in c.query("show version; SHOW USERS;") if isinstance(m, codec.CommandComplete)]
        assert tags == ["SHOW", "SHOW"]
        # an error stops the rest of the query string, as in PostgreSQL
        reply = c.query("SHOW VERSION; BOGUS; SHOW USERS")
        assert [m.tag for m in reply if isinstance(m, codec.CommandComplete)] == ["SHOW"]
        assert len(errors(reply)) == 1
        assert [type(m) for m in c.query(" ; ")] == [codec.Simple, codec.ReadyForQuery]
    finally:
        c.close()


def test_only_admins_log_in(ops: tuple[ProxyProcess, int]) -> None:
    proxy, port = ops

    def failure(p: int, user: str, password: str) -> codec.ErrorResponse:
        c = RawClient(p)
        try:
            (err,) = errors(c.login(user, password))
            return err
        finally:
            c.close()

    # a tenant user with the right password looks exactly like a wrong password or an unknown user
    for user, password in (("alice", "alice-pw"), ("svc", "svc-pw"), ("dba", "wrong"), ("nobody", "x")):
        err = failure(port, user, password)
        assert (err.sqlstate, err.message) == ("28P01", f'password authentication failed for user "{user}"')
    # and an admin is not a user of the main port
    assert failure(proxy.port, "dba", ADMIN_PW).sqlstate == "28P01"
    out = psql(admin_dsn(port, "alice", "alice-pw"), "SHOW VERSION")
    assert out.returncode != 0 and "password authentication failed" in out.stderr


# ---------------------------------------------------------------------------- RELOAD, SHUTDOWN, TLS


def test_reload_applies_a_good_file_and_keeps_the_old_one_on_a_bad_file(backend: Backend, tmp_path: Path) -> None:
    proxy, ports = launch_with_ports(tmp_path, backend, "admin")
    port = ports["admin"]
    try:
        original = proxy.config_path.read_text()
        carol = '\n[users.carol]\ntenant = "acme"\npassword = "carol-pw"\n'
        proxy.users["carol"] = ("acme", "carol-pw")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(proxy.dsn("carol")).close()

        proxy.config_path.write_text(original.replace("workers = 1\n", "workers = 2\n", 1) + carol)
        out = psql(admin_dsn(port), "RELOAD")
        assert out.returncode == 0 and out.stdout.strip() == "RELOAD", out.stderr
        assert "WARNING:  listen.workers changed: needs a restart" in out.stderr
        with psycopg.connect(proxy.dsn("carol"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert "carol" in {r["user"] for r in table(port, "SHOW USERS")[1]}

        proxy.config_path.write_text(original + '\n[users.dave]\ntenant = "nope"\npassword = "dave-pw"\n')
        out = psql(admin_dsn(port), "RELOAD")
        assert out.returncode != 0
        assert "reload refused" in out.stderr and "users.dave.tenant" in out.stderr
        assert admin_error(port, "RELOAD").sqlstate == "F0000"
        with psycopg.connect(proxy.dsn("carol"), autocommit=True) as conn:  # the old config stays
            assert conn.execute("SELECT 2").fetchone() == (2,)
        assert "dave" not in {r["user"] for r in table(port, "SHOW USERS")[1]}
    finally:
        proxy.stop()


def test_shutdown_stops_the_proxy(backend: Backend, tmp_path: Path) -> None:
    proxy, ports = launch_with_ports(tmp_path, backend, "admin")
    try:
        idle = connect(proxy, "svc", "ops-idle")
        out = psql(admin_dsn(ports["admin"]), "SHUTDOWN")
        assert out.returncode == 0 and out.stdout.strip() == "SHUTDOWN", out.stderr
        assert proxy.proc.wait(30) == 0
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
        idle.close()
    finally:
        proxy.stop()


def test_admin_port_follows_tls_require(backend: Backend, tmp_pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_pki.server
    tls = f'[tls]\nmode = "require"\ncert = "{cert}"\nkey = "{key}"\n'
    proxy, ports = launch_with_ports(tmp_path, backend, "admin", tls=tls)
    try:
        plain = psql(admin_dsn(ports["admin"]), "SHOW VERSION")
        assert plain.returncode != 0 and "requires an SSL connection" in plain.stderr
        dsn = admin_dsn(ports["admin"], sslmode="verify-full") + f"&sslrootcert={tmp_pki.ca_cert}"
        secure = psql(dsn, "SHOW VERSION")
        assert secure.returncode == 0 and "tenantgate" in secure.stdout, secure.stderr
    finally:
        proxy.stop()
