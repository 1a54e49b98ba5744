"""``tenantgate demo``: a throwaway PostgreSQL, two sample tenants, the proxy in front.

The cluster and the written config live in temporary directories that Ctrl-C removes. The
CLI hands in the proxy to start (``serving``) and the RLS installer (``secure``), so this sandbox
never imports the serving process or the control-plane tools. The demo config enables every
compliance framework and meets it: TLS on both sides (a self-signed certificate), the audit log,
an encrypted column under a file KEK, a read-only trusted user, rate limits and RLS.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from tenantgate.audit.keys import generate_hmac_key_file
from tenantgate.config import Config, load_config
from tenantgate.keyring.kek import create_kek_file
from tenantgate.keyring.store_file import FileKeyStore

from .pgcluster import ThrowawayCluster, free_port
from .selfsigned import make_self_signed


class Serving(Protocol):
    """What the demo needs of tenantgate.proxy.process.Proxy."""

    @property
    def port(self) -> int: ...
    async def preflight(self) -> None: ...
    async def start(self) -> None: ...
    async def shutdown(self, timeout: float) -> None: ...


SCHEMA = """
CREATE TABLE customers (
    tenant_id text NOT NULL,
    id        int  NOT NULL,
    name      text NOT NULL,
    email     text,
    tax_id    bytea,           -- text, encrypted by the proxy ([[encryption.columns]])
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE orders (
    tenant_id   text NOT NULL,
    id          int  NOT NULL,
    customer_id int  NOT NULL,
    total       numeric(12,2) NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France'), ('us', 'United States');
INSERT INTO customers (tenant_id, id, name, email) VALUES
  ('acme', 1, 'Road Runner Supplies', 'ops@acme.test'),
  ('acme', 2, 'Anvil Works', 'it@acme.test'),
  ('globex', 1, 'Hank Scorpio Holdings', 'hank@globex.test'),
  ('globex', 2, 'Cypress Creek Ventures', 'cc@globex.test');
INSERT INTO orders (tenant_id, id, customer_id, total, note) VALUES
  ('acme', 1, 1, 120.00, 'rocket skates'),
  ('acme', 2, 2, 35.50, 'anvil (small)'),
  ('acme', 3, 1, 999.99, 'giant magnet'),
  ('globex', 1, 1, 5000.00, 'doomsday device parts'),
  ('globex', 2, 2, 75.00, 'hammocks');
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders, countries TO app;
-- the app role owns the scoped tables, so `tenantgate rls install` (run by the demo) can force RLS on them
ALTER TABLE customers OWNER TO app;
ALTER TABLE orders OWNER TO app;
-- initech is on the schema tier: its own copies of the tables, in its own schema
CREATE SCHEMA t_initech;
CREATE TABLE t_initech.customers (LIKE customers INCLUDING ALL);
CREATE TABLE t_initech.orders (LIKE orders INCLUDING ALL);
CREATE TABLE t_initech.countries (LIKE countries INCLUDING ALL);
INSERT INTO t_initech.countries SELECT * FROM countries;
INSERT INTO t_initech.customers (tenant_id, id, name, email)
  VALUES ('initech', 1, 'Bill Lumbergh', 'bill@initech.test');
INSERT INTO t_initech.orders (tenant_id, id, customer_id, total, note) VALUES ('initech', 1, 1, 12.00, 'TPS covers');
GRANT USAGE ON SCHEMA t_initech TO app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA t_initech TO app;
"""

CONFIG = """\
# tenantgate demo configuration (written by `tenantgate demo`)
[listen]
address = "127.0.0.1:{port}"

[backend]
host = "127.0.0.1"
port = {pg_port}
user = "app"
password_file = "{password_file}"
database = "app"
sslmode = "require"             # TLS to PostgreSQL too (the demo cluster has a self-signed certificate)

[tls]
mode = "require"                # clients must use TLS (psql's default sslmode=prefer does)
cert = "{cert}"
key = "{key}"

[audit]
key = "file:{audit_key}"
path = "{audit_log}"

[encryption]
kek = "file:{kek}"
store = "file:{keys}"

[[encryption.columns]]
table = "customers"
column = "tax_id"

[compliance]
frameworks = ["pci-dss-4.0", "hipaa", "soc2", "gdpr"]   # config load refuses a weaker setting

[monitoring]                    # security monitoring: SHOW ALERTS on the admin console
warmup = 60.0                   # judge users after a minute (the default is a day)

[monitoring.detectors.probing]
response = "block_user"         # try 10 refused statements in a minute as alice, then UNDO ALERT <id>

[limits]
statements_per_second = 500     # every tenant: a rate limit (SOC 2 A1.1)

[tenants.acme]
tier = "shared"

[tenants.globex]
tier = "shared"
statements_per_second = 200     # per-tenant limits: see the README
max_rows = 1000

[tenants.initech]
tier = "schema"
schema = "t_initech"

[users.alice]
tenant = "acme"
password = "alice-secret"

[users.bob]
tenant = "globex"
password = "bob-secret"

[users.carol]
tenant = "initech"
password = "carol-secret"

[users.ops]
trusted = true
role = "readonly"               # reads every tenant's rows, changes none
password = "ops-secret"

[admins.dba]
password = "dba-secret"

[scoping]
column = "tenant_id"
tables = ["customers", "orders"]
reference = ["countries"]
"""


def prepare(workdir: Path, port: int) -> tuple[ThrowawayCluster, Path]:
    """Start the cluster, load the sample data, write the config; returns (cluster, config path)."""
    cert, key = make_self_signed(workdir)
    cluster = ThrowawayCluster(ssl=(str(cert), str(key)))
    cluster.start()
    app_password = secrets.token_urlsafe(18)
    cluster.create_role("app", app_password)
    cluster.create_database("app")
    cluster.execute(SCHEMA, dbname="app")
    password_file = workdir / "backend-password"
    password_file.write_text(app_password + "\n")
    password_file.chmod(0o600)
    generate_hmac_key_file(workdir / "audit.key")
    create_kek_file(workdir / "kek.hex")
    config = workdir / "tenantgate.toml"
    config.write_text(
        CONFIG.format(
            port=port, pg_port=cluster.port, password_file=password_file, cert=cert, key=key,
            audit_key=workdir / "audit.key", audit_log=workdir / "audit" / "tenantgate.jsonl",
            kek=workdir / "kek.hex", keys=workdir / "keys.json",
        )
    )
    return cluster, config


def banner(port: int, config: Path, pg_port: int) -> str:
    url = f"postgresql://{{user}}:{{pw}}@127.0.0.1:{port}/app"
    return "\n".join(
        [
            "",
            f"tenantgate demo is running (proxy 127.0.0.1:{port}, PostgreSQL 127.0.0.1:{pg_port})",
            f"config: {config}",
            "",
            "Tenant acme (alice) sees only acme's rows:",
            f"  psql '{url.format(user='alice', pw='alice-secret')}' -c 'SELECT * FROM orders'",
            "Tenant globex (bob):",
            f"  psql '{url.format(user='bob', pw='bob-secret')}' -c 'SELECT * FROM orders'",
            "Tenant initech (carol) is on the schema tier: its own schema t_initech, other schemas refused:",
            f"  psql '{url.format(user='carol', pw='carol-secret')}' -c 'SELECT * FROM orders'",
            "A trusted service user (ops) is not scoped:",
            f"  psql '{url.format(user='ops', pw='ops-secret')}' \\",
            "       -c 'SELECT tenant_id, count(*) FROM orders GROUP BY 1'",
            "",
            "Compliance (PCI DSS 4.0, HIPAA, SOC 2, GDPR are enabled in the config):",
            f"  tenantgate compliance check --config {config}",
            f"  tenantgate compliance report --config {config} --tenant acme -o ./evidence-acme",
            f"  tenantgate advise --config {config}",
            "",
            "Audit (every statement, hash-chained; the log stays open while the demo runs):",
            f"  tenantgate audit verify --config {config}",
            f"  tenantgate audit report --config {config}",
            f"  tenantgate audit review --config {config} --since yesterday",
            "",
            "Press Ctrl-C to stop and remove everything.",
            "",
        ]
    )


async def ready(config_path: Path, secure: Callable[[Config], Awaitable[object]] | None) -> Config:
    """Load the written config, create the key file (`tenantgate keys init`) and install RLS
    (``secure``: the second lock that `compliance check` verifies)."""
    config = load_config(config_path)
    assert config.encryption is not None and config.encryption.store_path is not None
    await FileKeyStore(config.encryption.store_path).initialize()
    if secure is not None:
        await secure(config)
    return config


async def run_demo(
    serving: Callable[[Config], Serving], port: int = 6432, secure: Callable[[Config], Awaitable[object]] | None = None
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="tenantgate-demo-"))
    port = port or free_port()
    loop = asyncio.get_running_loop()
    cluster, config_path = await loop.run_in_executor(None, prepare, workdir, port)
    try:
        config = await ready(config_path, secure)
        proxy = serving(config)
        await proxy.preflight()
        await proxy.start()
        print(banner(proxy.port, config_path, cluster.port), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.shutdown(timeout=5)
    finally:
        await loop.run_in_executor(None, cluster.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
