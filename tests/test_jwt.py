"""OIDC/JWT logins and read-only roles: token verification, JWKS sources, config, and the real proxy over TLS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.config import ConfigError, load_config
from tenantgate.keyring.auth.jwt import JwksError, JwkSet, JwtError, parse_jwks, verify_jwt
from tenantgate.keyring.auth.oidc import JwtIdentity
from tenantgate.proxy import codec
from tenantgate.proxy.auth import JWT, AuthFailed, ClientAuth
from tenantgate.proxy.oidc import REFETCH_INTERVAL, JwksCache, jwt_verifier, load_serving_config, open_jwks
from tenantgate.proxy.process import Proxy
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port
from tenantgate.rewriter.roles import read_only_settings, read_only_violation

from .certs import Pki
from .harness import Backend, ProxyProcess, config_text, start_proxy

ISSUER = "https://idp.test"
AUDIENCE = "tenantgate-test"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class Signer:
    """A private key with its kid and JWS algorithm; makes JWKS entries and signed tokens."""

    kid: str
    alg: str
    key: PrivateKey = field(repr=False)

    @classmethod
    def new(cls, alg: str, kid: str | None = None) -> Signer:
        key: PrivateKey
        if alg == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        return cls(kid or secrets.token_hex(4), alg, key)

    def jwk(self) -> dict[str, str]:
        pub = self.key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "n": b64int(nums.n), "e": b64int(nums.e)}
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pn = pub.public_numbers()
            return {"kty": "EC", "kid": self.kid, "crv": "P-256", "x": b64int(pn.x, 32), "y": b64int(pn.y, 32)}
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(raw)}

    def sign_input(self, data: bytes) -> bytes:
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return key.sign(data)

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **header}
        signing = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
        return f"{signing}.{b64(self.sign_input(signing.encode()))}"


def jwks_of(*signers: Signer) -> bytes:
    return json.dumps({"keys": [s.jwk() for s in signers]}).encode()


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "carol",
        "tenant": "acme",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: Signer.new(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="module")
def keys(signers: dict[str, Signer]) -> JwkSet:
    return parse_jwks(jwks_of(*signers.values()))


def verify(token: str, keys: JwkSet, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ("RS256", "ES256", "EdDSA"),
        "leeway": 30,
        "now": NOW,
    }
    kw.update(over)
    return verify_jwt(token, keys, **kw)


def refused(token: str, keys: JwkSet, **over: Any) -> str:
    with pytest.raises(JwtError) as info:
        verify(token, keys, **over)
    assert len(token) < 8 or token not in str(info.value)
    return info.value.reason


# ---------------------------------------------------------------------------------- verification


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_of_each_algorithm(signers: dict[str, Signer], keys: JwkSet, alg: str) -> None:
    got = verify(signers[alg].token(claims()), keys)
    assert got["sub"] == "carol" and got["tenant"] == "acme"


def test_times_with_leeway(signers: dict[str, Signer], keys: JwkSet) -> None:
    s = signers["ES256"]
    assert verify(s.token(claims(exp=NOW - 29)), keys)  # within the 30 s leeway
    assert "expired" in refused(s.token(claims(exp=NOW - 31)), keys)
    assert "expired" in refused(s.token(claims(exp=NOW - 1)), keys, leeway=0)
    assert "not valid yet" in refused(s.token(claims(nbf=NOW + 31)), keys)
    assert verify(s.token(claims(nbf=NOW + 29)), keys)
    assert "future" in refused(s.token(claims(iat=NOW + 3600)), keys)
    assert "no expiry" in refused(s.token(claims(exp=None)), keys)
    assert "NumericDate" in refused(s.token(claims(exp="tomorrow")), keys)
    assert "NumericDate" in refused(s.token(claims(exp=True)), keys)


def test_issuer_and_audience(signers: dict[str, Signer], keys: JwkSet) -> None:
    s = signers["EdDSA"]
    assert "issuer" in refused(s.token(claims(iss="https://evil.test")), keys)
    assert "issuer" in refused(s.token(claims(iss=None)), keys)
    assert "audience" in refused(s.token(claims(aud="other")), keys)
    assert "audience" in refused(s.token(claims(aud=None)), keys)
    assert "audience" in refused(s.token(claims(aud=[AUDIENCE, 7])), keys)
    assert verify(s.token(claims(aud=["other", AUDIENCE])), keys)


def test_wrong_signature(signers: dict[str, Signer], keys: JwkSet) -> None:
    for alg, s in signers.items():
        head, body, sig = s.token(claims()).split(".")
        forged_body = b64(json.dumps(claims(tenant="globex")).encode())
        assert refused(f"{head}.{forged_body}.{sig}", keys) == "bad signature", alg
        # a key the JWKS does not hold, signing under a kid it does hold
        impostor = Signer.new(alg, kid=s.kid)
        assert refused(impostor.token(claims()), keys) == "bad signature", alg
        assert refused(f"{head}.{body}.", keys) == "bad signature", alg


def test_alg_none_and_hmac_confusion(signers: dict[str, Signer], keys: JwkSet) -> None:
    s = signers["RS256"]
    head = b64(json.dumps({"alg": "none", "kid": s.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    assert "none" in refused(f"{head}.{body}.", keys, algorithms=("RS256", "none"))
    # HS256 keyed with the public key, as a JWKS consumer that trusts the header would check it
    public_pem = s.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "kid": s.kid}).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert "HS256 is refused" in refused(f"{head}.{body}.{b64(mac)}", keys, algorithms=("RS256", "HS256"))


def test_algorithm_not_configured_and_key_type_mismatch(signers: dict[str, Signer], keys: JwkSet) -> None:
    assert "not in oidc.algorithms" in refused(signers["EdDSA"].token(claims()), keys, algorithms=("RS256",))
    # an RSA key's kid claimed for ES256
    lying = Signer(signers["RS256"].kid, "ES256", signers["ES256"].key)
    assert "cannot verify ES256" in refused(lying.token(claims()), keys)


def test_unknown_kid_and_missing_kid(signers: dict[str, Signer], keys: JwkSet) -> None:
    stranger = Signer.new("ES256", kid="rotated-2")
    assert "unknown kid 'rotated-2'" in refused(stranger.token(claims()), keys)
    s = signers["EdDSA"]
    no_kid = s.token(claims(), kid=None)
    assert verify(no_kid, keys)  # the only Ed25519 key: no ambiguity
    two = parse_jwks(jwks_of(s, Signer.new("EdDSA")))
    assert "no kid" in refused(no_kid, two)


def test_critical_header_refused(signers: dict[str, Signer], keys: JwkSet) -> None:
    assert "crit" in refused(signers["ES256"].token(claims(), crit=["exp"]), keys)


def test_malformed_tokens_named_without_echo(keys: JwkSet) -> None:
    for token in ("", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.e30", "x" * 20000, "eyJhbGciOiJSUzI1NiJ9.%%%.abc"):
        reason = refused(token, keys)
        assert reason.startswith(("malformed", "the token header has no alg")), (token[:20], reason)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_strings_only_raise_jwt_error(text: str) -> None:
    keys = parse_jwks(jwks_of(Signer("k", "EdDSA", ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))))
    with pytest.raises(JwtError):
        verify(text, keys)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(st.sampled_from(["alg", "kid", "crit", "typ", "x"]), _json_values, max_size=4),
    payload=_json_values,
    sig=st.binary(max_size=80),
)
def test_structured_garbage_only_raises_jwt_error(header: dict[str, Any], payload: Any, sig: bytes) -> None:
    signer = Signer("k", "EdDSA", ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    keys = parse_jwks(jwks_of(signer))
    token = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])
    with pytest.raises(JwtError):
        verify(token, keys)


# ---------------------------------------------------------------------------------- JWKS


def test_jwks_parsing_rules(signers: dict[str, Signer]) -> None:
    good = signers["ES256"].jwk()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    cases = {
        "private key material": {**good, "d": "AAAA"},
        "at least 2048": {"kty": "RSA", "kid": "s", "n": b64int(small.n), "e": b64int(small.e)},
        "32 bytes": {**good, "x": b64(b"\x01" * 31)},
        "not a valid EC public key": {**good, "y": b64int(1, 32)},
        "'x' is missing": {"kty": "OKP", "crv": "Ed25519", "kid": "o"},
    }
    for expected, jwk in cases.items():
        with pytest.raises(JwksError, match=expected):
            parse_jwks(json.dumps({"keys": [jwk]}))
    with pytest.raises(JwksError, match="appears twice"):
        parse_jwks(json.dumps({"keys": [good, good]}))
    with pytest.raises(JwksError, match="no usable signing keys"):
        parse_jwks(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {**good, "use": "enc"}]}))
    for doc in (b"[]", b'{"keys": {}}', b"\xff", b'{"keys": [], "keys": []}'):
        with pytest.raises(JwksError):
            parse_jwks(doc)
    # unusable keys are skipped, not fatal
    mixed = parse_jwks(json.dumps({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, good]}))
    assert mixed.kids() == {good["kid"]}


def test_jwks_pickles_as_its_document(keys: JwkSet, signers: dict[str, Signer]) -> None:
    import pickle

    cache = pickle.loads(pickle.dumps(JwksCache(keys, "http://127.0.0.1:1/jwks")))
    assert cache.url == "http://127.0.0.1:1/jwks"
    assert verify(signers["RS256"].token(claims()), cache.keys)


# ---------------------------------------------------------------------------------- config


def oidc_config(tmp: Path, oidc: str, users: str = "") -> Path:
    path = tmp / "tg.toml"
    path.write_text(f'[backend]\nuser = "app"\n\n[tenants.acme]\n\n[tenants.globex]\n\n[oidc]\n{oidc}\n{users}')
    return path


def problems(path: Path) -> list[str]:
    """What the serving process reports when it loads ``path`` (config, then a jwks_url fetched)."""
    with pytest.raises(ConfigError) as info:
        load_serving_config(path)
    return [str(p) for p in info.value.problems]


def test_config_defaults_and_file_source(tmp_path: Path, signers: dict[str, Signer]) -> None:
    (tmp_path / "jwks.json").write_bytes(jwks_of(signers["ES256"]))
    path = oidc_config(
        tmp_path,
        f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "jwks.json"\n',
        '[users.carol]\ntenant = "acme"\nauth = "jwt"\nrole = "readonly"\n',
    )
    cfg = load_config(path)
    assert cfg.oidc is not None
    o = cfg.oidc
    assert (o.tenant_claim, o.role_claim, o.user_claim) == ("tenant", "tenantgate_role", "sub")
    assert (o.algorithms, o.leeway, o.dynamic_users) == (("RS256", "ES256", "EdDSA"), 30.0, False)
    assert o.jwks_file == str(tmp_path / "jwks.json") and o.keys is not None and o.keys.kids() == {signers["ES256"].kid}
    assert cfg.users["carol"].auth == JWT and cfg.users["carol"].role == "readonly"
    assert cfg.redacted()["oidc"]["issuer"] == ISSUER


def test_config_errors_name_file_and_key(tmp_path: Path, signers: dict[str, Signer]) -> None:
    (tmp_path / "bad.json").write_text('{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}')
    path = oidc_config(
        tmp_path,
        'jwks_file = "bad.json"\nalgorithms = ["RS256", "none", "HS256", "PS999", 3]\nleeway = -1\nshiny = 1\n',
        '[users.carol]\ntenant = "acme"\nauth = "jwt"\npassword = "x"\n[users.svc]\ntrusted = true\nauth = "jwt"\n',
    )
    found = problems(path)
    f = str(path)
    expected = [
        f"{f}: oidc.issuer: is required",
        f"{f}: oidc.audience: is required",
        f"{f}: oidc.algorithms[1]: alg none is refused",
        f"{f}: oidc.algorithms[2]: HS256 is refused",
        f"{f}: oidc.algorithms[3]: unsupported algorithm 'PS999'",
        f"{f}: oidc.algorithms[4]: expected a string",
        f"{f}: oidc.leeway: must be at least 0",
        f"{f}: oidc.shiny: unknown key",
        f"{f}: oidc.jwks_file: '{tmp_path / 'bad.json'}' is not a usable JWKS",
        f"{f}: users.carol.password: auth = jwt takes no password",
        f"{f}: users.svc.trusted: a JWT login is scoped to its tenant claim",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in found), (want, found)


def test_config_source_choice_and_url_checks(tmp_path: Path) -> None:
    base = f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
    assert any(
        "set exactly one of jwks_file, jwks_url" in p
        for p in problems(oidc_config(tmp_path, base + 'jwks_file = "a"\njwks_url = "https://127.0.0.1/j"\n'))
    )
    assert any("oidc: jwks_file or jwks_url is required" in p for p in problems(oidc_config(tmp_path, base)))
    for url, msg in (
        ("file:///etc/passwd", "oidc.jwks_url: must be an http:// or https:// URL"),
        ("http://u:p@127.0.0.1/j", "oidc.jwks_url: must not hold credentials"),
    ):
        assert any(msg in p for p in problems(oidc_config(tmp_path, base + f'jwks_url = "{url}"\n')))
    port = free_port()  # nothing listens there
    assert any(
        p.startswith(f"{tmp_path / 'tg.toml'}: oidc.jwks_url: no usable JWKS: cannot fetch it")
        for p in problems(oidc_config(tmp_path, base + f'jwks_url = "http://127.0.0.1:{port}/j"\n'))
    )


def test_config_only_names_a_jwks_url_the_serving_process_fetches_it(tmp_path: Path, jwks_server: JwksServer) -> None:
    base = f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
    dead = f"http://127.0.0.1:{free_port()}/j"  # nothing listens there
    path = oidc_config(tmp_path, base + f'jwks_url = "{dead}"\n')
    oidc = load_config(path).oidc  # config/ does no network I/O
    assert oidc is not None and oidc.jwks_url == dead and oidc.keys is None
    with pytest.raises(ConfigError, match=r"oidc\.jwks_url: no usable JWKS: cannot fetch it"):
        open_jwks(load_config(path), path)
    # a running proxy fetches on reload too: a dead URL refuses the reload and keeps the old keys
    path.write_text(path.read_text().replace(dead, jwks_server.url))
    proxy = Proxy(load_config(path))
    proxy.config_path = str(path)
    before, hits = proxy.jwks, jwks_server.hits
    assert before is not None and hits == 1
    assert proxy.reload()[0] and jwks_server.hits == 2 and proxy.jwks is not before
    kept = proxy.jwks
    path.write_text(path.read_text().replace(jwks_server.url, dead))
    applied, messages = proxy.reload()
    assert not applied and messages[0].startswith(f"{path}: oidc.jwks_url: no usable JWKS: cannot fetch it")
    assert proxy.jwks is kept and proxy.config.oidc is not None and proxy.config.oidc.jwks_url == jwks_server.url


def test_jwt_user_needs_oidc_section(tmp_path: Path) -> None:
    path = tmp_path / "tg.toml"
    path.write_text('[backend]\nuser = "app"\n[tenants.acme]\n[users.carol]\ntenant = "acme"\nauth = "jwt"\n')
    assert problems(path) == [f"{path}: users.carol.auth: auth = jwt needs an [oidc] section"]


def test_file_rotation_on_reload(tmp_path: Path, signers: dict[str, Signer]) -> None:
    old, new = signers["ES256"], Signer.new("ES256", kid="next")
    (tmp_path / "jwks.json").write_bytes(jwks_of(old))
    path = oidc_config(tmp_path, f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "jwks.json"\n')
    token = new.token(claims())
    first = load_config(path).oidc
    assert first is not None
    with pytest.raises(JwtError, match="unknown kid"):
        verify(token, first.keys)
    (tmp_path / "jwks.json").write_bytes(jwks_of(old, new))  # the IdP publishes its next key
    second = load_config(path).oidc  # what RELOAD / SIGHUP does
    assert second is not None
    assert verify(token, second.keys)["sub"] == "carol"


class JwksServer:
    """A loopback HTTP server publishing a JWKS that the test can change; counts requests."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server(signers: dict[str, Signer]) -> Iterator[JwksServer]:
    server = JwksServer(jwks_of(signers["EdDSA"]))
    yield server
    server.close()


