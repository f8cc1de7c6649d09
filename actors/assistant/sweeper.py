"""The stuck-reply sweeper: a reply nobody holds and nobody finished gets scheduled again.

Covers what JetStream alone cannot: a delivery that ran out of max_deliver, a worker that died
while generating a reply it had taken over from its session's queue, a publish lost in a crash.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js import JetStreamContext

from contracts.subjects import reply_subject

from ..ids import now_ms
from ..schedule import ScheduledReply, encode_work
from ..settings import Settings
from ..store import Store

log = structlog.get_logger("assistant.sweeper")


class Sweeper:
    """Every interval, re-publishes the work of replies left unclaimed longer than stuck_reply_seconds."""

    def __init__(self, js: JetStreamContext, store: Store, settings: Settings) -> None:
        self.js, self.store = js, store
        self.older_than_ms = int(settings.stuck_reply_seconds * 1000)
        self.interval = max(0.2, settings.stuck_reply_seconds / 4)
        self.rescheduled = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - next round
                log.warning("sweep_failed", error=str(exc))

    async def sweep(self) -> int:
        """Schedule every stuck reply once more; returns how many."""
        now = now_ms()
        stuck = await self.store.stuck_replies(now, self.older_than_ms, 500)
        for session_id, message_id, uid in stuck:
            work = encode_work(ScheduledReply(session_id=session_id, message_id=message_id, uid=uid))
            # One publish per message per sweep window: repeats within it are dropped by JetStream.
            dedup = f"sweep-{message_id}-{now // self.older_than_ms}"
            await self.js.publish(reply_subject(session_id), work, headers={"Nats-Msg-Id": dedup})
        if stuck:
            self.rescheduled += len(stuck)
            log.info("stuck_replies_rescheduled", count=len(stuck))
        return len(stuck)
