"""Security monitoring with ``[listen] workers = 2`` (one analysis in the supervisor) and RELOAD of
``[monitoring]`` (single process and workers), through the real proxy.

A user's sessions on two workers are one user: rows read half on each worker add up to one
exfiltration, alerted once (one audit record, one count, one SHOW ALERTS row); its response
holds in both workers and UNDO ALERT lifts it in both; the baselines are one state file that a
restart of the supervisor reloads. RELOAD retunes, starts and stops monitoring, keeping what it
learned.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, config_text, start_proxy
from .test_monitor import EXTRA_USERS, SCOPING, SETUP, admin, alerts, connect, normal, users_toml, wait_alert

HALF = 1500  # rows read on each worker: under the minimum, which the two halves together cross
MINIMUM = 2000
MONITORING = """
[monitoring]
interval = 0.2
warmup = 1.0
state_file = "monitor-state.json"
[monitoring.detectors.exfiltration]
minimum = {minimum}
response = "block_user"
cooldown = 600
"""


def write_config(tmp: Path, backend: Backend, ports: tuple[int, int, int], workers: int, pool_mode: str,
                 monitoring: str) -> str:
    port, admin_port, metrics = ports
    key = tmp / "audit.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32))
        key.chmod(0o600)
    (tmp / "log").mkdir(exist_ok=True)
    extra = (f'\n[audit]\npath = "{tmp}/log/audit.jsonl"\nkey = "file:{key}"\nflush_interval_ms = 20\n'
             + users_toml() + monitoring)
    return config_text(backend, port, scoping=SCOPING, extra=extra, backend_extra=f'pool_mode = "{pool_mode}"',
                       listen=f'workers = {workers}\nadmin = "127.0.0.1:{admin_port}"\n'
                              f'metrics = "127.0.0.1:{metrics}"\n')


class Deployment:
    def __init__(self, pg: PgServer, tmp: Path, database: str, workers: int, pool_mode: str,
                 monitoring: str) -> None:
        self.tmp, self.workers, self.pool_mode = tmp, workers, pool_mode
        self.backend = Backend.create(pg, database, SETUP, owner=False)
        self.ports = (free_port(), free_port(), free_port())
        self.proxy = self.start(monitoring)

    @property
    def admin(self) -> int:
        return self.ports[1]

    def text(self, monitoring: str) -> str:
        return write_config(self.tmp, self.backend, self.ports, self.workers, self.pool_mode, monitoring)

    def start(self, monitoring: str) -> ProxyProcess:
        proxy = start_proxy(self.tmp, self.text(monitoring), self.ports[0])
        proxy.users.update({u: (t, f"{u}-pw") for u, t in EXTRA_USERS.items()})
        deadline = time.monotonic() + 30
        while True:  # the client port answers once one worker listens; the console once all do
            try:
                admin(self.admin, "SHOW VERSION")
                return proxy
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def reload(self, monitoring: str) -> None:
        (self.tmp / "tenantgate.toml").write_text(self.text(monitoring))
        admin(self.admin, "RELOAD")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[2]}/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def audit_alerts(self, event: str, user: str) -> list[dict[str, object]]:
        records = []
        for path in sorted((self.tmp / "log").glob("audit*.jsonl*")):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("kind") == "alert" and rec.get("user") == user and rec["details"]["event"] == event:
                    records.append(rec)
        return records


@pytest.fixture(scope="module", params=["session", "transaction"])
def dep(request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"monitor-workers-{request.param}")
    d = Deployment(pg, tmp, f"monw_{request.param[:4]}", 2, request.param, MONITORING.format(minimum=MINIMUM))
    yield d
    d.proxy.stop()


def worker_of(port: int, name: str) -> int:
    """The worker that serves the session whose application_name is ``name`` (SHOW SESSIONS)."""
    rows = [r for r in admin(port, "SHOW SESSIONS") if r["application_name"] == name]
    assert len(rows) == 1, rows
    return int(rows[0]["worker"])


def one_per_worker(d: Deployment, user: str, workers: int = 2) -> dict[int, psycopg.Connection]:
    """A session of ``user`` on each worker: worker -> connection."""
    found: dict[int, psycopg.Connection] = {}
    deadline = time.monotonic() + 30  # a worker the supervisor is restarting (back-off) joins late
    n = 0
    while time.monotonic() < deadline:
        n += 1
        name = f"probe-{secrets.token_hex(4)}-{n}"
        conn = psycopg.connect(d.proxy.dsn(user, application_name=name), autocommit=True)
        worker = worker_of(d.admin, name)
        if worker in found:
            conn.close()
            time.sleep(0.05)
            continue
        found[worker] = conn
        if len(found) == workers:
            return found
    raise AssertionError(f"{n} sessions in 30 s did not reach every worker: {sorted(found)}")


def ended(conn: psycopg.Connection, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return True
        time.sleep(0.1)
    return False


def test_an_exfiltration_split_over_two_workers_is_one_alert_acted_on_in_both(dep: Deployment) -> None:
    normal(dep.proxy, "carol")  # carol's usual volume: a few rows
    time.sleep(1.3)  # past the warm-up
    sessions = one_per_worker(dep, "carol")
    bystander = connect(dep.proxy, "frank")
    (first, second) = sessions[0], sessions[1]
    assert len(first.execute("SELECT * FROM orders WHERE id <= %s", (HALF,)).fetchall()) == HALF
    assert len(second.execute("SELECT * FROM orders WHERE id > %s", (HALF,)).fetchall()) == 3000 - HALF
    alert = wait_alert(dep.admin, "exfiltration", user="carol")
    assert (alert["tenant"], alert["response"]) == ("acme", "block_user")
    # the two halves together: each alone is under the threshold, which is at least the minimum
    assert float(alert["observed"]) >= 3000 > HALF * 1.0 and float(alert["threshold"]) >= MINIMUM > HALF
    time.sleep(1.0)  # a few more folds: still one alert, raised in the supervisor only
    assert len([a for a in alerts(dep.admin, "exfiltration") if a["user"] == "carol"]) == 1
    assert dep.metric('tenantgate_alerts_total{detector="exfiltration"') == 1
    deadline = time.monotonic() + 5
    while len(dep.audit_alerts("alert", "carol")) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(dep.audit_alerts("alert", "carol")) == 1
    assert len(dep.audit_alerts("response", "carol")) == 1
    # block_user: carol's sessions end on BOTH workers, her logins are refused, frank is untouched
    assert ended(first) and ended(second)
    for _ in range(8):  # new connections land on either worker: refused on each
        with pytest.raises(psycopg.OperationalError, match="suspended by security monitoring"):
            connect(dep.proxy, "carol")
    assert bystander.execute("SELECT 1").fetchone() == (1,)
    bystander.close()
    admin(dep.admin, f"UNDO ALERT {alert['id']}")  # answered once every worker has lifted it
    again = one_per_worker(dep, "carol")
    for conn in again.values():
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.close()
    assert len(dep.audit_alerts("undo", "carol")) == 1


def worker_pid(d: Deployment, index: int) -> int:
    """The pid of worker ``index`` of the supervisor (its command line carries its spec)."""
    for task in Path(f"/proc/{d.proxy.proc.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"--worker" in cmdline and json.loads(cmdline[cmdline.index(b"--worker") + 1])["index"] == index:
                return int(child)
    raise AssertionError(f"worker {index} not found")


def test_a_worker_restart_neither_loses_nor_doubles_its_counts(dep: Deployment) -> None:
    normal(dep.proxy, "alice", rounds=1)
    time.sleep(1.3)
    sessions = one_per_worker(dep, "alice")
    sessions[0].execute("SELECT * FROM orders WHERE id <= %s", (HALF,)).fetchall()
    sessions[1].execute("SELECT * FROM orders WHERE id > %s", (HALF,)).fetchall()
    old = worker_pid(dep, 0)
    os.kill(old, signal.SIGTERM)  # at once: its half is in a window handed over, or left at its exit
    alert = wait_alert(dep.admin, "exfiltration", user="alice")
    # both halves, each once (plus the few rows of alice's usual statements)
    assert 3000 <= float(alert["observed"]) < 3000 + HALF
    for conn in one_per_worker(dep, "frank").values():  # the supervisor restarted worker 0: both serve again
        conn.close()
    assert worker_pid(dep, 0) != old
    admin(dep.admin, f"UNDO ALERT {alert['id']}")
    for conn in sessions.values():
        conn.close()


def test_one_state_file_survives_a_supervisor_restart(dep: Deployment) -> None:
    normal(dep.proxy, "dave")
    time.sleep(0.5)
    ids = [int(a["id"]) for a in alerts(dep.admin)]
    assert dep.proxy.stop() == 0
    state = dep.tmp / "monitor-state.json"
    assert state.exists() and not list(dep.tmp.glob("monitor-state.json.worker-*"))
    before = {(t, u): m for t, u, m in json.loads(state.read_text())["users"]}
    learned = [key for key in before if key in (("acme", "carol"), ("acme", "dave"))]  # carol: an earlier test's
    assert ("acme", "dave") in learned, sorted(before)
    restarted = time.time()
    dep.proxy = dep.start(MONITORING.format(minimum=MINIMUM))
    deadline = time.monotonic() + 10
    while (not state.exists() or state.stat().st_mtime < restarted) and time.monotonic() < deadline:
        time.sleep(0.1)  # the first fold writes the state: from the engine the file was loaded into
    after = {(t, u): m for t, u, m in json.loads(state.read_text())["users"]}
    for key in learned:  # what was learned before the restart, not afresh
        assert after[key]["first_seen"] == before[key]["first_seen"]
        assert after[key]["series"] == before[key]["series"]
    normal(dep.proxy, "erin")  # alert ids go on from the persisted counter
    time.sleep(1.3)
    exfiltrate(dep, "erin")
    alert = wait_alert(dep.admin, "exfiltration", user="erin")
    assert int(alert["id"]) > max(ids, default=0)


# ---------------------------------------------------------------------- RELOAD applies [monitoring]


@pytest.fixture(params=[(1, "session"), (2, "transaction")], ids=["single", "workers"])
def reloading(request: pytest.FixtureRequest, pg: PgServer, tmp_path: Path) -> Iterator[Deployment]:
    workers, pool_mode = request.param
    d = Deployment(pg, tmp_path, f"monr_{workers}", workers, pool_mode, MONITORING.format(minimum=100_000))
    yield d
    d.proxy.stop()


def exfiltrate(d: Deployment, user: str) -> None:
    with connect(d.proxy, user) as conn:
        assert len(conn.execute("SELECT * FROM orders").fetchall()) == 3000


def test_reload_retunes_stops_and_starts_monitoring_keeping_baselines(reloading: Deployment) -> None:
    d = reloading
    normal(d.proxy, "carol")
    normal(d.proxy, "dave")
    time.sleep(1.3)
    exfiltrate(d, "carol")  # 3000 rows: under the first minimum of 100,000
    time.sleep(1.0)
    assert alerts(d.admin, "exfiltration") == []
    d.reload(MONITORING.format(minimum=MINIMUM))  # the new minimum holds at once
    exfiltrate(d, "dave")
    alert = wait_alert(d.admin, "exfiltration", user="dave")
    assert float(alert["threshold"]) >= MINIMUM and alert["response"] == "block_user"
    with pytest.raises(psycopg.OperationalError, match="suspended by security monitoring"):
        connect(d.proxy, "dave")
    state = d.tmp / "monitor-state.json"
    d.reload(MONITORING.format(minimum=MINIMUM).replace("[monitoring]\n", "[monitoring]\nenabled = false\n"))
    # off: no console view, the responses it imposed are gone, the state is saved
    out = admin_error(d.admin, "SHOW ALERTS")
    assert "security monitoring is off" in out
    deadline = time.monotonic() + 5
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    saved = {(t, u): m for t, u, m in json.loads(state.read_text())["users"]}
    with connect(d.proxy, "dave") as conn:  # the block ended with monitoring
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert [r["details"]["event"] for r in d.audit_alerts("disabled", "dave")] == ["disabled"]
    d.reload(MONITORING.format(minimum=MINIMUM))  # on again: the same baselines, learned before
    time.sleep(1.0)
    normal(d.proxy, "carol")
    time.sleep(0.6)
    again = {(t, u): m for t, u, m in json.loads(state.read_text())["users"]}
    assert again[("acme", "carol")]["first_seen"] == saved[("acme", "carol")]["first_seen"]
    admin(d.admin, "SHOW ALERTS")  # the console answers again


def admin_error(port: int, sql: str) -> str:
    try:
        admin(port, sql)
    except AssertionError as exc:
        return str(exc)
    raise AssertionError(f"{sql} succeeded")
