"""The assistant actor: generate one reply (claim, stream, store once), then the next of its session."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.barrier import let_go
from contracts.codec import encode
from contracts.errors import Unavailable
from contracts.events import DeltaEvent, MessageEvent
from contracts.models import Message
from contracts.requests import MessageReply
from contracts.subjects import cancel_subject

from ..events import Events
from ..ids import new_id, now_ms
from ..schedule import ScheduledReply
from ..settings import Settings
from ..store import ReplyContext, Store
from .context import build_request
from .inbox import ChunkInbox
from .model import ModelClient, ModelError

log = structlog.get_logger("assistant")

SAVE_EVERY = 0.25  # seconds: how stale the content `messages` returns for a streaming reply may be
TIMEOUT_ERROR = ("reply_timeout", "The reply could not be generated in time. Please retry.")


@dataclass
class Generation:
    """One reply being written: what is stored and published, and who asked to cancel it."""

    token: str
    reply: Message  # as read when the claim was taken
    content: str = ""
    published: int = 0  # characters already sent as deltas
    streaming: bool = False
    cancel_requests: list[Msg] = field(default_factory=list)
    task: asyncio.Task[object] | None = None  # set while the model call may be interrupted
    final: Message | None = None  # the stored end, once published: later cancels get it at once


    @property
    def message_id(self) -> str:
        return self.reply.id


class ClaimLost(Exception):
    """Another worker took the reply over (our lease ran out): stop without storing anything."""


class AssistantActor:
    """Generates replies; `run(work)` returns once the session has no reply left for it to do."""

    def __init__(self, nc: Client, store: Store, model: ModelClient, settings: Settings) -> None:
        self.nc, self.store, self.model, self.settings = nc, store, model, settings
        self.events = Events(nc)
        self.lease_ms = int(settings.reply_lease_seconds * 1000)
        self.renew_every = settings.reply_lease_seconds / 3
        self.generated = 0

    async def run(self, work: ScheduledReply) -> None:
        """Generate work's reply if its turn has come, then each next unfinished reply of the session."""
        message_id: str | None = work.message_id
        while message_id is not None:
            ended = await self.generate(work.uid, message_id)
            if not ended:
                return
            nxt = await self.store.next_reply(work.session_id)
            message_id = nxt if nxt != message_id else None

    async def generate(self, uid: str, message_id: str) -> bool:
        """Claim and generate one reply; True when it ended here (so the session's next one may start)."""
        token = new_id()
        claim = await self.store.claim_reply(message_id, token, now_ms(), self.lease_ms,
                                             self.settings.reply_max_attempts)
        if claim.state == "exhausted":
            final = await self.store.finish_reply(message_id, None, "failed", "", now_ms(), error=TIMEOUT_ERROR)
            if final:
                await self.events.publish(uid, final.session_id, MessageEvent(message=final))
            return True
        if claim.state != "claimed":
            return claim.state == "gone"
        assert claim.context is not None
        ctx = claim.context
        gen = Generation(token=token, reply=ctx.reply)

        # Only the claim holder listens for cancels; one sent before this subscription finds no
        # responder and is retried by the session actor (sessions/cancel.py).
        async def on_cancel(msg: Msg) -> None:
            if gen.final is not None:  # it ended already: the cancel gets the end as it is
                await msg.respond(encode(MessageReply(message=gen.final)))
            else:
                self.on_cancel(gen, msg)

        sub = await self.nc.subscribe(cancel_subject(message_id), cb=on_cancel)
        try:
            final = await self.write(uid, gen, ctx, claim.restarted)
        except BaseException:
            await sub.unsubscribe()
            raise
        if final is None:
            await sub.unsubscribe()
            return False
        self.generated += 1
        await self.events.publish(uid, final.session_id, MessageEvent(message=final))
        gen.final = final
        for request in gen.cancel_requests:
            await request.respond(encode(MessageReply(message=final)))
        # Drained, not unsubscribed: cancels the server routed here before it heard are answered with
        # the end (on the service's OrderedClient none is lost in between, contracts/barrier.py).
        await let_go(sub)
        return True

    @staticmethod
    def on_cancel(gen: Generation, msg: Msg) -> None:
        """A cancel for this reply: interrupt the model call if it runs; answered once the end is stored."""
        gen.cancel_requests.append(msg)
        if gen.task is not None and len(gen.cancel_requests) == 1:
            gen.task.cancel("cancel requested")

    async def write(self, uid: str, gen: Generation, ctx: ReplyContext, restarted: bool) -> Message | None:
        """Stream the model's reply into the store and the events; the final message, or None if lost."""
        sid = ctx.reply.session_id
        status, error, model, usage = "complete", None, None, None
        try:
            gen.task = asyncio.current_task()
            if gen.cancel_requests:
                raise asyncio.CancelledError
            if restarted:  # taken over from a vanished worker: clients start this reply over
                await self.events.publish(uid, sid, MessageEvent(message=ctx.reply))
            async with self.model.stream(build_request(ctx, self.settings)) as stream:
                await self.pump(uid, sid, gen, stream)
                gen.task = None
                model, usage = stream.model, (stream.input_tokens, stream.output_tokens)
        except ModelError as exc:
            status, error = "failed", (exc.code, exc.message)
            log.warning("reply_failed", message_id=gen.message_id, code=exc.code)
        except ClaimLost:
            log.warning("reply_lost", message_id=gen.message_id)
            return None
        except asyncio.CancelledError:
            if not gen.cancel_requests:
                await self.store.release_reply(gen.message_id, gen.token)
                raise  # shutting down: another worker takes the reply over
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = "cancelled"
        finally:
            gen.task = None
        await self.flush(uid, sid, gen)
        return await self.finish(gen, status, error, model, usage)

    async def finish(self, gen: Generation, status: str, error, model, usage) -> Message | None:
        """Store the reply's end; while storage is busy, try again for up to half the lease (a crash
        here would throw the whole reply away and cost it one of its attempts)."""
        deadline = time.monotonic() + self.lease_ms / 2000
        pause = 0.05
        while True:
            try:
                return await self.store.finish_reply(gen.message_id, gen.token, status, gen.content, now_ms(),
                                                     error=error, model=model, usage=usage)
            except Unavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("reply_end_not_stored", message_id=gen.message_id, error=str(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def save(self, gen: Generation) -> None:
        """Store the content so far and renew the lease; ClaimLost if another worker took the reply.

        Storage that is busy skips this save: the lease outlasts several saves, while a crash here
        would throw the reply away and cost it one of its attempts."""
        try:
            held = await self.store.save_progress(gen.message_id, gen.token, gen.content, now_ms(), self.lease_ms,
                                                  gen.streaming)
        except Unavailable as exc:
            log.warning("progress_not_saved", message_id=gen.message_id, error=str(exc))
            return
        if not held:
            raise ClaimLost

    async def pump(self, uid: str, sid: str, gen: Generation, stream) -> None:
        """Read chunks; publish deltas at most every delta_interval_ms, store the content so far at most
        every SAVE_EVERY seconds (renewing the lease)."""
        interval = self.settings.delta_interval_ms / 1000
        inbox = ChunkInbox()
        reader = asyncio.create_task(inbox.fill(stream))
        last_flush = last_save = time.monotonic()
        saved = 0
        try:
            while True:
                deadline = last_save + (SAVE_EVERY if len(gen.content) > saved else self.renew_every)
                if len(gen.content) > gen.published:
                    deadline = min(deadline, last_flush + interval)
                await inbox.wait(deadline)
                if inbox.chunks:
                    if not gen.streaming:
                        await self.start_streaming(uid, sid, gen)
                    gen.content += inbox.take()
                if inbox.ended and not inbox.chunks:
                    reader.result()  # the model's error, if it ended with one
                    return
                now = time.monotonic()
                if len(gen.content) > gen.published and now - last_flush >= interval:
                    await self.flush(uid, sid, gen)
                    last_flush = now
                if now - last_save >= (SAVE_EVERY if len(gen.content) > saved else self.renew_every):
                    last_save, saved = now, len(gen.content)
                    await self.save(gen)
        finally:
            if not reader.done():  # let the reader finish before the stream is closed
                reader.cancel()
                await asyncio.wait({reader})
            if not reader.cancelled():
                reader.exception()  # seen: a failure here is the model's, already handled or moot

    async def start_streaming(self, uid: str, sid: str, gen: Generation) -> None:
        """The first chunk came: store and announce the reply as streaming (its deltas follow)."""
        gen.streaming = True
        await self.save(gen)
        streaming = msgspec.structs.replace(gen.reply, status="streaming", content="", updated_at=now_ms())
        await self.events.publish(uid, sid, MessageEvent(message=streaming))

    async def flush(self, uid: str, sid: str, gen: Generation) -> None:
        """Publish what was generated since the last delta."""
        if len(gen.content) <= gen.published:
            return
        text = gen.content[gen.published:]
        await self.events.publish(uid, sid, DeltaEvent(message_id=gen.message_id, seq=gen.reply.seq, offset=gen.published,
                                                       text=text))
        gen.published = len(gen.content)
