"""PKCS#11 KEK provider: the KEK is an AES key inside an HSM and never leaves it.

URI (RFC 7512 style, attributes separated by ``;``, values percent-encoded)::

    pkcs11:token=TOKEN_LABEL;label=KEY_LABEL;pin-env=VAR[;module-path=/path/lib.so]

``object=`` is accepted for ``label=``, ``pin-file=PATH`` for ``pin-env=``. The
module defaults to ``$PKCS11_MODULE`` or SoftHSM2's library. A DEK is wrapped by
``C_Encrypt`` with CKM_AES_GCM inside the token (random 96-bit IV, associated data
``tenantgate-dek-v1``); the blob is ``0x02 | IV | ciphertext | tag``.
Needs ``python-pkcs11``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from .errors import KekError
from .primitives import GCM_NONCE_SIZE, KEY_SIZE, TAG_SIZE, random_bytes
from .provider import ALG_AES_GCM

_AAD = b"tenantgate-dek-v1"
_DEFAULT_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_ALIASES = {"object": "label", "module": "module-path"}
_KNOWN = {"token", "label", "pin-env", "pin-file", "module-path"}


def parse_pkcs11_uri(uri: str) -> dict[str, str]:
    """Attributes of a ``pkcs11:`` URI.

    >>> parse_pkcs11_uri("pkcs11:token=tg;object=kek%201;pin-env=PIN")
    {'token': 'tg', 'label': 'kek 1', 'pin-env': 'PIN'}
    """
    body = uri.removeprefix("pkcs11:")
    attrs: dict[str, str] = {}
    for part in body.replace("?", ";").replace("&", ";").split(";"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = _ALIASES.get(name, name)
        if not sep or name not in _KNOWN:
            raise KekError(f"pkcs11 KEK URI: unknown attribute {name!r} (known: {', '.join(sorted(_KNOWN))})")
        if name in attrs:
            raise KekError(f"pkcs11 KEK URI: attribute {name!r} given twice")
        attrs[name] = unquote(value)
    for required in ("token", "label"):
        if not attrs.get(required):
            raise KekError(f"pkcs11 KEK URI: missing {required}=")
    if ("pin-env" in attrs) == ("pin-file" in attrs):
        raise KekError("pkcs11 KEK URI: give exactly one of pin-env= or pin-file=")
    return attrs


def _read_pin(attrs: dict[str, str]) -> str:
    if "pin-env" in attrs:
        pin = os.environ.get(attrs["pin-env"])
        if not pin:
            raise KekError(f"environment variable {attrs['pin-env']} (PKCS#11 PIN) is not set")
        return pin
    path = Path(attrs["pin-file"])
    try:
        return path.read_text().rstrip("\n")
    except OSError as exc:
        raise KekError(f"{path}: cannot read PKCS#11 PIN file: {exc.strerror}") from None


def _module_path(attrs: dict[str, str]) -> str:
    explicit = attrs.get("module-path") or os.environ.get("PKCS11_MODULE")
    if explicit:
        return explicit
    for candidate in _DEFAULT_MODULES:
        if os.path.exists(candidate):
            return candidate
    raise KekError("pkcs11 KEK URI: no module-path= and no SoftHSM2 library found (apt-get install softhsm2)")


class _TokenSession:
    """The process's one logged-in session to a token.

    PKCS#11 login state is per application and token: a second C_Login fails, so
    every provider on the same token (e.g. old and new KEK during a rewrap) shares
    this session, and a provider must present the PIN the session was opened with.
    """

    _open: ClassVar[dict[tuple[str, str], _TokenSession]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, session: Any, pin: str) -> None:
        self.session = session
        self._pin_digest = hashlib.sha256(pin.encode()).digest()
        self.lock = threading.Lock()

    @classmethod
    def get(cls, pkcs11: Any, module: str, token_label: str, pin: str) -> _TokenSession:
        with cls._registry_lock:
            existing = cls._open.get((module, token_label))
            if existing is not None:
                if not hmac.compare_digest(existing._pin_digest, hashlib.sha256(pin.encode()).digest()):
                    raise KekError(f"pkcs11:{token_label}: wrong PIN")
                return existing
            token = pkcs11.lib(module).get_token(token_label=token_label)
            opened = cls(token.open(user_pin=pin), pin)
            cls._open[(module, token_label)] = opened
            return opened


class Pkcs11Kek:
    """AES key in a PKCS#11 token, used through the token's shared session."""

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        try:
            import pkcs11  # lazy: python-pkcs11 is the optional hsm extra
        except ImportError:
            raise KekError("pkcs11: KEK needs python-pkcs11 (pip install python-pkcs11)") from None
        self._pkcs11 = pkcs11
        self.key_id = f"pkcs11:{token_label}/{key_label}"
        try:
            self._token = _TokenSession.get(pkcs11, module, token_label, pin)
            with self._token.lock:
                # Any: python-pkcs11 adds encrypt/decrypt through runtime mixins its stubs do not show.
                self._key: Any = self._token.session.get_key(
                    label=key_label, key_type=pkcs11.KeyType.AES, object_class=pkcs11.ObjectClass.SECRET_KEY
                )
        except pkcs11.exceptions.PKCS11Error as exc:
            raise KekError(f"{self.key_id}: cannot open the KEK in the token ({type(exc).__name__})") from None

    @classmethod
    def from_uri(cls, uri: str) -> Pkcs11Kek:
        attrs = parse_pkcs11_uri(uri)
        return cls(_module_path(attrs), attrs["token"], attrs["label"], _read_pin(attrs))

    def __repr__(self) -> str:
        return f"Pkcs11Kek(key_id={self.key_id!r})"

    def _gcm(self, iv: bytes) -> object:
        from pkcs11.mechanisms import GCMParams  # lazy: python-pkcs11 is optional (see __init__)

        return GCMParams(iv, _AAD, TAG_SIZE * 8)

    def wrap(self, dek: bytes) -> bytes:
        if len(dek) != KEY_SIZE:
            raise KekError("a DEK is 32 bytes")
        iv = random_bytes(GCM_NONCE_SIZE)
        try:
            with self._token.lock:
                sealed = self._key.encrypt(dek, mechanism=self._pkcs11.Mechanism.AES_GCM, mechanism_param=self._gcm(iv))
        except self._pkcs11.exceptions.PKCS11Error as exc:
            raise KekError(f"{self.key_id}: wrap failed in the token ({type(exc).__name__})") from None
        return bytes([ALG_AES_GCM]) + iv + bytes(sealed)

    def unwrap(self, blob: bytes) -> bytes:
        if len(blob) != 1 + GCM_NONCE_SIZE + KEY_SIZE + TAG_SIZE or blob[0] != ALG_AES_GCM:
            raise KekError(f"wrapped DEK is not AES-GCM from a PKCS#11 KEK; {self.key_id} cannot open it")
        iv = bytes(blob[1 : 1 + GCM_NONCE_SIZE])
        try:
            with self._token.lock:
                dek = self._key.decrypt(
                    bytes(blob[1 + GCM_NONCE_SIZE :]),
                    mechanism=self._pkcs11.Mechanism.AES_GCM,
                    mechanism_param=self._gcm(iv),
                )
        except self._pkcs11.exceptions.PKCS11Error:
            raise KekError(f"KEK {self.key_id} does not unwrap this DEK (wrapped under another KEK?)") from None
        return bytes(dek)
