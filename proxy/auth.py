"""Client authentication at the proxy, as a sans-IO exchange.

``start()`` gives the first Authentication request, ``step()`` consumes each
PasswordMessage and answers; success ends with AuthenticationOk. Unknown users run
the same exchange against a fake verifier derived from the user name and a server
secret, so a wrong password and an unknown user look identical on the wire (same
salt every time, same error: 28P01).

A ``jwt`` user is asked for a cleartext password (the client must be on TLS: the caller checks)
and the password is an OIDC token, checked by the ``verify`` callable the caller passes; a token
that does not verify fails exactly like a wrong password, its reason goes to the log only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from tenantgate.keyring.auth.jwt import JwtError
from tenantgate.keyring.auth.oidc import JwtIdentity
from tenantgate.keyring.auth.scram import AuthError, ScramServer, ScramVerifier, fake_verifier, md5_check
from tenantgate.keyring.errors import SqlStateError

from . import codec
from .codec import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    Authentication,
    PasswordMessage,
)

SCRAM = "scram-sha-256"
MD5 = "md5"
JWT = "jwt"

log = logging.getLogger("tenantgate.auth")


class Credentials(Protocol):
    # read-only: config's User and Admin are frozen dataclasses
    @property
    def scram(self) -> ScramVerifier | None: ...

    @property
    def md5(self) -> str | None: ...


class AuthFailed(SqlStateError):
    """Authentication failed; ``error`` is the ErrorResponse to send before closing; ``reason``
    is for the log and audit, never for the client."""

    def __init__(self, user: str, sqlstate: str = "28P01", message: str | None = None, reason: str = "") -> None:
        message = message or f'password authentication failed for user "{user}"'
        super().__init__(sqlstate, message, reason or message)
        self.error = codec.error(sqlstate, message)


class ClientAuth:
    def __init__(
        self,
        username: str,
        creds: Credentials | None,
        method: str,
        secret: bytes,
        verify: Callable[[str], JwtIdentity] | None = None,
    ) -> None:
        self.username = username
        self._verify = verify
        self.identity: JwtIdentity | None = None  # jwt: what the token granted
        if method == JWT:
            if verify is None:
                raise ValueError("jwt authentication needs a token verifier")
            self.method = JWT
        # unknown users get the same challenge as known ones, so the method reveals nothing
        elif method == MD5 and (creds is None or creds.md5):
            self.method = MD5
        else:
            self.method = SCRAM
        self._creds = creds
        self._secret = secret
        self._salt = secrets.token_bytes(4)
        self._scram: ScramServer | None = None
        self._stage = 0
        self.done = False
        self._failed = False  # one attempt per exchange: no password guessing on one connection

    def start(self) -> bytes:
        if self.method == JWT:
            return Authentication(AUTH_CLEARTEXT).encode()
        if self.method == MD5:
            return Authentication(AUTH_MD5, self._salt).encode()
        return codec.auth_sasl(["SCRAM-SHA-256"]).encode()

    def _fail(self) -> AuthFailed:
        return AuthFailed(self.username)

    def step(self, msg: PasswordMessage) -> bytes:
        """Consume one client message; return what to send back. Raises AuthFailed."""
        if self.done or self._failed:
            raise self._fail()
        try:
            if self.method == JWT:
                return self._jwt(msg)
            if self.method == MD5:
                return self._md5(msg)
            return self._scram_step(msg)
        except AuthError:
            self._failed = True
            raise self._fail() from None
        except (AuthFailed, codec.ProtocolError):
            self._failed = True
            raise

    def _md5(self, msg: PasswordMessage) -> bytes:
        response = msg.password()
        creds = self._creds
        if creds is None or creds.md5 is None or not md5_check(creds.md5, self._salt, response):
            raise self._fail()
        self.done = True
        return Authentication(AUTH_OK).encode()

    def _jwt(self, msg: PasswordMessage) -> bytes:
        assert self._verify is not None
        try:
            token = msg.password().decode("ascii")
        except UnicodeDecodeError:
            reason = "malformed token: not ASCII"
        else:
            try:
                self.identity = self._verify(token)
            except JwtError as exc:
                reason = exc.reason
            else:
                self.done = True
                return Authentication(AUTH_OK).encode()
        log.info('token login of user "%s" refused: %s', self.username, reason)
        raise AuthFailed(self.username, reason=f"token refused: {reason}")

    def _scram_step(self, msg: PasswordMessage) -> bytes:
        if self._stage == 0:
            mechanism, data = msg.sasl_initial()
            if mechanism != "SCRAM-SHA-256":
                raise codec.ProtocolError("client", f"SASL mechanism {mechanism!r} is not supported")
            creds = self._creds
            if creds is not None and creds.scram is not None:
                self._scram = ScramServer(creds.scram)
            else:
                self._scram = ScramServer(fake_verifier(self.username, self._secret), fail=True)
            self._stage = 1
            return Authentication(AUTH_SASL_CONTINUE, self._scram.handle_first(data)).encode()
        assert self._scram is not None
        final = self._scram.handle_final(msg.data)
        self.done = True
        return Authentication(AUTH_SASL_FINAL, final).encode() + Authentication(AUTH_OK).encode()
