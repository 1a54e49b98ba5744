"""Config loading and validation (tenantgate.config)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import pickle
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tenantgate.config import ConfigError, Secret, check_config, load_config
from tenantgate.config.values import parse_identifier, parse_qualified_name, render_identifier
from tenantgate.keyring.auth.scram import AuthError, ScramClient, ScramServer, md5_hash

MINIMAL = """
[backend]
user = "app"

[tenants.acme]

[users.alice]
tenant = "acme"
password = "pw"
"""


def write(tmp_path: pathlib.Path, text: str, name: str = "tenantgate.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: pathlib.Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    return [(p.key, p.message) for p in excinfo.value.problems]


def login(verifier: object, password: str) -> bool:
    server = ScramServer(verifier)  # type: ignore[arg-type]
    client = ScramClient(password)
    try:
        client.verify(server.handle_final(client.final(server.handle_first(client.first()))))
    except AuthError:
        return False
    return True


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A self-signed certificate and its key."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


# ----------------------------------------------------------------------------- valid files


def test_full_valid_config(tmp_path: pathlib.Path, tls_files: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_ADMIN_PW", "admin-pw")
    (tmp_path / "backend.pw").write_text("backend-pw\n")
    (tmp_path / "secret").write_text("s" * 40 + "\n")
    path = write(
        tmp_path,
        f"""
        [listen]
        address = "[::1]:7432"
        unix_socket = "/tmp/.s.PGSQL.7432"
        admin = "127.0.0.1:7433"
        metrics = "localhost:9187"
        workers = 4

        [backend]
        host = "127.0.0.1"
        port = 5433
        user = "app"
        password_file = "backend.pw"
        database = "appdb"
        sslmode = "verify-full"
        sslrootcert = "{tls_files}/cert.pem"
        connect_timeout = 3
        allow_superuser = true
        region = "eu"

        [tls]
        mode = "require"
        cert = "{tls_files}/cert.pem"
        key = "{tls_files}/key.pem"

        [server]
        max_message_size = 65536
        max_startup_packet = 5000
        startup_timeout = 2.5
        shutdown_timeout = 0
        auth_method = "md5"
        secret_file = "secret"

        [logging]
        level = "warning"
        json = true

        [tenants.acme]
        tier = "schema"
        schema = '"Acme"'
        region = "eu"

        [tenants.globex]

        [users.alice]
        tenant = "acme"
        password = "alice-pw"
        auth = "scram-sha-256"

        [users.bob]
        tenant = "globex"
        password = "bob-pw"
        role = "readonly"

        [users."svc.reports"]
        trusted = true
        md5 = "md53175bce1d3201d16594cebf9d7eb3f9d"

        [admins.dba]
        password_env = "TG_TEST_ADMIN_PW"

        [scoping]
        column = "Tenant_ID"
        tables = ["customers", {{name = "invoices", column = "org_id"}}, "public.payments", '"Sales"."Q1"']
        reference = ["countries", "ref.currencies"]

        [audit]
        enabled = true
        key = "env:TG_TEST_AUDIT_KEY"
        """,
    )
    cfg = load_config(path)
    assert cfg.source == path.absolute()
    assert cfg.listen.address == ("::1", 7432)
    assert cfg.listen.admin == ("127.0.0.1", 7433) and cfg.listen.metrics == ("localhost", 9187)
    assert (cfg.listen.unix_socket, cfg.listen.workers) == ("/tmp/.s.PGSQL.7432", 4)

    be = cfg.backend
    assert (be.host, be.port, be.user, be.database, be.region) == ("127.0.0.1", 5433, "app", "appdb", "eu")
    assert be.password is not None and be.password.reveal() == "backend-pw"  # one newline stripped
    assert (be.sslmode, be.sslrootcert) == ("verify-full", f"{tls_files}/cert.pem")
    assert be.connect_timeout == 3.0 and isinstance(be.connect_timeout, float) and be.allow_superuser

    assert (cfg.tls.mode, cfg.tls.key) == ("require", f"{tls_files}/key.pem")
    srv = cfg.server
    assert (srv.max_message_size, srv.max_startup_packet, srv.startup_timeout, srv.shutdown_timeout) == (
        65536,
        5000,
        2.5,
        0.0,
    )
    assert srv.auth_method == "md5" and srv.secret_file == str(tmp_path / "secret")
    assert srv.secret is not None and srv.secret.reveal() == "s" * 40
    assert (cfg.logging.level, cfg.logging.json) == ("warning", True)

    assert cfg.tenants["acme"].schema == "Acme" and cfg.tenants["acme"].tier == "schema"
    assert cfg.tenants["globex"].tier == "shared" and cfg.tenants["globex"].schema is None

    alice, bob, svc = cfg.users["alice"], cfg.users["bob"], cfg.users["svc.reports"]
    assert (alice.tenant, alice.auth, alice.role, alice.md5) == ("acme", "scram-sha-256", "readwrite", None)
    assert (bob.auth, bob.role) == ("md5", "readonly")  # server default auth applies
    assert bob.md5 == md5_hash("bob", "bob-pw") and login(bob.scram, "bob-pw")
    assert (svc.trusted, svc.tenant, svc.scram, svc.md5) == (True, None, None, "md53175bce1d3201d16594cebf9d7eb3f9d")
    assert cfg.admins["dba"].scram is not None and login(cfg.admins["dba"].scram, "admin-pw")

    sc = cfg.scoping
    assert sc.column == "tenant_id"
    assert [(t.schema, t.name, t.column) for t in sc.tables] == [
        (None, "customers", "tenant_id"),
        (None, "invoices", "org_id"),
        ("public", "payments", "tenant_id"),
        ("Sales", "Q1", "tenant_id"),
    ]
    assert sc.reference == ((None, "countries"), ("ref", "currencies"))


def test_defaults_and_immutability(tmp_path: pathlib.Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.listen.address == ("127.0.0.1", 6432)
    assert cfg.listen.workers == max(1, min((os.cpu_count() or 1) // 2, 256))
    assert (cfg.listen.admin, cfg.listen.metrics, cfg.listen.unix_socket) == (None, None, None)
    assert (cfg.backend.host, cfg.backend.port, cfg.backend.sslmode, cfg.backend.password) == (
        "127.0.0.1",
        5432,
        "prefer",
        None,
    )
    assert cfg.backend.connect_timeout == 5.0 and not cfg.backend.allow_superuser
    assert cfg.tls.mode == "disable"
    assert (cfg.server.max_message_size, cfg.server.max_startup_packet) == (1 << 30, 10000)
    assert (cfg.server.startup_timeout, cfg.server.shutdown_timeout, cfg.server.auth_method) == (
        15.0,
        30.0,
        "scram-sha-256",
    )
    assert (cfg.logging.level, cfg.logging.json) == ("info", False)
    assert cfg.scoping.column == "tenant_id" and cfg.scoping.tables == () and cfg.scoping.reference == ()
    with pytest.raises(TypeError):
        cfg.users["mallory"] = cfg.users["alice"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.users["alice"].tenant = "globex"  # type: ignore[misc]


def test_plaintext_password_becomes_a_working_verifier(tmp_path: pathlib.Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    alice = cfg.users["alice"]
    assert alice.scram is not None and alice.md5 is None
    assert login(alice.scram, "pw")
    assert not login(alice.scram, "wrong")


def test_env_and_file_password_sources(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_PW", "from-env")
    (tmp_path / "pw.txt").write_text("from-file\n\n")  # only one newline is stripped
    path = write(
        tmp_path,
        """
        [backend]
        user = "app"
        password_env = "TG_TEST_PW"
        [tenants.acme]
        [users.env]
        tenant = "acme"
        password_env = "TG_TEST_PW"
        [users.file]
        tenant = "acme"
        password_file = "pw.txt"
        auth = "md5"
        """,
    )
    cfg = load_config(path)
    assert cfg.backend.password is not None and cfg.backend.password.reveal() == "from-env"
    assert login(cfg.users["env"].scram, "from-env")
    assert login(cfg.users["file"].scram, "from-file\n")
    assert cfg.users["file"].md5 == md5_hash("file", "from-file\n")

    monkeypatch.delenv("TG_TEST_PW")
    (tmp_path / "pw.txt").unlink()
    found = problems_of(path)
    assert ("backend.password_env", "environment variable TG_TEST_PW is not set") in found
    assert ("users.env.password_env", "environment variable TG_TEST_PW is not set") in found
    assert any(k == "users.file.password_file" and "cannot read" in m and "pw.txt" in m for k, m in found)


# ----------------------------------------------------------------------------- errors


def test_broken_config_reports_every_problem(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [listen]
        address = "127.0.0.1:99999"
        workers = "four"
        admin = "127.0.0.1:6432"

        [backend]
        port = 0
        sslmode = "verify-full"
        password = "Backend-Secret-1"
        password_env = "NOT_USED"

        [tls]
        mode = "require"

        [server]
        auth_method = "plain"
        max_message_size = 10
        startup_timeout = "soon"

        [logging]
        levle = "debug"

        [tenants.acme]
        tier = "schema"

        [tenants.globex]
        tier = "galactic"

        [users.alice]
        tenant = "umbrella"
        password = "Alice-Secret-2"
        scram = "SCRAM-SHA-256$4096:abc$def:ghi"

        [users.bob]
        tenant = "acme"
        trusted = true
        password = "Bob-Secret-3"
        role = "superuser"

        [users.carol]
        password = "Carol-Secret-4"

        [admins.bob]
        password = "Admin-Secret-5"

        [scoping]
        column = "1bad"
        tables = ["orders", "public.orders", {name = "invoices", colum = "org_id"}, 42]
        reference = ["orders", "a.b.c"]
        """,
    )
    expected = [
        ("listen.address", "port must be a number from 1 to 65535"),
        ("listen.workers", "expected an integer, got a string"),
        ("backend.port", "must be at least 1 and at most 65535"),
        ("backend.user", "is required"),
        ("backend", "more than one password source (password, password_env)"),
        ("backend.sslrootcert", "is required with sslmode = verify-full"),
        ("tls.cert", "is required with mode = require"),
        ("tls.key", "is required with mode = require"),
        ("server.auth_method", "must be one of scram-sha-256, md5"),
        ("server.max_message_size", "must be at least 1024"),
        ("server.startup_timeout", "expected a number, got a string"),
        ("logging.levle", "unknown key"),
        ("tenants.acme.schema", "is required with tier = schema"),
        ("tenants.globex.tier", "must be one of shared, schema, dedicated"),
        ("users.alice.tenant", "no tenant 'umbrella' in [tenants]"),
        ("users.alice", "more than one password source (password, scram)"),
        ("users.bob.tenant", "a trusted user has no tenant"),
        ("users.bob.role", "must be one of readwrite, readonly"),
        ("users.carol.tenant", "is required unless trusted = true"),
        ("admins.bob", "also in [users]"),
        ("scoping.column", "is not a valid identifier"),
        ("scoping.tables[1]", "public.orders is already listed as a scoped table"),
        ("scoping.tables[2].colum", "unknown key"),
        ("scoping.tables[3]", "expected a table name"),
        ("scoping.reference[0]", "public.orders is already listed as a scoped table"),
        ("scoping.reference[1]", "more than one schema prefix"),
    ]
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    err = excinfo.value
    found = [(p.key, p.message) for p in err.problems]
    for key, fragment in expected:
        assert any(k == key and fragment in m for k, m in found), (key, fragment, found)
    assert len(found) == len(expected), found
    lines = str(err).splitlines()
    assert len(lines) == len(found)
    for line, (key, message) in zip(lines, found, strict=True):
        assert line == f"{path}: {key}: {message}"
    # No secret value leaks into the error, whatever went wrong around it.
    text = str(err) + repr(err) + repr(err.problems)
    for secret in ("Backend-Secret-1", "Alice-Secret-2", "Bob-Secret-3", "Carol-Secret-4", "Admin-Secret-5"):
        assert secret not in text
    assert check_config(path) == lines


