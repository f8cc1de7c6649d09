"""What both stores share: the group-commit writer and the Store interface over row functions.

A concrete store supplies `rows` and `replies` (modules of functions taking a connection),
`read(op)` (one op on a reader connection) and `commit(ops, size)` (every op in one transaction, a
failing op rolled back alone, returning each op's result or exception; `size` is about how many
characters of text the ops write).
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any, Callable

import msgspec
import structlog

from contracts.errors import Unavailable

from .base import Claim, NewSend, OutboxItem, PageKey, SessionState, StoredPage

log = structlog.get_logger("store")
MAX_BATCH = 256
Op = Callable[[Any], Any]


class BatchedStore:
    """The Store interface; every write waits in a queue and commits with all the others waiting."""

    rows: ModuleType
    replies: ModuleType

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Op, asyncio.Future[Any], int]] = asyncio.Queue()
        self.writer_task: asyncio.Task[None] | None = None

    async def read(self, op: Op) -> Any:
        raise NotImplementedError

    async def commit(self, ops: list[Op], size: int) -> list[Any]:
        raise NotImplementedError

    def start_writer(self, name: str) -> None:
        self.writer_task = asyncio.create_task(self.write_loop(), name=name)

    async def stop_writer(self) -> None:
        """Commit what is queued, then stop the writer."""
        if self.writer_task:
            await self.queue.join()
            self.writer_task.cancel()
            await asyncio.gather(self.writer_task, return_exceptions=True)
            self.writer_task = None

    async def write(self, op: Op, size: int = 0) -> Any:
        """Run op in the next group commit; returns after COMMIT, or raises. `size`: the characters of text
        it writes, where that may be large."""
        if self.writer_task is None:
            raise Unavailable("store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((op, fut, size))
        return await fut

    async def write_loop(self) -> None:
        """Take every write waiting, commit them in one transaction, answer each."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            live = [(op, fut, size) for op, fut, size in batch if not fut.cancelled()]
            try:
                results = await self.commit([op for op, _, _ in live], sum(size for _, _, size in live))
            except Exception as exc:  # noqa: BLE001 - every caller must hear of it
                log.error("store_commit_failed", error=str(exc), batch=len(live))
                failure = Unavailable("storage is unavailable, retry")
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(failure)
            else:
                for (_, fut, _), result in zip(live, results):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
            for _ in batch:
                self.queue.task_done()

    # The Store interface.
    async def get_or_create_session(self, uid: str, document_id: str, new_id: str, now: int):
        return await self.write(lambda db: self.rows.get_or_create_session(db, uid, document_id, new_id, now))

    async def find_session(self, uid: str, document_id: str):
        return await self.read(lambda db: self.rows.find_session(db, uid, document_id))

    async def user_sub(self, uid: str) -> str:
        return await self.read(lambda db: self.rows.user_sub(db, uid))

    async def remember_user(self, uid: str, sub: str) -> None:
        await self.write(lambda db: self.rows.remember_user(db, uid, sub))

    async def load_session(self, session_id: str) -> SessionState | None:
        return await self.read(lambda db: self.rows.load_session(db, session_id))

    async def find_send(self, session_id: str, client_message_id: str):
        return await self.read(lambda db: self.rows.find_send(db, session_id, client_message_id))

    async def append_send(self, send: NewSend) -> None:
        await self.write(lambda db: self.rows.append_send(db, send), len(send.document_xml) + len(send.user.content))

    async def list_messages(self, session_id: str, after_seq: int, limit: int):
        return await self.read(lambda db: self.rows.list_messages(db, session_id, after_seq, limit))

    async def messages_page(self, session_id: str, after_seq: int, limit: int,
                            known: PageKey | None = None) -> StoredPage:
        """The page, read again whatever `known` is (a store that keeps keys checks them first)."""
        page, more, complete, key = await self.read(lambda db: self.rows.messages_page(db, session_id, after_seq, limit))
        return StoredPage(msgspec.Raw(page), more, complete, key)

    async def get_message(self, message_id: str):
        return await self.read(lambda db: self.rows.get_message(db, message_id))

    async def grant(self, uid: str, sub: str, document_id: str, role: str, now: int) -> None:
        await self.write(lambda db: self.rows.grant(db, uid, sub, document_id, role, now))

    async def revoke(self, uid: str, document_id: str) -> None:
        await self.write(lambda db: self.rows.revoke(db, uid, document_id))

    async def has_grant(self, uid: str, document_id: str) -> bool:
        return await self.read(lambda db: self.rows.has_grant(db, uid, document_id))

    async def outbox_pending(self, limit: int) -> list[OutboxItem]:
        return await self.read(lambda db: self.rows.outbox_pending(db, limit))

    async def outbox_done(self, ids: list[int]) -> None:
        await self.write(lambda db: self.rows.outbox_done(db, ids))

    async def unfinished_replies(self, uid: str) -> int:
        return await self.read(lambda db: self.rows.unfinished_replies(db, uid))

    async def usage(self, uid: str, from_ms: int, to_ms: int | None) -> tuple[int, int, int]:
        return await self.read(lambda db: self.rows.usage(db, uid, from_ms, to_ms))

    async def claim_reply(self, message_id: str, token: str, now: int, lease_ms: int, max_attempts: int) -> Claim:
        return await self.write(lambda db: self.replies.claim(db, message_id, token, now, lease_ms, max_attempts))

    async def save_progress(self, message_id: str, token: str, content: str, now: int, lease_ms: int,
                            streaming: bool = True) -> bool:
        return await self.write(lambda db: self.replies.progress(db, message_id, token, content, now, lease_ms,
                                                                 streaming), len(content))

    async def finish_reply(self, message_id, token, status, content, now, error=None, model=None, usage=None):
        return await self.write(lambda db: self.replies.finish(db, message_id, token, status, content, now, error,
                                                               model, usage), len(content))

    async def release_reply(self, message_id: str, token: str) -> None:
        await self.write(lambda db: self.replies.release(db, message_id, token))

    async def next_reply(self, session_id: str) -> str | None:
        return await self.read(lambda db: self.replies.next_in_session(db, session_id))

    async def retry_reply(self, message_id, now, subject, payload, dedup_id):
        return await self.write(lambda db: self.replies.retry(db, message_id, now, subject, payload, dedup_id))

    async def stuck_replies(self, now: int, older_than_ms: int, limit: int):
        return await self.read(lambda db: self.replies.stuck(db, now, older_than_ms, limit))
