"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) and md5 password authentication, sans-IO.

Behaviour follows PostgreSQL (src/backend/libpq/auth-scram.c, src/interfaces/libpq/fe-auth-scram.c,
src/common/saslprep.c): verifiers use PostgreSQL's text format, passwords are SASLprep'ed the way
PostgreSQL does it (falling back to the raw UTF-8 bytes), and channel binding is never offered.

Every parsing path raises `AuthError` for malformed input; error texts never contain passwords,
proofs or key material.

>>> server = ScramServer(make_verifier("pencil", iterations=4096))
>>> client = ScramClient("pencil")
>>> server_first = server.handle_first(client.first())
>>> client.verify(server.handle_final(client.final(server_first)))
>>> md5_hash("postgres", "postgres")
'md53175bce1d3201d16594cebf9d7eb3f9d'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_ITERATIONS",
    "MECHANISM",
    "AuthError",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "fake_verifier",
    "make_verifier",
    "md5_check",
    "md5_hash",
    "md5_response",
    "saslprep",
]

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
RAW_NONCE_LEN = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN
KEY_LEN = 32  # SHA-256 output
MAX_PASSWORD_LENGTH = 1024  # PostgreSQL refuses longer passwords in SASLprep
# A hostile backend could ask for billions of PBKDF2 rounds and stall the proxy.
MAX_CLIENT_ITERATIONS = 1_000_000
# Verifiers in the config are trusted more, but an absurd count is still a mistake.
MAX_VERIFIER_ITERATIONS = 100_000_000
# SASL messages are tiny; bound them so a peer cannot make us parse megabytes.
MAX_MESSAGE_LEN = 8192


class AuthError(Exception):
    """A failed or malformed authentication exchange (never carries secrets)."""


# --------------------------------------------------------------------------- SASLprep


