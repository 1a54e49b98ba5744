"""`compliance check` and the evidence pack over the demo environment, run through the real proxy in
session and transaction pooling: the check passes on the demo config and fails, naming the control,
when TLS, audit, RLS or keys are broken one at a time; the pack's numbers equal a known workload; the
pack's page renders in headless Chromium with its charts and tables and loads nothing from outside."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import tomlkit

from tenantgate.config import load_config
from tenantgate.keyring.kek import create_kek_file
from tenantgate.proxy.ops.rls import install_configured, policy_expression
from tenantgate.proxy.sandbox.demo import prepare, ready
from tenantgate.proxy.sandbox.pgcluster import ThrowawayCluster, free_port

from .harness import ProxyProcess, start_proxy

CLI = [sys.executable, "-m", "tenantgate.proxy.cli"]
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Demo:
    workdir: Path
    cluster: ThrowawayCluster
    config: Path
    proxy: ProxyProcess
    pool_mode: str

    def dsn(self, user: str, password: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.proxy.port}/app?sslmode=require"

    def variant(self, name: str, edit: Any) -> Path:
        """A copy of the demo config with one thing changed."""
        doc = tomlkit.parse(self.config.read_text())
        edit(doc)
        path = self.workdir / f"{name}.toml"
        path.write_text(tomlkit.dumps(doc))
        return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def check_json(config: Path) -> tuple[int, dict[str, Any]]:
    out = run_cli("compliance", "check", "--config", str(config), "--format", "json")
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


# The known workload; EXPECTED is what acme's evidence pack must count.
def workload(demo: Demo) -> None:
    with psycopg.connect(demo.dsn("alice", "alice-secret"), autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT * FROM orders").fetchall()
        for i in (10, 11):
            conn.execute("INSERT INTO orders (tenant_id, id, customer_id, total) VALUES ('acme', %s, 1, 1.5)", (i,))
        conn.execute("UPDATE customers SET tax_id = %s WHERE id = 1", ("DE-123",))
        assert conn.execute("SELECT tax_id FROM customers WHERE id = 1").fetchone() == ("DE-123",)
        for refused in ("CREATE TABLE evil (x int)", "SELECT * FROM pg_stat_activity"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(refused)
        with pytest.raises(psycopg.errors.FeatureNotSupported):  # COPY of an encrypted column: refused
            conn.execute("COPY customers TO STDOUT")
        encrypted_column_cases(conn)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(demo.dsn("alice", "wrong"), connect_timeout=10).close()
    with psycopg.connect(demo.dsn("bob", "bob-secret"), autocommit=True) as conn:
        for _ in range(4):
            conn.execute("SELECT * FROM orders").fetchall()
    with psycopg.connect(demo.dsn("ops", "ops-secret"), autocommit=True) as conn:
        for _ in range(2):
            conn.execute("SELECT tenant_id, count(*) FROM orders GROUP BY 1").fetchall()


def encrypted_column_cases(conn: psycopg.Connection[Any]) -> None:
    """Statements a count from the text gets wrong; the pack counts what the proxy decrypted or encrypted."""
    for none in ("SELECT id FROM customers WHERE tax_id IS NULL",  # named, no value encrypted or decrypted
                 "SELECT name FROM customers WHERE id = 2 -- tax_id",  # in a comment
                 "SELECT 'tax_id' AS label FROM customers WHERE id = 1",  # in a string
                 "SELECT * FROM customers WHERE id = 2"):  # *, but id 2's tax_id is NULL
        conn.execute(none).fetchall()
    for one in ("SELECT c.tax_id FROM customers c WHERE c.id = 1",  # an aliased table
                "WITH x AS (SELECT tax_id AS t FROM customers WHERE id = 1) SELECT t FROM x",  # through a CTE
                "SELECT name FROM customers WHERE id = 1; SELECT tax_id FROM customers WHERE id = 1"):  # 2nd only
        conn.execute(one)
    for _ in range(3):  # a prepared statement executed three times (extended protocol): three reads
        assert conn.execute("SELECT tax_id FROM customers WHERE id = %s", (1,), prepare=True).fetchone() == ("DE-123",)
    conn.execute("INSERT INTO customers (tenant_id, id, name, tax_id) VALUES ('acme', 3, 'Coyote', %s)", ("FR-9",))


EXPECTED = {
    "statements": 19,
    "users": {"alice": 19},
    "statement_kinds": {"select": 15, "insert": 3, "update": 1},
    "trusted_users": {"ops": 2},
    "encrypted_columns": {"customers.tax_id": 9},
    "encrypted_by_user": [{"column": "customers.tax_id", "user": "alice", "read": 7, "written": 2}],
    "auth_failures": 2,
    "refusals": 3,
    "key_events": {"key.created": 1},
}


@pytest.fixture(scope="module", params=["session", "transaction"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp(f"demo-{request.param}")
    port = free_port()
    cluster, config = prepare(workdir, port)
    try:
        doc = tomlkit.parse(config.read_text())
        doc["backend"]["pool_mode"] = request.param  # type: ignore[index]
        doc["listen"]["workers"] = 1  # type: ignore[index]
        config.write_text(tomlkit.dumps(doc))
        asyncio.run(ready(config, install_configured))
        proxy = start_proxy(workdir, config.read_text(), port)
        try:
            demo = Demo(workdir, cluster, config, proxy, request.param)
            workload(demo)
            proxy.proc.send_signal(signal.SIGHUP)  # a reload: a configuration change on record
            time.sleep(1.0)  # batched durability: the records are on disk within flush_interval_ms
            yield demo
        finally:
            proxy.stop()
    finally:
        cluster.stop()


def failed(report: dict[str, Any]) -> set[str]:
    return set(report["failed"])


def test_check_passes_on_demo_config(demo: Demo) -> None:
    rc, report = check_json(demo.config)
    assert rc == 0 and not failed(report), report
    statuses = {f"{c['framework']} {c['id']}": c["status"] for c in report["controls"]}
    assert statuses["pci-dss-4.0 10.4.1"] == "manual"  # a person reviews the logs: supporting evidence only
    assert statuses["pci-dss-4.0 7.2.1"] == "pass"
    text = run_cli("compliance", "check", "--config", str(demo.config))
    assert text.returncode == 0 and "pci-dss-4.0 10.3.4" in text.stdout and "0 fail" in text.stdout


def test_a_recorded_review_is_the_evidence_of_the_review_controls(demo: Demo) -> None:
    """`audit review` records that it ran (its own chain beside the log); the review controls cite it."""
    out = run_cli("audit", "review", "--config", str(demo.config), "--since", "yesterday")
    assert out.returncode == 0, out.stderr
    assert "recorded" in out.stdout
    rc, report = check_json(demo.config)
    assert rc == 0, report["failed"]
    review = next(c for c in report["controls"] if c["framework"] == "pci-dss-4.0" and c["id"] == "10.4.1")
    assert review["status"] == "manual"
    assert any(e.startswith("last log review recorded 20") for e in review["evidence"]), review


def _tls_off(doc: Any) -> None:
    doc["tls"]["mode"] = "allow"


def _audit_off(doc: Any) -> None:
    doc["audit"]["enabled"] = False


def _other_kek(workdir: Path) -> Any:
    def edit(doc: Any) -> None:
        kek = workdir / "other-kek.hex"
        if not kek.exists():
            create_kek_file(kek)
        doc["encryption"]["kek"] = f"file:{kek}"

    return edit


def _tampered_log(workdir: Path) -> Any:
    def edit(doc: Any) -> None:
        live = Path(str(doc["audit"]["path"]))
        copy = workdir / "tampered" / live.name
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(live.parent, copy.parent, ignore=shutil.ignore_patterns("*.lock"))
        lines = copy.read_bytes().splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if b'"user":"alice"' in line)
        lines[at] = lines[at].replace(b'"user":"alice"', b'"user":"mallory"')  # still valid JSON, wrong hash
        copy.write_bytes(b"".join(lines))
        doc["audit"]["path"] = str(copy)

    return edit


@pytest.mark.parametrize(
    ("broken", "controls"),
    [
        ("tls", {"pci-dss-4.0 4.2.1", "pci-dss-4.0 8.3.2", "hipaa 164.312(e)(1)", "soc2 CC6.6", "gdpr Art. 32"}),
        ("audit_off", {"pci-dss-4.0 10.2.1.4", "pci-dss-4.0 10.3.4", "hipaa 164.312(b)", "soc2 CC7.2"}),
        ("audit_tampered", {"pci-dss-4.0 10.3.4", "hipaa 164.312(c)(1)", "soc2 CC7.2"}),
        ("keys", {"pci-dss-4.0 3.5.1", "pci-dss-4.0 3.6.1", "hipaa 164.312(a)(2)(iv)", "gdpr Art. 17"}),
    ],
)
def test_check_fails_naming_the_control(demo: Demo, broken: str, controls: set[str]) -> None:
    edits = {"tls": _tls_off, "audit_off": _audit_off, "keys": _other_kek(demo.workdir),
             "audit_tampered": _tampered_log(demo.workdir)}
    config = demo.variant(broken, edits[broken])
    rc, report = check_json(config)
    assert rc == 1
    assert controls <= failed(report), report["failed"]
    if broken == "audit_tampered":
        chain = next(c for c in report["controls"] if c["id"] == "10.3.4")
        assert any("VERIFICATION FAILED" in m for m in chain["missing"]), chain


def test_check_fails_on_rls_drift(demo: Demo) -> None:
    demo.cluster.execute("DROP POLICY tenantgate_tenant ON orders", dbname="app")
    try:
        rc, report = check_json(demo.config)
        assert rc == 1
        assert {"pci-dss-4.0 7.2.1", "hipaa 164.312(a)(1)", "soc2 CC6.1", "gdpr Art. 32"} <= failed(report)
        access = next(c for c in report["controls"] if c["id"] == "7.2.1")
        assert any("orders" in m and "policy tenantgate_tenant is missing" in m for m in access["missing"])
    finally:
        asyncio.run(install_configured(load_config(demo.config)))
    assert check_json(demo.config)[0] == 0


def test_check_covers_the_schema_tier(demo: Demo) -> None:
    """initech's sessions find their tables only in t_initech: one gone there fails the access controls."""
    demo.cluster.execute("ALTER TABLE t_initech.orders RENAME TO orders_gone", dbname="app")
    try:
        rc, report = check_json(demo.config)
        assert rc == 1
        access = next(c for c in report["controls"] if c["id"] == "7.2.1")
        assert any("tenant initech (schema): t_initech.orders does not exist" in m for m in access["missing"]), access
    finally:
        demo.cluster.execute("ALTER TABLE t_initech.orders_gone RENAME TO orders", dbname="app")
    rc, report = check_json(demo.config)
    assert rc == 0, report["failed"]
    access = next(c for c in report["controls"] if c["id"] == "7.2.1")
    assert any("1 schema-tier tenant(s) with their own tables" in e for e in access["evidence"]), access


