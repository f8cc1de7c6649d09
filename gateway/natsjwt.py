"""NATS JWTs: compact JWS signed with an ed25519 nkey (header alg "ed25519-nkey"), as nats-io/jwt v2.

Only what the auth callout needs: decode and verify the server's authorization request, and
encode the user claims and the authorization response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from typing import Any

import nacl.exceptions
import nacl.signing

from .nkeycodec import ACCOUNT, NkeyError, decode_public, decode_seed, encode_public, encode_seed

ALGORITHM = "ed25519-nkey"
_HEADER = {"typ": "JWT", "alg": ALGORITHM}
# The generic claims nats-io/jwt hashes into `jti` (ClaimsData).
_HASHED = ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub")


class NatsJwtError(ValueError):
    """A NATS JWT is malformed, not signed by its issuer, or signed by the wrong kind of key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise NatsJwtError("not base64url") from exc


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class NkeySigner:
    """An ed25519 nkey (account role by default) that signs NATS JWTs."""

    def __init__(self, seed: str, prefix: int = ACCOUNT) -> None:
        self._key = nacl.signing.SigningKey(decode_seed(seed, prefix))
        self.seed = seed
        self.public_key = encode_public(prefix, bytes(self._key.verify_key))

    @classmethod
    def create(cls, prefix: int = ACCOUNT) -> "NkeySigner":
        """A new random nkey of the given role."""
        return cls(encode_seed(prefix, os.urandom(32)), prefix)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte ed25519 signature of data."""
        return self._key.sign(data).signature


def _jti(claims: dict[str, Any]) -> str:
    generic = {k: claims[k] for k in _HASHED if claims.get(k)}
    try:
        digest = hashlib.new("sha512_256", _dumps(generic)).digest()
    except ValueError:  # an OpenSSL without SHA-512/256: any unique id will do
        digest = hashlib.sha256(_dumps(generic)).digest()
    return base64.b32encode(digest).decode().rstrip("=")


def encode(claims: dict[str, Any], signer: NkeySigner, now: float | None = None) -> str:
    """Sign claims (sub, aud, exp, name, nats...) as issued now by signer; sets iss, iat, jti."""
    body = {k: v for k, v in claims.items() if k != "jti"}
    body["iss"] = signer.public_key
    body["iat"] = int(time.time() if now is None else now)
    body["jti"] = _jti(body)
    signed = _b64(_dumps(_HEADER)) + "." + _b64(_dumps(body))
    return signed + "." + _b64(signer.sign(signed.encode()))


def decode(token: str, issuer_prefix: int) -> dict[str, Any]:
    """The claims of a NATS JWT whose signature verifies against its `iss` of the given role."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NatsJwtError("expected 3 parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as exc:
        raise NatsJwtError("not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NatsJwtError("not JSON objects")
    if str(header.get("typ", "")).upper() != "JWT" or str(header.get("alg", "")).lower() != ALGORITHM:
        raise NatsJwtError("not an ed25519-nkey JWT")
    try:
        key = nacl.signing.VerifyKey(decode_public(str(claims.get("iss", "")), issuer_prefix))
        key.verify((parts[0] + "." + parts[1]).encode(), _unb64(parts[2]))
    except (NkeyError, nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise NatsJwtError("bad issuer or signature") from exc
    return claims
