"""A typed async client of docchat over a nats-py connection, for services, tests and load tools."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import requests as rq
from .barrier import flushed
from .codec import decoder, encode, error_decoder, event_decoder
from .errors import DocchatError, Unavailable, from_detail
from .events import AnyEvent
from .models import Message, Session
from .subjects import GRANT, REVOKE, USAGE, events_subject, session_subject, user_subject, user_token

T = TypeVar("T")


def raise_for_error(msg: Msg) -> None:
    """Raise the DocchatError a reply carries, if it carries one."""
    if msg.headers and "Nats-Service-Error-Code" in msg.headers:
        raise from_detail(error_decoder.decode(msg.data).error)


class DocchatClient:
    """Calls docchat as one user (`sub`); a trusted service may make one per user it acts for.

    With `retry_for` > 0 a call that meets no responder, a timeout or a 503 is sent again (after a
    short pause) until that many seconds have passed: what a caller wants while a partition moves
    between hosts. Sends then carry a clientMessageId, so a repeat is answered, never stored twice.
    """

    def __init__(self, nc: Client, sub: str, timeout: float = 5.0, retry_for: float = 0.0) -> None:
        self.nc, self.sub, self.uid, self.timeout = nc, sub, user_token(sub), timeout
        self.retry_for = retry_for

    async def call(self, subject: str, body: Any, reply: type[T]) -> T:
        """Request-reply with typed bodies; a docchat error is raised as its DocchatError subclass."""
        data = encode(body)
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        while True:
            try:
                msg = await self.nc.request(subject, data, timeout=self.timeout)
                raise_for_error(msg)
                return decoder(reply).decode(msg.data)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, Unavailable):
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def get_or_create(self, document_id: str) -> rq.SessionReply:
        return await self.call(user_subject(self.uid, "getOrCreate"), rq.GetOrCreate(document_id=document_id),
                               rq.SessionReply)

    async def by_document(self, document_id: str) -> Session | None:
        reply = await self.call(user_subject(self.uid, "byDocument"), rq.ByDocument(document_id=document_id),
                                rq.MaybeSessionReply)
        return reply.session

    async def send(self, sid: str, content: str, document_xml: str = "",
                   client_message_id: str | None = None) -> rq.SendReply:
        if client_message_id is None and self.retry_for > 0:
            client_message_id = uuid.uuid4().hex  # a retried send must not be stored twice
        body = rq.Send(content=content, document_xml=document_xml, client_message_id=client_message_id)
        return await self.call(session_subject(self.uid, sid, "send"), body, rq.SendReply)

    async def messages(self, sid: str, after_seq: int = 0, limit: int = 100) -> rq.MessagesReply:
        return await self.call(session_subject(self.uid, sid, "messages"),
                               rq.ListMessages(after_seq=after_seq, limit=limit), rq.MessagesReply)

    async def cancel(self, sid: str, message_id: str) -> Message:
        reply = await self.call(session_subject(self.uid, sid, "cancel"), rq.Cancel(message_id=message_id),
                                rq.MessageReply)
        return reply.message

    async def retry(self, sid: str, message_id: str) -> Message:
        reply = await self.call(session_subject(self.uid, sid, "retry"), rq.Retry(message_id=message_id),
                                rq.MessageReply)
        return reply.message

    async def subscribe(self, sid: str) -> "EventStream":
        """Subscribe to a session's events; do it before reading history (PROTOCOL.md)."""
        sub = await self.nc.subscribe(events_subject(self.uid, sid))
        await flushed(self.nc)
        return EventStream(sub)


class EventStream:
    """A session's events as they arrive: `await next(timeout)` or `async for`; `close()` unsubscribes."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub

    async def next(self, timeout: float | None = 5.0) -> AnyEvent:
        msg = await self.sub.next_msg(timeout=timeout)
        return event_decoder.decode(msg.data)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> AnyEvent:
        return await self.next(None)

    async def close(self) -> None:
        await self.sub.unsubscribe()


class AdminClient:
    """Grants and revokes document access, reports usage (trusted services only)."""

    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self.nc, self.timeout = nc, timeout

    async def grant(self, document_id: str, user_id: str, role: str = "editor") -> None:
        msg = await self.nc.request(GRANT, encode(rq.Grant(document_id=document_id, user_id=user_id, role=role)),
                                    timeout=self.timeout)
        raise_for_error(msg)

    async def revoke(self, document_id: str, user_id: str) -> None:
        msg = await self.nc.request(REVOKE, encode(rq.Revoke(document_id=document_id, user_id=user_id)),
                                    timeout=self.timeout)
        raise_for_error(msg)

    async def usage(self, user_id: str, from_ms: int = 0, to_ms: int | None = None) -> rq.UsageReply:
        """The user's (`sub`) token usage over updatedAt in [from_ms, to_ms); to_ms None: up to now."""
        body = rq.GetUsage(user_id=user_id, from_ms=from_ms, to_ms=to_ms)
        msg = await self.nc.request(USAGE, encode(body), timeout=self.timeout)
        raise_for_error(msg)
        return decoder(rq.UsageReply).decode(msg.data)


__all__ = ["AdminClient", "DocchatClient", "DocchatError", "EventStream", "raise_for_error"]
