"""Metrics: bounded labels, the HTTP endpoint in-process, and counters after a real workload.

The tests marked "wired" below depend on the hot-path calls into `proxy.counters` in
proxy/client.py and proxy/session.py (see the Metrics method docstrings).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantgate.config import load_config
from tenantgate.proxy.console.metrics import MetricsServer
from tenantgate.proxy.counters import MAX_KINDS, OTHER, OTHER_KIND, TRUSTED, Metrics
from tenantgate.proxy.process import Proxy
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import Backend, ProxyProcess, launch_with_ports

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample name over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# ---------------------------------------------------------------------------- unit


def test_tenant_labels_stay_bounded_with_1000_tenants() -> None:
    m = Metrics()  # top_n = 100
    for i in range(1000):
        for kind, decision in (("select", "allowed"), ("insert", "allowed"), ("delete", "refused")):
            m.statement(f"tenant-{i:04d}", kind, decision)
        m.timing(f"tenant-{i:04d}", 0.002, 0.0001)
        m.session_ended(f"tenant-{i:04d}", 10, 20)
    samples = parse(m.exposition().decode())
    tenants = {dict(ls)["tenant"] for (n, ls) in samples if n == "tenantgate_statements_total"}
    assert tenants == {f"tenant-{i:04d}" for i in range(100)} | {OTHER}
    assert sum(1 for (n, _) in samples if n == "tenantgate_statements_total") == 101 * 3
    assert sum(1 for (n, _) in samples if n == "tenantgate_statement_duration_seconds_count") == 101
    assert sum(1 for (n, _) in samples if n == "tenantgate_bytes_in_total") == 101
    # nothing is lost: the overflow tenants are all counted under _other
    assert total(samples, "tenantgate_statements_total") == 3000
    assert total(samples, "tenantgate_statements_total", tenant=OTHER) == 900 * 3
    assert total(samples, "tenantgate_bytes_out_total", tenant=OTHER) == 900 * 20
    assert len(samples) < 101 * 60  # the whole exposition stays bounded too


def test_counters_and_stats() -> None:
    m = Metrics(top_n=5)
    m.client_connected()
    m.client_connected()
    m.client_closed()
    m.client_refused("28P01")
    m.client_refused("28000")
    m.admin_auth_failed()
    m.statement("acme", "select", "allowed")
    m.statement("acme", "select", "allowed")
    m.statement("acme", "create", "refused")
    m.timing("acme", 0.010)
    m.timing("acme", 0.030, 0.0002)
    m.timing("acme", 0.002)
    m.statement(None, "select", "allowed")
    m.session_ended("acme", 100, 1000)
    m.session_ended("acme", 1, 2)
    m.crypto("encrypt")
    m.crypto("decrypt", ok=False)
    for sqlstate in ("42501", "22012", "42P01", "bogus"):
        m.error(sqlstate)
    m.admin_command("SHOW TENANTS", True)
    s = parse(m.exposition().decode())
    assert total(s, "tenantgate_client_connections") == 1
    assert total(s, "tenantgate_client_connections_opened_total") == 2
    assert total(s, "tenantgate_client_connections_refused_total", sqlstate="28P01") == 1
    assert total(s, "tenantgate_auth_failures_total", port="client") == 1
    assert total(s, "tenantgate_auth_failures_total", port="admin") == 1
    assert total(s, "tenantgate_statements_total", tenant="acme", decision="refused") == 1
    assert total(s, "tenantgate_statements_total", tenant=TRUSTED) == 1
    assert total(s, "tenantgate_statement_duration_seconds_count", tenant="acme") == 3
    assert total(s, "tenantgate_statement_duration_seconds_bucket", tenant="acme", le="0.025") == 2
    assert total(s, "tenantgate_proxy_overhead_seconds_count", tenant="acme") == 1
    assert total(s, "tenantgate_bytes_in_total", tenant="acme") == 101
    assert total(s, "tenantgate_crypto_operations_total", op="decrypt") == 1
    assert total(s, "tenantgate_crypto_failures_total", op="decrypt") == 1
    assert total(s, "tenantgate_crypto_failures_total", op="encrypt") == 0
    assert total(s, "tenantgate_errors_total", sqlstate_class="42") == 2
    assert total(s, "tenantgate_errors_total", sqlstate_class="XX") == 1
    assert total(s, "tenantgate_admin_commands_total", command="SHOW TENANTS", result="ok") == 1
    assert not any(n.endswith("_created") for n, _ in s)

    stats = m.tenant_stats()
    acme = stats["acme"]
    assert (acme.statements, acme.refused, acme.bytes_in, acme.bytes_out) == (3, 1, 101, 1002)
    assert acme.avg_seconds == pytest.approx(0.014)
    assert stats[TRUSTED].avg_seconds is None


def test_statement_kinds_are_bounded_too() -> None:
    """Unscoped sessions report the first word of any SQL: a client must not mint series."""
    m = Metrics()
    m.statement(None, "x" * 40, "allowed")  # too long
    m.statement(None, "Select", "allowed")  # not the rewriter's lower-case words
    words = ["w" + "".join(chr(ord("a") + int(d)) for d in str(i)) for i in range(500)]
    for word in words:
        m.statement(None, word, "allowed")
    samples = parse(m.exposition().decode())
    kinds = {dict(ls)["kind"] for (n, ls) in samples if n == "tenantgate_statements_total"}
    assert kinds == set(words[: MAX_KINDS - 2]) | {OTHER_KIND}
    assert total(samples, "tenantgate_statements_total") == 502
    assert len(m._kinds) <= MAX_KINDS


def test_families_cover_scrape_time_collectors() -> None:
    families = Metrics().families()
    assert families["tenantgate_statements"] == "counter"
    assert families["tenantgate_statement_duration_seconds"] == "histogram"
    for name in ("backend_connections", "sessions", "rewrite_cache_hits", "audit_queue_depth", "bytes_in"):
        assert f"tenantgate_{name}" in families


# ---------------------------------------------------------------------------- HTTP endpoint, in process


PLAIN_HEADERS = {"content-length": "3", "connection": "close", "content-type": "text/plain; charset=utf-8"}


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def get(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def in_process_proxy(tmp_path: Path, backend_host: str, backend_port: int) -> Proxy:
    text = (
        f'[backend]\nhost = "{backend_host}"\nport = {backend_port}\nuser = "app"\n'
        '[tenants.acme]\n[users.alice]\ntenant = "acme"\npassword = "pw"\n[scoping]\ncolumn = "tenant_id"\n'
    )
    (tmp_path / "tg.toml").write_text(text)
    return Proxy(load_config(tmp_path / "tg.toml"))


def test_endpoint_routes_token_and_readiness(pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTGATE_METRICS_TOKEN", "s3cret-token")

    async def scenario() -> None:
        proxy = in_process_proxy(tmp_path, pg.host, pg.port)
        server = await MetricsServer.start(proxy, "127.0.0.1", 0)
        try:
            port = server.port
            assert await http(port, get("/healthz")) == (200, PLAIN_HEADERS, b"ok\n")
            status, headers, _ = await http(port, get("/metrics"))
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert (await http(port, get("/metrics", "Authorization: Bearer wrong")))[0] == 401
            status, headers, body = await http(port, get("/metrics", "authorization: bearer s3cret-token"))
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            assert b"tenantgate_client_connections 0.0" in body
            status, headers, body = await http(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
            assert (status, headers["content-length"], body) == (200, "3", b"")
            assert (await http(port, get("/nope")))[0] == 404
            assert (await http(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
            status, _, body = await http(port, get("/readyz"))
            assert (status, body) == (200, b"ready\n")
            proxy.stopping.set()
            status, _, body = await http(port, get("/readyz"))
            assert status == 503 and b"shutting down" in body
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_readyz_reports_an_unreachable_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENANTGATE_METRICS_TOKEN", raising=False)
    dead = free_port()

    async def scenario() -> None:
        proxy = in_process_proxy(tmp_path, "127.0.0.1", dead)
        server = await MetricsServer.start(proxy, "127.0.0.1", 0)
        try:
            status, _, body = await http(server.port, get("/readyz"))
            assert status == 503 and f"backend 127.0.0.1:{dead} not reachable".encode() in body
            # /metrics is open without a token
            assert (await http(server.port, get("/metrics")))[0] == 200
            # one slow client does not block another
            _, slow_writer = await asyncio.open_connection("127.0.0.1", server.port)
            slow_writer.write(b"GET /met")
            assert (await http(server.port, get("/healthz")))[0] == 200
            slow_writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- the real proxy


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "ops_metrics")


@pytest.fixture(scope="module")
def ops(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, dict[str, int]]]:
    proxy, ports = launch_with_ports(tmp_path_factory.mktemp("metrics"), backend, "metrics", "admin")
    yield proxy, ports
    proxy.stop()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return parse(resp.read().decode())


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll until true: teardown on the proxy side finishes after the client has closed."""
    pause = threading.Event()
    for _ in range(200):
        if check():
            return
        pause.wait(0.05)
    raise AssertionError(f"never happened: {what}")