def test_check_covers_a_dedicated_tenant(demo: Demo) -> None:
    """A dedicated tenant's own database is checked too: RLS on its copies of the scoped tables, and the
    role the proxy logs in with there."""
    db = f"dedi_{demo.pool_mode}"
    demo.cluster.execute(f"CREATE DATABASE {db} OWNER app")
    tables = "; ".join(f"CREATE TABLE public.{t} (tenant_id text); ALTER TABLE public.{t} OWNER TO app"
                       for t in ("customers", "orders"))
    demo.cluster.execute(tables, dbname=db)

    def dedicated(doc: Any) -> None:
        own = tomlkit.table()
        for key, value in doc["backend"].items():
            own[key] = value
        own["database"] = db
        tenant = tomlkit.table()
        tenant["tier"] = "dedicated"
        tenant["backend"] = own
        doc["tenants"]["newco"] = tenant

    config = demo.variant(f"dedicated-{demo.pool_mode}", dedicated)
    rc, report = check_json(config)
    assert rc == 1
    access = next(c for c in report["controls"] if c["id"] == "7.2.1")
    assert any(m.startswith("rls: RLS drift") and "tenant newco (dedicated): " in m and "policy tenantgate_tenant "
               "is missing" in m for m in access["missing"]), access
    demo.cluster.execute("; ".join(
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; ALTER TABLE {t} FORCE ROW LEVEL SECURITY; "
        f"CREATE POLICY tenantgate_tenant ON {t} USING {policy_expression('tenant_id')} "
        f"WITH CHECK {policy_expression('tenant_id')}" for t in ("customers", "orders")), dbname=db)
    rc, report = check_json(config)
    assert rc == 0, report["failed"]
    access = next(c for c in report["controls"] if c["id"] == "7.2.1")
    assert any("1 dedicated database(s)" in e for e in access["evidence"]), access


