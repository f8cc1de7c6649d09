"""SQLite store: WAL, synchronous=FULL, one group-committing writer and a few readers."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiosqlite
import msgspec
import structlog

from contracts.errors import Unavailable

from . import replies, rows
from .base import Claim, MessagesPage, NewSend, OutboxItem, ReplyContext, SessionState

T = TypeVar("T")
log = structlog.get_logger("store")
SCHEMA = (Path(__file__).parent / "schema.sql").read_text()
MAX_BATCH = 256


def run_in_thread(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> "asyncio.Future[T]":
    """Run fn(sqlite3 connection) on the aiosqlite connection's own thread: one hop for many statements."""
    return db._execute(lambda: fn(db._conn))  # noqa: SLF001 - aiosqlite has no public call for this


def pragmas(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA cache_size=-65536")
    sync = db.execute("PRAGMA synchronous").fetchone()[0]
    if sync != 2:
        raise RuntimeError(f"SQLite refused synchronous=FULL (got {sync})")


def apply_batch(db: sqlite3.Connection, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """One transaction for many ops; an op that raises (but not a storage fault) is rolled back alone."""
    results: list[Any] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            db.execute("SAVEPOINT op")
            try:
                results.append(op(db))
                db.execute("RELEASE op")
            except sqlite3.OperationalError:
                raise  # disk full, I/O error, locked: the whole transaction is suspect
            except Exception as exc:  # noqa: BLE001 - a refused or buggy op fails alone
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
                results.append(exc)
        db.execute("COMMIT")
    except BaseException:
        # After FULL, IOERR, BUSY or READONLY SQLite may already have rolled back; make sure.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


class SqliteStore:
    """The embedded store. `async with SqliteStore(path)` opens, migrates and starts the writer."""

    def __init__(self, path: Path, readers: int = 2, inline: bool = False) -> None:
        self.path = Path(path)
        self.inline = inline  # run SQLite on the event loop thread: no thread hop, the loop waits for it
        self.reader_count = readers
        self.writer_db: aiosqlite.Connection | None = None
        self.readers: list[aiosqlite.Connection] = []
        self.next_reader = 0
        self.queue: asyncio.Queue[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = asyncio.Queue()
        self.writer_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer_db = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=not self.inline)
        await run_in_thread(self.writer_db, pragmas)
        await run_in_thread(self.writer_db, lambda db: db.executescript(SCHEMA))
        for _ in range(self.reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=not self.inline)
            await run_in_thread(reader, pragmas)
            self.readers.append(reader)
        self.writer_task = asyncio.create_task(self.write_loop(), name="sqlite-writer")
        log.info("store_opened", path=str(self.path), journal="wal", synchronous="full")

    def call(self, db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> "asyncio.Future[T]":
        """fn(connection) on the connection's thread, or right here when inline."""
        if not self.inline:
            return run_in_thread(db, fn)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(fn(db._conn))  # noqa: SLF001 - same connection, its thread idle
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
            fut.set_exception(exc)
        return fut

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self.writer_task:
            await self.queue.join()
            self.writer_task.cancel()
            await asyncio.gather(self.writer_task, return_exceptions=True)
            self.writer_task = None
        for db in [*self.readers, self.writer_db]:
            if db is not None:
                await db.close()
        self.readers, self.writer_db = [], None

    async def __aenter__(self) -> "SqliteStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run op in the next group commit; returns after COMMIT, or raises."""
        if self.writer_task is None:
            raise Unavailable("store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((op, fut))
        return await fut

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read on one of the reader connections."""
        if not self.readers:
            raise Unavailable("store is closed")
        self.next_reader = (self.next_reader + 1) % len(self.readers)
        try:
            return await self.call(self.readers[self.next_reader], op)
        except sqlite3.Error as exc:
            log.warning("store_read_failed", error=str(exc))
            raise Unavailable("storage is unavailable, retry") from exc

    async def write_loop(self) -> None:
        """Take every write waiting, commit them in one transaction, answer each."""
        assert self.writer_db is not None
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            live = [(op, fut) for op, fut in batch if not fut.cancelled()]
            try:
                results = await self.call(self.writer_db, functools.partial(apply_batch, ops=[op for op, _ in live]))
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
