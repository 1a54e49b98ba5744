"""SCRAM-SHA-256 and md5 authentication (tenantgate.keyring.auth.scram)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.keyring.auth.scram import (
    MAX_CLIENT_ITERATIONS,
    AuthError,
    ScramClient,
    ScramServer,
    ScramVerifier,
    fake_verifier,
    make_verifier,
    md5_check,
    md5_hash,
    md5_response,
)

# Produced by PostgreSQL 15 (`SET password_encryption = 'scram-sha-256'; CREATE ROLE x PASSWORD ...;
# SELECT rolpassword FROM pg_authid`). The non-ASCII ones pin PostgreSQL's SASLprep behaviour:
# a no-break space maps to ' ' and a soft hyphen to nothing; U+FB01 is NFKC-normalized to 'fi';
# an Arabic letter followed by a Latin one fails the bidi rule, so the raw bytes are hashed.
PG_VERIFIERS = {
    "pw": "SCRAM-SHA-256$4096:0Pp6ygHUWLE2iE/Fi6/IaA==$CuusMs8avoldCHdx3a4Zb70F/PEATekKjeLGTsufBNw="
    ":6iM0TT23z6SKtdjcgmwAPXnhSwl62neikC/rsWaG8XU=",
    "pässwörd": "SCRAM-SHA-256$4096:y4ZKLLXJlIHVKwAo9za60A==$52nt8xEe+kY4ilShFOyJDmBTHEQIIg+ES/wVlu8Y3gg="
    ":rsDcyYx9+H8nll5g3TRQ0CeGOlRQqMxhlFJa/CqRMaw=",
    "a\u00a0b\u00adc": "SCRAM-SHA-256$4096:l9IKplGun0fsBRltPehe0g==$EtPjlE6qmQYlNqpm8Zw2+OL5kQk1aJxT+IBATgecXw4="
    ":hxOElcAG8MfsDmXqFQ35pIG7NWmdWfzeHeCG7TmHETY=",
    "\u0627x": "SCRAM-SHA-256$4096:sOkWOyQ3Gh+1s/kZcny+Wg==$nNSJd0Iq7qPm666pqAzk8/Wz/LUVqL3EM0ipmy0sO9o="
    ":byfpbpftEh/6JV0J3qqhS5hyDjCzi5TpJgmm56hb37Y=",
    "\ufb01": "SCRAM-SHA-256$4096:Esnj1g1xt+/1LLxyRHoQ3g==$q74HgFtI79pDBmbbzhKPh/vLYzL0d1vlKq25QEUlajA="
    ":G5UIjqApoR61HSyAEpPNfG7W5vbPBJJwynfzgxVn5Ko=",
}


def exchange(server: ScramServer, client: ScramClient) -> None:
    server_first = server.handle_first(client.first())
    server_final = server.handle_final(client.final(server_first))
    client.verify(server_final)


# ----------------------------------------------------------------------------- verifiers


@pytest.mark.parametrize("password", list(PG_VERIFIERS))
def test_make_verifier_matches_postgresql(password: str) -> None:
    pg = ScramVerifier.parse(PG_VERIFIERS[password])
    assert make_verifier(password, iterations=pg.iterations, salt=pg.salt) == pg
    assert str(pg) == PG_VERIFIERS[password]


@pytest.mark.parametrize("password", list(PG_VERIFIERS))
def test_login_against_postgresql_verifier(password: str) -> None:
    exchange(ScramServer(ScramVerifier.parse(PG_VERIFIERS[password])), ScramClient(password))


def test_verifier_repr_hides_keys() -> None:
    v = ScramVerifier.parse(PG_VERIFIERS["pw"])
    text = repr(v)
    assert "4096" in text
    for secret in (v.stored_key, v.server_key, v.salt):
        assert base64.b64encode(secret).decode() not in text
    assert "CuusMs8a" not in text and "6iM0TT23" not in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "md53175bce1d3201d16594cebf9d7eb3f9d",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys too short
        "SCRAM-SHA-256$0:" + PG_VERIFIERS["pw"].split(":", 1)[1],  # zero iterations
        "SCRAM-SHA-256$4096:!!!!$" + PG_VERIFIERS["pw"].split("$", 2)[2],
        "SCRAM-SHA-256$4096:0Pp6ygHUWLE2iE/Fi6/IaA=$" + PG_VERIFIERS["pw"].split("$", 2)[2],  # bad padding
        PG_VERIFIERS["pw"] + "x",
        "SCRAM-SHA-1$4096:" + PG_VERIFIERS["pw"].split(":", 1)[1],
    ],
)
def test_verifier_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match=r"SCRAM|verifier"):
        ScramVerifier.parse(text)


def test_make_verifier_random_salt_and_iterations() -> None:
    a, b = make_verifier("pw"), make_verifier("pw", iterations=10)
    assert a.salt != b.salt and len(a.salt) == 16
    assert (a.iterations, b.iterations) == (4096, 10)
    with pytest.raises(ValueError):
        make_verifier("pw", iterations=0)


# ----------------------------------------------------------------------------- exchange


def test_rfc7677_server_known_answer() -> None:
    """The server side reproduces RFC 7677 section 3 byte for byte."""
    verifier = make_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    server = ScramServer(verifier, nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.handle_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    final = server.handle_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_round_trip_and_client_messages() -> None:
    client = ScramClient("s3cret", nonce="clientnonce")
    assert client.first() == b"n,,n=,r=clientnonce"
    server = ScramServer(make_verifier("s3cret"))
    server_first = server.handle_first(b"n,,n=,r=clientnonce")
    client_final = client.final(server_first)
    assert client_final.startswith(b"c=biws,r=clientnonce")
    client.verify(server.handle_final(client_final))


def test_gs2_header_must_be_echoed() -> None:
    """A client that said 'y' must send c=eSws ("y,,"), not c=biws."""
    client = ScramClient("pw", nonce="abc")
    client.first()
    server = ScramServer(make_verifier("pw", iterations=16))
    final = client.final(server.handle_first(b"y,,n=,r=abc"))
    with pytest.raises(AuthError, match="channel binding"):
        server.handle_final(final)


def test_gs2_y_full_exchange_by_hand() -> None:
    """A client that sends 'y' and echoes it in c= succeeds."""
    password, salt, iterations = "pw", b"saltsaltsaltsalt", 16
    server = ScramServer(make_verifier(password, iterations=iterations, salt=salt), nonce="SRV")
    server_first = server.handle_first(b"y,,n=,r=CLI").decode()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = "c=eSws,r=CLISRV"
    auth = f"n=,r=CLI,{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    reply = server.handle_final(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    assert reply.startswith(b"v=")


def test_channel_binding_p_refused() -> None:
    server = ScramServer(make_verifier("pw", iterations=16))
    with pytest.raises(AuthError, match="channel binding"):
        server.handle_first(b"p=tls-server-end-point,,n=,r=abc")


def test_wrong_password_fails_without_leaking() -> None:
    server = ScramServer(make_verifier("right-password", iterations=64))
    client = ScramClient("wrong-password")
    server_first = server.handle_first(client.first())
    client_final = client.final(server_first)
    with pytest.raises(AuthError) as excinfo:
        server.handle_final(client_final)
    text = str(excinfo.value) + repr(excinfo.value)
    proof = client_final.rsplit(b"p=", 1)[1].decode()
    assert "password" in text and "right-password" not in text and "wrong-password" not in text
    assert proof not in text


def test_fail_flag_always_fails_even_with_right_password() -> None:
    verifier = make_verifier("pw", iterations=16)
    server = ScramServer(verifier, fail=True)
    client = ScramClient("pw")
    server_first = server.handle_first(client.first())
    with pytest.raises(AuthError, match="password authentication failed"):
        server.handle_final(client.final(server_first))


def test_fake_verifier_is_stable_per_user() -> None:
    secret = b"k" * 32
    a1, a2, b = fake_verifier("alice", secret), fake_verifier("alice", secret), fake_verifier("bob", secret)
    assert a1 == a2 and a1.salt != b.salt
    assert fake_verifier("alice", b"other" * 8).salt != a1.salt
    assert a1.iterations == make_verifier("x").iterations and len(a1.salt) == 16
    # An unknown user's exchange looks like a real one up to the failure.
    server = ScramServer(a1, fail=True)
    first = server.handle_first(b"n,,n=,r=abc")
    assert f"s={base64.b64encode(a1.salt).decode()},i=4096".encode() in first


def test_server_rejects_replayed_or_mismatched_nonce() -> None:
    server = ScramServer(make_verifier("pw", iterations=16))
    client = ScramClient("pw", nonce="abc")
    server.handle_first(client.first())
    other = ScramServer(make_verifier("pw", iterations=16))
    final = client.final(other.handle_first(b"n,,n=,r=abc"))
    with pytest.raises(AuthError, match="nonce"):
        server.handle_final(final)


def test_out_of_order_calls() -> None:
    server = ScramServer(make_verifier("pw", iterations=16))
    with pytest.raises(AuthError, match="order"):
        server.handle_final(b"c=biws,r=x,p=AAAA")
    client = ScramClient("pw")
    with pytest.raises(AuthError, match="order"):
        client.verify(b"v=AAAA")
    client.first()
    with pytest.raises(AuthError, match="order"):
        client.first()


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,r=abc",
        b"n,,n=,r=ab\x01c",
        b"n,,n=,r=\xff\xfe",
        b"n,,n=,r=a\x00bc",
        b"n,,n=,r=" + b"a" * 100_000,
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    with pytest.raises(AuthError):
        ScramServer(make_verifier("pw", iterations=16)).handle_first(message)


def _client_after_first(nonce: str = "abc") -> ScramClient:
    client = ScramClient("pw", nonce=nonce)
    client.first()
    return client


@pytest.mark.parametrize(
    "message",
    [
        b"r=abcdef,s=c2FsdA==,i=999999999",  # hostile iteration count
        b"r=abcdef,s=c2FsdA==,i=0",
        b"r=abcdef,s=c2FsdA==,i=-1",
        b"r=abcdef,s=c2FsdA==,i=4096x",
        b"r=abcdef,s=c2FsdA==,i=\xd9\xa1",  # non-ASCII digit
        b"r=xyzdef,s=c2FsdA==,i=4096",  # nonce does not extend ours
        b"r=abc,s=c2FsdA==,i=4096",  # server added nothing
        b"r=abcdef,s=!!,i=4096",
        b"r=abcdef,s=,i=4096",
        b"r=abcdef,s=c2FsdA==,i=4096,x=1",
        b"m=ext,r=abcdef,s=c2FsdA==,i=4096",
        b"r=abcdef,i=4096",
    ],
)
def test_malformed_server_first(message: bytes) -> None:
    with pytest.raises(AuthError):
        _client_after_first().final(message)


def test_client_iteration_cap_is_enforced() -> None:
    msg = f"r=abcdef,s=c2FsdA==,i={MAX_CLIENT_ITERATIONS + 1}".encode()
    with pytest.raises(AuthError, match="iteration"):
        _client_after_first().final(msg)


def test_client_rejects_bad_server_signature_and_errors() -> None:
    for final in (b"v=" + base64.b64encode(b"\0" * 32), b"e=invalid-proof", b"e=\xff", b"x=1", b"v=!!"):
        client = _client_after_first()
        client.final(b"r=abcdef,s=c2FsdA==,i=16")
        with pytest.raises(AuthError):
            client.verify(final)


# ----------------------------------------------------------------------------- fuzz

SCRAM_ALPHABET = st.sampled_from([*"nyparcsivme=,+/0123456789AbC", "biws", "eSws", "\x00", "\xe9"])
scramish = st.lists(SCRAM_ALPHABET, max_size=60).map(lambda parts: "".join(parts).encode())
fuzz_bytes = st.one_of(st.binary(max_size=300), scramish)


@settings(max_examples=300, deadline=None)
@given(fuzz_bytes)
def test_fuzz_handle_first_only_auth_error(data: bytes) -> None:
    server = ScramServer(make_verifier("pw", iterations=2, salt=b"s" * 16))
    with contextlib.suppress(AuthError):
        server.handle_first(data)


@settings(max_examples=300, deadline=None)
@given(fuzz_bytes, st.booleans())
def test_fuzz_handle_final_only_auth_error(data: bytes, prefix: bool) -> None:
    server = ScramServer(make_verifier("pw", iterations=2, salt=b"s" * 16), nonce="SRV")
    server.handle_first(b"n,,n=,r=CLI")
    if prefix:  # reach the proof checks more often
        data = b"c=biws,r=CLISRV," + data
    with pytest.raises(AuthError):
        server.handle_final(data)


@settings(max_examples=300, deadline=None)
@given(fuzz_bytes, st.booleans())
def test_fuzz_client_final_only_auth_error(data: bytes, prefix: bool) -> None:
    client = _client_after_first("CLI")
    if prefix:
        data = b"r=CLISRV," + data
    with contextlib.suppress(AuthError):
        client.final(data)


@settings(max_examples=200, deadline=None)
@given(fuzz_bytes)
def test_fuzz_client_verify_only_auth_error(data: bytes) -> None:
    client = _client_after_first("CLI")
    client.final(b"r=CLISRV,s=c2FsdA==,i=2")
    with pytest.raises(AuthError):
        client.verify(data)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s))
def test_any_password_round_trips(password: str) -> None:
    exchange(ScramServer(make_verifier(password, iterations=2)), ScramClient(password))


# ----------------------------------------------------------------------------- md5


def test_md5_known_answers_from_postgresql() -> None:
    assert md5_hash("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"
    assert md5_hash("m1", "postgres") == "md57cd6510aff92e2f9951fe543d74ca816"


def test_md5_response_and_check() -> None:
    stored = md5_hash("postgres", "postgres")
    salt = b"\x01\x02\x03\x04"
    # md5(hex_part || salt), as libpq's pg_md5_encrypt(md5(password+user)[3:], salt) computes.
    expected = "md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest()
    assert md5_response(stored, salt) == expected
    assert md5_check(stored, salt, expected.encode())
    assert md5_check(stored, salt, expected.encode() + b"\0")
    assert not md5_check(stored, salt, expected.encode() + b"\0\0")
    assert not md5_check(stored, b"\x01\x02\x03\x05", expected.encode())
    assert not md5_check(md5_hash("postgres", "other"), salt, expected.encode())
    assert not md5_check(stored, salt, b"")
    with pytest.raises(ValueError):
        md5_response("plaintext", salt)
