"""Monitoring's responses through the real proxy: each acts on the right user or tenant, is an
audit record, and ends with UNDO ALERT (or by itself after its cool-down); baselines survive a
restart and off-hours activity is judged against the persisted profile."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.proxy.monitor.baseline import HOURS_OF_WEEK
from tenantgate.proxy.monitor.engine import SERIES
from tenantgate.proxy.sandbox.pgcluster import PgServer

from .harness import ProxyProcess, RawClient, errors
from .test_monitor import admin, alerts, connect, monitored, normal, wait_alert

RESPONDING = """
[monitoring]
interval = 0.2
warmup = 1.0
throttle_rate = 2.0
state_file = "monitor-state.json"
[monitoring.detectors.probing]
minimum = 5
response = "block_user"
[monitoring.detectors.exfiltration]
minimum = 1000
response = "throttle"
cooldown = 4
[monitoring.detectors.new_shapes]
minimum = 3
response = "pause_tenant"
"""


@pytest.fixture(scope="module", params=["session", "transaction"])
def env(
    request: pytest.FixtureRequest, pg: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, int, Path]]:
    tmp = tmp_path_factory.mktemp(f"respond-{request.param}")
    proxy, port, _ = monitored(pg, tmp, f"resp_{request.param[:4]}", request.param, RESPONDING)
    yield proxy, port, tmp
    proxy.stop()


def probe(conn: psycopg.Connection) -> None:
    for _ in range(7):
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT * FROM pg_catalog.pg_authid")


def test_block_user_ends_sessions_refuses_logins_until_undone(env: tuple[ProxyProcess, int, Path]) -> None:
    proxy, port, tmp = env
    bystander = connect(proxy, "frank")  # same tenant, other user: untouched
    conn = connect(proxy, "bob")
    probe(conn)
    alert = wait_alert(port, "probing")
    assert (alert["tenant"], alert["user"], alert["response"]) == ("globex", "bob", "block_user")
    deadline, ended = time.monotonic() + 5, False
    while not ended and time.monotonic() < deadline:
        try:
            conn.execute("SELECT 1")
            time.sleep(0.1)
        except psycopg.OperationalError:
            ended = True
    assert ended  # the open session was ended
    with pytest.raises(psycopg.OperationalError, match="suspended by security monitoring"):
        connect(proxy, "bob")
    assert bystander.execute("SELECT 1").fetchone() == (1,)
    bystander.close()
    admin(port, f"UNDO ALERT {alert['id']}")
    with connect(proxy, "bob") as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    assert alerts(port, "probing")[0]["undone"] == "undo by dba"
    c = RawClient(port)  # an alert without a response in effect cannot be undone
    try:
        assert not errors(c.login("dba", "dba-pw"))
        assert [e.sqlstate for e in errors(c.query(f"UNDO ALERT {alert['id']}"))] == ["42704"]
    finally:
        c.close()
    logged = "".join(p.read_text() for p in (tmp / "log").glob("*.jsonl"))
    assert '"event":"response"' in logged and '"event":"undo"' in logged


def timed(conn: psycopg.Connection, n: int) -> float:
    start = time.monotonic()
    for i in range(n):
        conn.execute("SELECT id FROM orders WHERE id = %s", (i + 1,)).fetchall()
    return time.monotonic() - start


def test_throttle_slows_the_user_then_expires(env: tuple[ProxyProcess, int, Path]) -> None:
    proxy, port, _ = env
    normal(proxy, "carol")
    time.sleep(1.2)
    with connect(proxy, "carol") as conn:
        assert timed(conn, 5) < 1.0
        conn.execute("SELECT * FROM orders").fetchall()
        alert = wait_alert(port, "exfiltration")
        assert (alert["user"], alert["response"]) == ("carol", "throttle")
        assert timed(conn, 5) >= 1.5  # 2 statements per second
        with connect(proxy, "alice") as other:  # same tenant, other user: not throttled
            assert timed(other, 5) < 1.0
        deadline = time.monotonic() + 10  # cooldown = 4 s: the throttle ends by itself
        while alerts(port, "exfiltration")[0]["undone"] != "expired" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert alerts(port, "exfiltration")[0]["undone"] == "expired"
        assert timed(conn, 5) < 1.0


def test_pause_tenant_holds_statements_until_undone(env: tuple[ProxyProcess, int, Path]) -> None:
    proxy, port, _ = env
    normal(proxy, "dave")
    time.sleep(1.2)
    with connect(proxy, "dave") as conn:
        conn.execute("SELECT note, id FROM orders ORDER BY note DESC LIMIT 3").fetchall()
        conn.execute("SELECT max(id), min(note) FROM orders").fetchall()
        conn.execute("SELECT DISTINCT substr(note, 1, 2) FROM orders").fetchall()
    alert = wait_alert(port, "new_shapes")
    assert (alert["tenant"], alert["response"]) == ("acme", "pause_tenant")
    done = threading.Event()

    def run() -> None:
        with connect(proxy, "alice") as c:
            c.execute("SELECT 1").fetchall()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert not done.wait(1.0)  # held
    with connect(proxy, "bob") as other:  # another tenant runs on
        assert other.execute("SELECT 1").fetchone() == (1,)
    admin(port, f"UNDO ALERT {alert['id']}")
    assert done.wait(10)


def seeded_state(path: Path, hour: int) -> None:
    """alice of acme, watched for ten days, has never worked within an hour of ``hour`` (UTC)."""
    days = [0 if min((h - hour) % 24, (hour - h) % 24) <= 2 else 10 for h in range(24)]
    empty = {"recent": [], "mean": [None] * HOURS_OF_WEEK, "dev": [None] * HOURS_OF_WEEK, "minutes": 0}
    model = {"first_seen": time.time() - 10 * 86400, "last_new_shape": time.time() - 10 * 86400,
             "series": {s: empty for s in SERIES}, "days_by_hour": days, "last_day": [-1] * 24}
    path.write_text(json.dumps({"version": 1, "users": [["acme", "alice", model]], "shapes": [],
                                "last_alert": [], "next_alert_id": 41}))


def test_off_hours_against_the_persisted_profile_and_restart(pg: PgServer, tmp_path: Path) -> None:
    hour = time.gmtime().tm_hour
    seeded_state(tmp_path / "monitor-state.json", hour)
    proxy, port, _ = monitored(pg, tmp_path, "mon_hours", "session", RESPONDING.replace("warmup = 1.0", "warmup = 60"))
    try:
        with connect(proxy, "bob") as conn:  # a user first seen now: no profile, no alert
            conn.execute("SELECT 1").fetchall()
        with connect(proxy, "alice") as conn:
            conn.execute("SELECT id FROM orders WHERE id = 1").fetchall()
        alert = wait_alert(port, "off_hours")
        assert (alert["tenant"], alert["user"], alert["id"]) == ("acme", "alice", "41")
        assert json.loads(alert["evidence"])["hour_utc"] == hour
        assert [a["user"] for a in alerts(port)] == ["alice"]
    finally:
        assert proxy.stop() == 0
    saved = json.loads((tmp_path / "monitor-state.json").read_text())
    users = {(t, u): m for t, u, m in saved["users"]}
    assert users[("acme", "alice")]["days_by_hour"][hour] == 1  # learned: this hour was worked once now
    assert ("globex", "bob") in users and saved["next_alert_id"] == 42
