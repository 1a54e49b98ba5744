"""Several worker processes on one port: spreading, cancel routing, admin and metrics
aggregation, signals, restarts and one audit chain (real PostgreSQL, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tenantgate.config import load_config
from tenantgate.proxy import codec
from tenantgate.proxy.cancel import MAX_PID, CancelRegistry
from tenantgate.proxy.console.merge import merge_expositions
from tenantgate.proxy.placement import Placement
from tenantgate.proxy.process import Proxy
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin

from .harness import ORDERS_SCOPING, ORDERS_SETUP, Backend, ProxyProcess, config_text, launch_with_ports

WORKERS = "workers = 2\n"
SLEEP = "SELECT pg_sleep(20)"
Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "workers", ORDERS_SETUP, owner=False)


def launch(tmp: Path, backend: Backend, extra: str = "", backend_extra: str = "") -> tuple[ProxyProcess, int, int]:
    """A two-worker proxy with admin and metrics ports, once every worker is ready."""
    proxy, ports = launch_with_ports(
        tmp,
        backend,
        "admin",
        "metrics",
        listen=WORKERS,
        scoping=ORDERS_SCOPING,
        extra=extra,
        backend_extra=backend_extra,
    )
    wait_for(lambda: ready(ports["metrics"]), "both workers ready")
    return proxy, ports["admin"], ports["metrics"]


@pytest.fixture(scope="module")
def two(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, int, int]]:
    proxy, admin, metrics = launch(tmp_path_factory.mktemp("workers"), backend)
    yield proxy, admin, metrics
    assert proxy.stop() == 0, proxy.log()


def wait_for(check: Callable[[], object], what: str, attempts: int = 400) -> None:
    """Poll ``check()`` until true (an event to wait for, not a time limit being tested)."""
    pause = threading.Event()
    for _ in range(attempts):
        if check():
            return
        pause.wait(0.05)
    raise AssertionError(f"never happened: {what}")


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def psql(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    dsn = f"postgresql://dba:dba-pw@127.0.0.1:{port}/admin?sslmode=disable"
    return subprocess.run([find_pg_bin("psql"), dsn, "-X", *args], capture_output=True, text=True, timeout=30)


def admin(port: int, sql: str) -> tuple[list[str], list[dict[str, str]], str]:
    """(columns, rows, stderr) of one admin command as psql prints it."""
    out = psql(port, "-A", "-F", "\t", "-P", "footer=off", "-c", sql)
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines() or [""]
    columns = header.split("\t")
    return columns, [dict(zip(columns, line.split("\t"), strict=True)) for line in lines], out.stderr


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def total(port: int, name: str) -> float:
    return sum(value for _, value in samples(port, name))


def connect(proxy: ProxyProcess, user: str = "alice", app: str = "w") -> Conn:
    return psycopg.connect(proxy.dsn(user, application_name=app), autocommit=True)


def workers_of(admin_port: int, app: str) -> set[str]:
    return {r["worker"] for r in admin(admin_port, "SHOW SESSIONS")[1] if r["application_name"] == app}


def spread(proxy: ProxyProcess, admin_port: int, app: str, n: int = 10, user: str = "alice") -> list[Conn]:
    """At least ``n`` connections, more until both workers have some (the kernel picks)."""
    conns = [connect(proxy, user, app) for _ in range(n)]
    while workers_of(admin_port, app) != {"0", "1"}:
        assert len(conns) < 4 * n, "every connection landed on one worker"
        conns.append(connect(proxy, user, app))
    return conns


def close_all(conns: list[Conn]) -> None:
    for c in conns:
        c.close()


def sleeping(pg: PgServer, n: int) -> bool:
    rows = pg.fetch("SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", SLEEP)
    return bool(rows[0][0] == n)


def supervisor_children(proxy: ProxyProcess) -> set[int]:
    pid = proxy.proc.pid
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


# ---------------------------------------------------------------------------- units


@given(
    st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
    st.integers(-(2**31), 2**31 - 1),
)
def test_secrets_name_their_worker_and_foreign_ones_are_forwarded(shape: tuple[int, int], foreign: int) -> None:
    """The owner is encoded in the secret (the pid may be a backend's real one, issue 20 item 5)."""
    count, index = shape
    forwarded: list[tuple[int, int, int]] = []

    async def forward(owner: int, pid: int, secret: int) -> None:
        forwarded.append((owner, pid, secret))

    registry = CancelRegistry(index, count, forward)
    session = object()
    pid, key = registry.register(session)  # type: ignore[arg-type]
    assert 1 <= pid <= MAX_PID and (key & 0xFFFFFFFF) % count == index == registry.owner(key)
    assert registry.lookup(pid, key) is session
    assert registry.lookup(pid, key ^ 1) is not session
    found = registry.lookup(4242, foreign)
    if (foreign & 0xFFFFFFFF) % count == index:
        assert found is None
    else:
        owner = (foreign & 0xFFFFFFFF) % count
        assert repr(found) == f"_Forwarded(owner={owner}, pid=4242)"  # the secret stays out of logs
        assert found is not None
        asyncio.run(found.cancel_backend())
        assert forwarded == [(owner, 4242, foreign)]


@given(st.lists(st.lists(st.integers(0, 10**6), min_size=3, max_size=3), min_size=1, max_size=5))
def test_merged_expositions_sum_every_sample(parts: list[list[int]]) -> None:
    def text(values: list[int]) -> str:
        counter, gauge, count = values
        return (
            "# HELP c_total C\n# TYPE c_total counter\n"
            f'c_total{{t="a"}} {counter}\n'
            f"# HELP g G\n# TYPE g gauge\ng {gauge}\n"
            '# HELP h H\n# TYPE h histogram\nh_bucket{le="1.0"} 0\n'
            f'h_bucket{{le="+Inf"}} {count}\nh_count {count}\nh_sum {count * 2}\n'
        )

    merged = {
        (s.name, tuple(s.labels.items())): s.value
        for f in text_string_to_metric_families(merge_expositions(text(p) for p in parts).decode())
        for s in f.samples
    }
    sums = [sum(column) for column in zip(*parts, strict=True)]
    assert merged[("c_total", (("t", "a"),))] == sums[0]
    assert merged[("g", ())] == sums[1]
    assert merged[("h_bucket", (("le", "+Inf"),))] == merged[("h_count", ())] == sums[2]
    assert merged[("h_sum", ())] == 2 * sums[2]


@pytest.mark.parametrize(("pool_size", "workers", "share"), [(10, 1, 10), (10, 3, 4), (2, 2, 1), (1, 4, 1)])
def test_pool_size_is_the_total_split_over_workers(
    backend: Backend, tmp_path: Path, pool_size: int, workers: int, share: int
) -> None:
    path = tmp_path / "tenantgate.toml"
    path.write_text(config_text(backend, 6432, backend_extra=f'pool_mode = "transaction"\npool_size = {pool_size}\n'))
    config = load_config(str(path))
    proxy = Proxy(config, worker_index=workers - 1, worker_count=workers)
    pool = proxy.pool_for("workers", Placement.of(config, "acme"))
    assert pool is not None and pool.size == share


# ---------------------------------------------------------------------------- two workers


def test_connections_spread_and_metrics_add_up(two: tuple[ProxyProcess, int, int]) -> None:
    proxy, admin_port, metrics_port = two
    before = total(metrics_port, "tenantgate_statements_total")
    conns = spread(proxy, admin_port, "spread", 12)
    m = len(conns)
    try:
        wait_for(lambda: total(metrics_port, "tenantgate_sessions") == m, "every session counted")
        assert total(metrics_port, "tenantgate_client_connections") == m
        for i in range(30):  # K = 30 statements over M connections
            assert conns[i % m].execute("SELECT count(*) FROM orders").fetchone() == (2,)
        assert total(metrics_port, "tenantgate_statements_total") - before == 30
        assert total(metrics_port, "tenantgate_statement_duration_seconds_count") >= 30
        by_worker = [r for r in admin(admin_port, "SHOW SESSIONS")[1] if r["application_name"] == "spread"]
        assert len(by_worker) == m and len({r["id"] for r in by_worker}) == m  # ids unique across workers
        stats = {r["tenant"]: r for r in admin(admin_port, "SHOW STATS")[1]}
        assert int(stats["acme"]["statements"]) >= 30  # one row per tenant, summed over workers
        tenants = admin(admin_port, "SHOW TENANTS")[1]
        assert [r["tenant"] for r in tenants].count("acme") == 1
        assert int(next(r for r in tenants if r["tenant"] == "acme")["sessions"]) == m
    finally:
        close_all(conns)
    wait_for(lambda: total(metrics_port, "tenantgate_sessions") == 0, "sessions gone")


def test_cancels_reach_the_owning_worker(two: tuple[ProxyProcess, int, int], pg: PgServer) -> None:
    proxy, admin_port, metrics_port = two
    conns = spread(proxy, admin_port, "cancel", 16)
    outcomes: list[BaseException | None] = [None] * len(conns)

    def run(i: int) -> None:
        try:
            conns[i].execute(SLEEP)
        except psycopg.Error as exc:
            outcomes[i] = exc

    forwarded = total(metrics_port, "tenantgate_cancel_forwarded_total")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: sleeping(pg, len(conns)), "every connection sleeping on the backend")
        for c in conns:  # each cancel connection lands on either worker
            c.cancel()
        for t in threads:
            t.join(30)
        assert all(isinstance(o, psycopg.errors.QueryCanceled) for o in outcomes), outcomes
        # with 16 cancels, none landing on the other worker is 1 in 65536
        assert total(metrics_port, "tenantgate_cancel_forwarded_total") > forwarded
    finally:
        close_all(conns)


