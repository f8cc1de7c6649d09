"""SQL of the assistant's replies: claim one, read its context, save progress, end it; cancel and retry.

A claim is a lease (claim_token, claim_until) on one assistant message. Replies of one session run
in `turn` order: a message can be claimed only when no earlier-turn reply of its session is unfinished.
"""

from __future__ import annotations

import sqlite3

from contracts.models import Message

from .base import Claim, ReplyContext
from .rows import MESSAGE_COLS, get_message, message_of

UNFINISHED = "('pending', 'streaming')"


def claim(db: sqlite3.Connection, message_id: str, token: str, now: int, lease_ms: int, max_attempts: int) -> Claim:
    """Take the lease on a reply if it is free and its turn has come; say why not otherwise."""
    row = db.execute("SELECT session_id, status, claim_until, turn, attempts, role FROM messages WHERE id=?",
                     (message_id,)).fetchone()
    if row is None or row[5] != "assistant" or row[1] not in ("pending", "streaming"):
        return Claim(state="gone")
    session_id, status, claim_until, turn, attempts, _ = row
    if claim_until is not None and claim_until >= now:
        return Claim(state="busy", retry_in_ms=claim_until - now + 1)
    earlier = db.execute(f"SELECT 1 FROM messages WHERE session_id=? AND role='assistant' AND status IN {UNFINISHED}"
                         " AND turn < ? LIMIT 1", (session_id, turn)).fetchone()
    if earlier:
        return Claim(state="blocked")
    if attempts >= max_attempts:
        return Claim(state="exhausted")
    # A reply taken over from a vanished worker starts again from nothing.
    db.execute("UPDATE messages SET claim_token=?, claim_until=?, attempts=attempts+1, status='pending', content='',"
               " updated_at=?, rev=rev+1 WHERE id=?", (token, now + lease_ms, now, message_id))
    return Claim(state="claimed", restarted=status == "streaming" or attempts > 0, context=context(db, message_id))


def context(db: sqlite3.Connection, message_id: str, limit: int = 20) -> ReplyContext:
    """The document of the send a reply answers, and the last `limit` complete messages up to its user message."""
    reply = get_message(db, message_id)
    assert reply is not None and reply.reply_to is not None
    user = db.execute("SELECT seq, document_hash FROM messages WHERE id=?", (reply.reply_to,)).fetchone()
    doc = db.execute("SELECT xml FROM documents WHERE hash=?", (user[1],)).fetchone()
    rows = db.execute(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=? AND status='complete' AND seq<=?"
                      " ORDER BY seq DESC LIMIT ?", (reply.session_id, user[0], limit)).fetchall()
    return ReplyContext(reply=reply, document_xml=doc[0] if doc else "",
                        conversation=[message_of(r) for r in reversed(rows)])


def progress(db: sqlite3.Connection, message_id: str, token: str, content: str, now: int, lease_ms: int,
             streaming: bool) -> bool:
    """Store the content so far and renew the lease; False if the claim was lost."""
    cur = db.execute("UPDATE messages SET status=?, content=?, updated_at=?, claim_until=?, rev=rev+1"
                     f" WHERE id=? AND claim_token=? AND status IN {UNFINISHED}",
                     ("streaming" if streaming else "pending", content, now, now + lease_ms, message_id, token))
    return cur.rowcount == 1


def finish(db: sqlite3.Connection, message_id: str, token: str | None, status: str, content: str, now: int,
           error: tuple[str, str] | None = None, model: str | None = None,
           usage: tuple[int, int] | None = None) -> Message | None:
    """End a reply once: only the claim holder (or, with token None, anyone while it is unclaimed)."""
    guard = "claim_token=?" if token is not None else "(claim_until IS NULL OR claim_until<?)"
    cur = db.execute(
        "UPDATE messages SET status=?, content=?, updated_at=?, error_code=?, error_message=?, model=?,"
        " input_tokens=?, output_tokens=?, claim_token=NULL, claim_until=NULL, rev=rev+1"
        f" WHERE id=? AND status IN {UNFINISHED} AND {guard}",
        (status, content, now, error[0] if error else None, error[1] if error else None, model,
         usage[0] if usage else None, usage[1] if usage else None, message_id, token if token is not None else now))
    return get_message(db, message_id) if cur.rowcount == 1 else None


def release(db: sqlite3.Connection, message_id: str, token: str) -> None:
    """Give a claim up at once (shutdown), so another worker may take the reply over."""
    db.execute("UPDATE messages SET claim_until=0 WHERE id=? AND claim_token=?", (message_id, token))


def next_in_session(db: sqlite3.Connection, session_id: str) -> str | None:
    """The unfinished reply of a session whose turn is next."""
    row = db.execute(f"SELECT id FROM messages WHERE session_id=? AND role='assistant' AND status IN {UNFINISHED}"
                     " ORDER BY turn LIMIT 1", (session_id,)).fetchone()
    return row[0] if row else None


def retry(db: sqlite3.Connection, message_id: str, now: int, subject: str, payload: bytes, dedup_id: str) -> Message | None:
    """Put a failed or cancelled reply back to pending at the end of its session's queue."""
    turn = db.execute("INSERT INTO outbox (subject, payload, dedup_id, created_at) VALUES (?, ?, ?, ?)",
                      (subject, payload, dedup_id, now)).lastrowid
    cur = db.execute("UPDATE messages SET status='pending', content='', error_code=NULL, error_message=NULL,"
                     " model=NULL, input_tokens=NULL, output_tokens=NULL, updated_at=?, turn=?, attempts=0,"
                     " claim_token=NULL, claim_until=NULL, rev=rev+1 WHERE id=? AND status IN ('failed', 'cancelled')",
                     (now, turn, message_id))
    if cur.rowcount != 1:
        db.execute("DELETE FROM outbox WHERE id=?", (turn,))
        return None
    return get_message(db, message_id)


def stuck(db: sqlite3.Connection, now: int, older_than_ms: int, limit: int) -> list[tuple[str, str, str]]:
    """(session id, message id, uid) of the first unfinished reply of sessions where nobody holds a lease."""
    rows = db.execute(
        "SELECT m.session_id, m.id, s.uid FROM messages m JOIN sessions s ON s.id = m.session_id"
        f" WHERE m.role='assistant' AND m.status IN {UNFINISHED} AND m.updated_at < ?"
        " AND (m.claim_until IS NULL OR m.claim_until < ?)"
        f" AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.session_id=m.session_id AND o.role='assistant'"
        f"                 AND o.status IN {UNFINISHED} AND o.turn < m.turn)"
        " ORDER BY m.updated_at LIMIT ?", (now - older_than_ms, now, limit)).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]