def _prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(password: str) -> str | None:
    """SASLprep (RFC 4013) as PostgreSQL's pg_saslprep does it; None where PostgreSQL fails.

    Like PostgreSQL, pure ASCII passes unchanged and the prohibition/bidi checks look at the
    mapped but not yet normalized text.

    >>> saslprep("pencil"), saslprep("a\\u00a0b\\u00adc"), saslprep("\\ufb01"), saslprep("\\u0627x")
    ('pencil', 'a bc', 'fi', None)
    """
    if password.isascii():
        return password
    mapped = [" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch)]
    if not mapped:
        return None
    if any(_prohibited(ch) for ch in mapped):
        return None
    if any(stringprep.in_table_d1(ch) for ch in mapped) and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return None
    return unicodedata.normalize("NFKC", "".join(mapped))


def _password_bytes(password: str) -> bytes:
    """The bytes PostgreSQL hashes: SASLprep'ed text, or the raw UTF-8 when SASLprep fails."""
    raw = password.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password too long (more than {MAX_PASSWORD_LENGTH} bytes)")
    if "\0" in password:
        raise ValueError("password contains a NUL character")
    prepped = saslprep(password)
    return raw if prepped is None else prepped.encode("utf-8")


# --------------------------------------------------------------------------- primitives


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthError(f"malformed SCRAM message (invalid base64 in {what})") from None


def _salted_keys(password_bytes: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) for a password."""
    salted = hashlib.pbkdf2_hmac("sha256", password_bytes, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return client_key, _h(client_key), _hmac(salted, b"Server Key")


# --------------------------------------------------------------------------- verifier

_VERIFIER_RE = re.compile(
    r"SCRAM-SHA-256\$(?P<iter>[0-9]{1,10}):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored>[A-Za-z0-9+/=]+):(?P<server>[A-Za-z0-9+/=]+)"
)


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it in pg_authid.rolpassword."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= MAX_VERIFIER_ITERATIONS:
            raise ValueError(f"SCRAM iteration count must be between 1 and {MAX_VERIFIER_ITERATIONS}")
        if not self.salt:
            raise ValueError("SCRAM salt must not be empty")
        if len(self.stored_key) != KEY_LEN or len(self.server_key) != KEY_LEN:
            raise ValueError(f"SCRAM StoredKey and ServerKey must be {KEY_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` (all base64).

        >>> v = ScramVerifier.parse(str(make_verifier("pw", salt=b"0123456789abcdef")))
        >>> v.iterations, v.salt
        (4096, b'0123456789abcdef')
        """
        m = _VERIFIER_RE.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ValueError(
                "not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
            )
        parts = {}
        for name in ("salt", "stored", "server"):
            try:
                parts[name] = base64.b64decode(m[name], validate=True)
            except binascii.Error:
                raise ValueError(f"SCRAM verifier has invalid base64 in its {name} part") from None
        return cls(int(m["iter"]), parts["salt"], parts["stored"], parts["server"])

    def __str__(self) -> str:
        return f"{MECHANISM}${self.iterations}:{_b64(self.salt)}${_b64(self.stored_key)}:{_b64(self.server_key)}"

    def __repr__(self) -> str:
        return f"ScramVerifier(iterations={self.iterations}, salt=<{len(self.salt)} bytes>, keys=***)"


def make_verifier(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> ScramVerifier:
    """Build a verifier exactly as PostgreSQL's `CREATE ROLE ... PASSWORD` would."""
    if salt is None:
        salt = secrets.token_bytes(SALT_LEN)
    if not 1 <= iterations <= MAX_VERIFIER_ITERATIONS:
        raise ValueError(f"SCRAM iteration count must be between 1 and {MAX_VERIFIER_ITERATIONS}")
    _, stored, server = _salted_keys(_password_bytes(password), salt, iterations)
    return ScramVerifier(iterations, salt, stored, server)


def fake_verifier(username: str, secret: bytes) -> ScramVerifier:
    """A stable verifier for a user that does not exist.

    The salt depends only on the user name and the server secret, so probing the same unknown
    name twice shows the same salt, as for a real user (PostgreSQL's scram_mock_salt).
    """
    base = hmac.digest(secret, b"tenantgate fake verifier\0" + username.encode("utf-8", "surrogatepass"), "sha256")
    return ScramVerifier(
        DEFAULT_ITERATIONS,
        _hmac(base, b"salt")[:SALT_LEN],
        _hmac(base, b"stored"),
        _hmac(base, b"server"),
    )


# --------------------------------------------------------------------------- message parsing


def _decode(message: bytes, what: str) -> str:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise AuthError(f"malformed SCRAM message ({what} is not bytes)")
    if len(message) > MAX_MESSAGE_LEN:
        raise AuthError(f"malformed SCRAM message ({what} longer than {MAX_MESSAGE_LEN} bytes)")
    try:
        text = bytes(message).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"malformed SCRAM message ({what} is not valid UTF-8)") from None
    if "\0" in text:
        raise AuthError(f"malformed SCRAM message ({what} contains a NUL byte)")
    return text


def _attrs(text: str, what: str) -> list[tuple[str, str]]:
    """Split `a=b,c=d` into pairs; every attribute name is one ASCII letter."""
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise AuthError(f"malformed SCRAM message (bad attribute in {what})")
        pairs.append((part[0], part[2:]))
    return pairs


def _expect(pairs: list[tuple[str, str]], index: int, name: str, what: str) -> str:
    if index >= len(pairs) or pairs[index][0] != name:
        raise AuthError(f'malformed SCRAM message (attribute "{name}" expected in {what})')
    return pairs[index][1]


def _printable_nonce(nonce: str, what: str) -> str:
    # RFC 5802: printable ASCII except ','.
    if not nonce or any(not (0x21 <= ord(c) <= 0x7E) or c == "," for c in nonce):
        raise AuthError(f"malformed SCRAM message (invalid nonce in {what})")
    return nonce


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(RAW_NONCE_LEN))


# --------------------------------------------------------------------------- server


