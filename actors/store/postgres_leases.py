"""Partition leases and the fence on PostgreSQL: the database's clock decides who holds what."""

from __future__ import annotations

from asyncpg import Connection

from contracts.errors import NotOwner

MS = "* interval '1 millisecond'"


async def heartbeat(db: Connection, host: str, ttl_ms: int) -> int:
    """Mark host alive; returns how many hosts were seen within ttl_ms."""
    await db.execute("INSERT INTO hosts (id, seen_at) VALUES ($1, clock_timestamp())"
                     " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at", host)
    await db.execute("DELETE FROM hosts WHERE seen_at < clock_timestamp() - interval '1 hour'")
    return await db.fetchval(f"SELECT count(*) FROM hosts WHERE seen_at > clock_timestamp() - $1 {MS}", ttl_ms)


async def renew(db: Connection, host: str, held: dict[int, int], ttl_ms: int) -> set[int]:
    """Extend the leases host holds at these epochs; returns the partitions still held."""
    found = await db.fetch(
        f"UPDATE partition_lease l SET expires_at = clock_timestamp() + $2 {MS}"
        " FROM unnest($3::int[], $4::bigint[]) AS h(p, epoch)"
        " WHERE l.p = h.p AND l.epoch = h.epoch AND l.owner = $1 RETURNING l.p",
        host, ttl_ms, list(held), list(held.values()))
    return {r[0] for r in found}


async def acquire_one(db: Connection, host: str, ttl_ms: int) -> tuple[int, int] | None:
    """Take one free or expired lease, in its own transaction; (partition, new epoch) or None.

    The fence row is updated last: it waits for the last owner's open write (lock_timeout bounds the
    wait; the partition is tried again next tick). One partition per transaction: no lock cycles."""
    async with db.transaction():
        await db.execute("SET LOCAL lock_timeout = '500ms'")
        row = await db.fetchrow(
            f"UPDATE partition_lease l SET owner = $1, epoch = l.epoch + 1, expires_at = clock_timestamp() + $2 {MS}"
            " WHERE l.p = (SELECT p FROM partition_lease WHERE expires_at < clock_timestamp()"
            "              ORDER BY p LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING l.p, l.epoch", host, ttl_ms)
        if row is None:
            return None
        await db.execute("UPDATE partition_fence SET epoch = $2 WHERE p = $1", row[0], row[1])
        return row[0], row[1]


async def release(db: Connection, host: str, partition: int, epoch: int) -> None:
    """Free a lease at once (after its actors are drained), if host still holds it at epoch."""
    await db.execute("UPDATE partition_lease SET owner = NULL, expires_at = 'epoch'"
                     " WHERE p = $1 AND epoch = $2 AND owner = $3", partition, epoch, host)


async def goodbye(db: Connection, host: str) -> None:
    await db.execute("DELETE FROM hosts WHERE id = $1", host)


async def check(db: Connection, partition: int, epoch: int) -> None:
    """The fence: raise unless the lease still has epoch; the row stays share-locked until COMMIT,
    so a host taking the lease waits for (or skips past) this transaction and never overlaps it."""
    now = await db.fetchval("SELECT epoch FROM partition_fence WHERE p = $1 FOR SHARE", partition)
    if now != epoch:
        raise NotOwner("this partition moved to another host")
