"""SQLite cannot write (disk full, read-only files, database locked): a send answers 503, leaves nothing half-stored,
and the service works again as soon as the fault goes, without a restart."""

from __future__ import annotations

import asyncio
import resource
import sqlite3

import pytest

from contracts.errors import Unavailable
from tests.procs import DocchatProcess, check_history, wait_settled


@pytest.fixture
async def service(nats_server, tmp_path, nc, admin, user):
    """A `docchat serve` process on its own SQLite file, with one session of alice's ready."""
    db_path = tmp_path / "docchat.db"
    proc = await DocchatProcess.serve(nats_server.url, db_path)
    try:
        await proc.ready(nc)
        await admin.grant("doc", "alice")
        alice = user("alice")
        alice.timeout = 20.0
        sid = (await alice.get_or_create("doc")).session.id
        await alice.send(sid, "before the fault", "<doc/>")
        yield proc, db_path, alice, sid
    finally:
        await proc.kill()


def stored(db_path) -> tuple[int, int]:
    """(messages, outbox rows ever written), read from outside the service."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        made = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return db.execute("SELECT count(*) FROM messages").fetchone()[0], made[0] if made else 0
    finally:
        db.close()


async def recovers(alice, sid: str, db_path) -> None:
    """After the fault: sends work again, the history has no gap and every reply ends."""
    await alice.send(sid, "after the fault", "<doc/>")
    history = await wait_settled(alice, sid)
    check_history(history, {})
    assert [m.content for m in history if m.role == "user"] == ["before the fault", "after the fault"]
    assert all(m.status == "complete" for m in history)


async def test_disk_full_answers_503_stores_nothing_and_recovers(service):
    proc, db_path, alice, sid = service
    await wait_settled(alice, sid)
    before = stored(db_path)
    # "Disk full" for the service process alone: RLIMIT_FSIZE makes any write past 64 KiB of a file
    # fail with EFBIG, which SQLite reports as SQLITE_FULL (Python ignores SIGXFSZ). Only the soft
    # limit is lowered, so no privilege is needed.
    _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        for i in range(3):
            with pytest.raises(Unavailable):
                await alice.send(sid, f"too big to store {i}", "x" * 1_500_000)
        assert stored(db_path) == before, "a refused send left something behind"
        assert [m.content for m in (await alice.messages(sid)).messages if m.role == "user"] == ["before the fault"]
    finally:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    await recovers(alice, sid, db_path)


async def test_database_locked_longer_than_busy_timeout_answers_503_and_recovers(service):
    proc, db_path, alice, sid = service
    await wait_settled(alice, sid)
    before = stored(db_path)
    # Another process holds the write lock for longer than the service's busy_timeout (5 s).
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Unavailable):
            await alice.send(sid, "while locked", "<doc/>")
        # Reads still work while writes are refused (WAL).
        assert len((await alice.messages(sid)).messages) == 2
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert stored(db_path) == before
    await recovers(alice, sid, db_path)


async def test_read_only_database_files_answer_503_store_nothing_and_recover(service):
    proc, db_path, alice, sid = service
    await wait_settled(alice, sid)
    before = stored(db_path)
    # Read-only for root too: the immutable attribute (chattr +i) refuses every write, even root's.
    files = [p for p in (db_path, db_path.with_name(db_path.name + "-wal")) if p.exists()]
    run = await asyncio.create_subprocess_exec("chattr", "+i", *map(str, files))
    assert await run.wait() == 0, "chattr +i failed: the test needs an ext2/3/4 temp directory"
    try:
        for i in range(2):
            with pytest.raises(Unavailable):
                await alice.send(sid, f"while read-only {i}", "<doc/>")
        assert len((await alice.messages(sid)).messages) == 2  # reads still work
    finally:
        run = await asyncio.create_subprocess_exec("chattr", "-i", *map(str, files))
        await run.wait()
    assert stored(db_path) == before
    await recovers(alice, sid, db_path)
