"""A bounded mailbox of envelopes: full or closed answers 503 at once instead of growing."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.micro.request import Request

from contracts.errors import Unavailable


@dataclass(slots=True)
class Envelope:
    """One message for an actor and the request to answer when it is handled."""

    message: Any
    request: Request | None = None


class Mailbox:
    """Bounded FIFO of envelopes; `put` never waits, `get` wakes on a put or on close."""

    __slots__ = ("items", "size", "closed", "waiter")

    def __init__(self, size: int) -> None:
        self.items: deque[Envelope] = deque()
        self.size = size
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def put(self, envelope: Envelope) -> None:
        """Queue the envelope, or raise Unavailable when full or closed."""
        if self.closed:
            raise Unavailable("shutting down, retry")
        if len(self.items) >= self.size:
            raise Unavailable("overloaded, retry")
        self.items.append(envelope)
        self.wake()

    async def get(self, timeout: float) -> Envelope | None:
        """The next envelope; None after `timeout` seconds without one, or when closed and empty."""
        if not self.items and not self.closed:
            # A bare future and a timer: asyncio.wait_for would make a task for every wait.
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            timer = loop.call_later(timeout, self.wake)
            try:
                await self.waiter
            finally:
                timer.cancel()
                self.waiter = None
        return self.items.popleft() if self.items else None

    def empty(self) -> bool:
        return not self.items

    def close(self) -> None:
        """Refuse new envelopes; those already queued are still handled."""
        self.closed = True
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take_all(self) -> list[Envelope]:
        """Remove and return everything queued."""
        left = list(self.items)
        self.items.clear()
        return left