@pytest.mark.parametrize(
    ("snippet", "key", "fragment"),
    [
        ('[listen]\naddress = "::1:6432"', "listen.address", "brackets"),
        ('[listen]\naddress = "300.1.1.1:6432"', "listen.address", "not a valid IPv4 address"),
        ('[listen]\nmetrics = "127.0.0.1:6432"', "listen.metrics", "same host and port as listen.address"),
        ("[listen]\nworkers = true", "listen.workers", "expected an integer, got a boolean"),
        ("[listen]\nworkers = 0", "listen.workers", "at least 1"),
        ('[listen]\nunix_socket = "/' + "x" * 120 + '"', "listen.unix_socket", "longer than 107 bytes"),
        ("[backend.x]\n", "backend.x", "unknown key"),
        ('[backend]\nuser = "app"\nhost = "bad host"', "backend.host", "not a valid host name"),
        ('[backend]\nuser = "app"\nsslmode = "always"', "backend.sslmode", "must be one of disable, prefer"),
        ('[backend]\nuser = "app"\nsslrootcert = "missing.pem"', "backend.sslrootcert", "cannot read"),
        ('[backend]\nuser = "app"\nconnect_timeout = 0', "backend.connect_timeout", "greater than 0"),
        ('[backend]\nuser = "app"\nconnect_timeout = nan', "backend.connect_timeout", "greater than 0"),
        ('[backend]\nuser = "app"\ndatabase = "' + "d" * 64 + '"', "backend.database", "longer than 63 bytes"),
        (
            '[backend]\nuser = "app"\nallow_superuser = 1',
            "backend.allow_superuser",
            "expected a boolean, got an integer",
        ),
        ('[tls]\ncert = "nope.pem"', "tls.cert", "cannot read"),
        ('[tls]\nmode = "require"\ncert = "short"\nkey = "short"', "tls", "cert and key cannot be loaded together"),
        ("[server]\nmax_startup_packet = 20000", "server.max_startup_packet", "at most 10000"),
        ("[server]\nshutdown_timeout = -1", "server.shutdown_timeout", "at least 0"),
        ('[server]\nsecret_file = "short"', "server.secret_file", "fewer than 32 characters"),
        ('[logging]\nlevel = "loud"', "logging.level", "must be one of debug"),
        ('[tenants.beta]\nschema = "s"', "tenants.beta.schema", "only applies to tier = schema"),
        ('[tenants."bad name!"]', 'tenants."bad name!"', "tenant names are"),
        (
            '[tenants.b]\ntier = "schema"\nschema = "t_acme"\n[tenants.c]\ntier = "schema"\nschema = "T_ACME"',
            "tenants.c.schema",
            "already used by tenant 'b'",
        ),
        ('[users.x]\ntenant = "acme"', "users.x", "no password"),
        ('[users.x]\ntenant = "acme"\nmd5 = "md5abc"\nauth = "md5"', "users.x.md5", "32 lower-case hex"),
        (
            '[users.x]\ntenant = "acme"\nmd5 = "md53175bce1d3201d16594cebf9d7eb3f9d"',
            "users.x.md5",
            "auth = scram-sha-256 needs a plaintext password or a SCRAM verifier",
        ),
        (
            '[users.x]\ntenant = "acme"\nauth = "md5"\nscram = "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA"',
            "users.x.scram",
            "auth = md5 needs a plaintext password or an md5 hash",
        ),
        (
            '[users.x]\ntenant = "acme"\nscram = "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA"',
            "users.x.scram",
            "must be 32 bytes",
        ),
        ('[users.x]\ntenant = "acme"\npassword = ""', "users.x.password", "must not be empty"),
        ('[users.x]\ntenant = "acme"\npassword = "p"\nsuperuser = true', "users.x.superuser", "unknown key"),
        ('[users]\nx = "p"', "users.x", "expected a table"),
        ('[admins.d]\npassword = "p"\ntenant = "acme"', "admins.d.tenant", "unknown key"),
        ('[scoping]\ntables = "orders"', "scoping.tables", "expected an array"),
        ('[scoping]\ntables = ["orders", "orders"]', "scoping.tables[1]", "already listed as a scoped table"),
        ('[scoping]\ntables = [{column = "c"}]', "scoping.tables[0].name", "is required"),
        ('[scoping]\ntables = ["\\"unterminated"]', "scoping.tables[0]", "unterminated"),
        ('[scoping]\ntables = [{name = "x", column = "a-b"}]', "scoping.tables[0].column", "not a valid identifier"),
        ("[scoping]\nreference = [1]", "scoping.reference[0]", "expected a table name"),
        ("[keyring]\nx = 1", "keyring", "unknown key"),
        ('audit = "on"', "audit", "expected a table"),
    ],
)
def test_single_rule(tmp_path: pathlib.Path, snippet: str, key: str, fragment: str) -> None:
    base = MINIMAL.replace('[backend]\nuser = "app"\n', "") if "[backend]\n" in snippet else MINIMAL
    # Top-level keys must come before the first table.
    text = f"{base}\n{snippet}\n" if snippet.startswith("[") else f"{snippet}\n{base}"
    (tmp_path / "short").write_text("abc\n")
    found = problems_of(write(tmp_path, text))
    assert any(k == key and fragment in m for k, m in found), found
    assert len(found) == 1, found


