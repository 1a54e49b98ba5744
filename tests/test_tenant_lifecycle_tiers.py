"""Tenant lifecycle across tiers (issue 18, second round) through the real proxy and PostgreSQL:
restore --as into the dedicated tier, restoring a portable archive, offboarding a dedicated tenant
(its database dropped, the pool's backends to it closed first), the console's CREATE TENANT in the
dedicated tier, and a move's clean-up of the old placement (deferred with --keep-old, refused when
the old copy changed after the switch).

The sites and helpers are test_tenant_lifecycle's (and test_tenant_move's for the moves).
"""

from __future__ import annotations

import asyncio
import json
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tenantgate.keyring.auth.scram import make_verifier
from tenantgate.proxy.ops.tenant_delete import DeleteRequest, delete_tenant
from tenantgate.proxy.ops.tenant_restore import RestoreRequest, restore_tenant
from tenantgate.proxy.sandbox.pgcluster import PgServer

from . import test_tenant_move as moving
from .harness import Backend
from .test_tenant_lifecycle import (
    Site,
    _quiet,
    admin,
    digests,
    install_rls,
    plaintext_keys,
    session_site,
    site,
    tenant_row_counts,
)
from .test_tenant_move import Writer, dedicated_db, seeded

__all__ = ["session_site", "site"]  # the fixtures, used by name


def server_options(target: Backend, password_file: Path) -> dict[str, object]:
    """The dedicated server's placement options (PlacementSpec's keywords)."""
    return dict(host=target.pg.host, port=target.pg.port, database=target.database, user=target.role,
                password_file=str(password_file))  # fmt: skip


