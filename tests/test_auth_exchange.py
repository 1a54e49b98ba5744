"""Client authentication exchange at the proxy (tenantgate.proxy.auth.ClientAuth), sans-IO.

Every message crosses the codec as it would on a socket: the proxy's replies are framed and
decoded as a client would, and the client's PasswordMessages are framed and decoded as the proxy
would. The fuzz tests are the PgBouncer CVE class (malformed SCRAM packets): whatever a client
sends, the exchange ends in AuthFailed or ProtocolError and never authenticates.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantgate.keyring.auth.scram import ScramClient, ScramVerifier, make_verifier, md5_hash, md5_response
from tenantgate.proxy import codec
from tenantgate.proxy.auth import MD5, SCRAM, AuthFailed, ClientAuth
from tenantgate.proxy.codec import (
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    Authentication,
    Framer,
    PasswordMessage,
    ProtocolError,
    sasl_initial_response,
)


@dataclass
class Creds:
    scram: ScramVerifier | None = None
    md5: str | None = None


SECRET = b"proxy secret for tests, 32 bytes"
PASSWORD = "correct horse"
# Few iterations keep the client-side PBKDF2 cheap; the exchange is the same.
VERIFIER = make_verifier(PASSWORD, iterations=64)
ALICE = Creds(scram=VERIFIER, md5=md5_hash("alice", PASSWORD))
SERVER_FIRST = re.compile(r"r=(?P<nonce>[!-+\--~]+),s=(?P<salt>[A-Za-z0-9+/]+={0,2}),i=(?P<iter>[0-9]+)")


def replies(data: bytes) -> list[Authentication]:
    """What a client decodes from the proxy's answer (all of it Authentication messages)."""
    framer = Framer("server")
    buf, frames = framer.feed(data)
    assert framer.pending == 0
    out = [codec.decode_backend(t, buf[s + 5 : e]) for t, s, e in frames]
    assert all(isinstance(m, Authentication) for m in out)
    return out  # type: ignore[return-value]


def sent(msg: PasswordMessage) -> PasswordMessage:
    """``msg`` as the proxy sees it after framing and decoding."""
    framer = Framer("client")
    buf, [(mtype, start, end)] = framer.feed(msg.encode())
    decoded = codec.decode_frontend(mtype, buf[start + 5 : end])
    assert isinstance(decoded, PasswordMessage)
    return decoded


def scram_first(auth: ClientAuth, client: ScramClient) -> bytes:
    """Run start() and the SASLInitialResponse; return the server-first-message."""
    assert replies(auth.start()) == [Authentication(AUTH_SASL, b"SCRAM-SHA-256\x00\x00")]
    [cont] = replies(auth.step(sent(sasl_initial_response("SCRAM-SHA-256", client.first()))))
    assert cont.code == AUTH_SASL_CONTINUE
    assert not auth.done
    return cont.data


def scram_login(auth: ClientAuth, password: str) -> list[Authentication]:
    client = ScramClient(password)
    server_first = scram_first(auth, client)
    final = replies(auth.step(sent(PasswordMessage(client.final(server_first)))))
    client.verify(final[0].data)  # the proxy proves it knows the verifier too
    return final


def assert_password_failed(exc: pytest.ExceptionInfo[AuthFailed], user: str) -> None:
    err = exc.value.error
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{user}"'
    assert str(exc.value) == err.message
    assert PASSWORD not in repr(err.fields)


# ----------------------------------------------------------------------------- SCRAM


def test_scram_right_password_ends_with_authentication_ok() -> None:
    auth = ClientAuth("alice", ALICE, SCRAM, SECRET)
    final = scram_login(auth, PASSWORD)
    assert [m.code for m in final] == [AUTH_SASL_FINAL, AUTH_OK]
    assert final[1] == Authentication(AUTH_OK)
    assert auth.done
    with pytest.raises(AuthFailed):  # the exchange is over; nothing more is accepted
        auth.step(PasswordMessage(b"n,,n=,r=again"))


