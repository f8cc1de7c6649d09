"""The store interface the actors depend on, and the records it returns (not wire types)."""

from __future__ import annotations

from typing import Protocol

import msgspec

from contracts.models import Message, Session


class SessionState(msgspec.Struct, kw_only=True):
    """What a session actor keeps in memory: the session and the last seq it holds."""

    session: Session
    uid: str
    last_seq: int


class NewSend(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted send: both messages, the document, and the reply to schedule."""

    user: Message
    reply: Message
    client_message_id: str | None
    document_xml: str
    reply_subject: str
    reply_payload: bytes
    dedup_id: str


class OutboxItem(msgspec.Struct, frozen=True):
    """Work waiting to be published to JetStream."""

    id: int
    subject: str
    payload: bytes
    dedup_id: str


class Store(Protocol):
    """Durable state of docchat. Every write is one transaction; errors are DocchatErrors."""

    async def get_or_create_session(self, uid: str, document_id: str, new_id: str,
                                    now: int) -> tuple[Session, bool]: ...
    async def find_session(self, uid: str, document_id: str) -> Session | None: ...
    async def user_sub(self, uid: str) -> str: ...
    async def remember_user(self, uid: str, sub: str) -> None: ...
    async def load_session(self, session_id: str) -> SessionState | None: ...
    async def find_send(self, session_id: str, client_message_id: str) -> tuple[Message, Message] | None: ...
    async def append_send(self, send: NewSend) -> None: ...
    async def list_messages(self, session_id: str, after_seq: int, limit: int) -> tuple[list[Message], bool]: ...
    async def get_message(self, message_id: str) -> Message | None: ...
    async def grant(self, uid: str, sub: str, document_id: str, role: str, now: int) -> None: ...
    async def revoke(self, uid: str, document_id: str) -> None: ...
    async def has_grant(self, uid: str, document_id: str) -> bool: ...
    async def outbox_pending(self, limit: int) -> list[OutboxItem]: ...
    async def outbox_done(self, ids: list[int]) -> None: ...
