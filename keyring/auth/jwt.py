"""JWT verification against a JWKS, sans-IO: compact JWS in, checked claims out, or JwtError.

Only asymmetric algorithms are accepted: RS256/RS384/RS512 (RSASSA-PKCS1-v1_5), ES256/ES384
(ECDSA, raw r||s signatures) and EdDSA (Ed25519). ``none`` is refused, and so is every HS*
algorithm: a JWKS holds public keys, and accepting HMAC would let anyone who has the public
key forge tokens with it as the secret (algorithm confusion).

>>> try:
...     verify_jwt("not-a-token", JwkSet((), b""), issuer="i", audience="a", algorithms=("RS256",), leeway=0, now=0)
... except JwtError as exc:
...     print(exc.reason)
malformed token: expected three dot-separated parts
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "Jwk",
    "JwkSet",
    "JwksError",
    "JwtError",
    "check_algorithm",
    "parse_jwks",
    "token_kid",
    "verify_jwt",
]

MAX_TOKEN = 16384  # bytes: far above any real ID/access token, far below what would cost us to parse
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class _Alg:
    kty: str
    crv: str | None
    hash: type[hashes.HashAlgorithm] | None


_ALGORITHMS = {
    "RS256": _Alg("RSA", None, hashes.SHA256),
    "RS384": _Alg("RSA", None, hashes.SHA384),
    "RS512": _Alg("RSA", None, hashes.SHA512),
    "ES256": _Alg("EC", "P-256", hashes.SHA256),
    "ES384": _Alg("EC", "P-384", hashes.SHA384),
    "EdDSA": _Alg("OKP", "Ed25519", None),
}
SUPPORTED_ALGORITHMS = tuple(_ALGORITHMS)

_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48)}
# Members only a private JWK has: a JWKS that carries them has leaked its signing keys.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwtError(Exception):
    """A token that does not authenticate anyone; ``reason`` never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksError(ValueError):
    """A JWKS document that cannot be used."""


def check_algorithm(alg: str) -> None:
    """Raise ValueError unless ``alg`` is one tenantgate verifies.

    >>> check_algorithm("HS256")
    Traceback (most recent call last):
    ...
    ValueError: HS256 is refused: HMAC algorithms would accept tokens signed with the public key
    """
    if alg.lower() == "none":
        raise ValueError("alg none is refused: unsigned tokens authenticate nobody")
    if alg.upper().startswith("HS"):
        raise ValueError(f"{alg} is refused: HMAC algorithms would accept tokens signed with the public key")
    if alg not in _ALGORITHMS:
        raise ValueError(f"unsupported algorithm {alg!r} (supported: {', '.join(SUPPORTED_ALGORITHMS)})")