def test_scram_verifier_from_the_default_iteration_count() -> None:
    auth = ClientAuth("alice", Creds(scram=make_verifier("pw")), SCRAM, SECRET)
    assert scram_login(auth, "pw")[-1] == Authentication(AUTH_OK)


@pytest.mark.parametrize("password", ["correct hors", "Correct horse", "", "correct horse "])
def test_scram_wrong_password(password: str) -> None:
    auth = ClientAuth("alice", ALICE, SCRAM, SECRET)
    with pytest.raises(AuthFailed) as exc:
        scram_login(auth, password)
    assert_password_failed(exc, "alice")
    assert not auth.done


@pytest.mark.parametrize(
    "creds", [None, Creds(), Creds(md5=md5_hash("ghost", PASSWORD))], ids=["unknown", "no-secret", "md5-only"]
)
def test_scram_without_a_scram_verifier_fails_like_a_wrong_password(creds: Creds | None) -> None:
    auth = ClientAuth("ghost", creds, SCRAM, SECRET)
    with pytest.raises(AuthFailed) as exc:
        scram_login(auth, PASSWORD)
    assert_password_failed(exc, "ghost")
    assert not auth.done


def test_unknown_user_gets_a_stable_realistic_salt() -> None:
    def server_first(user: str, creds: Creds | None, secret: bytes = SECRET) -> re.Match[str]:
        client = ScramClient("whatever", nonce="clientnonce")
        match = SERVER_FIRST.fullmatch(scram_first(ClientAuth(user, creds, SCRAM, secret), client).decode())
        assert match is not None
        assert match["nonce"].startswith("clientnonce")
        assert len(match["nonce"]) > len("clientnonce")
        return match

    first, again = server_first("ghost", None), server_first("ghost", None)
    assert first["salt"] == again["salt"]  # probing twice shows nothing a real user would not
    assert first["nonce"] != again["nonce"]  # the server nonce is still fresh each time
    # Shaped like a verifier from CREATE ROLE ... PASSWORD: 16-byte salt, 4096 iterations.
    real = server_first("alice", Creds(scram=make_verifier(PASSWORD)))
    assert len(base64.b64decode(first["salt"])) == len(base64.b64decode(real["salt"])) == 16
    assert first["iter"] == real["iter"] == "4096"
    assert server_first("ghost2", None)["salt"] != first["salt"]
    assert server_first("ghost", None, b"another proxy secret")["salt"] != first["salt"]
    # A known user without a SCRAM secret also gets the stable fake salt.
    assert server_first("ghost", Creds(md5=md5_hash("ghost", PASSWORD)))["salt"] == first["salt"]


def test_unsupported_mechanism() -> None:
    auth = ClientAuth("alice", ALICE, SCRAM, SECRET)
    auth.start()
    with pytest.raises(ProtocolError) as exc:  # PostgreSQL answers 08P01 here too
        auth.step(sent(sasl_initial_response("SCRAM-SHA-256-PLUS", ScramClient(PASSWORD).first())))
    assert exc.value.sqlstate == "08P01"
    assert "SCRAM-SHA-256-PLUS" in exc.value.detail


def test_replaying_the_final_message_fails() -> None:
    auth = ClientAuth("alice", ALICE, SCRAM, SECRET)
    client = ScramClient(PASSWORD)
    final = PasswordMessage(client.final(scram_first(auth, client)))
    auth.step(final)
    other = ClientAuth("alice", ALICE, SCRAM, SECRET)
    scram_first(other, ScramClient(PASSWORD))
    with pytest.raises(AuthFailed) as exc:  # a fresh server nonce makes the old proof useless
        other.step(final)
    assert_password_failed(exc, "alice")


