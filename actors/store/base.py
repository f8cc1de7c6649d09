"""The store interface the actors depend on, and the records it returns (not wire types)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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


class MessagesPage(msgspec.Struct, frozen=True, rename="camel"):
    """The `messages` reply with its list already encoded by the store."""

    messages: msgspec.Raw
    has_more: bool


class PageKey(msgspec.Struct, frozen=True):
    """What could still change a page (SQLite): its messages that are not complete (rowids as a JSON
    list), the sum of their revs, and the schema version the rowids hold under. Every change to a
    message moves its rev up; a complete one never changes; messages are never deleted."""

    rowids: str
    revs: int
    schema: int


class StoredPage(msgspec.Struct, frozen=True):
    """A page as the store read it: the encoded list, hasMore, whether every message on it is
    complete (then only messages added after it can change it), and its key."""

    messages: msgspec.Raw | None  # None: the `known` key asked with still holds, the page is unchanged
    has_more: bool
    complete: bool
    key: PageKey | None = None  # None: this store keeps no keys


class ReplyContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the model is given for one reply."""

    reply: Message
    document_xml: str
    conversation: list[Message]


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a claim on a reply: claimed, or why not (gone, busy, blocked, exhausted)."""

    state: str
    retry_in_ms: int = 0
    restarted: bool = False
    context: ReplyContext | None = None  # when claimed: what the model is given, read in the same transaction


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
    async def messages_page(self, session_id: str, after_seq: int, limit: int,
                            known: PageKey | None = None) -> StoredPage: ...
    async def get_message(self, message_id: str) -> Message | None: ...
    async def grant(self, uid: str, sub: str, document_id: str, role: str, now: int) -> None: ...
    async def revoke(self, uid: str, document_id: str) -> None: ...
    async def has_grant(self, uid: str, document_id: str) -> bool: ...
    async def outbox_pending(self, limit: int) -> list[OutboxItem]: ...
    # The assistant's side (actors/store/replies.py has the rules).
    async def claim_reply(self, message_id: str, token: str, now: int, lease_ms: int, max_attempts: int) -> Claim: ...
    async def save_progress(self, message_id: str, token: str, content: str, now: int, lease_ms: int,
                            streaming: bool = True) -> bool: ...
    async def finish_reply(self, message_id: str, token: str | None, status: str, content: str, now: int,
                           error: tuple[str, str] | None = None, model: str | None = None,
                           usage: tuple[int, int] | None = None) -> Message | None: ...
    async def release_reply(self, message_id: str, token: str) -> None: ...
    async def next_reply(self, session_id: str) -> str | None: ...
    async def retry_reply(self, message_id: str, now: int, subject: str, payload: bytes,
                          dedup_id: str) -> Message | None: ...
    async def stuck_replies(self, now: int, older_than_ms: int, limit: int) -> list[tuple[str, str, str]]: ...
    async def outbox_done(self, ids: list[int]) -> None: ...
    # Limits and usage reports.
    async def unfinished_replies(self, uid: str) -> int: ...
    async def usage(self, uid: str, from_ms: int, to_ms: int | None) -> tuple[int, int, int]: ...


@runtime_checkable
class LeaseStore(Protocol):
    """Partition leases in a store many hosts share (PostgreSQL); see actors/ownership/leases.py."""

    async def heartbeat(self, host: str, ttl_ms: int) -> int: ...  # hosts alive now, this one included
    async def renew(self, host: str, held: dict[int, int], ttl_ms: int) -> set[int]: ...  # partitions kept
    async def acquire(self, host: str, count: int, ttl_ms: int) -> dict[int, int]: ...  # partition → new epoch
    async def release(self, host: str, partition: int, epoch: int) -> None: ...
    async def goodbye(self, host: str) -> None: ...
    def fenced(self, partition: int, epoch: int) -> Store:
        """This store, every write refused unless the lease of partition still has this epoch."""
        ...