def test_cancels_reach_the_owning_worker_in_transaction_pooling(backend: Backend, tmp_path: Path) -> None:
    """Proxy-issued pids there: the secret still names the worker, whichever one gets the cancel."""
    pooled = 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 4\n'
    proxy, _, metrics_port = launch(tmp_path, backend, backend_extra=pooled)
    try:
        tries = 0
        while total(metrics_port, "tenantgate_cancel_forwarded_total") == 0:
            assert tries < 32, "no cancel request landed on the other worker"
            tries += 1
            with connect(proxy, "alice", "txcancel") as conn:
                timer = threading.Timer(0.3, conn.cancel)
                timer.start()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute(SLEEP)
                timer.join()
                assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)  # the session goes on
    finally:
        assert proxy.stop() == 0, proxy.log()


def test_a_wrong_secret_cancels_nothing_on_either_worker(two: tuple[ProxyProcess, int, int], pg: PgServer) -> None:
    proxy, _, metrics_port = two
    conn = connect(proxy, "alice", "wrongkey")
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(conn.execute(SLEEP.replace("20", "2")).fetchone()))
    try:
        pid = conn.info.backend_pid
        forwarded = total(metrics_port, "tenantgate_cancel_forwarded_total")
        thread.start()
        wait_for(
            lambda: pg.fetch("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)'")[0][0] == 1,
            "the statement running",
        )
        sent = 0
        while total(metrics_port, "tenantgate_cancel_forwarded_total") == forwarded:  # until one is forwarded
            assert sent < 64, "no cancel request landed on the other worker"
            for _ in range(4):  # the owner checks the key, whichever worker gets them
                with socket.create_connection(("127.0.0.1", proxy.port)) as s:
                    s.sendall(codec.CancelRequest(pid, secrets.randbits(31)).encode())
                    s.recv(1)
            sent += 4
        thread.join(30)
        assert done == [("",)]  # pg_sleep returned normally: nothing was cancelled
        assert "forwarded cancel request with an unknown key ignored" in proxy.log()
    finally:
        conn.close()


