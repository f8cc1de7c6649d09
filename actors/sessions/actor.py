"""One actor per session: sends get strict seq order because it handles one request at a time."""

from __future__ import annotations

from typing import NamedTuple

import msgspec
import structlog

from contracts.errors import Conflict, Forbidden, NotFound, RateLimited
from contracts.events import MessageEvent
from contracts.models import Message
from contracts.requests import Cancel, ListMessages, MessageReply, Retry, Send, SendReply
from contracts.subjects import reply_subject

from ..deps import Call, Deps
from ..runtime.actor import Actor
from ..schedule import ScheduledReply, encode_work
from ..store import NewSend, SessionState
from ..store.base import MessagesPage, PageKey
from .cancel import cancel

log = structlog.get_logger("session")
KEPT_PAGES = 8  # pages remembered per live session ...
KEPT_BYTES = 512 * 1024  # ... holding this much JSON at most in all; a larger page is read every time


class KeptPage(NamedTuple):
    """A page the actor remembers: its encoded list, the store's key to what could change it (None:
    every message on it is complete, so only new messages can), and the session's last seq then."""

    messages: msgspec.Raw
    key: PageKey | None
    last_seq: int


class SessionActor(Actor):
    """Owns one session's state (its last seq); activated from storage, let go when idle."""

    def __init__(self, sid: str, deps: Deps) -> None:
        super().__init__(sid, deps.settings.mailbox_size, deps.settings.idle_seconds)
        self.deps = deps
        self.state: SessionState | None = None
        self.pages: dict[tuple[int, int], KeptPage] = {}  # (afterSeq, limit) → the page last read

    async def on_start(self) -> None:
        self.state = await self.deps.store.load_session(self.key)
        if self.state is None:
            raise NotFound("no such session")

    async def receive(self, call: Call) -> object:
        if self.state is None:  # a failed write left us unsure of our state: read it again
            await self.on_start()
        state = self.state
        assert state is not None
        if call.uid != state.uid:
            raise Forbidden("this session is not yours")
        match call.body:
            case Send():
                return await self.send(state, call.body)
            case ListMessages(after_seq=after, limit=limit):
                return await self.messages(state, after, limit)
            case Cancel(message_id=mid):
                return MessageReply(message=await cancel(self.deps, state, await self.reply(mid)))
            case Retry(message_id=mid):
                return MessageReply(message=await self.retry(state, await self.reply(mid)))
        raise TypeError(f"unexpected {call.body!r}")

    async def messages(self, state: SessionState, after: int, limit: int) -> MessagesPage:
        """A page of history, remembered while the actor lives and given again while the store says
        that none of its messages changed and no message was added to it.

        This actor makes every new message of its session, so its last seq tells what was added, and
        hasMore of a remembered page."""
        where = (after, limit)
        kept = self.pages.get(where)
        if kept is not None and state.last_seq != kept.last_seq and kept.last_seq < after + limit:
            kept = None  # messages were added since, and the page had room for some of them
        if kept is not None and kept.key is None:
            return MessagesPage(kept.messages, state.last_seq > after + limit)
        found = await self.deps.store.messages_page(self.key, after, limit, kept.key if kept else None)
        if found.messages is None:
            assert kept is not None
            return MessagesPage(kept.messages, state.last_seq > after + limit)
        # A complete page short of full waits for new messages; without a key (PostgreSQL, where a
        # frozen host may wake to serve a moment longer) only a full one is kept, as it can never change.
        if found.key is not None or (found.complete and state.last_seq >= after + limit):
            self.keep(where, KeptPage(found.messages, None if found.complete else found.key, state.last_seq))
        return MessagesPage(found.messages, found.has_more)

    def keep(self, where: tuple[int, int], page: KeptPage) -> None:
        """Remember a page, letting the oldest ones go while over KEPT_PAGES or KEPT_BYTES."""
        self.pages.pop(where, None)
        if len(page.messages) > KEPT_BYTES:
            return
        self.pages[where] = page
        while len(self.pages) > KEPT_PAGES or sum(len(p.messages) for p in self.pages.values()) > KEPT_BYTES:
            self.pages.pop(next(iter(self.pages)))

    async def reply(self, message_id: str) -> Message:
        """The assistant message of this session with that id, or NotFound."""
        msg = await self.deps.store.get_message(message_id)
        if msg is None or msg.session_id != self.key or msg.role != "assistant":
            raise NotFound("no such assistant message in this session")
        return msg

    async def retry(self, state: SessionState, msg: Message) -> Message:
        """Back to pending, empty, at the end of the session's reply queue; 409 unless failed or cancelled."""
        if msg.status not in ("failed", "cancelled"):
            raise Conflict(f"only a failed or cancelled reply can be retried; this one is {msg.status}")
        deps = self.deps
        work = encode_work(ScheduledReply(session_id=self.key, message_id=msg.id, uid=state.uid))
        again = await deps.store.retry_reply(msg.id, deps.clock(), reply_subject(self.key), work, deps.ids())
        if again is None:
            raise Conflict("the reply changed meanwhile; read it again")
        await deps.events.publish(state.uid, self.key, MessageEvent(message=again))
        deps.kick_relay()
        return again

    async def check_limits(self, uid: str) -> None:
        """429 before anything is stored when the user has too many replies running or sends too fast."""
        limits = self.deps.limits
        if limits.replies_in_flight and limits.over_in_flight(await self.deps.store.unfinished_replies(uid)):
            raise RateLimited(limits.IN_FLIGHT_RETRY_MS, "too many replies in progress; wait for one to end")
        wait_ms = limits.take_send(uid)
        if wait_ms:
            raise RateLimited(wait_ms, "sending too fast; retry later")

    async def send(self, state: SessionState, req: Send) -> SendReply:
        deps, session = self.deps, state.session
        await deps.access.check(state.uid, session.document_id)
        if req.client_message_id is not None:
            found = await deps.store.find_send(self.key, req.client_message_id)
            if found:
                return SendReply(message=found[0], reply=found[1])
        await self.check_limits(state.uid)
        now = deps.clock()
        user = Message(id=deps.ids(), session_id=self.key, seq=state.last_seq + 1, role="user",
                       content=req.content, status="complete", created_at=now, updated_at=now)
        reply = Message(id=deps.ids(), session_id=self.key, seq=state.last_seq + 2, role="assistant",
                        content="", status="pending", created_at=now, updated_at=now, reply_to=user.id)
        work = ScheduledReply(session_id=self.key, message_id=reply.id, uid=state.uid)
        self.state = None  # until the commit is known to have happened
        await deps.store.append_send(NewSend(
            user=user, reply=reply, client_message_id=req.client_message_id, document_xml=req.document_xml,
            reply_subject=reply_subject(self.key), reply_payload=encode_work(work), dedup_id=deps.ids()))
        state.last_seq += 2
        state.session = msgspec.structs.replace(session, message_count=session.message_count + 2, updated_at=now)
        self.state = state
        await deps.events.publish(state.uid, self.key, MessageEvent(message=user))
        await deps.events.publish(state.uid, self.key, MessageEvent(message=reply))
        deps.kick_relay()  # after the events, so the pending event precedes any of the assistant's
        return SendReply(message=user, reply=reply)
