"""Security monitoring (issue 17) through the real proxy: each detector fires on its attack and
names the right tenant and user, a normal workload stays silent; alerts are signed audit
records, metrics and webhook POSTs whose signature verifies; responses act and are undone.

The fast settings (interval 0.2 s, warm-up 1 s, low minimums) make a minute of attack fit in
a second; what is judged is the same as with the defaults.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.keyring.kek import create_kek_file
from tenantgate.proxy import codec
from tenantgate.proxy.monitor.webhook import HEADER, verify
from tenantgate.proxy.sandbox.pgcluster import PgServer, find_pg_bin, free_port

from .harness import Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
INSERT INTO orders SELECT 'acme', g, 'note ' || g FROM generate_series(1, 3000) g;
INSERT INTO orders SELECT 'globex', g, 'note ' || g FROM generate_series(1, 50) g;
CREATE TABLE vault (tenant_id text NOT NULL, id int PRIMARY KEY, secret bytea);
"""
SCOPING = '[scoping]\ncolumn = "tenant_id"\ntables = ["orders", "vault"]\n'
HOOK_SECRET = "hook-" + secrets.token_hex(8)
EXTRA_USERS = {"carol": "acme", "dave": "acme", "erin": "acme", "frank": "globex"}
FAST = """
[monitoring]
interval = 0.2
warmup = 1.0
state_file = "monitor-state.json"
webhook_url = "http://127.0.0.1:{hook}/alerts"
webhook_secret_env = "TG_TEST_HOOK_SECRET"
webhook_retries = 2
[monitoring.detectors.exfiltration]
minimum = 1000
[monitoring.detectors.probing]
minimum = 5
[monitoring.detectors.credential_stuffing]
minimum = 4
[monitoring.detectors.password_guessing]
minimum = 3
[monitoring.detectors.new_shapes]
minimum = 3
[monitoring.detectors.encrypted_reads]
minimum = 20
"""


class Hook(http.server.BaseHTTPRequestHandler):
    """The webhook's receiver: the first POST fails (500) so that the retry is exercised."""

    received: list[tuple[bytes, str]] = []
    answered = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.answered += 1
        if Hook.answered == 1:
            self.send_response(500)
        else:
            Hook.received.append((body, self.headers[HEADER]))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hook() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def users_toml() -> str:
    return "".join(f'\n[users.{u}]\ntenant = "{t}"\npassword = "{u}-pw"\n' for u, t in EXTRA_USERS.items())


def monitored(
    pg: PgServer, tmp: Path, database: str, pool_mode: str, monitoring: str, *, encryption: bool = False
) -> tuple[ProxyProcess, int, int]:
    """A proxy with [monitoring], [audit], admin and metrics ports: (proxy, admin port, metrics port)."""
    backend = Backend.create(pg, database, SETUP, owner=False)
    key = tmp / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    (tmp / "log").mkdir(exist_ok=True)
    extra = (f'\n[audit]\npath = "{tmp}/log/audit.jsonl"\nkey = "file:{key}"\nflush_interval_ms = 20\n'
             + users_toml() + monitoring)
    if encryption:
        create_kek_file(tmp / "kek.bin")
        extra += ('\n[encryption]\nkek = "file:kek.bin"\nstore = "file:keys.json"\n'
                  '[[encryption.columns]]\ntable = "vault"\ncolumn = "secret"\nmode = "randomized"\ntype = "text"\n')
    port, admin, metrics = free_port(), free_port(), free_port()
    text = config_text(backend, port, scoping=SCOPING, extra=extra, backend_extra=f'pool_mode = "{pool_mode}"',
                       listen=f'admin = "127.0.0.1:{admin}"\nmetrics = "127.0.0.1:{metrics}"\n')
    os.environ["TG_TEST_HOOK_SECRET"] = HOOK_SECRET
    if encryption:
        (tmp / "tenantgate.toml").write_text(text)
        subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "keys", "init", "--config",
                        str(tmp / "tenantgate.toml")], check=True, capture_output=True, timeout=60)
    proxy = start_proxy(tmp, text, port)
    proxy.users.update({u: (t, f"{u}-pw") for u, t in EXTRA_USERS.items()})
    return proxy, admin, metrics