def test_admin_actions_reach_both_workers(two: tuple[ProxyProcess, int, int]) -> None:
    proxy, admin_port, _ = two
    conns = spread(proxy, admin_port, "killed", 10)
    others = [connect(proxy, "bob", "survivor")]
    try:
        admin(admin_port, "PAUSE acme")
        paused = {r["tenant"]: r["paused"] for r in admin(admin_port, "SHOW TENANTS")[1]}
        assert paused["acme"] == "yes" and paused["globex"] == "no"
        admin(admin_port, "RESUME acme")
        out = psql(admin_port, "-c", "KILL TENANT acme")
        assert out.stdout.strip() == f"KILL {len(conns)}", out
        for c in conns:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
        assert others[0].execute("SELECT 1").fetchone() == (1,)
        (row,) = [r for r in admin(admin_port, "SHOW SESSIONS")[1] if r["application_name"] == "survivor"]
        assert psql(admin_port, "-c", f"KILL SESSION {row['id']}").stdout.strip() == "KILL 1"  # to its owner
        with pytest.raises(psycopg.OperationalError):
            others[0].execute("SELECT 1")
    finally:
        close_all(conns + others)


def test_reload_and_sighup_reach_both_workers(two: tuple[ProxyProcess, int, int]) -> None:
    proxy, admin_port, _ = two
    original = proxy.config_path.read_text()
    try:
        proxy.config_path.write_text(original + '\n[users.carol]\ntenant = "acme"\npassword = "carol-pw"\n')
        proxy.users["carol"] = ("acme", "carol-pw")
        admin(admin_port, "RELOAD")  # answered once every worker has reloaded
        close_all(spread(proxy, admin_port, "carol", user="carol"))

        proxy.config_path.write_text(proxy.config_path.read_text() + '[users.dan]\ntenant = "acme"\npassword = "d"\n')
        proxy.users["dan"] = ("acme", "d")
        reloads = proxy.log().count("configuration reloaded")
        proxy.proc.send_signal(signal.SIGHUP)  # the supervisor's copy and both workers
        wait_for(lambda: proxy.log().count("configuration reloaded") == reloads + 3, "three reloads")
        close_all(spread(proxy, admin_port, "dan", user="dan"))
    finally:
        proxy.config_path.write_text(original)