class ScramServer:
    """Server side of one SCRAM-SHA-256 exchange: handle_first, then handle_final.

    With fail=True the exchange runs normally but always ends in AuthError (unknown users, so that
    they look exactly like a wrong password). `nonce` fixes the server nonce for known-answer
    tests; leave it None otherwise.
    """

    def __init__(self, verifier: ScramVerifier, *, fail: bool = False, nonce: str | None = None) -> None:
        self._verifier = verifier
        self._fail = fail
        self._server_nonce = _new_nonce() if nonce is None else _printable_nonce(nonce, "server nonce")
        self._state = "first"
        self._client_first_bare = ""
        self._server_first = ""
        self._cbind_input = ""
        self._nonce = ""

    def __repr__(self) -> str:
        return f"ScramServer(state={self._state!r})"

    def handle_first(self, client_first: bytes) -> bytes:
        """Consume client-first-message; return server-first-message."""
        if self._state != "first":
            raise AuthError("SCRAM exchange out of order (client-first-message already handled)")
        self._state = "failed"  # until this step completes
        text = _decode(client_first, "client-first-message")
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        flag, sep, rest = text.partition(",")
        if not sep:
            raise AuthError("malformed SCRAM message (no GS2 header in client-first-message)")
        if flag.startswith("p=") or flag == "p":
            raise AuthError("client requires SCRAM channel binding, but it is not offered")
        if flag not in ("n", "y"):
            raise AuthError("malformed SCRAM message (unexpected channel-binding flag)")
        authzid, sep, bare = rest.partition(",")
        if not sep:
            raise AuthError("malformed SCRAM message (incomplete GS2 header)")
        if authzid:
            raise AuthError("client uses authorization identity, but it is not supported")
        pairs = _attrs(bare, "client-first-message")
        if pairs and pairs[0][0] == "m":
            raise AuthError("client requires an unsupported SCRAM extension")
        # The user name is ignored as in PostgreSQL: the startup packet names the user.
        _expect(pairs, 0, "n", "client-first-message")
        client_nonce = _printable_nonce(_expect(pairs, 1, "r", "client-first-message"), "client-first-message")
        self._client_first_bare = bare
        self._cbind_input = _b64(f"{flag},,".encode("ascii"))
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        self._state = "final"
        return self._server_first.encode("ascii")

    def handle_final(self, client_final: bytes) -> bytes:
        """Consume client-final-message; return server-final-message or raise AuthError."""
        if self._state != "final":
            raise AuthError("SCRAM exchange out of order (client-final-message not expected)")
        self._state = "failed"
        text = _decode(client_final, "client-final-message")
        pairs = _attrs(text, "client-final-message")
        if _expect(pairs, 0, "c", "client-final-message") != self._cbind_input:
            raise AuthError("SCRAM channel binding check failed")
        if _expect(pairs, 1, "r", "client-final-message") != self._nonce:
            raise AuthError("SCRAM nonce mismatch in client-final-message")
        if len(pairs) < 3 or pairs[-1][0] != "p":
            raise AuthError('malformed SCRAM message (attribute "p" expected in client-final-message)')
        proof = _unb64(pairs[-1][1], "client proof")
        if len(proof) != KEY_LEN:
            raise AuthError("malformed SCRAM message (malformed proof in client-final-message)")
        without_proof = text[: text.rindex(",p=")]
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        ok = hmac.compare_digest(_h(client_key), v.stored_key)
        if self._fail or not ok:
            raise AuthError("password authentication failed")
        self._state = "done"
        return f"v={_b64(_hmac(v.server_key, auth_message))}".encode("ascii")


# --------------------------------------------------------------------------- client


