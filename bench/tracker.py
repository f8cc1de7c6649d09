"""Match sessions' events to the sends that caused them: event delivery, first delta and complete reply.

An event may arrive before the send's reply tells us the message ids, so arrivals are kept until the
reply comes (and sends until their event comes); whichever is second records the latency.

The load follows every session of a run with one wildcard subscription and decodes only the fields
it needs: the load generator shares the machine's cores with what it measures, and one
subscription per session cost it about as much CPU per send as the service's own work.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.subjects import PREFIX

from .stats import Stats


class _Error(msgspec.Struct):
    code: str


class _Message(msgspec.Struct):
    id: str
    role: str
    status: str
    error: _Error | None = None


class MessageSeen(msgspec.Struct, tag="message", tag_field="type"):
    """A `message` event, as much of it as the load reads."""

    message: _Message


class DeltaSeen(msgspec.Struct, tag="delta", tag_field="type", rename="camel"):
    """A `delta` event, as much of it as the load reads."""

    message_id: str


_seen = msgspec.json.Decoder(MessageSeen | DeltaSeen)


def decode_event(data: bytes) -> MessageSeen | DeltaSeen:
    """The fields the load reads of one published event body."""
    return _seen.decode(data)


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
        self.sub: Subscription | None = None
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

    def on_event(self, event: MessageSeen | DeltaSeen, now: float) -> None:
        """Record one event's arrival in the phase its send belongs to."""
        self.last_event = now
        if isinstance(event, MessageSeen):
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
        else:
            reply = self.reply_sent.get(event.message_id)
            if reply is None:
                self.delta_seen.setdefault(event.message_id, now)
            elif not reply[2]:
                self.reply_sent[event.message_id] = (reply[0], reply[1], True)
                reply[1].first_delta.append(now - reply[0])

    async def follow(self, nc: Client, user_prefix: str) -> None:
        """Follow the events of every session of the users whose uid starts with user_prefix, until
        `close()` (one subscription: the load connects as a trusted service)."""
        start = f"{PREFIX}.{user_prefix}"

        async def on_msg(msg: Msg) -> None:
            if msg.subject.startswith(start):
                self.on_event(decode_event(msg.data), time.perf_counter())

        self.sub = await nc.subscribe(f"{PREFIX}.*.sessions.*.events", cb=on_msg, pending_msgs_limit=1_000_000,
                                      pending_bytes_limit=1 << 30)

    def reset(self) -> Stats:
        """Start a new measured phase; returns its Stats (pending matches carry over)."""
        self.stats = Stats()
        return self.stats

    def missing(self) -> int:
        """Answered sends whose user `message` event has not arrived."""
        return sum(1 for _, stats in self.user_sent.values() if stats is self.stats)

    def unfinished(self, stats: Stats) -> int:
        """Answered sends of that phase whose reply has not ended (complete, failed or cancelled) yet."""
        return sum(1 for _, phase, _ in self.reply_sent.values() if phase is stats)

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
        if self.sub is not None:
            sub, self.sub = self.sub, None
            await sub.unsubscribe()