def test_a_killed_worker_is_restarted(two: tuple[ProxyProcess, int, int]) -> None:
    proxy, admin_port, metrics_port = two
    workers = supervisor_children(proxy)
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "was killed by SIGKILL; restarting" in proxy.log(), "the death noticed")
    wait_for(lambda: len(supervisor_children(proxy) - {victim}) == 2, "a new worker")
    wait_for(lambda: ready(metrics_port), "both workers ready again")
    close_all(spread(proxy, admin_port, "restarted"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not reaped it


def test_workers_do_not_outlive_a_killed_supervisor(backend: Backend, tmp_path: Path) -> None:
    proxy, _, _ = launch(tmp_path, backend)
    workers = supervisor_children(proxy)
    assert len(workers) == 2
    proxy.proc.kill()
    proxy.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in workers), "both workers gone")
    assert "[worker 0]: shutting down" in proxy.log() and "[worker 1]: shutting down" in proxy.log()


def test_sigterm_drains_both_workers_and_audit_is_one_chain(backend: Backend, tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    audit = f'\n[audit]\npath = "{tmp_path}/log/audit.jsonl"\nkey = "file:{key}"\nflush_interval_ms = 20\n'
    proxy, admin_port, _ = launch(tmp_path, backend, audit)
    conns = spread(proxy, admin_port, "drain", 8)
    try:
        for c in conns:
            c.execute("BEGIN")
            c.execute("SELECT count(*) FROM orders")
        proxy.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: proxy.log().count("shutting down: waiting up to") == 2, "both workers draining")
        for c in conns:  # open transactions may finish on both workers ...
            assert c.execute("SELECT count(*) FROM orders").fetchone() == (2,)
            c.execute("COMMIT")
        assert proxy.proc.wait(30) == 0, proxy.log()
        for c in conns:  # ... then their sessions end
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
    finally:
        close_all(conns)
        proxy.stop()
    logs = sorted(str(p) for p in (tmp_path / "log").glob("*.jsonl"))
    verify = subprocess.run(
        [sys.executable, "-m", "tenantgate.proxy.cli", "audit", "verify", "--key", f"file:{key}", *logs],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = [json.loads(line) for p in logs for line in Path(p).read_text().splitlines() if line.strip()]
    statements = [r for r in records if r["kind"] == "statement"]
    assert len(statements) == len(conns) * 4  # BEGIN, SELECT, SELECT, COMMIT per connection, both workers
