"""One bench run from start to finish: set up, measure every point interleaved, report, tear down."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tenantgate.config import ConfigError, load_config
from tenantgate.proxy.pgcluster import ThrowawayCluster, find_pg_bin, free_port

from . import encryption, micro, pgbouncer, report
from .environment import describe
from .memory import idle_clients_rss
from .pgbench import Point, run_point
from .procs import raise_nofile
from .targets import (
    ENCRYPTED_VARIANT,
    POOLED_BACKEND,
    POOLED_VARIANT,
    PROTOCOLS,
    TRUSTED_USER,
    VARIANTS,
    ProxyProcess,
    Target,
    tenant_user,
    tenantgate_config,
    write_audit_key,
)
from .workload import ENCRYPTED_COPY, ENCRYPTED_TABLE, SCHEMA, WORKLOADS, Scale, load_sql, script

DATABASE = "bench"
APP_ROLE = "app"
MAX_CONNECTIONS = 700
POOL_SIZE = 20  # PgBouncer's default_pool_size: server connections it may hold
# Session-mode endpoints need one backend per client; keep room for PgBouncer's pool and admin sessions.
BACKEND_HEADROOM = MAX_CONNECTIONS - 3 - POOL_SIZE - 10
SESSION_IDLE_MAX = 500  # idle session-mode clients measured (each holds a backend)
BOUNCER_CLIENTS = 1000  # PgBouncer's max_client_conn
PG_SETTINGS = {"shared_buffers": "256MB", "max_connections": MAX_CONNECTIONS, "max_wal_size": "4GB",
               "checkpoint_timeout": "30min"}
ALL_TARGETS = ("direct", "pgbouncer", *VARIANTS, POOLED_VARIANT, ENCRYPTED_VARIANT)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    out: Path
    mode: str = "full"
    scale: Scale = field(default_factory=lambda: Scale(tenants=8, accounts=100_000))
    duration: int = 15
    workloads: tuple[str, ...] = WORKLOADS
    protocols: tuple[str, ...] = PROTOCOLS
    clients: tuple[int, ...] = (8, 64, 512)
    targets: tuple[str, ...] = ALL_TARGETS
    spread: int = 4  # tenants per point, one pgbench process each
    memory_requested: int = 10_000
    memory: bool = True
    micro: bool = True
    encryption: bool = True
    warmup: int = 2
    overrides: tuple[str, ...] = ()  # options changed from the preset, named in the report

    @classmethod
    def preset(cls, *, quick: bool, out: Path | None) -> Options:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        opts = cls(out=out or RESULTS_DIR / stamp)
        if quick:
            opts.mode = "quick"
            opts.scale = Scale(tenants=4, accounts=20_000)
            opts.duration = 5
            opts.workloads = ("select-only",)
            opts.protocols = ("simple", "extended")
            opts.clients = (8, 64)
            opts.memory_requested = 1_000
        return opts


def _prepare_database(cluster: ThrowawayCluster, scale: Scale, app_password: str) -> None:
    cluster.create_role(APP_ROLE, app_password)
    cluster.create_database(DATABASE)
    cluster.execute(SCHEMA, dbname=DATABASE)
    for tenant in scale.tenant_names():
        cluster.execute(load_sql(scale, tenant), dbname=DATABASE)
    cluster.execute(ENCRYPTED_COPY, dbname=DATABASE)
    cluster.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
                    dbname=DATABASE)
    cluster.execute("VACUUM ANALYZE", dbname=DATABASE)


def _write_scripts(workdir: Path, scale: Scale, targets: list[Target], workloads: tuple[str, ...]
                   ) -> dict[tuple[str, str, bool, str], Path]:
    """Script files keyed by (workload, tenant, predicate, table)."""
    folder = workdir / "scripts"
    folder.mkdir()
    paths: dict[tuple[str, str, bool, str], Path] = {}
    for target in targets:
        for workload in workloads:
            for tenant in scale.tenant_names():
                key = (workload, tenant, target.predicate, target.table)
                if key not in paths:
                    path = folder / f"{workload}-{tenant}-{'pred' if target.predicate else 'scoped'}-{target.table}.sql"
                    path.write_text(script(workload, scale, tenant, predicate=target.predicate, table=target.table))
                    paths[key] = path
    return paths


class Bench:
    """Holds what a run starts, so that :meth:`close` stops all of it."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.notes: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.nofile = raise_nofile()
        self.stack = contextlib.ExitStack()
        self.workdir = Path(tempfile.mkdtemp(prefix="tenantgate-bench-"))
        self.stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.cluster = ThrowawayCluster(settings=PG_SETTINGS)
        self.app_password = secrets.token_urlsafe(18)
        self.targets: list[Target] = []
        self.proxies: dict[str, ProxyProcess] = {}
        self.bouncer: pgbouncer.PgBouncer | None = None
        self.pgbouncer_version = "not used"

    def close(self) -> None:
        self.stack.close()

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        opts = self.opts
        self.log(f"starting PostgreSQL; loading {opts.scale.tenants} tenants x {opts.scale.accounts:,} accounts")
        self.cluster.start()
        self.stack.callback(self.cluster.stop)
        _prepare_database(self.cluster, opts.scale, self.app_password)
        password_file = self.workdir / "backend-password"
        password_file.write_text(self.app_password + "\n")
        password_file.chmod(0o600)
        passwords = {t: secrets.token_urlsafe(12) for t in opts.scale.tenant_names()}
        service_password = secrets.token_urlsafe(12)
        tenants = opts.scale.tenant_names()
        app_login = dict.fromkeys(tenants, (APP_ROLE, self.app_password))

        if "direct" in opts.targets:
            self.targets.append(Target("direct", self.cluster.port, app_login, predicate=True,
                                       max_clients=BACKEND_HEADROOM))
        if "pgbouncer" in opts.targets:
            self._start_pgbouncer(app_login)

        base = {"pg_port": self.cluster.port, "database": DATABASE, "backend_user": APP_ROLE,
                "backend_password_file": password_file, "passwords": passwords, "service_password": service_password}
        audit_key = write_audit_key(self.workdir / "audit.key")
        tenant_logins = {t: (tenant_user(t), passwords[t]) for t in tenants}
        service_logins = dict.fromkeys(tenants, (TRUSTED_USER, service_password))
        for name, (scoped, durability) in VARIANTS.items():
            if name not in opts.targets:
                continue
            port = free_port()
            audit = (durability, audit_key, self.workdir / f"{name}-audit.jsonl") if durability else None
            config = self.workdir / f"{name}.toml"
            config.write_text(tenantgate_config(port=port, audit=audit, **base))
            proxy = self._start_proxy(name, config, port)
            target = Target(name, port, tenant_logins if scoped else service_logins, predicate=not scoped,
                            max_clients=BACKEND_HEADROOM, pid=proxy.proc.pid)
            if name == "tenantgate-scoped":
                target.max_idle = SESSION_IDLE_MAX
                target.idle_limit = (f"session mode: every idle client holds a PostgreSQL backend, and the cluster "
                                     f"allows max_connections = {MAX_CONNECTIONS}")
            self.targets.append(target)
        if POOLED_VARIANT in opts.targets:
            self._setup_pooled(base, tenant_logins)
        if opts.encryption and ENCRYPTED_VARIANT in opts.targets:
            self._setup_encryption(base, tenant_logins)

    def _start_pgbouncer(self, app_login: dict[str, tuple[str, str]]) -> None:
        binary = pgbouncer.locate(self.notes)
        if binary is None:
            self.pgbouncer_version = "unavailable"
            return
        # Its own folder: PgBouncer runs as the postgres OS user, which must not read the bench's secrets.
        workdir = Path(tempfile.mkdtemp(prefix="tenantgate-bench-pgbouncer-"))
        self.stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        self.bouncer = pgbouncer.PgBouncer.start(
            binary, workdir, port=free_port(), pg_port=self.cluster.port, database=DATABASE,
            user=APP_ROLE, password=self.app_password)
        self.stack.callback(self.bouncer.stop)
        self.pgbouncer_version = ".".join(map(str, self.bouncer.version))
        protocols: tuple[str, ...] = PROTOCOLS
        if not self.bouncer.supports_prepared and "prepared" in self.opts.protocols:
            protocols = tuple(p for p in PROTOCOLS if p != "prepared")
            self.notes.append(f"PgBouncer {self.pgbouncer_version} cannot keep protocol-level prepared statements "
                              "in transaction mode (1.21+ can): its -M prepared points are skipped")
        self.targets.append(Target("pgbouncer", self.bouncer.port, app_login, predicate=True,
                                   max_clients=BOUNCER_CLIENTS, pid=self.bouncer.proc.pid, protocols=protocols,
                                   max_idle=BOUNCER_CLIENTS - 10, idle_limit=f"max_client_conn = {BOUNCER_CLIENTS}"))

    def _setup_pooled(self, base: dict[str, Any], tenant_logins: dict[str, tuple[str, str]]) -> None:
        port = free_port()
        config = self.workdir / f"{POOLED_VARIANT}.toml"
        config.write_text(tenantgate_config(port=port, backend_extra=POOLED_BACKEND, **base))
        try:
            load_config(config)
        except ConfigError as exc:
            self.notes.append(f"{POOLED_VARIANT} skipped: the proxy refuses [backend] pool_mode: {exc.problems[0]}")
            return
        proxy = self._start_proxy(POOLED_VARIANT, config, port)
        self.targets.append(Target(
            POOLED_VARIANT, port, tenant_logins, predicate=False, max_clients=BOUNCER_CLIENTS, pid=proxy.proc.pid,
            max_idle=self.nofile - 500, idle_limit=f"the open-files limit ({self.nofile}) of the bench process"))

    def _start_proxy(self, name: str, config: Path, port: int) -> ProxyProcess:
        proxy = ProxyProcess.start(name, config, port)
        self.stack.callback(self._keep_log, proxy)
        self.stack.callback(proxy.stop)
        self.proxies[name] = proxy
        return proxy

    def _keep_log(self, proxy: ProxyProcess) -> None:
        if proxy.log_path.exists() and proxy.log_path.stat().st_size:
            logs = self.opts.out / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proxy.log_path, logs / f"{proxy.name}.log")

    def _setup_encryption(self, base: dict[str, Any], tenant_logins: dict[str, tuple[str, str]]) -> None:
        port = free_port()
        config = self.workdir / f"{ENCRYPTED_VARIANT}.toml"
        config.write_text(tenantgate_config(port=port, encryption=encryption.section(self.workdir), **base))
        started = time.perf_counter()
        rows = encryption.encrypt_copy(config, self.cluster.dsn(dbname=DATABASE))
        self.notes.append(f"{ENCRYPTED_TABLE}.abalance encrypted with tenantgate.keyring.encrypt_column: "
                          f"{rows:,} rows in {time.perf_counter() - started:.1f} s")
        self.cluster.execute(f"VACUUM ANALYZE {ENCRYPTED_TABLE}", dbname=DATABASE)
        reason = encryption.proxy_support(config)
        if reason is not None:
            self.notes.append(f"{ENCRYPTED_VARIANT} skipped: {reason}")
            return
        proxy = self._start_proxy(ENCRYPTED_VARIANT, config, port)
        user, password = tenant_logins[self.opts.scale.tenant_names()[0]]
        reason = encryption.check_decrypts(port, user, password, DATABASE)
        if reason is not None:
            self.notes.append(f"{ENCRYPTED_VARIANT} skipped: {reason}")
            proxy.stop()
            return
        # Only reads: UPDATE abalance = abalance + x cannot run over ciphertext.
        self.targets.append(Target(ENCRYPTED_VARIANT, port, tenant_logins, predicate=False,
                                   max_clients=BACKEND_HEADROOM, pid=proxy.proc.pid, table=ENCRYPTED_TABLE,
                                   workloads=("select-only",)))

    # ------------------------------------------------------------------ measuring

    def measure(self) -> list[dict[str, Any]]:
        opts = self.opts
        pgbench = find_pg_bin("pgbench")
        scripts = _write_scripts(self.workdir, opts.scale, self.targets, opts.workloads)
        tenants = opts.scale.tenant_names()[: opts.spread]

        def run(target: Target, point: Point) -> dict[str, Any]:
            files = {t: scripts[(point.workload, t, target.predicate, target.table)] for t in tenants}
            return run_point(pgbench, target, point, tenants, files, self.workdir, DATABASE)

        if opts.warmup:
            self.log(f"warm-up: {opts.warmup} s per target and workload (not recorded)")
            for target in self.targets:
                for workload in opts.workloads:
                    if target.runs(workload, "simple", 8):
                        run(target, Point(workload, "simple", 8, opts.warmup))
        points = [Point(w, p, c, opts.duration) for w in opts.workloads for p in opts.protocols for c in opts.clients]
        results: list[dict[str, Any]] = []
        for index, point in enumerate(points):
            # Rotate the order per point so that no target always runs first (or right after another).
            shift = index % len(self.targets)
            for target in self.targets[shift:] + self.targets[:shift]:
                if not target.runs(point.workload, point.protocol, point.clients):
                    if point.workload in target.workloads and point.protocol in target.protocols:
                        reason = f"{point.clients} clients exceed its limit of {target.max_clients}"
                    else:
                        reason = "workload or protocol not supported by this target (see notes)"
                    self.skipped.append({"target": target.name, "point": point.label, "reason": reason})
                    continue
                self.log(f"{point.label} -> {target.name}")
                results.append(run(target, point))
                figures = results[-1]
                self.log(f"   {figures['tps']:,.0f} tps, p99 {figures.get('p99_ms', float('nan')):.2f} ms, "
                         f"failed {figures['failed']}" + (f", ERRORS {figures['errors']}" if figures["errors"] else ""))
        order = {t.name: i for i, t in enumerate(self.targets)}
        results.sort(key=lambda r: (opts.workloads.index(r["workload"]), opts.protocols.index(r["protocol"]),
                                    opts.clients.index(r["clients"]), order[r["target"]]))
        return results

    def memory(self) -> dict[str, Any]:
        """RSS with idle clients, per target that can hold them: figures or the error met."""
        if not self.opts.memory:
            return {}
        requested = self.opts.memory_requested
        out: dict[str, Any] = {}
        for target in self.targets:
            if not target.max_idle or target.pid is None:
                continue
            measure = min(requested, target.max_idle)
            self.log(f"memory: {measure:,} idle clients on {target.name} (requested {requested:,})")
            logins = [target.login(t) for t in self.opts.scale.tenant_names()]
            try:
                out[target.name] = idle_clients_rss(target.port, target.pid, logins, DATABASE, measure=measure,
                                                    requested=requested)
            except (OSError, AssertionError) as exc:  # the target closed on us or answered off-script
                out[target.name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if measure < requested:
                out[target.name]["capped"] = f"measured up to {measure:,}: {target.idle_limit}"
        return out

    def audit_files(self) -> dict[str, int]:
        return {path.name: path.stat().st_size for path in sorted(self.workdir.glob("*-audit*.jsonl*"))}


def run(opts: Options) -> dict[str, Any]:
    """Run the whole bench and write results.json, results.md and tps.png into ``opts.out``."""
    started = dt.datetime.now(dt.UTC)
    opts.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(opts)
    try:
        bench.setup()
        points = bench.measure()
        memory = bench.memory()
        audit_files = bench.audit_files()
        postgresql = str(bench.cluster.fetch("SELECT version()")[0][0]).split(" on ")[0]
    finally:
        bench.close()
    micro_results: dict[str, Any] = {}
    if opts.micro:
        bench.log("micro-benchmarks")
        micro_results = micro.run_all(quick=opts.mode == "quick")
    settings = asdict(opts)
    settings["out"] = str(opts.out)
    settings.update(max_connections=MAX_CONNECTIONS, pg_settings=PG_SETTINGS, open_files_limit=bench.nofile,
                    tenants_per_point=min(opts.spread, opts.scale.tenants))
    results = {
        "bench": {"mode": opts.mode, "overrides": list(opts.overrides),
                  "started": started.isoformat(timespec="seconds"),
                  "seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)},
        "environment": describe(postgresql=postgresql, pgbench=find_pg_bin("pgbench"),
                                pgbouncer=bench.pgbouncer_version),
        "settings": settings,
        "targets": [{"name": t.name, "predicate_in_script": t.predicate, "table": t.table,
                     "workloads": list(t.workloads), "protocols": list(t.protocols), "max_clients": t.max_clients}
                    for t in bench.targets],
        "points": points,
        "skipped": bench.skipped,
        "memory": memory,
        "micro": micro_results,
        "audit_files_bytes": audit_files,
        "notes": bench.notes,
    }
    (opts.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (opts.out / "results.md").write_text(report.markdown(results))
    if points:
        report.plot(results, opts.out / "tps.png")
    return results


def main(opts: Options) -> int:
    results = run(opts)
    print(report.points_table(results["points"]))
    print(f"\nresults: {opts.out}/results.json, results.md, tps.png", file=sys.stderr)
    return 0 if all(not p["errors"] for p in results["points"]) else 1