@pytest.fixture(scope="module", params=["session", "transaction"])
def env(
    request: pytest.FixtureRequest, pg: PgServer, hook: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, int, int, Path]]:
    tmp = tmp_path_factory.mktemp(f"monitor-{request.param}")
    proxy, admin, metrics = monitored(pg, tmp, f"mon_{request.param[:4]}", request.param,
                                      FAST.format(hook=hook), encryption=True)
    yield proxy, admin, metrics, tmp
    proxy.stop()


def admin(port: int, sql: str) -> list[dict[str, str]]:
    out = subprocess.run(
        [find_pg_bin("psql"), f"postgresql://dba:dba-pw@127.0.0.1:{port}/admin?sslmode=disable", "-X", "-A",
         "-F", "\t", "-P", "footer=off", "-c", sql],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    if not out.stdout.strip() or sql.upper().startswith("UNDO"):
        return []
    header, *lines = out.stdout.splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines]


def alerts(port: int, detector: str | None = None) -> list[dict[str, str]]:
    return [a for a in admin(port, "SHOW ALERTS") if detector is None or a["detector"] == detector]


def wait_alert(port: int, detector: str, timeout: float = 10.0, user: str | None = None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [a for a in alerts(port, detector) if user is None or a["user"] == user]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {detector} alert within {timeout} s; alerts: {alerts(port)}")


def connect(proxy: ProxyProcess, user: str) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(user), autocommit=True)


def normal(proxy: ProxyProcess, user: str, rounds: int = 3) -> None:
    """The application's usual statements: a few shapes, few rows."""
    with connect(proxy, user) as conn:
        for i in range(rounds):
            conn.execute("SELECT id, note FROM orders WHERE id = %s", (i + 1,)).fetchall()
            conn.execute("SELECT count(*) FROM orders WHERE id < %s", (10,)).fetchall()
            conn.execute("UPDATE orders SET note = note WHERE id = %s", (i + 1,))


