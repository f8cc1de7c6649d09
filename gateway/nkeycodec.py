"""The nkey text encoding (base32 of prefix byte + raw key + crc16), for every key role.

The `nkeys` package on PyPI knows only signing roles and skips the checksum on seeds; the auth
callout also needs curve (xkey) seeds and checked public keys, so this module does both.
"""

from __future__ import annotations

import base64
import binascii

from nkeys import crc16

ACCOUNT = 0  # "A..."
SERVER = 13 << 3  # "N..."
USER = 20 << 3  # "U..."
CURVE = 23 << 3  # "X...": xkeys, curve25519
SEED = 18 << 3  # "S..."


class NkeyError(ValueError):
    """The text is not a valid nkey of the expected role."""


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise NkeyError("not base32") from exc


def _checked(raw: bytes) -> bytes:
    if len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise NkeyError("bad checksum")
    return raw[:-2]


def encode_public(prefix: int, key: bytes) -> str:
    """The public nkey text of a raw 32-byte key with a role prefix."""
    body = bytes([prefix]) + key
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def decode_public(text: str, prefix: int) -> bytes:
    """The raw 32-byte key of a public nkey of the given role; NkeyError otherwise."""
    body = _checked(_b32decode(text))
    if len(body) != 33 or body[0] != prefix:
        raise NkeyError("wrong key role or length")
    return body[1:]


def encode_seed(prefix: int, raw: bytes) -> str:
    """The seed text ("S" + role) of a raw 32-byte private seed."""
    if len(raw) != 32:
        raise NkeyError("a seed is 32 bytes")
    body = bytes([SEED | prefix >> 5, (prefix & 31) << 3]) + raw
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def decode_seed(text: str, prefix: int) -> bytes:
    """The raw 32-byte seed of a seed text of the given role; NkeyError otherwise."""
    body = _checked(_b32decode(text.strip()))
    if len(body) != 34 or body[0] & 0xF8 != SEED:
        raise NkeyError("not a seed")
    role = (body[0] & 7) << 5 | (body[1] & 0xF8) >> 3
    if role != prefix:
        raise NkeyError("wrong seed role")
    return body[2:]
