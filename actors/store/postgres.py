"""PostgreSQL store (asyncpg): one group-committing writer connection, reads on a small pool.

The same interface and results as SqliteStore. Every write waits in one queue; the writer runs all
that wait in one transaction, each op under its own savepoint so a failing op fails alone, and
answers only after COMMIT (synchronous_commit=on: the WAL is flushed first).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import asyncpg
import msgspec
import structlog

from contracts.errors import Unavailable

from . import postgres_replies as replies, postgres_rows as rows
from .base import Claim, MessagesPage, NewSend, OutboxItem, ReplyContext, SessionState

T = TypeVar("T")
Op = Callable[[asyncpg.Connection], Awaitable[Any]]
log = structlog.get_logger("store")
SCHEMA = (Path(__file__).parent / "postgres_schema.sql").read_text()
MAX_BATCH = 256
CONNECT_TIMEOUT = 5.0  # seconds; a database that does not answer is Unavailable, not a hang
COMMAND_TIMEOUT = 30.0
SETTINGS = {"synchronous_commit": "on", "application_name": "docchat"}
# SQLSTATE classes that condemn the whole transaction, not one op: connection, resources, operator, system.
FAULT_CLASSES = ("08", "53", "57", "58", "XX")


def is_fault(exc: BaseException) -> bool:
    """True when the database or the connection failed (the batch is lost), not the op."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in FAULT_CLASSES
    return isinstance(exc, (asyncpg.InterfaceError, OSError, asyncio.TimeoutError))


async def apply_batch(db: asyncpg.Connection, ops: list[Op]) -> list[Any]:
    """One transaction for many ops; an op that raises (but not a storage fault) is rolled back alone."""
    results: list[Any] = []
    async with db.transaction():
        for op in ops:
            try:
                async with db.transaction():  # nested: a SAVEPOINT
                    results.append(await op(db))
            except Exception as exc:  # noqa: BLE001 - a refused or buggy op fails alone
                if is_fault(exc):
                    raise
                results.append(exc)
    return results


