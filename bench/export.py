"""``python -m bench.export [--rows N] [--encrypted N]``: time ``tenantgate tenant export`` of a big tenant.

Opt-in (not part of ``make test``: a million rows take a minute to load). A throwaway PostgreSQL
holds ``orders`` with ``--rows`` rows of tenant ``big`` (and a tenth as many of ``other``, which the
export must leave out) and ``customers`` with ``--encrypted`` rows whose ``ssn`` is encrypted with
the tenant's DEK. The export runs as the CLI does (a child process), in backup mode and with
``--portable`` (every ssn decrypted), then ``tenant verify-export`` checks the archive offline.
Prints a Markdown table: seconds, archive bytes, rows per second.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from tenantgate.audit.keys import generate_signing_key_files
from tenantgate.keyring.kek import create_kek_file, provider_from_uri
from tenantgate.keyring.keyring import Keyring
from tenantgate.keyring.store_file import FileKeyStore
from tenantgate.proxy.sandbox.pgcluster import ThrowawayCluster, free_port

SETUP = """
CREATE TABLE orders (tenant_id text NOT NULL, id bigint NOT NULL, note text, amount numeric, at timestamptz,
                     PRIMARY KEY (tenant_id, id));
CREATE TABLE customers (tenant_id text NOT NULL, id int NOT NULL, ssn bytea, PRIMARY KEY (tenant_id, id));
"""


def config_text(pg: ThrowawayCluster, password: str, tmp: Path) -> str:
    return f"""
[listen]
address = "127.0.0.1:{free_port()}"
[backend]
host = "{pg.host}"
port = {pg.port}
user = "postgres"
password = "{password}"
database = "bench"
sslmode = "disable"
allow_superuser = true
[tenants.big]
[tenants.other]
[users.svc]
trusted = true
password = "svc-pw"
[scoping]
column = "tenant_id"
tables = ["orders", "customers"]
[encryption]
kek = "file:{tmp / "kek.bin"}"
store = "file:{tmp / "keys.json"}"
[[encryption.columns]]
table = "customers"
column = "ssn"
mode = "randomized"
type = "text"
[audit]
path = "{tmp / "audit.jsonl"}"
key = "file:{tmp / "audit.key"}"
signing_key = "file:{tmp / "audit-ed25519"}"
"""


async def load(pg: ThrowawayCluster, tmp: Path, rows: int, encrypted: int) -> None:
    keyring = Keyring(provider_from_uri(f"file:{tmp / 'kek.bin'}"), FileKeyStore(tmp / "keys.json"))
    await keyring.store.initialize()
    await keyring.ensure_loaded("big", create=True)
    conn = await asyncpg.connect(pg.dsn(dbname="bench"))
    try:
        await conn.execute(SETUP)
        for tenant, n in (("big", rows), ("other", rows // 10)):
            await conn.execute(
                "INSERT INTO orders SELECT $1, g, 'note ' || g, g / 100.0,"
                " '2026-01-01'::timestamptz + g * interval '1 s' FROM generate_series(1, $2::bigint) g",
                tenant, n,
            )  # fmt: skip
        records = [
            ("big", i, keyring.encrypt("big", "customers", "ssn", "randomized", f"{i:03d}-45-6789".encode()))
            for i in range(1, encrypted + 1)
        ]
        await conn.copy_records_to_table("customers", records=records)
    finally:
        await conn.close()
        await keyring.close()


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tenantgate.proxy.cli", "tenant", *args], capture_output=True,
                          text=True, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"tenant {args[0]} failed: {done.stderr}")
    return time.perf_counter() - start, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders rows of the exported tenant")
    parser.add_argument("--encrypted", type=int, default=100_000, help="customers rows with an encrypted column")
    args = parser.parse_args(argv)
    password = secrets.token_urlsafe(16)
    with (
        tempfile.TemporaryDirectory(prefix="tg-bench-export-") as name,
        ThrowawayCluster(superuser_password=password) as pg,
    ):
        tmp = Path(name)
        create_kek_file(tmp / "kek.bin")
        (tmp / "audit.key").write_text("ab" * 32)
        generate_signing_key_files(tmp / "audit-ed25519")
        pg.create_database("bench")
        config = tmp / "tenantgate.toml"
        config.write_text(config_text(pg, password, tmp))
        started = time.perf_counter()
        asyncio.run(load(pg, tmp, args.rows, args.encrypted))
        print(f"loaded {args.rows} + {args.rows // 10} orders, {args.encrypted} encrypted customers "
              f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)  # fmt: skip
        total = args.rows + args.encrypted
        print(f"| export of tenant big ({args.rows} orders + {args.encrypted} encrypted rows) | seconds | "
              "archive bytes | rows/s |\n|---|---:|---:|---:|")  # fmt: skip
        for label, extra in (("backup (ciphertext + wrapped DEKs)", []), ("--portable (decrypted)", ["--portable"])):
            out = tmp / f"big{len(extra)}.tgz"
            seconds, _ = cli("export", "big", "-o", str(out), "--config", str(config), *extra)
            print(f"| {label} | {seconds:.1f} | {out.stat().st_size:,} | {total / seconds:,.0f} |")
            seconds, _ = cli("verify-export", str(out), "--config", str(config))
            print(f"| verify-export of the {label.split()[0]} archive (offline) | {seconds:.1f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
