"""JetStream → assistant: a durable pull consumer on the scheduled-reply work queue.

A delivery is a nudge: the store decides (by claim) whether there is work. It is acked once the
reply ended, or once the store says another worker has it; shutdown naks what it was doing.
"""

from __future__ import annotations

import asyncio

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.subjects import REPLY_PREFIX, REPLY_STREAM

from ..schedule import decode_work
from ..settings import Settings
from .actor import AssistantActor

log = structlog.get_logger("assistant.consumer")
DURABLE = "assistant"


class Consumer:
    """Fetches work while it has free slots (replies_in_flight); each reply runs in its own task."""

    def __init__(self, js: JetStreamContext, actor: AssistantActor, settings: Settings) -> None:
        self.js, self.actor, self.settings = js, actor, settings
        self.running = 0
        self.slot_freed = asyncio.Event()

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
        """Fetch as many deliveries as there are free slots; hand each to its own task."""
        async with asyncio.TaskGroup() as tg:
            while True:
                free = self.settings.replies_in_flight - self.running
                if free <= 0:
                    self.slot_freed.clear()
                    await self.slot_freed.wait()
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
                    self.running += 1
                    tg.create_task(self.handle(msg))

    async def handle(self, msg: Msg) -> None:
        """Run one delivery to its end; every outcome acks, naks or leaves it for redelivery."""
        try:
            work = decode_work(msg.data)
        except Exception:  # noqa: BLE001 - a malformed work item can never succeed
            log.error("bad_work_item", subject=msg.subject)
            await msg.term()
            self.done()
            return
        try:
            await self.actor.run(work, keepalive=msg)
            await msg.ack()
        except asyncio.CancelledError:
            await asyncio.shield(self.nak(msg))
            raise
        except Exception as exc:  # noqa: BLE001 - redelivered after a pause
            log.error("reply_crashed", message_id=work.message_id, exc_info=exc)
            await self.nak(msg, delay=2.0)
        finally:
            self.done()

    def done(self) -> None:
        self.running -= 1
        self.slot_freed.set()

    @staticmethod
    async def nak(msg: Msg, delay: float | None = None) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # noqa: BLE001 - ack_wait redelivers it anyway
            log.warning("nak_failed", error=str(exc))
