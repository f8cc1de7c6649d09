"""Match sessions' events to the sends that caused them: event delivery, first delta and complete reply.

An event may arrive before the send's reply tells us the message ids, so arrivals are kept until the
reply comes (and sends until their event comes); whichever is second records the latency.
"""

from __future__ import annotations

import asyncio
import time

from contracts.client import EventStream
from contracts.events import AnyEvent, DeltaEvent, MessageEvent

from .stats import Stats


class Tracker:
    """Pairs send start times with the `message` / `delta` events of the user and assistant messages."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.user_sent: dict[str, tuple[float, Stats]] = {}  # user message id → (send start, its phase)
        self.user_seen: dict[str, float] = {}  # user message id → event arrival (before the reply)
        # assistant message id → (send start, its phase, first delta seen)
        self.reply_sent: dict[str, tuple[float, Stats, bool]] = {}
        self.delta_seen: dict[str, float] = {}
        self.done_seen: dict[str, float] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.last_event = 0.0

    def on_send(self, start: float, user_id: str, reply_id: str) -> None:
        """A send was answered: its user and pending assistant message ids (timed in the current phase)."""
        stats = self.stats
        seen = self.user_seen.pop(user_id, None)
        if seen is None:
            self.user_sent[user_id] = (start, stats)
        else:
            stats.events.append(seen - start)
        delta = self.delta_seen.pop(reply_id, None)
        if delta is not None:
            stats.first_delta.append(delta - start)
        done = self.done_seen.pop(reply_id, None)
        if done is not None:
            stats.complete.append(done - start)
        else:
            self.reply_sent[reply_id] = (start, stats, delta is not None)

    def on_event(self, event: AnyEvent, now: float) -> None:
        """Record one event's arrival in the phase its send belongs to."""
        self.last_event = now
        if isinstance(event, MessageEvent):
            m = event.message
            if m.role == "user":
                sent = self.user_sent.pop(m.id, None)
                if sent is None:
                    self.user_seen.setdefault(m.id, now)
                else:
                    sent[1].events.append(now - sent[0])
            elif m.status in ("complete", "failed", "cancelled"):
                reply = self.reply_sent.pop(m.id, None)
                stats = reply[1] if reply else self.stats
                if m.status == "failed":
                    stats.error("reply", m.error.code if m.error else "failed")
                if reply is None:
                    self.done_seen.setdefault(m.id, now)
                elif m.status == "complete":
                    stats.complete.append(now - reply[0])
        elif isinstance(event, DeltaEvent):
            reply = self.reply_sent.get(event.message_id)
            if reply is None:
                self.delta_seen.setdefault(event.message_id, now)
            elif not reply[2]:
                self.reply_sent[event.message_id] = (reply[0], reply[1], True)
                reply[1].first_delta.append(now - reply[0])

    def follow(self, stream: EventStream) -> None:
        """Read one session's events in a task until `close()`."""
        async def read() -> None:
            async for event in stream:
                self.on_event(event, time.perf_counter())

        self.tasks.append(asyncio.create_task(read()))

    def reset(self) -> Stats:
        """Start a new measured phase; returns its Stats (pending matches carry over)."""
        self.stats = Stats()
        return self.stats

    def missing(self) -> int:
        """Answered sends whose user `message` event has not arrived."""
        return sum(1 for _, stats in self.user_sent.values() if stats is self.stats)

    async def settle(self, timeout: float) -> None:
        """Wait up to timeout for the user events of answered sends to arrive."""
        deadline = time.perf_counter() + timeout
        while self.user_sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)

    async def quiet(self, gap: float, timeout: float) -> float:
        """Wait until no event has arrived for `gap` seconds (the assistant's backlog is done), at most
        timeout; returns the seconds waited."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout and time.perf_counter() - self.last_event < gap:
            await asyncio.sleep(0.1)
        return time.perf_counter() - start

    async def close(self) -> None:
        """Stop reading events."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
