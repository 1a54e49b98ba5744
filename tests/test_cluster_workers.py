"""Three instances of two worker processes each behind HAProxy (issue 19: workers in a cluster).

The deployment of test_cluster.py with ``[listen] workers = 2``: every instance is a supervisor
that serves its peer channel, admin and metrics ports, and two workers on its client port. A
cancel key names its instance and its worker (proxy/cancel.py), so these tests read the worker
off the keys they get and keep opening sessions until every worker holds one: each case then
reaches both workers of an instance, whichever one the kernel handed the connection to.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import RawClient, errors
from .test_cluster import ADMIN_PW, INSTANCES, USERS, Deployment, _cancel, _dsn, deployed, rows, verify_per_instance
from .test_cluster import test_one_server_down_fails_only_its_tenants as test_one_server_down_fails_only_its_tenants
from .test_cluster import (
    test_tenant_move_through_one_instance_switches_all as test_tenant_move_through_one_instance_switches_all,
)
from .test_cluster import (
    test_tenants_of_both_servers_work_through_the_balancer as test_tenants_of_both_servers_work_through_the_balancer,
)

# The three imported tests run here again, on this module's deployment of two workers per instance.

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")

WORKERS = 2
LIMIT = 6  # acme's max_client_connections: ceil(6 / (3 instances x 2 workers)) = 1 per worker
TRIES = 24  # sessions opened at most to find one on each worker (a miss is 2**-23 likely)


@pytest.fixture(scope="module", params=["session", "transaction"])
def deployment(request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"cluster-workers-{request.param}")
    with deployed(pg, tmp, request.param, workers=WORKERS, acme_limit=LIMIT) as dep:
        yield dep


def where(key: codec.BackendKeyData) -> tuple[int, int]:
    """(instance index, worker index) a key names: the encoding of proxy/cancel.py."""
    secret = key.secret & 0xFFFFFFFF
    return secret % len(INSTANCES), secret // len(INSTANCES) % WORKERS


def shifted(secret: int, by: int) -> int:
    """Another key ``by`` away in unsigned 32-bit space (no wrap-around, which would break the modulus)."""
    value = secret & 0xFFFFFFFF
    value = value + by if value + by < 2**32 else value - by
    return value - 2**32 if value >= 2**31 else value


def one_per_worker(port: int, user: str, password: str) -> dict[int, tuple[RawClient, codec.BackendKeyData]]:
    """A logged-in session on each worker of the instance at ``port``: worker -> (client, key)."""
    found: dict[int, tuple[RawClient, codec.BackendKeyData]] = {}
    for _ in range(TRIES):
        client = RawClient(port, timeout=30)
        messages = client.login(user, password, "app")
        assert not errors(messages), messages
        key = next(m for m in messages if isinstance(m, codec.BackendKeyData))
        worker = where(key)[1]
        if worker in found:
            client.close()
            continue
        found[worker] = (client, key)
        if len(found) == WORKERS:
            return found
    raise AssertionError(f"{TRIES} sessions did not reach every worker: {sorted(found)}")


def test_keys_name_the_instance_and_worker_that_issued_them(deployment: Deployment) -> None:
    for index, inst in enumerate(deployment.instances.values()):
        sessions = one_per_worker(inst.port, "hank", USERS["hank"][1])
        assert {where(key) for _, key in sessions.values()} == {(index, w) for w in range(WORKERS)}
        for client, _ in sessions.values():
            client.close()


@pytest.mark.parametrize("via", ["same instance", "other instance", "balancer"])
def test_a_cancel_reaches_the_worker_that_owns_the_key(deployment: Deployment, via: str) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    port = {"same instance": a.port, "other instance": b.port, "balancer": deployment.lb_port}[via]
    sessions = one_per_worker(a.port, "hank", USERS["hank"][1])
    for client, _ in sessions.values():
        client.send(codec.Query("SELECT pg_sleep(20)").encode())
    time.sleep(0.5)
    for worker, (client, key) in sessions.items():
        started = time.monotonic()
        _cancel(port, key.pid, key.secret)
        (err,) = errors(client.until_ready())
        assert err.sqlstate == "57014" and time.monotonic() - started < 10, (worker, err)
        assert not errors(client.query("SELECT 1"))  # the session goes on
        client.close()


def test_wrong_keys_cancel_nothing_on_any_worker(deployment: Deployment) -> None:
    a = deployment.instances["a"]
    sessions = one_per_worker(a.port, "carol", USERS["carol"][1])
    for client, _ in sessions.values():
        client.send(codec.Query("SELECT pg_sleep(20)").encode())
    time.sleep(0.5)
    started = time.monotonic()
    n = len(INSTANCES)
    for _, key in sessions.values():
        wrong = [
            (key.pid, shifted(key.secret, 7 * n * WORKERS)),  # this worker's key space, another secret
            (key.pid, shifted(key.secret, n)),  # the other worker's key space
            (key.pid, shifted(key.secret, 1)),  # another instance's
            (key.pid + 1, key.secret),
        ]
        assert [where(codec.BackendKeyData(p, s)) for p, s in wrong[:2]] == [where(key), (0, 1 - where(key)[1])]
        for pid, secret in wrong:
            for inst in deployment.instances.values():
                _cancel(inst.port, pid, secret)
            _cancel(deployment.lb_port, pid, secret)
    time.sleep(1.0)
    for client, _ in sessions.values():
        client.send(codec.Query("SELECT 1").encode())  # queued behind the sleep: answered only once it ends
        client.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recv_message()
    assert time.monotonic() - started < 20  # the sleeps still ran: nothing was cancelled
    for client, _ in sessions.values():
        client.close()


def _connect_all(dsn: str, count: int) -> tuple[list[psycopg.Connection[tuple[object, ...]]], list[str]]:
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    refused: list[str] = []
    for _ in range(count):
        try:
            held.append(psycopg.connect(dsn, autocommit=True))
        except psycopg.OperationalError as exc:
            refused.append(str(exc))
    return held, refused


def test_connection_limit_holds_across_instances_and_workers(deployment: Deployment) -> None:
    """max_client_connections = 6 over 3 instances x 2 workers: each worker admits 1 (README tolerance:
    never more than the limit when instances x workers divides it; early refusal when unevenly spread)."""
    held, refused = _connect_all(_dsn("alice", deployment.lb_port), 4 * LIMIT)
    try:
        # round robin gives each instance 8 tries: at least one of its workers admits one of them
        assert len(INSTANCES) <= len(held) <= LIMIT, (len(held), refused)
        assert all("53300" in r or "too many" in r for r in refused), refused
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.5)  # the closed sessions are counted out
    for inst in deployment.instances.values():  # one instance alone: at most one per worker
        held, refused = _connect_all(inst.dsn("alice"), 3 * WORKERS)
        try:
            assert 1 <= len(held) <= WORKERS and all("too many" in r for r in refused), (len(held), refused)
        finally:
            for conn in held:
                conn.close()


def test_pause_on_one_instance_holds_every_worker_of_every_instance(deployment: Deployment) -> None:
    a, b = deployment.instances["a"], deployment.instances["b"]
    a.admin_query("PAUSE hooli")
    held = [s for inst in deployment.instances.values() for s in one_per_worker(inst.port, "hank", "hank-pw").values()]
    try:
        for client, _ in held:
            client.send(codec.Query("SELECT count(*) FROM orders").encode())
        for client, _ in held:
            client.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.recv_message()  # held on every worker
        listed = a.admin_query("SHOW SESSIONS")  # every worker of every instance, each row naming both
        placed = {(r[-2], r[-1]) for r in listed if r[1] == "hank"}
        assert placed == {(str(w), n) for n in INSTANCES for w in range(WORKERS)}, listed
    finally:
        b.admin_query("RESUME hooli")
    for client, _ in held:
        client.sock.settimeout(10)
        assert not errors(client.until_ready())
        client.close()


def _admin_cli(deployment: Deployment, instance: str, *words: str) -> subprocess.CompletedProcess[str]:
    env = {**deployment.env(instance), "TENANTGATE_ADMIN_PASSWORD": ADMIN_PW}
    cmd = [sys.executable, "-m", "tenantgate.proxy.cli", "admin", "--config", str(deployment.config), *words]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def test_reload_from_the_cli_on_one_instance_reaches_every_worker(deployment: Deployment) -> None:
    with deployment.config.open("a") as f:
        f.write('\n[users.wendy]\ntenant = "hooli"\npassword = "wendy-pw"\n')
    done = _admin_cli(deployment, "c", "RELOAD")  # returns once every worker of every instance reloaded
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = _admin_cli(deployment, "c", "RELOAD", "NOW")
    assert wrong.returncode == 1 and "42601" in wrong.stderr, wrong.stderr
    for inst in deployment.instances.values():
        for client, _ in one_per_worker(inst.port, "wendy", "wendy-pw").values():  # logins succeed everywhere
            client.close()
    seen = rows(_dsn("wendy", deployment.lb_port))  # hooli's rows (the move test may have added some)
    assert seen == rows(_dsn("hank", deployment.lb_port)) and ("hooli", 1) in seen


def test_each_instance_keeps_one_chain_for_its_workers(deployment: Deployment) -> None:
    marker = "workers_audit_marker"
    for inst in deployment.instances.values():
        with psycopg.connect(inst.dsn("alice"), autocommit=True) as conn:
            conn.execute(f"SELECT 1 AS {marker}")
    for name in INSTANCES:
        deployment.stop(name, signal.SIGTERM)
    verify_per_instance(deployment)
    for name in INSTANCES:
        text = "".join(f.read_text() for f in deployment.audit_dir(name).glob("*.jsonl"))
        assert marker in text
