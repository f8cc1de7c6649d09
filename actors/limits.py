"""Per-user limits on `send`: a token bucket per uid and a cap on unfinished replies. Pure: no I/O."""

from __future__ import annotations

import math
import time
from typing import Callable

from .settings import Settings


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, holding at most `burst`; rate 0 means no limit.

    Memory stays bounded: a bucket that has refilled to full is the same as no bucket, so idle ones are
    forgotten (swept at most once per refill time).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1, burst), clock
        self.refill_seconds = self.burst / rate if rate > 0 else math.inf
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.swept = clock()

    def take(self, key: str) -> int:
        """Take one token for key: 0 when granted, else the milliseconds until one is available (≥ 1)."""
        if self.rate <= 0:
            return 0
        now = self.clock()
        if now - self.swept >= self.refill_seconds:
            self.sweep(now)
        tokens = self.level(key, now)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0
        self.buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate * 1000))

    def level(self, key: str, now: float) -> float:
        """The tokens key holds at `now`."""
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def sweep(self, now: float) -> None:
        """Forget every bucket that is full again."""
        self.swept = now
        for key in [k for k in self.buckets if self.level(k, now) >= self.burst]:
            del self.buckets[key]

    def __len__(self) -> int:
        return len(self.buckets)


class Limits:
    """The send limits of one process, shared by all session actors (a user has many sessions)."""

    IN_FLIGHT_RETRY_MS = 1000  # what a caller over the in-flight cap is told to wait

    def __init__(self, rate_per_second: float = 0.0, burst: int = 20, replies_in_flight: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sends = TokenBuckets(rate_per_second, burst, clock)
        self.replies_in_flight = replies_in_flight  # 0: no cap

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> "Limits":
        """The limits the settings ask for (all off by default)."""
        return cls(settings.send_rate_per_second, settings.send_burst, settings.replies_in_flight_per_user, clock)

    def take_send(self, uid: str) -> int:
        """Count one send of uid: 0 when allowed, else the milliseconds to wait."""
        return self.sends.take(uid)

    def over_in_flight(self, unfinished: int) -> bool:
        """True when a user with `unfinished` pending or streaming replies may not send another."""
        return 0 < self.replies_in_flight <= unfinished