@dataclass(frozen=True, slots=True)
class Jwk:
    """One public signing key of a JWKS."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg": when present, the only algorithm it may verify
    key: PublicKey

    def fits(self, alg: str) -> bool:
        spec = _ALGORITHMS[alg]
        return spec.kty == self.kty and spec.crv == self.crv and self.alg in (None, alg)


@dataclass(frozen=True, slots=True)
class JwkSet:
    """The usable signing keys of a JWKS; ``source`` is the document (it pickles as that)."""

    keys: tuple[Jwk, ...]
    source: bytes

    def kids(self) -> frozenset[str | None]:
        return frozenset(k.kid for k in self.keys)

    def key_for(self, kid: str | None, alg: str) -> Jwk:
        if kid is None:
            # no kid: usable only when the JWKS leaves no choice
            fitting = [k for k in self.keys if k.fits(alg)]
            if len(fitting) != 1:
                raise JwtError(f"the token has no kid and the JWKS has {len(fitting)} keys for {alg}")
            return fitting[0]
        for k in self.keys:
            if k.kid == kid:
                if not k.fits(alg):
                    raise JwtError(f"key {_show(kid)} cannot verify {alg}")
                return k
        raise JwtError(f"unknown kid {_show(kid)}: not in the JWKS")

    def __reduce__(self) -> Any:
        # cryptography's key objects do not pickle; the document re-parses to the same keys
        return (parse_jwks, (self.source,))


def _show(value: str) -> str:
    """A header/claim value for a message: quoted, bounded."""
    return repr(value[:64] + ("..." if len(value) > 64 else ""))


def _b64decode(part: str) -> bytes:
    """Unpadded base64url, strictly (RFC 7515 section 2)."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes) -> dict[str, Any]:
    """A JSON object, strictly: UTF-8, no duplicate members (RFC 7515 section 5.2), no NaN/Infinity."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


# ---------------------------------------------------------------------------------- JWKS


def parse_jwks(data: bytes | str) -> JwkSet:
    """Parse a JWKS document into its usable signing keys; JwksError when it has none or is broken.

    Keys for encryption (``use`` other than "sig"), of other types (``oct``, ...) or curves, or
    for algorithms tenantgate does not verify are skipped; a malformed key of a supported type,
    a duplicate kid, or private key material is an error.
    """
    source = data.encode() if isinstance(data, str) else bytes(data)
    try:
        doc = _json_object(source)
    except ValueError as exc:
        raise JwksError(str(exc)) from None
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise JwksError('no "keys" array')
    keys: list[Jwk] = []
    seen: set[str | None] = set()
    for i, entry in enumerate(entries):
        where = f"keys[{i}]"
        if not isinstance(entry, dict):
            raise JwksError(f"{where} is not an object")
        if _PRIVATE_MEMBERS.intersection(entry) and entry.get("kty") != "oct":
            raise JwksError(f"{where} holds private key material: publish public keys only")
        jwk = _parse_jwk(entry, where)
        if jwk is None:
            continue
        if jwk.kid in seen:
            raise JwksError(
                f"{where}: kid {_show(jwk.kid)} appears twice" if jwk.kid else f"{where}: a second key without kid"
            )
        seen.add(jwk.kid)
        keys.append(jwk)
    if not keys:
        raise JwksError("no usable signing keys (RSA, EC P-256/P-384 or Ed25519)")
    return JwkSet(tuple(keys), source)


def _member(entry: Mapping[str, Any], name: str, where: str) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise JwksError(f"{where}: {name!r} is missing or not a string")
    try:
        return _b64decode(value)
    except ValueError:
        raise JwksError(f"{where}: {name!r} is not base64url") from None


def _parse_jwk(entry: Mapping[str, Any], where: str) -> Jwk | None:
    kty, use, alg, kid = entry.get("kty"), entry.get("use", "sig"), entry.get("alg"), entry.get("kid")
    if not isinstance(kty, str):
        raise JwksError(f"{where}: 'kty' is missing or not a string")
    if kid is not None and not isinstance(kid, str):
        raise JwksError(f"{where}: 'kid' is not a string")
    if alg is not None and not isinstance(alg, str):
        raise JwksError(f"{where}: 'alg' is not a string")
    if use != "sig" or (alg is not None and alg not in _ALGORITHMS) or kty not in ("RSA", "EC", "OKP"):
        return None
    crv: str | None = None
    key: PublicKey
    try:
        if kty == "RSA":
            n = int.from_bytes(_member(entry, "n", where), "big")
            e = int.from_bytes(_member(entry, "e", where), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
            if key.key_size < MIN_RSA_BITS:
                raise JwksError(f"{where}: RSA key of {key.key_size} bits (at least {MIN_RSA_BITS} required)")
        elif kty == "EC":
            crv = entry.get("crv")
            if crv not in _CURVES:
                return None
            curve, size = _CURVES[crv]
            x, y = _member(entry, "x", where), _member(entry, "y", where)
            if len(x) != size or len(y) != size:
                raise JwksError(f"{where}: {crv} coordinates must be {size} bytes")
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            ).public_key()
        else:
            crv = entry.get("crv")
            if crv != "Ed25519":
                return None
            key = ed25519.Ed25519PublicKey.from_public_bytes(_member(entry, "x", where))
    except JwksError:
        raise
    except (ValueError, UnsupportedAlgorithm):
        raise JwksError(f"{where}: not a valid {kty} public key") from None
    return Jwk(kid, kty, crv, alg, key)


# ---------------------------------------------------------------------------------- tokens


def _split(token: str) -> tuple[str, str, str]:
    if len(token) > MAX_TOKEN:
        raise JwtError(f"malformed token: longer than {MAX_TOKEN} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("malformed token: expected three dot-separated parts")
    return parts[0], parts[1], parts[2]


def _header(part: str) -> dict[str, Any]:
    try:
        return _json_object(_b64decode(part))
    except ValueError as exc:
        raise JwtError(f"malformed token header: {exc}") from None


def token_kid(token: str) -> str | None:
    """The ``kid`` a token's header names, unverified; None when there is none or the token is malformed."""
    try:
        kid = _header(_split(token)[0]).get("kid")
    except JwtError:
        return None
    return kid if isinstance(kid, str) else None


