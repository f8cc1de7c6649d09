"""Mint HS256 application JWTs for development (`docchat token <sub>`); production tokens come from the app."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
import msgspec

from actors.settings import Settings

from .secretfile import made_once


def mint(secret: str, sub: str, ttl_seconds: float = 3600.0, *, issuer: str = "", audience: str = "",
         now: float | None = None) -> str:
    """An HS256 JWT for sub that expires ttl_seconds from now (iss/aud only when given)."""
    if not secret:
        raise ValueError("no jwt secret configured")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": sub, "iat": issued, "exp": issued + max(1, int(ttl_seconds))}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_for(settings: Settings, sub: str, ttl_seconds: float = 3600.0) -> str:
    """A dev token that settings' own verifier accepts (its secret, issuer and audience)."""
    return mint(settings.jwt_secret, sub, ttl_seconds, issuer=settings.jwt_issuer, audience=settings.jwt_audience)


DEV_SECRET_FILE = "dev-jwt-secret"


def with_dev_secret(settings: Settings) -> Settings:
    """Settings with a dev HS256 secret (made once in data_dir) when no JWT key is configured."""
    if settings.jwt_secret or settings.jwt_public_key:
        return settings
    secret = made_once(Path(settings.data_dir) / DEV_SECRET_FILE, lambda: secrets.token_urlsafe(32))
    return msgspec.structs.replace(settings, jwt_secret=secret)