def test_url_source_refetches_once_for_a_new_kid(tmp_path: Path, jwks_server: JwksServer) -> None:
    path = oidc_config(tmp_path, f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "{jwks_server.url}"\n')
    _, cache = load_serving_config(path)
    assert cache is not None and jwks_server.hits == 1  # fetched when the serving process loads the config
    rotated = Signer.new("ES256", kid="rotated")
    token = rotated.token(claims())
    with pytest.raises(JwtError, match="unknown kid"):
        verify(token, cache.keys)
    jwks_server.body = jwks_of(rotated)

    async def logins() -> None:
        # two logins at once with the new kid share one request
        await asyncio.gather(cache.refresh_for(token.encode() + b"\0"), cache.refresh_for(token.encode()))

    asyncio.run(logins())
    assert jwks_server.hits == 2
    assert verify(token, cache.keys)["tenant"] == "acme"
    # known kids and tokens without a kid never fetch; an unknown kid right after a refetch waits its turn
    asyncio.run(cache.refresh_for(token.encode()))
    asyncio.run(cache.refresh_for(Signer.new("ES256", kid="again").token(claims()).encode()))
    asyncio.run(cache.refresh_for(b"garbage"))
    assert jwks_server.hits == 2
    assert not cache.wants_refetch("again", time.monotonic())
    assert cache.wants_refetch("again", time.monotonic() + REFETCH_INTERVAL)
    assert not cache.wants_refetch(rotated.kid, time.monotonic() + REFETCH_INTERVAL)


def test_failed_refetch_keeps_the_cached_keys(tmp_path: Path, jwks_server: JwksServer, keys: JwkSet) -> None:
    path = oidc_config(tmp_path, f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "{jwks_server.url}"\n')
    _, cache = load_serving_config(path)
    assert cache is not None
    before = cache.keys
    jwks_server.body = b"not json"
    asyncio.run(cache.refresh_for(Signer.new("ES256", kid="zz").token(claims()).encode()))
    assert jwks_server.hits == 2 and cache.keys is before


# ---------------------------------------------------------------------------------- identity & auth exchange


def test_claims_map_to_identity(tmp_path: Path, signers: dict[str, Signer]) -> None:
    (tmp_path / "jwks.json").write_bytes(jwks_of(signers["ES256"]))
    path = oidc_config(
        tmp_path,
        f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "jwks.json"\ndynamic_users = true\n',
        '[users.carol]\ntenant = "acme"\nauth = "jwt"\n[users.ro]\ntenant = "acme"\nauth = "jwt"\nrole = "readonly"\n',
    )
    cfg = load_config(path)
    jwks = open_jwks(cfg)
    assert jwks is not None
    s = signers["ES256"]

    def check(name: str, **over: Any) -> JwtIdentity:
        return jwt_verifier(cfg, jwks, name, clock=lambda: NOW)(s.token(claims(sub=name, **over)))

    assert check("carol") == JwtIdentity("acme", readonly=False)
    assert check("carol", tenantgate_role="readonly") == JwtIdentity("acme", readonly=True)
    assert check("ro", tenantgate_role="readwrite") == JwtIdentity("acme", readonly=True)  # config wins
    assert check("zed", tenant="globex") == JwtIdentity("globex", readonly=False)  # dynamic user
    for name, over, reason in (
        ("carol", {"tenant": None}, "no 'tenant' claim"),
        ("carol", {"tenant": "globex"}, "not the tenant of user 'carol'"),
        ("zed", {"tenant": "initech"}, r"not in \[tenants\]"),
        ("carol", {"tenantgate_role": "admin"}, "must be one of readwrite, readonly"),
    ):
        with pytest.raises(JwtError, match=reason):
            check(name, **over)
    with pytest.raises(JwtError, match="does not name user 'carol'"):
        jwt_verifier(cfg, jwks, "carol", clock=lambda: NOW)(s.token(claims(sub="mallory")))


def test_client_auth_jwt_exchange() -> None:
    granted = JwtIdentity("acme", readonly=True)

    def verifier(token: str) -> JwtIdentity:
        if token != "good":
            raise JwtError("bad signature")
        return granted

    auth = ClientAuth("carol", None, JWT, b"s" * 32, verifier)
    assert auth.start() == codec.Authentication(codec.AUTH_CLEARTEXT).encode()
    assert auth.step(codec.PasswordMessage(b"good\0")) == codec.Authentication(codec.AUTH_OK).encode()
    assert auth.done and auth.identity == granted
    for password in (b"bad\0", b"\xff\0"):
        auth = ClientAuth("carol", None, JWT, b"s" * 32, verifier)
        with pytest.raises(AuthFailed) as info:
            auth.step(codec.PasswordMessage(password))
        assert info.value.error.sqlstate == "28P01"
        assert info.value.error.message == 'password authentication failed for user "carol"'
        with pytest.raises(AuthFailed):  # one attempt per connection
            auth.step(codec.PasswordMessage(b"good\0"))
    with pytest.raises(ValueError):
        ClientAuth("carol", None, JWT, b"s" * 32)


# ---------------------------------------------------------------------------------- read-only role


@pytest.mark.parametrize(
    ("sql", "kinds", "what"),
    [
        ("INSERT INTO t VALUES (1)", ("insert",), "INSERT"),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", ("merge",), "MERGE"),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", ("select",), "UPDATE"),
        ("EXPLAIN ANALYZE DELETE FROM t", ("explain",), "DELETE"),
        ("PREPARE p AS INSERT INTO t VALUES (1)", ("prepare",), "INSERT"),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", ("copy",), "DELETE"),
        ("SELECT * FROM t FOR UPDATE", ("select",), "SELECT FOR UPDATE"),
        ("SET default_transaction_read_only = off", ("set",), "SET default_transaction_read_only"),
        ("RESET transaction_read_only", ("reset",), "RESET transaction_read_only"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", ("set",), "SET SESSION CHARACTERISTICS"),
        ("START TRANSACTION READ WRITE", ("begin",), "BEGIN READ WRITE"),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", ("select",), "set_config()"),
        ("COPY t FROM STDIN", (), "COPY FROM"),  # a trusted session: no kinds, parsed here
        ("SELEC 1", (), "a statement that cannot be parsed"),
    ],
)
def test_read_only_refusals(sql: str, kinds: tuple[str, ...], what: str) -> None:
    found = read_only_violation(sql, kinds)
    assert found is not None and found.startswith(what)


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("SELECT * FROM t WHERE a = 'UPDATE t SET a = 1'", ("select",)),
        ("BEGIN READ ONLY", ("begin",)),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", ("begin",)),
        ("SET TimeZone = 'UTC'", ("set",)),
        ("SELECT set_config('jit', 'off', false)", ("select",)),
        ("COPY (SELECT 1) TO STDOUT", ("copy",)),
        ("COMMIT", ("commit",)),
        ("RESET ALL", ("reset_all",)),
    ],
)
def test_read_only_allows_reads(sql: str, kinds: tuple[str, ...]) -> None:
    assert read_only_violation(sql, kinds) is None