def test_a_normal_workload_stays_silent(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    for _ in range(3):
        for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
            normal(proxy, user, rounds=2)
        time.sleep(0.6)  # past the warm-up: the same shapes and volumes are now judged, and pass
    found = alerts(port)
    assert found == [], [(a["user"], a["evidence"]) for a in found]


def test_exfiltration_names_tenant_and_user(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    normal(proxy, "carol")
    time.sleep(1.2)
    with connect(proxy, "carol") as conn:
        assert len(conn.execute("SELECT * FROM orders").fetchall()) == 3000  # the tenant's whole table
    alert = wait_alert(port, "exfiltration")
    assert (alert["tenant"], alert["user"]) == ("acme", "carol")
    assert float(alert["observed"]) >= 3000 and float(alert["threshold"]) >= 1000
    evidence = json.loads(alert["evidence"])
    assert evidence["max_rows"] == 3000 or evidence["rows_out"] >= 3000


@pytest.mark.parametrize("attack", ["catalog", "cross_tenant"])
def test_probing_names_tenant_and_user(env: tuple[ProxyProcess, int, int, Path], attack: str) -> None:
    proxy, port, _, _ = env
    user = "bob" if attack == "catalog" else "frank"
    statements = {
        "catalog": ["SELECT * FROM pg_catalog.pg_authid", "SELECT pg_read_file('/etc/passwd')",
                    "SELECT * FROM pg_catalog.pg_shadow"],
        "cross_tenant": ["INSERT INTO orders VALUES ('acme', 9001, 'x')", "UPDATE orders SET tenant_id = 'acme'",
                         "DELETE FROM orders WHERE tenant_id = 'acme' OR true"],
    }[attack]
    refused = 0
    with connect(proxy, user) as conn:
        for i in range(8):
            try:
                conn.execute(statements[i % len(statements)])
            except psycopg.Error:
                refused += 1
    assert refused >= 6
    alert = wait_alert(port, "probing", user=user)
    assert alert["tenant"] == "globex" and float(alert["observed"]) >= 5
    assert json.loads(alert["evidence"])["reasons"]


def raw_login(port: int, user: str, password: str, source: str = "127.0.0.1") -> list[object]:
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    client.framer = codec.Framer("server")
    client.pending = []
    try:
        return client.login(user, password)
    finally:
        client.close()


def test_credential_stuffing_from_one_address(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    for name in ("ann", "ben", "cid", "dot", "eve"):
        assert errors(raw_login(proxy.port, name, "Winter2026!"))
    alert = wait_alert(port, "credential_stuffing")
    evidence = json.loads(alert["evidence"])
    # raised at the first fold that sees the minimum (4 users): a fold may fall before the fifth login
    users = set(evidence["users"])
    assert evidence["address"] == "127.0.0.1" and len(users) >= 4 and users <= {"ann", "ben", "cid", "dot", "eve"}
    assert alert["severity"] == "critical"


def test_password_guessing_of_one_user_from_many_addresses(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    for i in range(2, 6):
        assert errors(raw_login(proxy.port, "erin", f"guess-{i}", source=f"127.0.0.{i}"))
    alert = wait_alert(port, "password_guessing")
    assert (alert["tenant"], alert["user"]) == ("acme", "erin")
    # the alert fires at the first fold that sees the minimum (3): a fold may fall before the fourth login
    addresses = json.loads(alert["evidence"])["addresses"]
    assert len(addresses) >= 3 and set(addresses) <= {f"127.0.0.{i}" for i in range(2, 6)}


def test_new_statement_shapes_from_a_stable_user(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    normal(proxy, "dave")
    time.sleep(1.2)
    normal(proxy, "dave")  # nothing new: still silent
    time.sleep(0.5)
    assert alerts(port, "new_shapes") == []
    with connect(proxy, "dave") as conn:  # reconnaissance: shapes the tenant never ran
        conn.execute("SELECT note, id FROM orders ORDER BY note DESC LIMIT 3").fetchall()
        conn.execute("SELECT max(id), min(note) FROM orders").fetchall()
        conn.execute("SELECT DISTINCT substr(note, 1, 2) FROM orders").fetchall()
    alert = wait_alert(port, "new_shapes")
    assert (alert["tenant"], alert["user"]) == ("acme", "dave")
    evidence = json.loads(alert["evidence"])
    assert len(evidence["fingerprints"]) >= 3 and all("'" not in s for s in evidence["shapes"])  # no literals


def test_encrypted_column_reads(env: tuple[ProxyProcess, int, int, Path]) -> None:
    proxy, port, _, _ = env
    with connect(proxy, "alice") as conn:
        conn.execute("DELETE FROM vault")
        for i in range(30):
            conn.execute("INSERT INTO vault (tenant_id, id, secret) VALUES ('acme', %s, %s)", (i, f"s{i}"))
        time.sleep(1.2)
        conn.execute("SELECT secret FROM vault WHERE id = %s", (1,)).fetchall()  # one value: normal
        time.sleep(0.5)
        assert alerts(port, "encrypted_reads") == []
        assert len(conn.execute("SELECT secret FROM vault").fetchall()) == 30
    alert = wait_alert(port, "encrypted_reads")
    assert (alert["tenant"], alert["user"]) == ("acme", "alice") and float(alert["observed"]) >= 30


def test_alerts_are_signed_audit_records_metrics_and_webhooks(env: tuple[ProxyProcess, int, int, Path]) -> None:
    _, port, metrics, tmp = env
    wait_alert(port, "exfiltration")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "exfiltration" not in {json.loads(b)["alert"]["detector"]
                                                                 for b, _ in Hook.received}:
        time.sleep(0.2)  # the receiver answered the first POST with 500: the retry brings it
    assert Hook.answered > len(Hook.received) and Hook.received
    assert all(verify(HOOK_SECRET.encode(), body, sig) for body, sig in Hook.received)
    assert not verify(b"wrong", Hook.received[0][0], Hook.received[0][1])
    assert "exfiltration" in {json.loads(b)["alert"]["detector"] for b, _ in Hook.received}
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert 'tenantgate_alerts_total{detector="exfiltration",severity=' in text
    result = subprocess.run(
        [sys.executable, "-m", "tenantgate.proxy.cli", "audit", "verify", "--key", f"file:{tmp}/audit.key",
         *sorted(str(p) for p in (tmp / "log").glob("*.jsonl"))],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logged = "".join(p.read_text() for p in (tmp / "log").glob("*.jsonl"))
    assert '"kind":"alert"' in logged and '"detector":"exfiltration"' in logged