class PostgresStore:
    """The shared store. `async with PostgresStore(url)` connects, migrates and starts the writer."""

    def __init__(self, url: str, readers: int = 4) -> None:
        self.url = url
        self.reader_count = readers
        self.pool: asyncpg.Pool | None = None
        self.writer_db: asyncpg.Connection | None = None
        self.queue: asyncio.Queue[tuple[Op, asyncio.Future[Any]]] = asyncio.Queue()
        self.writer_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self.writer_db = await self.connect()
            async with self.writer_db.transaction():
                await self.writer_db.execute("SELECT pg_advisory_xact_lock(7366323)")  # one migrating host at a time
                await self.writer_db.execute(SCHEMA)
            sync = await self.writer_db.fetchval("SHOW synchronous_commit")
            if sync != "on":
                raise RuntimeError(f"PostgreSQL refused synchronous_commit=on (got {sync})")
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.reader_count,
                                                  server_settings=SETTINGS, timeout=CONNECT_TIMEOUT,
                                                  command_timeout=COMMAND_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        self.writer_task = asyncio.create_task(self.write_loop(), name="postgres-writer")
        log.info("store_opened", database="postgresql", synchronous_commit=sync)

    async def connect(self) -> asyncpg.Connection:
        """A new connection with the store's session settings (the writer's)."""
        return await asyncpg.connect(self.url, server_settings=SETTINGS, timeout=CONNECT_TIMEOUT,
                                     command_timeout=COMMAND_TIMEOUT)

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self.writer_task:
            await self.queue.join()
            self.writer_task.cancel()
            await asyncio.gather(self.writer_task, return_exceptions=True)
            self.writer_task = None
        if self.pool is not None:
            await self.pool.close()
        if self.writer_db is not None:
            await self.writer_db.close()
        self.pool, self.writer_db = None, None

    async def __aenter__(self) -> "PostgresStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run op in the next group commit; returns after COMMIT, or raises."""
        if self.writer_task is None:
            raise Unavailable("store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((op, fut))
        return await fut

    async def read(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a short read on a pooled connection."""
        if self.pool is None:
            raise Unavailable("store is closed")
        try:
            async with self.pool.acquire() as db:
                return await op(db)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError) as exc:
            log.warning("store_read_failed", error=str(exc))
            raise Unavailable("storage is unavailable, retry") from exc

    async def commit(self, ops: list[Op]) -> list[Any]:
        """apply_batch on the writer connection, reconnecting first if the last one broke."""
        if self.writer_db is None or self.writer_db.is_closed():
            self.writer_db = await self.connect()
        try:
            return await apply_batch(self.writer_db, ops)
        except BaseException:
            self.writer_db.terminate()  # its state is unknown: the next batch starts on a new connection
            self.writer_db = None
            raise

    async def write_loop(self) -> None:
        """Take every write waiting, commit them in one transaction, answer each."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            live = [(op, fut) for op, fut in batch if not fut.cancelled()]
            try:
                results = await self.commit([op for op, _ in live])
            except Exception as exc:  # noqa: BLE001 - every caller must hear of it
                log.error("store_commit_failed", error=str(exc), batch=len(live))
                failure = Unavailable("storage is unavailable, retry")
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(failure)
            else:
                for (_, fut), result in zip(live, results):
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
        return await self.write(lambda db: rows.get_or_create_session(db, uid, document_id, new_id, now))

    async def find_session(self, uid: str, document_id: str):
        return await self.read(lambda db: rows.find_session(db, uid, document_id))

    async def user_sub(self, uid: str) -> str:
        return await self.read(lambda db: rows.user_sub(db, uid))

    async def remember_user(self, uid: str, sub: str) -> None:
        await self.write(lambda db: rows.remember_user(db, uid, sub))

    async def load_session(self, session_id: str) -> SessionState | None:
        return await self.read(lambda db: rows.load_session(db, session_id))

    async def find_send(self, session_id: str, client_message_id: str):
        return await self.read(lambda db: rows.find_send(db, session_id, client_message_id))

    async def append_send(self, send: NewSend) -> None:
        await self.write(lambda db: rows.append_send(db, send))

    async def list_messages(self, session_id: str, after_seq: int, limit: int):
        return await self.read(lambda db: rows.list_messages(db, session_id, after_seq, limit))

    async def messages_page(self, session_id: str, after_seq: int, limit: int) -> MessagesPage:
        page, more = await self.read(lambda db: rows.messages_page(db, session_id, after_seq, limit))
        return MessagesPage(msgspec.Raw(page), more)

    async def get_message(self, message_id: str):
        return await self.read(lambda db: rows.get_message(db, message_id))

    async def grant(self, uid: str, sub: str, document_id: str, role: str, now: int) -> None:
        await self.write(lambda db: rows.grant(db, uid, sub, document_id, role, now))

    async def revoke(self, uid: str, document_id: str) -> None:
        await self.write(lambda db: rows.revoke(db, uid, document_id))

    async def has_grant(self, uid: str, document_id: str) -> bool:
        return await self.read(lambda db: rows.has_grant(db, uid, document_id))

    async def outbox_pending(self, limit: int) -> list[OutboxItem]:
        return await self.read(lambda db: rows.outbox_pending(db, limit))

    async def outbox_done(self, ids: list[int]) -> None:
        await self.write(lambda db: rows.outbox_done(db, ids))

    async def claim_reply(self, message_id: str, token: str, now: int, lease_ms: int, max_attempts: int) -> Claim:
        return await self.write(lambda db: replies.claim(db, message_id, token, now, lease_ms, max_attempts))

    async def reply_context(self, message_id: str) -> ReplyContext:
        return await self.read(lambda db: replies.context(db, message_id))

    async def save_progress(self, message_id: str, token: str, content: str, now: int, lease_ms: int,
                            streaming: bool = True) -> bool:
        return await self.write(lambda db: replies.progress(db, message_id, token, content, now, lease_ms, streaming))

    async def finish_reply(self, message_id, token, status, content, now, error=None, model=None, usage=None):
        return await self.write(lambda db: replies.finish(db, message_id, token, status, content, now, error, model,
                                                          usage))

    async def release_reply(self, message_id: str, token: str) -> None:
        await self.write(lambda db: replies.release(db, message_id, token))

    async def next_reply(self, session_id: str) -> str | None:
        return await self.read(lambda db: replies.next_in_session(db, session_id))

    async def retry_reply(self, message_id, now, subject, payload, dedup_id):
        return await self.write(lambda db: replies.retry(db, message_id, now, subject, payload, dedup_id))

    async def stuck_replies(self, now: int, older_than_ms: int, limit: int):
        return await self.read(lambda db: replies.stuck(db, now, older_than_ms, limit))

    async def unfinished_replies(self, uid: str) -> int:
        return await self.read(lambda db: rows.unfinished_replies(db, uid))

    async def usage(self, uid: str, from_ms: int, to_ms: int | None) -> tuple[int, int, int]:
        return await self.read(lambda db: rows.usage(db, uid, from_ms, to_ms))
