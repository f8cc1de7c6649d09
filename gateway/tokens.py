"""Verify users' application JWTs (PROTOCOL.md, Auth): HS256 with a secret, or RS256/ES256 with a key.

The algorithm follows the configured key, never the token's header, so a token cannot pick a
weaker check (HS256 signed with the public key, or "none").
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from actors.settings import Settings
from contracts.subjects import user_token


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired or not for us; says no more."""


@dataclass(frozen=True)
class Claims:
    """What docchat takes from a verified application JWT."""

    sub: str
    exp: int

    @property
    def uid(self) -> str:
        """The user's subject token (`user_token(sub)`)."""
        return user_token(self.sub)


class TokenVerifier:
    """Checks signature, `exp` (required), `sub` (required) and, when configured, `iss` and `aud`."""

    def __init__(self, secret: str = "", public_key: str = "", issuer: str = "", audience: str = "") -> None:
        if public_key:
            key = load_pem_public_key(public_key.encode())
            if isinstance(key, rsa.RSAPublicKey):
                self._algorithms = ["RS256"]
            elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
                self._algorithms = ["ES256"]
            else:
                raise ValueError("jwt_public_key must be an RSA or P-256 EC public key")
            self._key: object = key
        elif secret:
            self._algorithms, self._key = ["HS256"], secret
        else:
            raise ValueError("set jwt_secret (HS256) or jwt_public_key (RS256/ES256)")
        self._issuer = issuer or None
        self._audience = audience or None

    @classmethod
    def from_settings(cls, settings: Settings) -> "TokenVerifier":
        """A verifier for the jwt_* settings."""
        return cls(settings.jwt_secret, settings.jwt_public_key, settings.jwt_issuer, settings.jwt_audience)

    def verify(self, token: str | None) -> Claims:
        """The token's claims; TokenError when it does not pass every check."""
        if not token:
            raise TokenError("missing token")
        try:
            payload = jwt.decode(
                token, self._key, algorithms=self._algorithms,  # type: ignore[arg-type]
                issuer=self._issuer, audience=self._audience,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from exc
        sub, exp = payload.get("sub"), payload.get("exp")
        if not isinstance(sub, str) or not sub:
            raise TokenError("invalid token: sub")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("invalid token: exp")
        return Claims(sub=sub, exp=int(exp))