@pytest.fixture(scope="module")
def pack(demo: Demo) -> tuple[Path, dict[str, Any]]:
    out = demo.workdir / "evidence"
    result = run_cli("compliance", "report", "--config", str(demo.config), "--tenant", "acme",
                     "--since", "2000-01-01T00:00:00Z", "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "evidence.json").read_text())


def test_evidence_pack_counts_the_workload(demo: Demo, pack: tuple[Path, dict[str, Any]]) -> None:
    _, data = pack
    access = data["access"]
    assert data["tenant"] == "acme" and data["integrity"]["ok"], data["integrity"]
    assert access["statements"] == EXPECTED["statements"]
    assert access["users"] == EXPECTED["users"]  # bob's statements are globex's, not in acme's pack
    assert access["statement_kinds"] == EXPECTED["statement_kinds"]
    assert access["trusted_users"] == EXPECTED["trusted_users"]
    assert access["encrypted_columns"] == EXPECTED["encrypted_columns"]
    assert access["encrypted_by_user"] == EXPECTED["encrypted_by_user"]
    assert data["auth_failures"]["count"] == EXPECTED["auth_failures"]
    assert all(f["user"] == "alice" for f in data["auth_failures"]["listed"])
    assert sum(data["refusals"].values()) == EXPECTED["refusals"]
    assert data["key_events"] == EXPECTED["key_events"]
    assert data["limit_hits"] == {}
    digest = hashlib.sha256(demo.config.read_bytes()).hexdigest()
    assert [(c["decision"], c["change"]) for c in data["config_changes"]] == [("allowed", f"{digest} -> {digest}")]
    assert sum(d["allowed"] + d["refused"] for d in data["daily"]) == access["events"]
    assert {c["status"] for c in data["controls"]} <= {"pass", "manual"}


def test_evidence_pack_window_excludes_everything_before_since(demo: Demo) -> None:
    out = demo.workdir / "evidence-future"
    result = run_cli("compliance", "report", "--config", str(demo.config), "--tenant", "acme",
                     "--since", "2999-01-01T00:00:00Z", "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "evidence.json").read_text())
    assert data["access"]["statements"] == 0 and data["auth_failures"]["count"] == 0


def test_reload_with_weaker_config_is_refused(demo: Demo) -> None:
    """RELOAD (SIGHUP) with a file weaker than an enabled framework keeps the old config and says why."""
    original = demo.config.read_text()
    doc = tomlkit.parse(original)
    doc["tls"]["mode"] = "allow"  # type: ignore[index]
    demo.config.write_text(tomlkit.dumps(doc))
    try:
        demo.proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload refused" not in demo.proxy.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "tls.mode: weaker than pci-dss-4.0 4.2.1 requires" in demo.proxy.log()
    finally:
        demo.config.write_text(original)
    with pytest.raises(psycopg.OperationalError, match="requires an SSL connection"):  # still TLS-only
        psycopg.connect(demo.dsn("alice", "alice-secret").replace("sslmode=require", "sslmode=disable")).close()


# ---------------------------------------------------------------- headless Chromium over DevTools


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, user_data: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={user_data}",
                "--remote-debugging-pipe", "about:blank"]
        # chromium reads fd 3 and writes fd 4; bash (dash takes one-digit fds only) moves the pipe ends there
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', "bash", *args],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return dict(json.loads(msg))

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return dict(answer.get("result", {}))
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            self.call("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def render(page: Path, user_data: Path) -> tuple[list[str], dict[str, Any], bytes]:
    """Load ``page``; returns (every URL the page requested, DOM counts, PNG screenshot)."""
    tools = DevTools(user_data)
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tools.call("Network.enable", session)
        tools.call("Page.enable", session)
        tools.call("Page.navigate", session, url=page.as_uri())
        tools.wait_event("Page.loadEventFired")
        counts = tools.call(
            "Runtime.evaluate", session, returnByValue=True,
            expression="({svg: document.querySelectorAll('svg.chart').length,"
                       " bars: document.querySelectorAll('svg.chart rect.bar').length,"
                       " tables: document.querySelectorAll('table').length,"
                       " controls: document.querySelectorAll('table.controls tbody tr').length,"
                       " integrity: document.getElementById('integrity').textContent})",
        )["result"]["value"]
        shot = base64.b64decode(tools.call("Page.captureScreenshot", session, format="png")["data"])
        urls = [e["params"]["request"]["url"] for e in tools.events
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return urls, counts, shot
    finally:
        tools.close()


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed "
                                    "(.ci/run installs it: apt-get install chromium)")


@needs_chromium
def test_evidence_page_in_headless_chromium(pack: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, data = pack
    urls, counts, shot = render(out / "evidence.html", tmp_path / "chromium")
    assert urls == [(out / "evidence.html").as_uri()], urls  # the page itself, nothing else
    assert counts["svg"] >= 3 and counts["bars"] >= 2, counts
    assert counts["tables"] >= 10 and counts["controls"] == len(data["controls"]), counts
    assert "verified" in counts["integrity"]
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    (out / "evidence.png").write_bytes(shot)


@needs_chromium
def test_devtools_harness_sees_external_requests(tmp_path: Path) -> None:
    """The request check above is meaningful: a page that does load something outside is caught."""
    page = tmp_path / "leaky.html"
    outside = f"http://127.0.0.1:{free_port()}/pixel.png"  # loopback, nothing listening: only the attempt counts
    page.write_text(f'<!DOCTYPE html><html><body><img src="{outside}">'
                    '<p id="integrity">x</p></body></html>')
    urls, _, _ = render(page, tmp_path / "chromium")
    assert outside in urls
