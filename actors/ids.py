"""Server-made ids and the clock, injected so tests can steer them."""

from __future__ import annotations

import base64
import os
import time

def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A unique, subject-safe id (22 chars of [A-Za-z0-9_-]): 6 bytes of time then 10 random bytes."""
    ms = time.time_ns() // 1_000_000
    return base64.urlsafe_b64encode(ms.to_bytes(6, "big") + os.urandom(10)).decode()[:22]  # 16 bytes: 22 chars and "==" padding
