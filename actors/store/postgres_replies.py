"""The assistant's replies on PostgreSQL: the rules of replies.py (leases, turn order, cancel and retry)."""

from __future__ import annotations

from asyncpg import Connection

from contracts.models import Message

from .base import Claim, ReplyContext
from .postgres_rows import MESSAGE_COLS, count, get_message, message_of, pack, unpack

UNFINISHED = "('pending', 'streaming')"


async def claim(db: Connection, message_id: str, token: str, now: int, lease_ms: int, max_attempts: int) -> Claim:
    """Take the lease on a reply if it is free and its turn has come; say why not otherwise."""
    # SKIP LOCKED: a row another transaction is writing (a claim from another host, its worker's
    # progress) means someone has the reply now. Waiting for it held this whole group commit, every
    # other reply's lease renewal with it, and two hosts' batches could deadlock on each other.
    row = await db.fetchrow("SELECT session_id, status, claim_until, turn, attempts, role FROM messages WHERE id=$1"
                            " FOR UPDATE SKIP LOCKED", message_id)
    if row is None:
        status = await db.fetchval("SELECT status FROM messages WHERE id=$1 AND role='assistant'", message_id)
        return Claim(state="busy" if status in ("pending", "streaming") else "gone")
    if row[5] != "assistant" or row[1] not in ("pending", "streaming"):
        return Claim(state="gone")
    session_id, status, claim_until, turn, attempts, _ = row
    if claim_until is not None and claim_until >= now:
        return Claim(state="busy", retry_in_ms=claim_until - now + 1)
    earlier = await db.fetchval(f"SELECT 1 FROM messages WHERE session_id=$1 AND role='assistant'"
                                f" AND status IN {UNFINISHED} AND turn < $2 LIMIT 1", session_id, turn)
    if earlier:
        return Claim(state="blocked")
    if attempts >= max_attempts:
        return Claim(state="exhausted")
    # A reply taken over from a vanished worker starts again from nothing.
    await db.execute("UPDATE messages SET claim_token=$2, claim_until=$3, attempts=attempts+1, status='pending',"
                     " content='', updated_at=$4 WHERE id=$1", message_id, token, now + lease_ms, now)
    return Claim(state="claimed", restarted=status == "streaming" or attempts > 0,
                 context=await context(db, message_id))


async def context(db: Connection, message_id: str, limit: int = 20) -> ReplyContext:
    """The document of the send a reply answers, and the last `limit` complete messages up to its user message."""
    reply = await get_message(db, message_id)
    assert reply is not None and reply.reply_to is not None
    user = await db.fetchrow("SELECT seq, document_hash FROM messages WHERE id=$1", reply.reply_to)
    xml = await db.fetchval("SELECT xml FROM documents WHERE hash=$1", user[1])
    found = await db.fetch(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=$1 AND status='complete'"
                           " AND seq<=$2 ORDER BY seq DESC LIMIT $3", reply.session_id, user[0], limit)
    return ReplyContext(reply=reply, document_xml=unpack(xml) if xml is not None else "",
                        conversation=[message_of(r) for r in reversed(found)])


async def progress(db: Connection, message_id: str, token: str, content: str, now: int, lease_ms: int,
                   streaming: bool) -> bool:
    """Store the content so far and renew the lease; False if the claim was lost."""
    status = await db.execute("UPDATE messages SET status=$3, content=$4, updated_at=$5, claim_until=$6"
                              f" WHERE id=$1 AND claim_token=$2 AND status IN {UNFINISHED}",
                              message_id, token, "streaming" if streaming else "pending", pack(content), now,
                              now + lease_ms)
    return count(status) == 1


async def finish(db: Connection, message_id: str, token: str | None, status: str, content: str, now: int,
                 error: tuple[str, str] | None = None, model: str | None = None,
                 usage: tuple[int, int] | None = None) -> Message | None:
    """End a reply once: only the claim holder (or, with token None, anyone while it is unclaimed)."""
    guard = "claim_token=$10" if token is not None else "(claim_until IS NULL OR claim_until<$10::bigint)"
    done = await db.execute(
        "UPDATE messages SET status=$2, content=$3, updated_at=$4, error_code=$5, error_message=$6, model=$7,"
        " input_tokens=$8, output_tokens=$9, claim_token=NULL, claim_until=NULL"
        f" WHERE id=$1 AND status IN {UNFINISHED} AND {guard}",
        message_id, status, pack(content), now, error[0] if error else None, pack(error[1]) if error else None,
        model, usage[0] if usage else None, usage[1] if usage else None, token if token is not None else now)
    return await get_message(db, message_id) if count(done) == 1 else None


async def release(db: Connection, message_id: str, token: str) -> None:
    """Give a claim up at once (shutdown), so another worker may take the reply over."""
    await db.execute("UPDATE messages SET claim_until=0 WHERE id=$1 AND claim_token=$2", message_id, token)


async def next_in_session(db: Connection, session_id: str) -> str | None:
    """The unfinished reply of a session whose turn is next."""
    return await db.fetchval(f"SELECT id FROM messages WHERE session_id=$1 AND role='assistant'"
                             f" AND status IN {UNFINISHED} ORDER BY turn LIMIT 1", session_id)


async def retry(db: Connection, message_id: str, now: int, subject: str, payload: bytes,
                dedup_id: str) -> Message | None:
    """Put a failed or cancelled reply back to pending at the end of its session's queue."""
    turn = await db.fetchval("INSERT INTO outbox (subject, payload, dedup_id, created_at) VALUES ($1, $2, $3, $4)"
                             " RETURNING id", subject, payload, dedup_id, now)
    done = await db.execute("UPDATE messages SET status='pending', content='', error_code=NULL, error_message=NULL,"
                            " model=NULL, input_tokens=NULL, output_tokens=NULL, updated_at=$2, turn=$3, attempts=0,"
                            " claim_token=NULL, claim_until=NULL WHERE id=$1 AND status IN ('failed', 'cancelled')",
                            message_id, now, turn)
    if count(done) != 1:
        await db.execute("DELETE FROM outbox WHERE id=$1", turn)
        return None
    return await get_message(db, message_id)


async def stuck(db: Connection, now: int, older_than_ms: int, limit: int) -> list[tuple[str, str, str]]:
    """(session id, message id, uid) of the first unfinished reply of sessions where nobody holds a lease."""
    found = await db.fetch(
        "SELECT m.session_id, m.id, s.uid FROM messages m JOIN sessions s ON s.id = m.session_id"
        f" WHERE m.role='assistant' AND m.status IN {UNFINISHED} AND m.updated_at < $1"
        " AND (m.claim_until IS NULL OR m.claim_until < $2)"
        f" AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.session_id=m.session_id AND o.role='assistant'"
        f"                 AND o.status IN {UNFINISHED} AND o.turn < m.turn)"
        " ORDER BY m.updated_at LIMIT $3", now - older_than_ms, now, limit)
    return [(r[0], r[1], r[2]) for r in found]