def test_read_only_settings_override_the_client() -> None:
    got = read_only_settings({"DEFAULT_TRANSACTION_READ_ONLY": "off", "transaction_read_only": "off", "a": "b"})
    assert got == {"a": "b", "default_transaction_read_only": "on"}


# ---------------------------------------------------------------------------------- through the proxy

SETUP = """
CREATE TABLE orders (id int PRIMARY KEY, tenant_id text NOT NULL, item text);
INSERT INTO orders VALUES (1, 'acme', 'anvil'), (2, 'acme', 'rocket'), (3, 'globex', 'lamp');
"""


@dataclass
class JwtProxy:
    proxy: ProxyProcess
    tmp: Path
    ca: str
    signer: Signer
    tokens: list[str] = field(default_factory=list)

    def token(self, user: str, **over: Any) -> str:
        now = time.time()
        token = self.signer.token(claims(sub=user, iat=now, nbf=now, exp=now + 300, **over))
        self.tokens.append(token)
        return token

    def connect(self, user: str, token: str, sslmode: str = "verify-full") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.proxy.port,
            user=user,
            password=token,
            dbname="app",
            sslmode=sslmode,
            sslrootcert=self.ca,
            autocommit=True,
            connect_timeout=10,
        )


@pytest.fixture(scope="module")
def jwt_proxy(pg: PgServer, tmp_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtProxy]:
    backend = Backend.create(pg, "jwtdb", SETUP, owner=False)
    tmp = tmp_path_factory.mktemp("jwt")
    signer = Signer.new("ES256")
    (tmp / "jwks.json").write_bytes(jwks_of(signer, Signer.new("RS256")))
    key = tmp / "audit.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    (tmp / "log").mkdir()
    cert, tls_key = tmp_pki.server
    extra = (
        f'[oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_file = "{tmp}/jwks.json"\ndynamic_users = true\n'
        '[users.carol]\ntenant = "acme"\nauth = "jwt"\n'
        f'[audit]\npath = "{tmp}/log/audit.jsonl"\nkey = "file:{key}"\nflush_interval_ms = 20\n'
    )
    port = free_port()
    text = config_text(
        backend,
        port,
        tls=f'[tls]\nmode = "allow"\ncert = "{cert}"\nkey = "{tls_key}"\n',
        scoping='[scoping]\ncolumn = "tenant_id"\ntables = ["orders"]\n',
        extra=extra,
    )
    proxy = start_proxy(tmp, text, port)
    yield JwtProxy(proxy, tmp, tmp_pki.ca_cert, signer)
    proxy.stop()