def verify_jwt(
    token: str,
    keys: JwkSet,
    *,
    issuer: str,
    audience: str,
    algorithms: Sequence[str],
    leeway: float,
    now: float,
) -> dict[str, Any]:
    """The claims of a token whose signature and iss/aud/exp/nbf/iat check out; JwtError otherwise."""
    head, body, sig = _split(token)
    header = _header(head)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError("the token header has no alg")
    try:
        check_algorithm(alg)
    except ValueError as exc:
        raise JwtError(str(exc)) from None
    if alg not in algorithms:
        raise JwtError(f"algorithm {alg} is not in oidc.algorithms")
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not understand must be rejected
        raise JwtError("the token header has critical extensions (crit)")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwtError("the token header's kid is not a string")
    jwk = keys.key_for(kid, alg)
    try:
        signature = _b64decode(sig)
        payload = _b64decode(body)
    except ValueError:
        raise JwtError("malformed token: a part is not base64url") from None
    _check_signature(jwk, alg, signature, f"{head}.{body}".encode("ascii"))
    try:
        claims = _json_object(payload)
    except ValueError as exc:
        raise JwtError(f"malformed token payload: {exc}") from None
    _check_claims(claims, issuer=issuer, audience=audience, leeway=leeway, now=now)
    return claims


def _check_signature(jwk: Jwk, alg: str, signature: bytes, signed: bytes) -> None:
    spec = _ALGORITHMS[alg]
    key = jwk.key
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert spec.hash is not None
            key.verify(signature, signed, padding.PKCS1v15(), spec.hash())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert spec.hash is not None and spec.crv is not None
            size = _CURVES[spec.crv][1]
            if len(signature) != 2 * size:  # JWS carries raw r||s, not DER (RFC 7518 3.4)
                raise JwtError("bad signature")
            r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(spec.hash()))
        else:
            key.verify(signature, signed)
    except (InvalidSignature, ValueError):
        raise JwtError("bad signature") from None


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JwtError(f"claim {name} is not a NumericDate")
    return float(value)


def _check_claims(claims: Mapping[str, Any], *, issuer: str, audience: str, leeway: float, now: float) -> None:
    if claims.get("iss") != issuer:
        raise JwtError("the issuer (iss) is not oidc.issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise JwtError("the audience (aud) is missing or not a string or array of strings")
    if audience not in audiences:
        raise JwtError("the audience (aud) does not include oidc.audience")
    exp, nbf, iat = _time(claims, "exp"), _time(claims, "nbf"), _time(claims, "iat")
    if exp is None:
        raise JwtError("the token has no expiry (exp)")
    if now >= exp + leeway:
        raise JwtError("the token has expired")
    if nbf is not None and now + leeway < nbf:
        raise JwtError("the token is not valid yet (nbf)")
    if iat is not None and iat > now + leeway:
        raise JwtError("the token was issued in the future (iat)")