def test_unknown_keys_everywhere(tmp_path: pathlib.Path) -> None:
    text = MINIMAL.replace('password = "pw"', 'password = "pw"\npasword = "typo-secret"')
    text = "serverr = 1\n" + text + '\n[listen]\nadress = "x"\n[tenants.acme2]\nteir = "shared"\n'
    found = problems_of(write(tmp_path, text))
    keys = sorted(k for k, m in found if m.startswith("unknown key"))
    assert keys == ["listen.adress", "serverr", "tenants.acme2.teir", "users.alice.pasword"]
    assert not any("typo-secret" in m for _, m in found)


def test_invalid_toml_and_missing_file(tmp_path: pathlib.Path) -> None:
    bad = write(tmp_path, '[backend\nuser = "app"\n')
    [(key, message)] = problems_of(bad)
    assert key == "" and message.startswith("invalid TOML") and "line 1" in message
    assert check_config(bad)[0].startswith(f"{bad}: invalid TOML")
    missing = tmp_path / "missing.toml"
    [(key, message)] = problems_of(missing)
    assert message == "cannot read config file: No such file or directory"
    (tmp_path / "latin1.toml").write_bytes(b'[backend]\nuser = "caf\xe9"\n')
    [(key, message)] = problems_of(tmp_path / "latin1.toml")
    assert message.startswith("not valid UTF-8")