def test_token_login_is_scoped_to_the_claimed_tenant(jwt_proxy: JwtProxy) -> None:
    with jwt_proxy.connect("carol", jwt_proxy.token("carol")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT id, item FROM orders ORDER BY id").fetchall() == [(1, "anvil"), (2, "rocket")]
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        assert conn.execute("UPDATE orders SET item = 'anvil' WHERE id = 1").rowcount == 1
    # a dynamic user: the tenant is whatever the (verified) claim says
    with jwt_proxy.connect("zed", jwt_proxy.token("zed", tenant="globex")) as conn:
        assert conn.execute("SELECT id FROM orders").fetchall() == [(3,)]


def test_read_only_role_refuses_writes(jwt_proxy: JwtProxy) -> None:
    token = jwt_proxy.token("rita", tenant="globex", tenantgate_role="readonly")
    with jwt_proxy.connect("rita", token) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            conn.execute("UPDATE orders SET item = 'x'")
        assert info.value.diag.sqlstate == "25006"
        assert info.value.diag.message_primary == "cannot execute UPDATE in a read-only session"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("SET default_transaction_read_only = off")
        # the session stays usable, reads work, and the backend holds the second lock
        assert conn.execute("SELECT id, item FROM orders").fetchall() == [(3, "lamp")]
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_plaintext_and_bad_tokens_are_refused(jwt_proxy: JwtProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match="JWT login requires TLS"):
        jwt_proxy.connect("carol", jwt_proxy.token("carol"), sslmode="disable")
    expired = jwt_proxy.signer.token(claims(sub="carol", iat=time.time() - 900, nbf=None, exp=time.time() - 600))
    jwt_proxy.tokens.append(expired)
    foreign = jwt_proxy.token("carol", tenant="globex")  # carol is acme's
    for token in (expired, foreign, "not-a-token"):
        with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "carol"'):
            jwt_proxy.connect("carol", token)
    log = jwt_proxy.proxy.log()
    assert 'token login of user "carol" refused: the token has expired' in log
    assert "is not the tenant of user 'carol'" in log


def test_tokens_never_logged(jwt_proxy: JwtProxy) -> None:
    marker = f"marker_{secrets.token_hex(4)}"
    with jwt_proxy.connect("carol", jwt_proxy.token("carol")) as conn:
        conn.execute(f"SELECT '{marker}' FROM orders")
    audit_dir = jwt_proxy.tmp / "log"
    deadline = time.monotonic() + 10
    while marker not in (text := "".join(p.read_text() for p in audit_dir.glob("*.jsonl"))):
        assert time.monotonic() < deadline, "the audit record never arrived"
        time.sleep(0.05)
    assert '"auth_ok"' in text and "carol" in text
    log = jwt_proxy.proxy.log()
    assert len(jwt_proxy.tokens) >= 2
    for token in jwt_proxy.tokens:
        signature = token.rsplit(".", 1)[1]
        for where in (log, text):
            assert token not in where and signature not in where
