"""JetStream → assistant: a durable pull consumer on the scheduled-reply work queue.

A delivery is a nudge for one reply or a batch of them (actors/relay.py): the store decides (by
claim) whether there is work. It is acked once each of its replies ended, or the store said
another worker has it; a reply that crashed naks the whole delivery, and shutdown naks what it
was doing. A nudge repeated for a reply that ended finds nothing to claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.subjects import REPLY_PREFIX, REPLY_STREAM

from ..runtime.tasks import cancel_and_wait
from ..schedule import ScheduledReply, decode_work
from ..settings import Settings
from .actor import AssistantActor

log = structlog.get_logger("assistant.consumer")
DURABLE = "assistant"


class Consumer:
    """Fetches work while fewer than replies_in_flight replies wait or run; each reply runs in its own task."""

    def __init__(self, js: JetStreamContext, actor: AssistantActor, settings: Settings) -> None:
        self.js, self.actor, self.settings = js, actor, settings
        self.slots = asyncio.Semaphore(settings.replies_in_flight)
        self.backlog = 0  # replies fetched and not yet ended
        self.room = asyncio.Event()

    async def run(self) -> None:
        """Fetch and dispatch until cancelled; running replies are cancelled with it."""
        wait, tries = self.settings.reply_ack_wait_seconds, self.settings.reply_max_deliver
        config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{REPLY_PREFIX}.>",
                                ack_wait=wait, max_deliver=tries,
                                # Redeliveries of an unacknowledged reply wait longer each time.
                                backoff=[wait * 2**i for i in range(max(1, tries - 1))],
                                max_ack_pending=max(1000, self.settings.replies_in_flight * 4))
        # Create or update: pull_subscribe alone would keep an existing durable's old settings.
        await self.js.add_consumer(REPLY_STREAM, config)
        psub = await self.js.pull_subscribe(f"{REPLY_PREFIX}.>", durable=DURABLE, stream=REPLY_STREAM)
        try:
            await self.dispatch(psub)
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be closed already
                pass

    async def dispatch(self, psub) -> None:
        """Fetch as many deliveries as there is room for replies; hand each to its own task."""
        async with asyncio.TaskGroup() as tg:
            while True:
                free = self.settings.replies_in_flight - self.backlog
                if free <= 0:
                    self.room.clear()
                    await self.room.wait()
                    continue
                try:
                    msgs = await psub.fetch(free, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    return
                except Exception as exc:  # noqa: BLE001 - reconnecting, no stream yet: try again soon
                    log.warning("fetch_failed", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    tg.create_task(self.handle(msg))

    async def handle(self, msg: Msg) -> None:
        """Run one delivery's replies to their end; every outcome acks, naks or leaves it for redelivery."""
        try:
            items = decode_work(msg.data)
        except Exception:  # noqa: BLE001 - a malformed work item can never succeed
            log.error("bad_work_item", subject=msg.subject)
            await msg.term()
            return
        self.backlog += len(items)
        try:
            async with keeping_alive(msg, self.settings.reply_ack_wait_seconds / 4):
                outcomes = await asyncio.gather(*(self.one(work) for work in items), return_exceptions=True)
        except asyncio.CancelledError:
            await asyncio.shield(self.nak(msg))
            raise
        crashed = [(work, exc) for work, exc in zip(items, outcomes) if isinstance(exc, BaseException)]
        for work, exc in crashed:
            log.error("reply_crashed", message_id=work.message_id, exc_info=exc)
        if crashed:  # redelivered after a pause; the replies that ended are not claimed again
            await self.nak(msg, delay=2.0)
        else:
            await msg.ack()

    async def one(self, work: ScheduledReply) -> None:
        """One reply, once a slot is free (at most replies_in_flight run at once)."""
        try:
            async with self.slots:
                await self.actor.run(work)
        finally:
            self.backlog -= 1
            self.room.set()

    @staticmethod
    async def nak(msg: Msg, delay: float | None = None) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # noqa: BLE001 - ack_wait redelivers it anyway
            log.warning("nak_failed", error=str(exc))


@contextlib.asynccontextmanager
async def keeping_alive(msg: Msg, every: float) -> AsyncIterator[None]:
    """While the block runs, tell JetStream every `every` seconds that the delivery is being worked
    on, so a long reply, or one waiting for a slot, is not redelivered meanwhile."""
    async def tick() -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):  # reconnecting: the next tick tries again
                await msg.in_progress()

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        await cancel_and_wait([ticker])
