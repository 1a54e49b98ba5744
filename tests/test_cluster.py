"""Three tenantgate instances behind HAProxy, tenants on two PostgreSQL servers (issue 19).

One config file for all three (``instance_env``, per-instance addresses under [cluster] peers),
the shipped docker/haproxy.cfg with its servers pointed at the instances, two real postmasters:
acme and hooli on the first (shared tier), initech on the second (dedicated tier). In session and
transaction pooling.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from bench.procs import wait_listening
from tenantgate.audit.framing import frame
from tenantgate.proxy import codec
from tenantgate.proxy.peers import sign
from tenantgate.proxy.sandbox.pgcluster import PgServer, ThrowawayCluster, free_port

from .harness import ORDERS_SCOPING, Backend, RawClient, errors

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

INSTANCES = ("a", "b", "c")
SECRET = secrets.token_urlsafe(32)
ADMIN_PW = "dba-pw"
USERS = {"alice": ("acme", "alice-pw"), "hank": ("hooli", "hank-pw"), "carol": ("initech", "carol-pw")}
SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders VALUES ('acme', 1, 'a1'), ('acme', 2, 'a2'), ('hooli', 1, 'h1');
"""
DEDICATED_SETUP = "CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text);\n" \
    "INSERT INTO orders VALUES ('initech', 1, 'i1');"  # fmt: skip


@dataclass
class Instance:
    name: str
    port: int
    admin: int
    metrics: int
    peer: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def dsn(self, user: str) -> str:
        return _dsn(user, self.port)

    def admin_query(self, sql: str) -> list[tuple[object, ...]]:
        dsn = f"postgresql://dba:{ADMIN_PW}@127.0.0.1:{self.admin}/admin?sslmode=disable"
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []


@dataclass
class Deployment:
    tmp: Path
    config: Path
    first: Backend
    second: ThrowawayCluster
    instances: dict[str, Instance]
    lb_port: int
    mode: str
    haproxy: subprocess.Popen[bytes] | None = None
    extra_users: dict[str, tuple[str, str]] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", "TENANTGATE_INSTANCE": name}

    def start(self, name: str) -> None:
        inst = self.instances[name]
        with open(inst.log_path, "ab") as log:
            inst.proc = subprocess.Popen(
                [sys.executable, "-m", "tenantgate.proxy.cli", "serve", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(name),
            )  # fmt: skip
        wait_listening(inst.port, inst.proc, inst.log_path)
        wait_listening(inst.peer, inst.proc, inst.log_path)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.instances[name].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def audit_dir(self, name: str) -> Path:
        return self.tmp / "audit" / name


def _dsn(user: str, port: int, dbname: str = "app") -> str:
    password = {**USERS}.get(user, ("", f"{user}-pw"))[1]
    return f"postgresql://{user}:{password}@127.0.0.1:{port}/{dbname}?sslmode=disable&connect_timeout=10"


def config_text(first: Backend, second: Backend, instances: dict[str, Instance], tmp: Path, mode: str,
                workers: int = 1, acme_limit: int = 3) -> str:  # fmt: skip
    peers = ", ".join(
        f'{i.name} = {{ peer = "127.0.0.1:{i.peer}", address = "127.0.0.1:{i.port}", '
        f'admin = "127.0.0.1:{i.admin}", metrics = "127.0.0.1:{i.metrics}" }}'
        for i in instances.values()
    )
    users = "".join(f'[users.{u}]\ntenant = "{t}"\npassword = "{pw}"\n' for u, (t, pw) in USERS.items())
    pool = f'pool_mode = "{mode}"\npool_size = 6\n'
    key = tmp / "audit.key"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    return (
        '[listen]\naddress = "127.0.0.1:1"\n' + (f"workers = {workers}\n" if workers > 1 else "") + "\n"
        f'[backend]\nhost = "127.0.0.1"\nport = {first.pg.port}\nuser = "{first.role}"\n'
        f'password = "{first.password}"\ndatabase = "{first.database}"\nsslmode = "disable"\n{pool}\n'
        "[server]\nstartup_timeout = 5.0\nshutdown_timeout = 5.0\n\n"
        f'[tenants.acme]\ntier = "shared"\nmax_client_connections = {acme_limit}\n\n'
        '[tenants.hooli]\ntier = "shared"\n\n'
        '[tenants.initech]\ntier = "dedicated"\n\n'
        f'[tenants.initech.backend]\nhost = "127.0.0.1"\nport = {second.pg.port}\nuser = "{second.role}"\n'
        f'password = "{second.password}"\ndatabase = "{second.database}"\nsslmode = "disable"\n{pool}\n'
        f"{users}\n"
        f'[admins.dba]\npassword = "{ADMIN_PW}"\n\n'
        f"{ORDERS_SCOPING}\n"
        f'[audit]\npath = "{tmp}/audit/{{instance}}/audit.jsonl"\nkey = "file:{key}"\ndurability = "strict"\n\n'
        f'[cluster]\ninstance_env = "TENANTGATE_INSTANCE"\npassword = "{SECRET}"\npeers = {{ {peers} }}\n'
    )


def haproxy_config(instances: dict[str, Instance], port: int) -> str:
    """docker/haproxy.cfg with its bind and server lines pointed at the loopback instances."""
    shipped = (Path(__file__).parent.parent / "docker" / "haproxy.cfg").read_text()
    lines = [line for line in shipped.splitlines() if not line.strip().startswith("server ")]
    text = "\n".join(lines).replace("bind 0.0.0.0:5432", f"bind 127.0.0.1:{port}")
    text = text.replace("maxconn 20000", "maxconn 1000")  # within a test runner's file descriptor limit
    text = text.replace("balance leastconn", "balance roundrobin")  # spreads one test's connections evenly
    servers = "".join(f"    server tg-{i.name} 127.0.0.1:{i.port} check port {i.metrics}\n" for i in instances.values())
    return text + "\n" + servers


@contextlib.contextmanager
def deployed(pg: PgServer, tmp: Path, mode: str, workers: int = 1, acme_limit: int = 3) -> Iterator[Deployment]:
    """Three instances (of ``workers`` processes each) behind HAProxy, the two servers, running."""
    first = Backend.create(pg, f"clu{workers}_{mode}", SETUP, owner=False)
    pg.execute(f'GRANT CREATE ON DATABASE "{first.database}" TO "{first.role}"')  # a move creates t_hooli
    with ThrowawayCluster(log_to=tmp / "second.log") as server:
        second = Backend.create(server, f"clu2w{workers}_{mode}", DEDICATED_SETUP, owner=False)
        instances = {
            n: Instance(n, free_port(), free_port(), free_port(), free_port(), tmp / f"{n}.log") for n in INSTANCES
        }
        config = tmp / "tenantgate.toml"
        config.write_text(config_text(first, second, instances, tmp, mode, workers, acme_limit))
        dep = Deployment(tmp, config, first, server, instances, free_port(), mode)
        try:
            for name in INSTANCES:
                dep.start(name)
            lb = tmp / "haproxy.cfg"
            lb.write_text(haproxy_config(instances, dep.lb_port))
            with open(tmp / "haproxy.log", "wb") as log:
                dep.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(lb)], stdout=log, stderr=subprocess.STDOUT)
            wait_listening(dep.lb_port, dep.haproxy, tmp / "haproxy.log")
            time.sleep(2.5)  # two passed health checks (rise 2, inter 1s) before the servers count as up
            yield dep
        finally:
            if dep.haproxy is not None:
                dep.haproxy.terminate()
                dep.haproxy.wait(10)
            for name in INSTANCES:
                dep.stop(name)