def test_probes_of_the_real_proxy(ops: tuple[ProxyProcess, dict[str, int]]) -> None:
    port = ops[1]["metrics"]
    for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            assert (resp.status, resp.read()) == (200, body)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert info.value.code == 404


def test_admin_login_failures_and_commands_are_counted(ops: tuple[ProxyProcess, dict[str, int]]) -> None:
    from .test_admin import admin_error, psql  # the admin port's own helpers

    port, admin_port = ops[1]["metrics"], ops[1]["admin"]
    before = scrape(port)
    assert psql(f"postgresql://dba:nope@127.0.0.1:{admin_port}/x?sslmode=disable", "SHOW VERSION").returncode != 0
    assert admin_error(admin_port, "PAUSE nope").sqlstate == "42704"
    after = scrape(port)
    failures = "tenantgate_auth_failures_total"
    assert total(after, failures, port="admin") - total(before, failures, port="admin") == 1
    commands = "tenantgate_admin_commands_total"
    assert total(after, commands, command="PAUSE", result="error") - total(before, commands, command="PAUSE") == 1


def test_wired_workload_counters_match_what_was_sent(ops: tuple[ProxyProcess, dict[str, int]]) -> None:
    """Depends on the hot-path wiring in client.py/session.py."""
    proxy, port = ops[0], ops[1]["metrics"]
    before = scrape(port)
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as alice:
        for i in range(5):
            alice.execute("SELECT %s::int", (i,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute("CREATE TABLE not_allowed (a int)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            alice.execute("SELECT 1/0")
        with psycopg.connect(proxy.dsn("bob"), autocommit=True) as bob:
            for _ in range(3):
                bob.execute("SELECT 1")
            during = scrape(port)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn("alice").replace("alice-pw", "wrong")).close()

    def delta(name: str, **labels: str) -> float:
        return total(scrape(port), name, **labels) - total(before, name, **labels)

    assert total(during, "tenantgate_sessions", tenant="acme") == 1
    assert total(during, "tenantgate_backend_connections") >= 2
    eventually(lambda: total(scrape(port), "tenantgate_client_connections") == 0, "every client closed")
    assert delta("tenantgate_client_connections_opened_total") == 3
    assert delta("tenantgate_client_connections_refused_total", sqlstate="28P01") == 1
    assert delta("tenantgate_auth_failures_total", port="client") == 1
    assert delta("tenantgate_statements_total", tenant="acme") == 7
    assert delta("tenantgate_statements_total", tenant="acme", decision="refused") == 1
    assert delta("tenantgate_statements_total", tenant="globex") == 3
    assert delta("tenantgate_statement_duration_seconds_count", tenant="acme") == 7
    assert delta("tenantgate_proxy_overhead_seconds_count", tenant="globex") == 3
    assert delta("tenantgate_errors_total", sqlstate_class="42") == 1
    assert delta("tenantgate_errors_total", sqlstate_class="22") == 1
    assert delta("tenantgate_bytes_in_total", tenant="acme") > 0
    assert delta("tenantgate_bytes_out_total", tenant="globex") > 0
    assert total(scrape(port), "tenantgate_rewrite_cache_hits_total") > 0  # 5 SELECTs share one plan
    # the admin console's cumulative view reads the same counters
    from .test_admin import table

    acme = {r["tenant"]: r for r in table(ops[1]["admin"], "SHOW STATS")[1]}["acme"]
    assert (acme["statements"], acme["refused"]) == ("7", "1") and float(acme["avg_statement_ms"]) > 0
    # bytes move from live to ended sessions without going backwards
    assert total(scrape(port), "tenantgate_bytes_in_total", tenant="acme") >= total(
        during, "tenantgate_bytes_in_total", tenant="acme"
    )
