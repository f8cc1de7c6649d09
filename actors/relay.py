"""Outbox → JetStream: publish committed work with Nats-Msg-Id, then delete it from the outbox.

Runs after every commit that added work (kick) and once a second to sweep what a crash left. All
rows waiting go out as one message (up to BATCH work items): under load a JetStream message per
reply cost the server a stored, fsynced write and an ack each, about a quarter of send capacity.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from contracts.subjects import REPLY_PREFIX, REPLY_STREAM

from .runtime.tasks import cancel_and_wait
from .schedule import BATCH_SUBJECT, batch_payload
from .store import OutboxItem, Store

log = structlog.get_logger("relay")
BATCH = 256
ACK_TIMEOUT = 5.0  # seconds to wait for JetStream to acknowledge a batch
DEDUP_WINDOW_SECONDS = 600.0  # longer than any retry of one outbox row
# After a kick, wait this long so the sends committing meanwhile go out in the same message. At
# 500 sends/s each send otherwise got a relay round of its own (an outbox read, a JetStream publish
# and its ack, a delete committed and fsynced); a reply starts at most this much later.
GATHER_SECONDS = 0.005


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> None:
    """Create or update the scheduled-reply work-queue stream (`replicas`: 3 on a 3-node cluster)."""
    config = StreamConfig(name=REPLY_STREAM, subjects=[f"{REPLY_PREFIX}.>"], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.FILE, duplicate_window=DEDUP_WINDOW_SECONDS, num_replicas=replicas)
    try:
        await js.add_stream(config)
    except Exception:  # noqa: BLE001 - exists with other settings: bring it to ours
        await js.update_stream(config)


class Relay:
    """Publishes outbox rows in id order; a row leaves the outbox only after JetStream acknowledged it."""

    def __init__(self, js: JetStreamContext, store: Store, interval: float = 1.0) -> None:
        self.js, self.store, self.interval = js, store, interval
        self.wakeup = asyncio.Event()
        self.published = 0

    async def __aenter__(self) -> "Relay":
        self.task = asyncio.create_task(self.run(), name="relay")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the loop, then publish what is left while NATS is still up."""
        await cancel_and_wait([self.task])
        try:
            await asyncio.wait_for(self.relay_once(), 5)
        except Exception as exc:  # noqa: BLE001 - what is left is relayed at the next start
            log.warning("relay_final_flush_failed", error=str(exc))

    def kick(self) -> None:
        """Ask for a run now (called after a commit that added work)."""
        self.wakeup.set()

    async def run(self) -> None:
        """Relay until cancelled."""
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that stops us.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.wakeup.wait()
            self.wakeup.clear()
            await asyncio.sleep(GATHER_SECONDS)
            try:
                while await self.relay_once() == BATCH:
                    pass
            except Exception as exc:  # noqa: BLE001 - try again on the next tick
                log.warning("relay_failed", error=str(exc))

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows it took from the outbox."""
        items = await self.store.outbox_pending(BATCH)
        if not items:
            return 0
        subject, payload, dedup_id = message_of(items)
        try:
            await self.js.publish(subject, payload, timeout=ACK_TIMEOUT, headers={"Nats-Msg-Id": dedup_id})
        except Exception as exc:  # noqa: BLE001 - the rows stay in the outbox for the next round
            log.warning("relay_publish_failed", failed=len(items), error=repr(exc))
            return 0
        await self.store.outbox_done([i.id for i in items])
        self.published += len(items)
        return len(items)


def message_of(items: list[OutboxItem]) -> tuple[str, bytes, str]:
    """(subject, body, Nats-Msg-Id) of the one message carrying these rows: a lone row as it is."""
    if len(items) == 1:
        return items[0].subject, items[0].payload, items[0].dedup_id
    # A retry after a lost ack reads the same first rows, usually the same batch: JetStream drops
    # it. If more rows came meanwhile the ids differ and some replies are nudged twice, which the
    # store's claims make harmless.
    return BATCH_SUBJECT, batch_payload([i.payload for i in items]), f"{items[0].dedup_id}+{len(items)}"