@pytest.mark.parametrize("stage", ["first", "final"])
def test_oversized_scram_messages_fail(stage: str) -> None:
    auth = ClientAuth("alice", ALICE, SCRAM, SECRET)
    client = ScramClient(PASSWORD)
    huge = b"r=" + b"A" * 10_000
    with pytest.raises(AuthFailed) as exc:
        if stage == "first":
            auth.step(sent(sasl_initial_response("SCRAM-SHA-256", b"n,,n=," + huge)))
        else:
            client.final(scram_first(auth, client))
            auth.step(sent(PasswordMessage(b"c=biws," + huge)))
    assert_password_failed(exc, "alice")


# ----------------------------------------------------------------------------- md5


def md5_login(auth: ClientAuth, stored: str) -> list[Authentication]:
    [request] = replies(auth.start())
    assert request.code == AUTH_MD5
    assert len(request.data) == 4
    response = md5_response(stored, request.data).encode() + b"\x00"
    return replies(auth.step(sent(PasswordMessage(response))))


def test_md5_right_password() -> None:
    auth = ClientAuth("alice", ALICE, MD5, SECRET)
    assert md5_login(auth, md5_hash("alice", PASSWORD)) == [Authentication(AUTH_OK)]
    assert auth.done


@pytest.mark.parametrize(
    "stored", [md5_hash("alice", "wrong"), md5_hash("bob", PASSWORD)], ids=["wrong-password", "other-user-salt"]
)
def test_md5_wrong_password(stored: str) -> None:
    auth = ClientAuth("alice", ALICE, MD5, SECRET)
    with pytest.raises(AuthFailed) as exc:
        md5_login(auth, stored)
    assert_password_failed(exc, "alice")
    assert not auth.done


def test_md5_salt_is_fresh_per_exchange() -> None:
    salts = {replies(ClientAuth("alice", ALICE, MD5, SECRET).start())[0].data for _ in range(8)}
    assert len(salts) == 8


def test_md5_malformed_password_message_is_a_protocol_error() -> None:
    auth = ClientAuth("alice", ALICE, MD5, SECRET)
    auth.start()
    with pytest.raises(ProtocolError) as exc:
        auth.step(PasswordMessage(b"md5" + b"0" * 32))  # no terminating NUL
    assert exc.value.side == "client"


@pytest.mark.parametrize(
    ("method", "creds", "expected"),
    [
        (MD5, Creds(scram=VERIFIER), AUTH_SASL),  # md5 in the config but only a SCRAM secret: SCRAM
        (MD5, None, AUTH_MD5),  # unknown users get the configured method's (failing) exchange: no enumeration
        (SCRAM, ALICE, AUTH_SASL),
        (MD5, ALICE, AUTH_MD5),
    ],
)
def test_method_choice(method: str, creds: Creds | None, expected: int) -> None:
    assert replies(ClientAuth("alice", creds, method, SECRET).start())[0].code == expected


def test_md5_configured_user_without_md5_hash_still_logs_in_with_scram() -> None:
    auth = ClientAuth("alice", Creds(scram=VERIFIER), MD5, SECRET)
    assert scram_login(auth, PASSWORD)[-1] == Authentication(AUTH_OK)


def test_no_second_attempt_after_a_failure() -> None:
    auth = ClientAuth("alice", ALICE, MD5, SECRET)
    [request] = replies(auth.start())
    with pytest.raises(AuthFailed):
        auth.step(PasswordMessage(b"md5" + b"0" * 32 + b"\x00"))
    right = md5_response(md5_hash("alice", PASSWORD), request.data).encode() + b"\x00"
    with pytest.raises(AuthFailed):
        auth.step(PasswordMessage(right))


# ----------------------------------------------------------------------------- fuzzing