@pytest.fixture(scope="module", params=["session", "transaction"])
def deployment(request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:  # fmt: skip
    with deployed(pg, tmp_path_factory.mktemp(f"cluster-{request.param}"), request.param) as dep:
        yield dep


def rows(dsn: str, sql: str = "SELECT tenant_id, id FROM orders ORDER BY id") -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_tenants_of_both_servers_work_through_the_balancer(deployment: Deployment) -> None:
    for _ in range(len(INSTANCES)):  # round robin: every instance serves each tenant once
        assert rows(_dsn("alice", deployment.lb_port)) == [("acme", 1), ("acme", 2)]
        assert rows(_dsn("carol", deployment.lb_port)) == [("initech", 1)]
    served = {n: i.admin_query("SHOW STATS") for n, i in deployment.instances.items()}
    assert all(served.values()), served


def _sleeping(port: int, user: str = "alice") -> tuple[RawClient, codec.BackendKeyData]:
    client = RawClient(port, timeout=30)
    key = next(m for m in client.login(user, USERS[user][1], "app") if isinstance(m, codec.BackendKeyData))
    client.send(codec.Query("SELECT pg_sleep(20)").encode())
    time.sleep(0.5)
    return client, key


def _cancel(port: int, pid: int, secret: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(codec.CancelRequest(pid, secret).encode())
        assert s.recv(1) == b""  # the proxy closes a cancel connection without a word


@pytest.mark.parametrize("via", ["other instance", "balancer"])
def test_a_cancel_sent_to_the_wrong_instance_cancels_the_right_query(deployment: Deployment, via: str) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    client, key = _sleeping(a.port)
    started = time.monotonic()
    _cancel(b.port if via == "other instance" else deployment.lb_port, key.pid, key.secret)
    (err,) = errors(client.until_ready())
    assert err.sqlstate == "57014" and time.monotonic() - started < 10
    client.close()


def test_wrong_or_foreign_keys_cancel_nothing(deployment: Deployment) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    victim, key = _sleeping(a.port, "carol")
    other = RawClient(b.port)
    other_key = next(m for m in other.login("alice", "alice-pw", "app") if isinstance(m, codec.BackendKeyData))
    started = time.monotonic()
    for pid, secret in [(key.pid, key.secret ^ (1 << 8)), (key.pid + 1, key.secret), (other_key.pid, key.secret),
                        (key.pid, other_key.secret)]:  # fmt: skip
        _cancel(b.port, pid, secret)
        _cancel(deployment.lb_port, pid, secret)
    time.sleep(1.0)
    victim.send(codec.Query("SELECT 1").encode())  # queued behind the sleep: answered only once it ends
    victim.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        victim.recv_message()
    assert time.monotonic() - started < 20  # the sleep still ran: nothing was cancelled
    victim.close()
    other.close()


def test_forged_peer_requests_are_refused(deployment: Deployment) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    victim, key = _sleeping(a.port)
    body = {"op": "cancel", "pid": key.pid, "secret": key.secret}
    forged = [
        sign(b"x" * 32, "b", body),  # wrong secret
        {**sign(SECRET.encode(), "b", {"op": "ping"}), "body": body},  # body swapped under a valid MAC
        sign(SECRET.encode(), "mallory", body),  # not a configured peer
        sign(SECRET.encode(), "b", body, now=time.time() - 3600),  # stale
        sign(SECRET.encode(), "a", body),  # a's own id, sent to a
    ]
    replay = sign(SECRET.encode(), "b", {"op": "admin", "command": "PAUSE hooli"})
    for request in [*forged, replay, replay]:
        with socket.create_connection(("127.0.0.1", a.peer), timeout=5) as s:
            s.sendall(frame(json.dumps(request).encode()))
            s.recv(1 << 16)
    victim.sock.settimeout(2.0)
    with pytest.raises(TimeoutError):
        victim.recv_message()  # still sleeping: no forged cancel got through
    victim.sock.settimeout(30)
    assert "refused: bad MAC" in a.log_path.read_text()
    assert "replayed nonce" in a.log_path.read_text()
    # the one authentic PAUSE ran once; undo it everywhere
    a.admin_query("RESUME hooli")
    _cancel(b.port, key.pid, key.secret)
    assert errors(victim.until_ready())[0].sqlstate == "57014"
    victim.close()


def test_connection_limit_holds_across_instances(deployment: Deployment) -> None:
    """max_client_connections = 3 over 3 instances: each admits ceil(3 / 3) = 1 (README tolerance)."""
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    refused: list[str] = []
    try:
        for _ in range(6):
            try:
                held.append(psycopg.connect(_dsn("alice", deployment.lb_port), autocommit=True))
            except psycopg.OperationalError as exc:
                refused.append(str(exc))
        assert 1 <= len(held) <= 3 and len(refused) == 6 - len(held)
        assert all("53300" in r or "too many" in r for r in refused), refused
    finally:
        for conn in held:
            conn.close()
    for inst in deployment.instances.values():  # the same share when connecting to an instance directly
        with psycopg.connect(inst.dsn("alice")), pytest.raises(psycopg.OperationalError, match=r"too many|53300"):
            psycopg.connect(inst.dsn("alice")).close()


def test_reload_on_one_instance_takes_effect_on_all(deployment: Deployment) -> None:
    a = deployment.instances["a"]
    dsn_of = {n: _dsn("dave", i.port) for n, i in deployment.instances.items()}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn_of["c"]).close()
    with deployment.config.open("a") as f:
        f.write('\n[users.dave]\ntenant = "hooli"\npassword = "dave-pw"\n')
    a.admin_query("RELOAD")  # returns once every instance reloaded
    for dsn in dsn_of.values():
        assert rows(dsn) == [("hooli", 1)]
    for name in ("b", "c"):  # each instance's own audit says who asked, on which instance
        log = "".join(f.read_text() for f in deployment.audit_dir(name).glob("*.jsonl"))
        assert '"sql":"RELOAD"' in log and '"user":"dba@a"' in log


def test_pause_on_one_instance_holds_every_instance_until_resume_on_another(deployment: Deployment) -> None:
    a, b, c = (deployment.instances[n] for n in INSTANCES)
    a.admin_query("PAUSE hooli")
    client = RawClient(c.port)
    client.login("hank", "hank-pw", "app")
    client.send(codec.Query("SELECT count(*) FROM orders").encode())
    client.sock.settimeout(1.5)
    with pytest.raises(TimeoutError):
        client.recv_message()  # held on c
    assert rows(_dsn("alice", c.port)) == [("acme", 1), ("acme", 2)]  # other tenants go on
    paused = {n: {r[0]: r for r in i.admin_query("SHOW TENANTS")}["hooli"] for n, i in deployment.instances.items()}
    assert all("yes" in [str(v) for v in row] for row in paused.values()), paused
    listed = a.admin_query("SHOW SESSIONS")  # every instance's sessions, each with its instance
    assert ("hank", "c") in {(r[1], r[-1]) for r in listed}, listed
    b.admin_query("RESUME hooli")
    client.sock.settimeout(10)
    assert not errors(client.until_ready())
    client.close()


def test_tenant_move_through_one_instance_switches_all(deployment: Deployment) -> None:
    env = {**deployment.env("a"), "TENANTGATE_ADMIN_PASSWORD": ADMIN_PW}
    cmd = [sys.executable, "-m", "tenantgate.proxy.cli", "tenant", "move", "hooli", "--to-tier", "schema",
           "--config", str(deployment.config)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    db = deployment.first.database
    for n, inst in deployment.instances.items():  # every instance writes hooli's rows into its schema now
        with psycopg.connect(inst.dsn("hank"), autocommit=True) as conn:
            conn.execute("INSERT INTO orders (id, note) VALUES (%s, 'moved')", (100 + INSTANCES.index(n),))
    pg = deployment.first.pg
    assert pg.fetch("SELECT id FROM t_hooli.orders WHERE note = 'moved' ORDER BY id", dbname=db) == [
        (100,),
        (101,),
        (102,),
    ]
    assert pg.fetch("SELECT 1 FROM public.orders WHERE note = 'moved'", dbname=db) == []


def _login_error(port: int, user: str) -> codec.ErrorResponse | None:
    """The error of a login and first statement (transaction pooling connects at the statement)."""
    client = RawClient(port)
    try:
        found = errors(client.login(user, USERS[user][1], "app"))
        if not found and not client.closed_now():
            found = errors(client.query("SELECT 1"))
        return found[0] if found else None
    finally:
        client.close()


def test_one_server_down_fails_only_its_tenants(deployment: Deployment) -> None:
    deployment.second.halt()
    try:
        first = [_login_error(i.port, "carol") for i in deployment.instances.values()]
        assert all(e is not None and e.sqlstate == "08006" for e in first), first  # connection refused
        for _ in range(2):  # then, within the retry window, at once and saying why
            for inst in deployment.instances.values():
                started = time.monotonic()
                err = _login_error(inst.port, "carol")
                assert err is not None and err.sqlstate == "08006", err
                assert time.monotonic() - started < 2
            assert rows(_dsn("alice", deployment.lb_port)) == [("acme", 1), ("acme", 2)]
        # the failure just seen is reported as such; each worker process remembers its own (a
        # worker that saw none, or not within health.RETRY, connects and is refused first)
        said = [_login_error(deployment.instances["a"].port, "carol") for _ in range(6)]
        assert all(e is not None and e.sqlstate == "08006" for e in said), said
        assert any(e is not None and "is down" in e.message for e in said), said
    finally:
        deployment.second.restart()
    time.sleep(1.1)  # health.RETRY: the next try reaches the server again
    for _ in range(len(INSTANCES)):  # recovered on every instance
        assert rows(_dsn("carol", deployment.lb_port)) == [("initech", 1)]


def verify_per_instance(deployment: Deployment) -> None:
    """`audit verify --per-instance` over every instance's log passes and names each instance once."""
    key = deployment.tmp / "audit.key"
    verify = subprocess.run(
        [sys.executable, "-m", "tenantgate.proxy.cli", "audit", "verify", "--key", f"file:{key}", "--per-instance",
         *(str(deployment.audit_dir(n)) for n in INSTANCES)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert [line.split(" ")[1] for line in verify.stdout.splitlines() if line.startswith("instance")] == list(INSTANCES)


def _audited(path: Path, marker: str) -> int:
    """Completed statements with ``marker`` in an instance's audit log (their "end" records)."""
    lines = (line for f in sorted(path.glob("*.jsonl")) for line in f.read_text().splitlines())
    return sum(marker in line and '"phase":"end"' in line for line in lines)


def test_killing_an_instance_loses_no_committed_record_and_the_others_serve(deployment: Deployment) -> None:
    c = deployment.instances["c"]
    marker = f"killed_{secrets.token_hex(4)}"
    with psycopg.connect(c.dsn("alice"), autocommit=True) as conn:
        for i in range(5):
            conn.execute(f"SELECT {i} AS {marker}")
    deployment.stop("c", signal.SIGKILL)
    assert _audited(deployment.audit_dir("c"), marker) == 5  # strict durability: written before the answer
    for _ in range(2 * len(INSTANCES)):  # the balancer routes around the dead instance
        assert rows(_dsn("alice", deployment.lb_port)) == [("acme", 1), ("acme", 2)]
    deployment.start("c")  # a restarted instance continues its chain (unclean start recorded)
    for name in INSTANCES:
        deployment.stop(name)
    verify_per_instance(deployment)
