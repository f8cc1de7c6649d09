"""SQLite store: WAL, synchronous=FULL, one group-committing writer and a few readers."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiosqlite
import structlog

from contracts.errors import Unavailable

from . import replies as sqlite_replies, rows as sqlite_rows
from .base import PageKey, StoredPage
from .batched import BatchedStore

T = TypeVar("T")
log = structlog.get_logger("store")
SCHEMA = (Path(__file__).parent / "schema.sql").read_text()


def run_in_thread(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> "asyncio.Future[T]":
    """Run fn(sqlite3 connection) on the aiosqlite connection's own thread: one hop for many statements."""
    return db._execute(lambda: fn(db._conn))  # noqa: SLF001 - aiosqlite has no public call for this


BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's write lock before it fails
INLINE_MAX_CHARS = 512 * 1024  # a batch writing more text (about 4 ms of the loop) commits on the writer's thread


def pragmas(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA cache_size=-65536")
    sync = db.execute("PRAGMA synchronous").fetchone()[0]
    if sync != 2:
        raise RuntimeError(f"SQLite refused synchronous=FULL (got {sync})")


def migrate(db: sqlite3.Connection) -> None:
    """Bring a file made by an earlier docchat up to SCHEMA's tables before SCHEMA runs."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if columns and "rev" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN rev INTEGER NOT NULL DEFAULT 0")


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


def waiting_for_lock(batch: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
    """batch(db) allowed to wait BUSY_TIMEOUT_MS for the write lock (the inline writer never waits)."""
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        return batch(db)
    finally:
        db.execute("PRAGMA busy_timeout=0")


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLite would have had to wait for another connection's lock."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class SqliteStore(BatchedStore):
    """The embedded store. `async with SqliteStore(path)` opens, migrates and starts the writer."""

    rows = sqlite_rows
    replies = sqlite_replies

    def __init__(self, path: Path, readers: int = 2, inline: bool = False, inline_writes: bool = True) -> None:
        self.path = Path(path)
        self.inline = inline  # run reads on the event loop thread too: no thread hop, the loop waits for them
        # Group commits on the event loop thread while the write lock is free (see commit).
        self.inline_writes = inline_writes or inline
        self.reader_count = readers
        self.writer_db: aiosqlite.Connection | None = None
        self.readers: list[aiosqlite.Connection] = []
        self.next_reader = 0
        self.checker: sqlite3.Connection | None = None  # checks page keys (messages_page)
        super().__init__()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer_db = await aiosqlite.connect(self.path, isolation_level=None,
                                                 check_same_thread=not self.inline_writes)
        await run_in_thread(self.writer_db, pragmas)
        await run_in_thread(self.writer_db, migrate)
        await run_in_thread(self.writer_db, lambda db: db.executescript(SCHEMA))
        if self.inline_writes:  # never wait on the event loop: a busy lock sends the batch to the thread
            await run_in_thread(self.writer_db, lambda db: db.execute("PRAGMA busy_timeout=0"))
        for _ in range(self.reader_count):
            reader = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=not self.inline)
            await run_in_thread(reader, pragmas)
            self.readers.append(reader)
        self.checker = sqlite3.connect(self.path, isolation_level=None)  # on the event loop: never waits
        self.checker.execute("PRAGMA busy_timeout=0")
        self.checker.execute("PRAGMA query_only=1")
        self.start_writer("sqlite-writer")
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
        await self.stop_writer()
        for db in [*self.readers, self.writer_db]:
            if db is not None:
                await db.close()
        self.readers, self.writer_db = [], None
        if self.checker is not None:
            self.checker.close()
            self.checker = None

    async def __aenter__(self) -> "SqliteStore":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def messages_page(self, session_id: str, after_seq: int, limit: int,
                            known: PageKey | None = None) -> StoredPage:
        """As BatchedStore's, but no list (None) while a known key holds. It is checked right here:
        its few lookups by rowid cost the event loop less than a trip to a reader thread and back."""
        if known is not None and self.checker is not None:
            try:
                if sqlite_rows.unchanged(self.checker, known):
                    return StoredPage(None, False, False, known)
            except sqlite3.Error:  # busy (it never waits) or failing: a reader reads the page again
                pass
        return await super().messages_page(session_id, after_seq, limit)

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

    async def commit(self, ops: list[Callable[[sqlite3.Connection], Any]], size: int) -> list[Any]:
        """Every op in one transaction on the writer connection (apply_batch).

        With inline writes it runs right here, on the event loop, which waits for its fsync: two thread
        hops per commit cost more (about a quarter of the service's CPU at 400 sends/s). Not so a batch
        of more than INLINE_MAX_CHARS (large documents: 8 sends of 2 MiB held the loop about 0.1 s), nor a
        batch that would wait for a lock: SQLite never waits here, so when another process holds the
        write lock BEGIN fails at once, nothing is written, and the batch waits on the writer's thread."""
        assert self.writer_db is not None
        batch = functools.partial(apply_batch, ops=ops)
        if not self.inline_writes:
            return await run_in_thread(self.writer_db, batch)
        if size <= INLINE_MAX_CHARS:
            try:
                return batch(self.writer_db._conn)  # noqa: SLF001 - same connection, its thread idle
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            log.debug("store_write_waits_for_lock")  # each batch that meets another process's lock
        return await run_in_thread(self.writer_db, functools.partial(waiting_for_lock, batch))