class ScramClient:
    """Client side of SCRAM-SHA-256 for logging into a backend: first, final, verify."""

    def __init__(self, password: str, *, nonce: str | None = None) -> None:
        self._password = _password_bytes(password)
        self._client_nonce = _new_nonce() if nonce is None else _printable_nonce(nonce, "client nonce")
        self._state = "first"
        self._client_first_bare = f"n=,r={self._client_nonce}"
        self._server_signature = b""

    def __repr__(self) -> str:
        return f"ScramClient(state={self._state!r})"

    def first(self) -> bytes:
        """client-first-message (no channel binding; user name left to the startup packet)."""
        if self._state != "first":
            raise AuthError("SCRAM exchange out of order (client-first-message already sent)")
        self._state = "final"
        return f"n,,{self._client_first_bare}".encode("ascii")

    def final(self, server_first: bytes) -> bytes:
        """Consume server-first-message; return client-final-message."""
        if self._state != "final":
            raise AuthError("SCRAM exchange out of order (server-first-message not expected)")
        self._state = "failed"
        text = _decode(server_first, "server-first-message")
        pairs = _attrs(text, "server-first-message")
        if pairs and pairs[0][0] == "m":
            raise AuthError("server requires an unsupported SCRAM extension")
        nonce = _printable_nonce(_expect(pairs, 0, "r", "server-first-message"), "server-first-message")
        if not nonce.startswith(self._client_nonce) or len(nonce) == len(self._client_nonce):
            raise AuthError("invalid SCRAM response (nonce mismatch)")
        salt = _unb64(_expect(pairs, 1, "s", "server-first-message"), "salt")
        iter_text = _expect(pairs, 2, "i", "server-first-message")
        if len(pairs) != 3:
            raise AuthError("malformed SCRAM message (garbage at end of server-first-message)")
        if not salt:
            raise AuthError("malformed SCRAM message (empty salt)")
        if not (iter_text.isascii() and iter_text.isdigit() and len(iter_text) <= 10):
            raise AuthError("malformed SCRAM message (invalid iteration count)")
        iterations = int(iter_text)
        if not 1 <= iterations <= MAX_CLIENT_ITERATIONS:
            raise AuthError(f"SCRAM iteration count out of range (1..{MAX_CLIENT_ITERATIONS})")
        client_key, stored_key, server_key = _salted_keys(self._password, salt, iterations)
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._state = "verify"
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify(self, server_final: bytes) -> None:
        """Check server-final-message; raise AuthError on an `e=` error or a wrong signature."""
        if self._state != "verify":
            raise AuthError("SCRAM exchange out of order (server-final-message not expected)")
        self._state = "failed"
        text = _decode(server_final, "server-final-message")
        pairs = _attrs(text, "server-final-message")
        if pairs[0][0] == "e":
            # The error value is a token from RFC 5802's server-error-value list; safe to show.
            reason = pairs[0][1] if re.fullmatch(r"[a-z-]{1,64}", pairs[0][1]) else "unknown"
            raise AuthError(f"server rejected SCRAM authentication: {reason}")
        signature = _unb64(_expect(pairs, 0, "v", "server-final-message"), "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthError("incorrect server signature")
        self._state = "done"


# --------------------------------------------------------------------------- md5

_MD5_RE = re.compile(r"md5[0-9a-f]{32}")


def md5_hash(user: str, password: str) -> str:
    """What PostgreSQL stores for password_encryption = md5: 'md5' + md5(password || user)."""
    return "md5" + hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()


def md5_response(stored_md5: str, salt: bytes) -> str:
    """The PasswordMessage a client sends for AuthenticationMD5Password with this 4-byte salt."""
    if not _MD5_RE.fullmatch(stored_md5):
        raise ValueError("not an md5 password hash (expected 'md5' and 32 lower-case hex digits)")
    digest = hashlib.md5(stored_md5[3:].encode("ascii") + salt, usedforsecurity=False).hexdigest()
    return "md5" + digest


def md5_check(stored_md5: str, salt: bytes, response: bytes) -> bool:
    """Constant-time check of a client's md5 response (one trailing NUL, as on the wire, tolerated)."""
    expected = md5_response(stored_md5, salt).encode("ascii")
    got = bytes(response)
    if got.endswith(b"\0"):
        got = got[:-1]
    return hmac.compare_digest(got, expected)