def test_secrets_never_in_repr_or_redacted(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_BACKEND", "Backend-Secret-9")
    (tmp_path / "secret").write_text("Server-Secret-" + "x" * 30)
    text = MINIMAL.replace('user = "app"', 'user = "app"\npassword_env = "TG_TEST_BACKEND"')
    text = text.replace('password = "pw"', 'password = "Alice-Secret-8"\nauth = "md5"')
    text = '[server]\nsecret_file = "secret"\n' + text
    cfg = load_config(write(tmp_path, text))
    md5 = cfg.users["alice"].md5
    assert md5 is not None
    scram = cfg.users["alice"].scram
    assert scram is not None
    stored = str(scram).split("$")[2]
    for view in (repr(cfg), str(cfg), repr(cfg.redacted()), str(cfg.users["alice"])):
        for secret in ("Backend-Secret-9", "Server-Secret-", "Alice-Secret-8", md5, stored):
            assert secret not in view
    redacted = cfg.redacted()
    assert redacted["backend"]["password"] == "***" and redacted["server"]["secret"] == "***"
    assert redacted["users"]["alice"] == {
        "tenant": "acme",
        "trusted": False,
        "role": "readwrite",
        "auth": "md5",
        "scram": "***",
        "md5": "***",
    }
    # The loaded config survives pickling (how it reaches worker processes).
    again = pickle.loads(pickle.dumps(cfg.backend))
    assert again == cfg.backend and again.password.reveal() == "Backend-Secret-9"


def test_secret_type() -> None:
    s = Secret("hunter2")
    assert repr(s) == str(s) == f"{s}" == "***" and s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("hunter3") and hash(s) == hash(Secret("hunter2"))


@given(
    st.text(alphabet=st.characters(exclude_characters="\0", exclude_categories=["Cs"]), min_size=1).filter(
        lambda s: len(s.encode()) < 64
    )
)
def test_identifier_render_parse_round_trip(name: str) -> None:
    assert parse_identifier(render_identifier(name)) == name
    assert parse_qualified_name(f"{render_identifier(name)}.{render_identifier(name)}") == (name, name)
