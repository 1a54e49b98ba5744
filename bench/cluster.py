"""``python -m bench.cluster``: TPS of 1, 2 and 3 tenantgate instances behind HAProxy, one run.

Opt-in (``make bench-cluster``). One throwaway PostgreSQL, three instances of one [cluster]
config (row scoping on, audit on with its default batched durability), HAProxy in front with
the first N instances as its servers; pgbench runs the same scoped point-select script through
HAProxy for each N, in one run, so the ratios compare like with like. On a machine with fewer
cores than instances (plus PostgreSQL and pgbench) the ratios show contention, not scaling:
they are reported with the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tenantgate.proxy.sandbox.pgcluster import ThrowawayCluster, find_pg_bin, free_port

from .pgbench import parse_summary
from .procs import wait_listening

TENANTS = ("t1", "t2", "t3", "t4")
ROWS = 10_000  # per tenant
SCRIPT = "\\set aid random(1, 10000)\nSELECT abalance FROM accounts WHERE aid = :aid;\n"


def _config(pg: ThrowawayCluster, password: str, ports: dict[str, tuple[int, int, int]], tmp: Path) -> str:
    peers = ", ".join(
        f'{n} = {{ peer = "127.0.0.1:{peer}", address = "127.0.0.1:{port}", metrics = "127.0.0.1:{metrics}" }}'
        for n, (port, metrics, peer) in ports.items()
    )
    users = "".join(
        f'[tenants.{t}]\ntier = "shared"\n[users.u_{t}]\ntenant = "{t}"\npassword = "pw"\n' for t in TENANTS
    )
    key = tmp / "audit.key"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    return (
        f'[listen]\naddress = "127.0.0.1:1"\n\n[backend]\nhost = "127.0.0.1"\nport = {pg.port}\nuser = "app"\n'
        f'password = "{password}"\ndatabase = "bench"\nsslmode = "disable"\n\n{users}\n'
        '[scoping]\ncolumn = "tenant_id"\ntables = ["accounts"]\n\n'
        f'[audit]\npath = "{tmp}/audit/{{instance}}/audit.jsonl"\nkey = "file:{key}"\n\n'
        f'[cluster]\ninstance_env = "TENANTGATE_INSTANCE"\npassword = "{secrets.token_urlsafe(32)}"\n'
        f"peers = {{ {peers} }}\n"
    )


def _haproxy(ports: dict[str, tuple[int, int, int]], used: int, port: int) -> str:
    servers = "".join(
        f"    server tg-{n} 127.0.0.1:{p} check port {m}\n" for n, (p, m, _) in list(ports.items())[:used]
    )
    return (
        "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n"
        f"    timeout server 1h\nfrontend pg\n    bind 127.0.0.1:{port}\n    default_backend tg\n"
        "backend tg\n    balance roundrobin\n    option httpchk GET /readyz\n"
        f"    default-server inter 1s rise 1\n{servers}"
    )


def run(duration: int, clients: int, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tg-bench-cluster-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[int, float] = {}
    try:
        with ThrowawayCluster(log_to=tmp / "postgres.log") as pg:
            password = secrets.token_urlsafe(12)
            pg.create_role("app", password)
            pg.create_database("bench")
            pg.execute(
                "CREATE TABLE accounts (tenant_id text NOT NULL, aid int NOT NULL, abalance int NOT NULL DEFAULT 0,"
                " PRIMARY KEY (tenant_id, aid));"
                + "".join(f"INSERT INTO accounts SELECT '{t}', g FROM generate_series(1, {ROWS}) g;" for t in TENANTS)
                + "GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO app; ANALYZE accounts;",
                dbname="bench",
            )
            ports = {n: (free_port(), free_port(), free_port()) for n in ("a", "b", "c")}
            config = tmp / "tenantgate.toml"
            config.write_text(_config(pg, password, ports, tmp))
            for name, (port, _, _) in ports.items():
                log = tmp / f"{name}.log"
                with open(log, "wb") as fh:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "tenantgate.proxy.cli", "serve", "--config", str(config)],
                        stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "TENANTGATE_INSTANCE": name},
                    )  # fmt: skip
                procs.append(proc)
                wait_listening(port, proc, log)
            script = tmp / "select.sql"
            script.write_text(SCRIPT)
            for used in (1, 2, 3):
                results[used] = _point(ports, used, tmp, script, duration, clients)
                print(f"{used} instance(s): {results[used]:.0f} tps", file=sys.stderr)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, object] = {
        "duration_s": duration,
        "clients": clients,
        "cpus": os.cpu_count(),
        "tps": {str(k): round(v, 1) for k, v in results.items()},
        "ratio_to_one": {str(k): round(v / results[1], 2) for k, v in results.items()},
    }
    (out / "cluster.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _point(ports: dict[str, tuple[int, int, int]], used: int, tmp: Path, script: Path, duration: int,
           clients: int) -> float:  # fmt: skip
    port = free_port()
    cfg = tmp / f"haproxy-{used}.cfg"
    cfg.write_text(_haproxy(ports, used, port))
    log = tmp / f"haproxy-{used}.log"
    with open(log, "wb") as fh:
        lb = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, lb, log)
        time.sleep(1.5)  # the servers' first health checks
        env = {**os.environ, "PGPASSWORD": "pw", "PGSSLMODE": "disable"}
        done = subprocess.run(
            [find_pg_bin("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "u_t1", "-c", str(clients),
             "-j", "2", "-T", str(duration), "-M", "extended", "-f", str(script), "bench"],
            capture_output=True, text=True, env=env, timeout=duration + 120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
        return float(parse_summary(done.stdout)["tps"])
    finally:
        lb.terminate()
        lb.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per point (default 20)")
    parser.add_argument("--clients", type=int, default=24, help="pgbench clients (default 24)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster"))
    args = parser.parse_args(argv)
    if shutil.which("haproxy") is None:
        print("haproxy is not installed: apt-get install haproxy", file=sys.stderr)
        return 2
    summary = run(args.duration, args.clients, args.out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
