"""Server-made ids and the clock, injected so tests can steer them."""

from __future__ import annotations

import os
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A unique, subject-safe id that sorts by creation time: 9 chars of time, 13 of randomness."""
    n = time.time_ns() // 1_000_000
    out = []
    for _ in range(9):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    rand = int.from_bytes(os.urandom(10), "big")
    for _ in range(13):
        rand, r = divmod(rand, 62)
        out.append(ALPHABET[r])
    time_part = "".join(reversed(out[:9]))
    return time_part + "".join(out[9:])
