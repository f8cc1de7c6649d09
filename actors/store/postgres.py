"""PostgreSQL store (asyncpg): one group-committing writer connection, reads on a small pool.

The same interface and results as SqliteStore. Every write waits in one queue; the writer runs all
that wait in one transaction, each op under its own savepoint so a failing op fails alone, and
answers only after COMMIT (synchronous_commit=on: the WAL is flushed first).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import asyncpg
import structlog

from contracts.errors import Unavailable

from . import postgres_leases, postgres_replies, postgres_rows
from .base import Store
from .batched import BatchedStore

T = TypeVar("T")
Op = Callable[[asyncpg.Connection], Awaitable[Any]]
log = structlog.get_logger("store")
SCHEMA = (Path(__file__).parent / "postgres_schema.sql").read_text()
# Re-running SCHEMA is not free even when nothing changes: CREATE INDEX IF NOT EXISTS share-locks messages
# and ALTER TABLE ... IF NOT EXISTS takes outbox's exclusive lock, stalling (and deadlocking with) every
# running host's writes. So a host applies it only when this digest of it is not recorded yet.
SCHEMA_DIGEST = hashlib.sha256(SCHEMA.encode()).hexdigest()
CONNECT_TIMEOUT = 5.0  # seconds; a database that does not answer is Unavailable, not a hang
COMMAND_TIMEOUT = 30.0
SETTINGS = {"synchronous_commit": "on", "application_name": "docchat"}
# The writer's: a host frozen inside a transaction loses its connection, and the row locks that
# hold back a new partition owner, sooner than its lease runs out (3 s by default); and no op waits
# for a row lock longer than that (it answers 503 instead of holding up the whole batch).
WRITER_SETTINGS = {**SETTINGS, "idle_in_transaction_session_timeout": "2000", "lock_timeout": "2000"}
# SQLSTATE classes that condemn the whole transaction, not one op: connection, resources, operator, system.
FAULT_CLASSES = ("08", "53", "57", "58", "XX")
# An op that met another transaction (deadlock, serialization, lock timeout): nothing of it is
# stored and trying again is the cure, so its caller gets 503, not 500.
TRANSIENT_STATES = ("40001", "40P01", "55P03")


def transient(exc: Exception) -> Exception:
    """The error a caller sees for an op's exception: Unavailable when retrying would work."""
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in TRANSIENT_STATES:
        return Unavailable("storage is busy, retry")
    return exc


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
                results.append(transient(exc))
    return results


class PostgresStore(BatchedStore):
    """The shared store. `async with PostgresStore(url)` connects, migrates and starts the writer."""

    rows = postgres_rows
    replies = postgres_replies

    def __init__(self, url: str, readers: int = 4) -> None:
        self.url = url
        self.reader_count = readers
        self.pool: asyncpg.Pool | None = None
        self.writer_db: asyncpg.Connection | None = None
        super().__init__()

    async def open(self) -> None:
        try:
            self.writer_db = await self.connect()
            async with self.writer_db.transaction():
                await self.writer_db.execute("SELECT pg_advisory_xact_lock(7366323)")  # one migrating host at a time
                await migrate(self.writer_db)
            sync = await self.writer_db.fetchval("SHOW synchronous_commit")
            if sync != "on":
                raise RuntimeError(f"PostgreSQL refused synchronous_commit=on (got {sync})")
            self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.reader_count,
                                                  server_settings=SETTINGS, timeout=CONNECT_TIMEOUT,
                                                  command_timeout=COMMAND_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        self.start_writer("postgres-writer")
        log.info("store_opened", database="postgresql", synchronous_commit=sync)

    async def connect(self) -> asyncpg.Connection:
        """A new connection with the store's session settings (the writer's)."""
        return await asyncpg.connect(self.url, server_settings=WRITER_SETTINGS, timeout=CONNECT_TIMEOUT,
                                     command_timeout=COMMAND_TIMEOUT)

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        await self.stop_writer()
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

    async def commit(self, ops: list[Op], size: int = 0) -> list[Any]:
        """apply_batch on the writer connection, reconnecting first if the last one broke (size: unused)."""
        if self.writer_db is None or self.writer_db.is_closed():
            self.writer_db = await self.connect()
        try:
            return await apply_batch(self.writer_db, ops)
        except BaseException:
            self.writer_db.terminate()  # its state is unknown: the next batch starts on a new connection
            self.writer_db = None
            raise

    # Partition leases (LeaseStore), each call its own short transaction on a pooled connection.
    async def heartbeat(self, host: str, ttl_ms: int) -> int:
        return await self.read(lambda db: in_transaction(db, postgres_leases.heartbeat, host, ttl_ms))

    async def renew(self, host: str, held: dict[int, int], ttl_ms: int) -> set[int]:
        return await self.read(lambda db: postgres_leases.renew(db, host, held, ttl_ms))

    async def acquire(self, host: str, count: int, ttl_ms: int) -> dict[int, int]:
        async def take(db: asyncpg.Connection) -> dict[int, int]:
            won: dict[int, int] = {}
            for _ in range(count):
                try:
                    got = await postgres_leases.acquire_one(db, host, ttl_ms)
                except asyncpg.LockNotAvailableError:  # its last owner is still writing: next tick
                    break  # (the next try would pick the same partition and wait again)
                if got is None:
                    break
                won[got[0]] = got[1]
            return won

        return await self.read(take)

    async def release(self, host: str, partition: int, epoch: int) -> None:
        await self.read(lambda db: postgres_leases.release(db, host, partition, epoch))

    async def goodbye(self, host: str) -> None:
        await self.read(lambda db: postgres_leases.goodbye(db, host))

    def fenced(self, partition: int, epoch: int) -> Store:
        return FencedStore(self, partition, epoch)


async def migrate(db: asyncpg.Connection) -> None:
    """Apply SCHEMA unless a host already applied this very text (the caller holds the migration lock)."""
    applied = await db.fetchval("SELECT to_regclass('schema_applied') IS NOT NULL")
    if applied and await db.fetchval("SELECT 1 FROM schema_applied WHERE digest = $1", SCHEMA_DIGEST):
        return
    await db.execute(SCHEMA)
    await db.execute("CREATE TABLE IF NOT EXISTS schema_applied (digest TEXT PRIMARY KEY)")
    await db.execute("INSERT INTO schema_applied (digest) VALUES ($1) ON CONFLICT DO NOTHING", SCHEMA_DIGEST)


async def in_transaction(db: asyncpg.Connection, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    async with db.transaction():
        return await fn(db, *args)


class FencedStore(BatchedStore):
    """A PostgresStore whose every write first checks, in its own transaction, that the lease of one
    partition still has the epoch this host took it with (postgres_leases.check)."""

    def __init__(self, base: PostgresStore, partition: int, epoch: int) -> None:
        self.base, self.partition, self.epoch = base, partition, epoch
        self.rows, self.replies = base.rows, base.replies

    async def read(self, op: Op) -> Any:
        return await self.base.read(op)

    async def write(self, op: Op, size: int = 0) -> Any:
        async def fenced(db: asyncpg.Connection) -> Any:
            await postgres_leases.check(db, self.partition, self.epoch)
            return await op(db)

        return await self.base.write(fenced, size)