def server_args(target: Backend, password_file: Path) -> list[str]:
    """The same as command-line options."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in server_options(target, password_file).items()]


def stored_ssns(site: Site, query: str, database: str | None = None) -> list[bytes]:
    return [bytes(r[0]) for r in site.db(query, database)]  # type: ignore[arg-type]


def database_exists(site: Site, name: str) -> bool:
    return bool(site.db(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))


# ---------------------------------------------------------------------------- restore


@pytest.mark.parametrize("rls", [False, True], ids=["rewriter-only", "rls"])
def test_restore_as_another_tenant_into_the_dedicated_tier(site: Site, rls: bool) -> None:
    """`tenant restore acme FILE --as acme2 --tier dedicated` (the command line), globex writing:
    rows and checksums identical, encrypted columns readable under acme2's key, acme2 usable at
    once, acme untouched."""
    if rls:
        install_rls(site)
    view = site.tenant_view("alice")
    acme_rows = tenant_row_counts(site, "acme")
    archive = site.export("acme", "acme.tgz")
    target, password_file = dedicated_db(site.pg, site.tmp)
    site.proxy.users["carol"] = ("acme2", "carol-pw")
    bob = Writer(site.proxy, "bob", seeded("globex", 50), tolerate=False, first_id=5000)
    bob.start()
    try:
        bob.wait_ops(10)
        done = site.cli(
            "restore", "acme", str(archive), "--as", "acme2", "--tier", "dedicated",
            *server_args(target, password_file), "--login", "carol", "--login-password-env", "PW_CAROL",
            "--config", str(site.config), env={"PW_CAROL": "carol-pw"},
        )  # fmt: skip
        bob.wait_ops(5)
    finally:
        bob.stop.set()
        bob.join(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not bob.errors, bob.errors  # the other tenant never noticed
    assert "MISMATCH" not in done.stdout and "verify customers: archive" in done.stdout, done.stdout
    assert tomllib.loads(site.config.read_text())["tenants"]["acme2"]["tier"] == "dedicated"
    # identical rows, encrypted columns readable (under acme2's own key), identical logical checksums
    assert site.tenant_view("carol") == view
    assert digests(site.export("acme2", "acme2.tgz")) == digests(archive)
    assert site.db("SELECT DISTINCT tenant_id FROM orders", target.database) == [("acme2",)]
    stored = stored_ssns(site, "SELECT ssn FROM customers", target.database)
    assert len(stored) == 3 and not any(b"acme" in s or b"123-45" in s for s in stored)
    assert site.db("SELECT count(*) FROM products", target.database) == [(10,)]
    # usable at once: writes, the encrypted column included, and a fresh serial id
    site.sql("carol", "INSERT INTO orders (id, note) VALUES (1000, 'new')")
    site.sql("carol", "INSERT INTO customers (id, ssn) VALUES (9, 'fresh')")
    site.sql("carol", "INSERT INTO items (order_id, qty) VALUES (1000, 1)")
    assert site.sql("carol", "SELECT ssn FROM customers WHERE id = 9") == [("fresh",)]
    # acme untouched: its rows, where they were
    assert site.tenant_view("alice") == view
    assert tenant_row_counts(site, "acme") == acme_rows


def test_restore_a_portable_archive_reencrypts_under_the_target_key(site: Site) -> None:
    """A --portable archive holds the plaintext of encrypted columns and no key: a restore encrypts
    them under the target tenant's current key (in place, and --as another tenant and tier)."""
    view = site.tenant_view("alice")
    portable = site.export("acme", "p.tgz", portable=True)
    with tarfile.open(portable, "r:gz") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert (manifest["mode"], manifest["keys"]) == ("portable", [])
    # --as another tenant in the schema tier
    req = RestoreRequest(site.create_request("acmep", "schema", login="pat"), "acme", portable, tier_given=True)
    asyncio.run(restore_tenant(req, _quiet))
    assert site.tenant_view("pat") == view
    assert digests(site.export("acmep", "acmep.tgz")) == digests(portable)
    stored = stored_ssns(site, "SELECT ssn FROM t_acmep.customers")
    assert len(stored) == 3 and not any(b"acme:" in s for s in stored)
    # in place: acme's changed rows are replaced by the archive's, re-encrypted under acme's key
    site.sql("alice", "UPDATE customers SET ssn = 'changed' WHERE id = 1")
    site.sql("alice", "DELETE FROM orders WHERE id > 290")
    asyncio.run(restore_tenant(RestoreRequest(site.create_request("acme", "shared"), "acme", portable), _quiet))
    assert site.tenant_view("alice") == view
    stored = stored_ssns(site, "SELECT ssn FROM customers WHERE tenant_id = 'acme'")
    assert len(stored) == 3 and not any(b"acme:" in s for s in stored)
    # a tampered portable archive is refused before anything: acme keeps its rows
    raw = bytearray(portable.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = site.tmp / "bad.tgz"
    bad.write_bytes(bytes(raw))
    site.sql("alice", "UPDATE orders SET note = 'kept' WHERE id = 1")
    done = site.cli("restore", "acme", str(bad), "--config", str(site.config))
    assert done.returncode == 1, done.stdout + done.stderr
    assert site.sql("alice", "SELECT note FROM orders WHERE id = 1") == [("kept",)]


# ---------------------------------------------------------------------------- offboarding


def test_delete_a_dedicated_tenant_drops_its_database(site: Site) -> None:
    """No database, no row, no usable key; the pool's backends to it closed before the DROP; a
    certificate that says so and verifies."""
    target, password_file = dedicated_db(site.pg, site.tmp)
    site.create("initech", "dedicated", login="ivan", **server_options(target, password_file))
    for i in range(1, 6):
        site.sql("ivan", "INSERT INTO orders (id, note) VALUES (%s, 'x')", (i,))
    site.sql("ivan", "INSERT INTO customers (id, ssn) VALUES (1, 'initech-secret')")
    keys_before = plaintext_keys(site)
    # an open session of the tenant, and (transaction pooling) the pool's idle backends to its database
    held = psycopg.connect(site.proxy.dsn("ivan"), autocommit=True)
    held.execute("SELECT count(*) FROM orders")
    assert site.db(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{target.database}'")[0][0] >= 1
    cert_path = site.tmp / "initech-deleted.json"
    try:
        done = site.cli("delete", "initech", "--yes", "--certificate", str(cert_path), "--config", str(site.config))
    finally:
        held.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(0 sessions still open were ended)" in done.stdout, done.stdout  # closed by the proxy first
    assert not database_exists(site, target.database)
    cert = json.loads(cert_path.read_text())
    assert f'DATABASE "{target.database}" on {target.pg.host}:{target.pg.port}' in cert["objects_dropped"]
    assert cert["rows_deleted"][f"{target.database}/public.orders"] == 5
    assert cert["rows_deleted"][f"{target.database}/public.customers"] == 1
    assert cert["key_versions_destroyed"] == [1]
    ok = site.cli("verify-certificate", str(cert_path), "--public-key", str(site.tmp / "audit-ed25519.pub"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    keys = json.loads((site.tmp / "keys.json").read_text())["keys"]
    assert [k["wrapped"] for k in keys if k["tenant"] == "initech"] == [None]  # no usable key
    written = b"".join(f.read_bytes() for f in site.tmp.rglob("*") if f.is_file() and f.name != "kek.bin")
    assert not any(secret in written for secret in keys_before)
    assert tenant_row_counts(site, "initech") == {"orders": 0, "items": 0, "customers": 0}
    with pytest.raises(psycopg.OperationalError):
        site.sql("ivan", "SELECT 1")
    assert site.sql("bob", "SELECT count(*) FROM orders") == [(50,)]
    # every tenant still works: the proxy holds no broken backend of the dropped database
    assert site.sql("alice", "SELECT count(*) FROM orders") == [(300,)]


def test_delete_a_dedicated_tenant_on_a_database_others_use_keeps_it(session_site: Site) -> None:
    """A 'dedicated' tenant whose backend is the shared database: only its rows go, never the
    database or its tables (they hold the other tenants' rows)."""
    site = session_site
    password_file = site.tmp / "shared.pw"
    password_file.write_text(site.backend.password)
    b = site.backend
    site.create("samedb", "dedicated", login="sam", **server_options(b, password_file))
    site.sql("sam", "INSERT INTO orders (id, note) VALUES (1, 'x'), (2, 'y')")
    cert = asyncio.run(delete_tenant(DeleteRequest(site.config, "samedb"), _quiet))
    assert cert["objects_dropped"] == []
    assert database_exists(site, b.database)
    assert tenant_row_counts(site, "samedb") == {"orders": 0, "items": 0, "customers": 0}
    assert site.sql("bob", "SELECT count(*) FROM orders") == [(50,)]
    assert site.sql("alice", "SELECT count(*) FROM products") == [(10,)]


# ---------------------------------------------------------------------------- console


def test_console_create_tenant_in_the_dedicated_tier(session_site: Site) -> None:
    site = session_site
    target, password_file = dedicated_db(site.pg, site.tmp)
    options = (
        f"host={target.pg.host} port={target.pg.port} database={target.database} user={target.role} "
        f"password_file={password_file}"
    )
    admin(site, f"CREATE TENANT initech dedicated {options}")
    assert {r[0]: r[1] for r in admin(site, "SHOW TENANTS")}["initech"] == "dedicated"
    entry = tomllib.loads(site.config.read_text())["tenants"]["initech"]
    assert entry["backend"]["database"] == target.database and entry["backend"]["password_file"] == str(password_file)
    assert target.password not in site.config.read_text()
    assert site.db("SELECT count(*) FROM products", target.database) == [(10,)]
    admin(site, f"CREATE TENANT initech dedicated {options}")  # idempotent
    # usable at once (its user added the way an operator would)
    with site.config.open("a") as f:
        f.write(f'\n[users.ivan]\ntenant = "initech"\nscram = "{make_verifier("ivan-pw")}"\n')
    admin(site, "RELOAD")
    site.proxy.users["ivan"] = ("initech", "ivan-pw")
    site.sql("ivan", "INSERT INTO customers (id, ssn) VALUES (1, 'dedicated-secret')")
    assert site.sql("ivan", "SELECT ssn FROM customers") == [("dedicated-secret",)]
    assert site.db("SELECT tenant_id FROM customers", target.database) == [("initech",)]
    # refused, precisely: a password typed on the console, an unknown option, missing server options
    for bad, state in (
        (f"CREATE TENANT hooli dedicated {options} password=secret", "22023"),
        (f"CREATE TENANT hooli dedicated {options} colour=red", "42601"),
        (f"CREATE TENANT hooli dedicated host={target.pg.host}", "22023"),
        ("CREATE TENANT hooli tiered", "22023"),
    ):
        with pytest.raises(psycopg.Error) as err:
            admin(site, bad)
        assert err.value.sqlstate == state, (bad, err.value)
    assert "hooli" not in tomllib.loads(site.config.read_text())["tenants"]


# ---------------------------------------------------------------------------- moves: the old copy


@pytest.fixture
def move_site(pg: PgServer, tmp_path: Path) -> Iterator[moving.Site]:
    yield from moving.make_site(pg, tmp_path, pool_mode="transaction")


def test_move_keep_old_then_rerun_cleans_up_only_an_unchanged_copy(move_site: moving.Site) -> None:
    site = move_site
    db = site.backend.database
    state = site.config.parent / ".tenantgate-move-acme.json"
    done = site.move("acme", "--to-tier", "schema", "--keep-old")
    assert done.returncode == 0 and "keep-old" in done.stdout, done.stdout + done.stderr
    assert site.placement("acme") == ("schema", "no")
    assert moving.left_behind(site, "shared", None) == ["orders", "items", "events"]
    assert json.loads(state.read_text())["phase"] == "switched"
    # a write that reached the old copy after the switch: the clean-up refuses and keeps it
    site.pg.execute("UPDATE public.orders SET note = 'stray' WHERE tenant_id = 'acme' AND id = 1", dbname=db)
    refused = site.move("acme", "--to-tier", "schema")
    assert refused.returncode == 1 and "changed after the switch" in refused.stderr, refused.stdout + refused.stderr
    assert moving.left_behind(site, "shared", None) == ["orders", "items", "events"]
    # reconciled: the same command removes the old copy, and only acme's
    site.pg.execute("UPDATE public.orders SET note = 'a1' WHERE tenant_id = 'acme' AND id = 1", dbname=db)
    done = site.move("acme", "--to-tier", "schema")
    assert done.returncode == 0, done.stdout + done.stderr
    assert moving.left_behind(site, "shared", None) == [] and not state.exists()
    assert site.pg.fetch("SELECT count(*) FROM public.orders WHERE tenant_id = 'globex'", dbname=db) == [(50,)]
    with psycopg.connect(site.proxy.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (300,)
