"""xkeys: curve25519 NaCl boxes in the nkeys format (`xkv1` + nonce + box), as nats-server seals them.

The server seals each auth callout request to our public xkey and names its own in the
`Nats-Server-Xkey` header; we open the request and seal the reply back to it.
"""

from __future__ import annotations

import os

import nacl.exceptions
import nacl.public
import nacl.utils

from .nkeycodec import CURVE, decode_public, decode_seed, encode_public, encode_seed

VERSION = b"xkv1"
NONCE_LEN = 24


class XKeyError(ValueError):
    """A sealed message could not be opened, or a key is not a valid xkey."""


class XKey:
    """A curve25519 key pair: seal to and open from other xkeys."""

    def __init__(self, seed: str) -> None:
        self._private = nacl.public.PrivateKey(decode_seed(seed, CURVE))
        self.seed = seed
        self.public_key = encode_public(CURVE, bytes(self._private.public_key))

    @classmethod
    def create(cls) -> "XKey":
        """A new random xkey."""
        return cls(encode_seed(CURVE, os.urandom(32)))

    def _box(self, peer: str) -> nacl.public.Box:
        try:
            return nacl.public.Box(self._private, nacl.public.PublicKey(decode_public(peer, CURVE)))
        except ValueError as exc:
            raise XKeyError("not a curve public key") from exc

    def seal(self, data: bytes, recipient: str) -> bytes:
        """Encrypt data for the recipient's public xkey."""
        nonce = nacl.utils.random(NONCE_LEN)
        return VERSION + nonce + self._box(recipient).encrypt(data, nonce).ciphertext

    def open(self, data: bytes, sender: str) -> bytes:
        """Decrypt data the sender's xkey sealed for us; XKeyError when it is not that."""
        if not data.startswith(VERSION) or len(data) <= len(VERSION) + NONCE_LEN:
            raise XKeyError("not an xkv1 message")
        nonce = data[len(VERSION):len(VERSION) + NONCE_LEN]
        try:
            return self._box(sender).decrypt(data[len(VERSION) + NONCE_LEN:], nonce)
        except nacl.exceptions.CryptoError as exc:
            raise XKeyError("cannot decrypt") from exc