# Fragments of SCRAM syntax, so the fuzzer reaches the parser's deeper branches.
SCRAM_PIECES = st.sampled_from(
    ["n", "y", "p", "p=tls-server-end-point", ",", "=", "n=", "r=", "s=", "i=", "c=", "p=", "m=", "e=", "a=x",
     "biws", "eSws", "clientnonce", "AAAA", "=" * 3, "+/", "4096", "\x00", "\xff", "é", " ", "c=biws,r="]
)  # fmt: skip
SCRAM_TEXT = st.lists(SCRAM_PIECES | st.text(max_size=6), max_size=12).map("".join)
SCRAM_BYTES = st.one_of(
    st.binary(max_size=120),
    SCRAM_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
)
MECHANISMS = st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "", "scram-sha-256"]) | st.text(max_size=8)
INITIAL_BODIES = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda mech, data: sasl_initial_response(mech.replace("\x00", ""), data).data, MECHANISMS, SCRAM_BYTES),
    # A SASLInitialResponse whose length field disagrees with the data.
    st.builds(
        lambda data, n: b"SCRAM-SHA-256\x00" + n.to_bytes(4, "big", signed=True) + data,
        SCRAM_BYTES,
        st.integers(-(2**31), 2**31 - 1),
    ),
)
CREDS = st.sampled_from([ALICE, None, Creds(), Creds(scram=VERIFIER), Creds(md5=ALICE.md5)])


def step_safely(auth: ClientAuth, body: bytes) -> None:
    try:
        auth.step(PasswordMessage(body))
    except AuthFailed as exc:
        assert exc.error.sqlstate in ("28P01", "28000")
    except ProtocolError as exc:
        assert exc.side == "client"


@settings(max_examples=200, deadline=None)
@given(CREDS, st.sampled_from([SCRAM, MD5]), st.lists(INITIAL_BODIES | SCRAM_BYTES, min_size=1, max_size=4))
def test_fuzz_from_the_first_message(creds: Creds | None, method: str, bodies: list[bytes]) -> None:
    auth = ClientAuth("alice", creds, method, SECRET)
    auth.start()
    for body in bodies:  # keep going after failures: the object must stay well-behaved
        step_safely(auth, body)
    assert not auth.done


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "cut":
            del out[i:]
        elif op == "insert":
            out[i:i] = draw(SCRAM_PIECES).encode()
        elif i < len(out):
            out[i] = draw(st.integers(0, 255))
    return bytes(out)


def same_proof(body: bytes, real: bytes) -> bool:
    """Whether ``body`` is ``real`` up to a non-canonical base64 spelling of the same proof."""
    head, sep, proof = body.rpartition(b",p=")
    real_head, _, real_proof = real.rpartition(b",p=")
    try:
        return (
            bool(sep) and head == real_head and base64.b64decode(proof, validate=True) == base64.b64decode(real_proof)
        )
    except ValueError:  # binascii.Error is a ValueError
        return False


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([ALICE, None, Creds(md5=ALICE.md5)]))
def test_fuzz_client_final(data: st.DataObject, creds: Creds | None) -> None:
    """After a valid client-first: garbage, or a real client-final with bytes changed."""
    auth = ClientAuth("alice", creds, SCRAM, SECRET)
    client = ScramClient(PASSWORD, nonce="clientnonce")
    real_final = client.final(scram_first(auth, client))
    bodies = data.draw(st.lists(SCRAM_BYTES | mutated(real_final), min_size=1, max_size=3))
    for body in bodies:
        step_safely(auth, body)
    # Only the real proof (the first message, for a user with that SCRAM secret) gets in.
    assert auth.done == (creds is ALICE and same_proof(bodies[0], real_final))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60) | SCRAM_BYTES, st.sampled_from([ALICE, None]))
def test_fuzz_md5_response(body: bytes, creds: Creds | None) -> None:
    auth = ClientAuth("alice", creds, MD5, SECRET)
    auth.start()
    step_safely(auth, body)
    assert not auth.done


@settings(max_examples=100, deadline=None)
@given(st.lists(INITIAL_BODIES | SCRAM_BYTES, min_size=1, max_size=3))
def test_fuzz_after_success(bodies: list[bytes]) -> None:
    auth = ClientAuth("alice", ALICE, MD5, SECRET)
    assert md5_login(auth, md5_hash("alice", PASSWORD)) == [Authentication(AUTH_OK)]
    for body in bodies:
        with pytest.raises(AuthFailed):
            auth.step(PasswordMessage(body))
