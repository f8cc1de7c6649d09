"""SQL for sessions, messages, grants and the outbox: plain functions on a sqlite3 connection.

Each function runs inside a transaction its caller opened (the writer) or as a short read.
"""

from __future__ import annotations

import hashlib
import sqlite3

from contracts.models import ErrorInfo, Message, Session, Usage

from .base import NewSend, OutboxItem, PageKey, SessionState

SESSION_COLS = "id, document_id, user_id, created_at, updated_at, message_count"
MESSAGE_COLS = ("id, session_id, seq, role, content, status, created_at, updated_at, error_code, "
                "error_message, reply_to, model, input_tokens, output_tokens")


def session_of(row: tuple) -> Session:
    return Session(id=row[0], document_id=row[1], user_id=row[2], created_at=row[3], updated_at=row[4],
                   message_count=row[5])


def message_of(row: tuple) -> Message:
    return Message(
        id=row[0], session_id=row[1], seq=row[2], role=row[3], content=row[4], status=row[5],
        created_at=row[6], updated_at=row[7],
        error=ErrorInfo(code=row[8], message=row[9] or "") if row[8] else None,
        reply_to=row[10], model=row[11],
        usage=Usage(input_tokens=row[12], output_tokens=row[13]) if row[12] is not None else None,
    )


def find_session(db: sqlite3.Connection, uid: str, document_id: str) -> Session | None:
    row = db.execute(f"SELECT {SESSION_COLS} FROM sessions WHERE uid=? AND document_id=?",
                     (uid, document_id)).fetchone()
    return session_of(row) if row else None


def user_sub(db: sqlite3.Connection, uid: str) -> str:
    """The user's sub: learned from a grant or the auth callout, else the uid (equal when subject-safe)."""
    row = db.execute("SELECT sub FROM users WHERE uid=?", (uid,)).fetchone()
    return row[0] if row else uid


def remember_user(db: sqlite3.Connection, uid: str, sub: str) -> None:
    db.execute("INSERT INTO users (uid, sub) VALUES (?, ?) ON CONFLICT (uid) DO NOTHING", (uid, sub))
    db.execute("UPDATE sessions SET user_id=? WHERE uid=? AND user_id<>?", (sub, uid, sub))


def get_or_create_session(db: sqlite3.Connection, uid: str, document_id: str,
                          new_id: str, now: int) -> tuple[Session, bool]:
    found = find_session(db, uid, document_id)
    if found:
        return found, False
    user_id = user_sub(db, uid)
    db.execute("INSERT INTO sessions (id, user_id, uid, document_id, created_at, updated_at, message_count)"
               " VALUES (?, ?, ?, ?, ?, ?, 0)", (new_id, user_id, uid, document_id, now, now))
    return Session(id=new_id, document_id=document_id, user_id=user_id, created_at=now, updated_at=now,
                   message_count=0), True


def load_session(db: sqlite3.Connection, session_id: str) -> SessionState | None:
    row = db.execute(f"SELECT {SESSION_COLS}, uid FROM sessions WHERE id=?", (session_id,)).fetchone()
    if not row:
        return None
    last = db.execute("SELECT MAX(seq) FROM messages WHERE session_id=?", (session_id,)).fetchone()[0]
    return SessionState(session=session_of(row), uid=row[6], last_seq=last or 0)


def find_send(db: sqlite3.Connection, session_id: str, client_message_id: str) -> tuple[Message, Message] | None:
    user = db.execute(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=? AND client_message_id=?",
                      (session_id, client_message_id)).fetchone()
    if not user:
        return None
    reply = db.execute(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=? AND reply_to=? "
                       "ORDER BY seq LIMIT 1", (session_id, user[0])).fetchone()
    return message_of(user), message_of(reply)


def append_send(db: sqlite3.Connection, send: NewSend) -> None:
    user, reply = send.user, send.reply
    doc_hash = hashlib.sha256(send.document_xml.encode()).hexdigest()
    db.execute("INSERT OR IGNORE INTO documents (hash, xml) VALUES (?, ?)", (doc_hash, send.document_xml))
    outbox_id = db.execute("INSERT INTO outbox (subject, payload, dedup_id, created_at) VALUES (?, ?, ?, ?)",
                           (send.reply_subject, send.reply_payload, send.dedup_id, user.created_at)).lastrowid
    db.executemany(
        "INSERT INTO messages (id, session_id, seq, role, content, status, created_at, updated_at, reply_to,"
        " client_message_id, document_hash, turn) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(user.id, user.session_id, user.seq, user.role, user.content, user.status, user.created_at,
          user.updated_at, None, send.client_message_id, doc_hash, None),
         (reply.id, reply.session_id, reply.seq, reply.role, reply.content, reply.status, reply.created_at,
          reply.updated_at, reply.reply_to, None, None, outbox_id)])
    db.execute("UPDATE sessions SET message_count = message_count + 2, updated_at=? WHERE id=?",
               (reply.created_at, user.session_id))


def list_messages(db: sqlite3.Connection, session_id: str, after_seq: int, limit: int) -> tuple[list[Message], bool]:
    rows = db.execute(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=? AND seq>? ORDER BY seq LIMIT ?",
                      (session_id, after_seq, limit + 1)).fetchall()
    return [message_of(r) for r in rows[:limit]], len(rows) > limit


# One message as PROTOCOL.md's JSON, made by SQLite, null members left out. One printf over
# json_quote'd strings: twice as fast as json_patch('{}', json_object(...)), which parsed every
# object again to drop its nulls. json_quote escapes NUL, so printf's %s never meets one.
MESSAGE_JSON = """printf('{"id":%s,"sessionId":%s,"seq":%d,"role":%s,"content":%s,"status":%s,"createdAt":%d,\
"updatedAt":%d%s%s%s%s}',
    json_quote(id), json_quote(session_id), seq, json_quote(role), json_quote(content), json_quote(status),
    created_at, updated_at,
    CASE WHEN error_code IS NULL THEN '' ELSE printf(',"error":{"code":%s,"message":%s}',
        json_quote(error_code), json_quote(COALESCE(error_message, ''))) END,
    CASE WHEN reply_to IS NULL THEN '' ELSE ',"replyTo":' || json_quote(reply_to) END,
    CASE WHEN model IS NULL THEN '' ELSE ',"model":' || json_quote(model) END,
    CASE WHEN input_tokens IS NULL THEN '' ELSE printf(',"usage":{"inputTokens":%d,"outputTokens":%d}',
        input_tokens, output_tokens) END)"""


# Rowids stay while the schema version does: VACUUM, the only thing that renumbers them, moves it.
SCHEMA_VERSION = "SELECT schema_version FROM pragma_schema_version"


def unchanged(db: sqlite3.Connection, key: PageKey) -> bool:
    """Whether no message of the page with this key changed since the key was read: a change
    moves a message's rev up, so the sum of their revs moves too."""
    row = db.execute(f"SELECT COALESCE(SUM(rev), 0), ({SCHEMA_VERSION}) FROM messages"
                     " WHERE rowid IN (SELECT value FROM json_each(?))", (key.rowids,)).fetchone()
    return row[0] == key.revs and row[1] == key.schema


def messages_page(db: sqlite3.Connection, session_id: str, after_seq: int,
                  limit: int) -> tuple[bytes, bool, bool, PageKey]:
    """The `messages` reply's list as ready JSON (no Python objects per message), hasMore, whether every
    message on it is complete, and its key (PageKey, checked by `unchanged`)."""
    page = db.execute(
        "SELECT '[' || COALESCE(group_concat(j, ','), '') || ']', COUNT(*) = TOTAL(status='complete'),"
        " '[' || COALESCE(group_concat(CASE WHEN status<>'complete' THEN r END), '') || ']',"
        f" COALESCE(SUM(CASE WHEN status<>'complete' THEN rev END), 0), ({SCHEMA_VERSION})"
        f" FROM (SELECT {MESSAGE_JSON} AS j, status, rowid AS r, rev FROM messages"
        " WHERE session_id=? AND seq>? ORDER BY seq LIMIT ?)", (session_id, after_seq, limit)).fetchone()
    more = db.execute("SELECT 1 FROM messages WHERE session_id=? AND seq>? ORDER BY seq LIMIT 1 OFFSET ?",
                      (session_id, after_seq, limit)).fetchone()
    return page[0].encode(), more is not None, bool(page[1]), PageKey(page[2], page[3], page[4])


def get_message(db: sqlite3.Connection, message_id: str) -> Message | None:
    row = db.execute(f"SELECT {MESSAGE_COLS} FROM messages WHERE id=?", (message_id,)).fetchone()
    return message_of(row) if row else None


def grant(db: sqlite3.Connection, uid: str, sub: str, document_id: str, role: str, now: int) -> None:
    remember_user(db, uid, sub)
    db.execute("INSERT INTO grants (uid, document_id, role, created_at) VALUES (?, ?, ?, ?)"
               " ON CONFLICT (uid, document_id) DO UPDATE SET role=excluded.role",
               (uid, document_id, role, now))


def revoke(db: sqlite3.Connection, uid: str, document_id: str) -> None:
    db.execute("DELETE FROM grants WHERE uid=? AND document_id=?", (uid, document_id))


def has_grant(db: sqlite3.Connection, uid: str, document_id: str) -> bool:
    return db.execute("SELECT 1 FROM grants WHERE uid=? AND document_id=?",
                      (uid, document_id)).fetchone() is not None


def outbox_pending(db: sqlite3.Connection, limit: int) -> list[OutboxItem]:
    rows = db.execute("SELECT id, subject, payload, dedup_id FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
    return [OutboxItem(r[0], r[1], bytes(r[2]), r[3]) for r in rows]


def outbox_done(db: sqlite3.Connection, ids: list[int]) -> None:
    db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])


def unfinished_replies(db: sqlite3.Connection, uid: str) -> int:
    """How many of the user's assistant messages are pending or streaming, over all their sessions."""
    return db.execute("SELECT COUNT(*) FROM messages m JOIN sessions s ON s.id = m.session_id"
                      " WHERE s.uid=? AND m.role='assistant' AND m.status IN ('pending', 'streaming')",
                      (uid,)).fetchone()[0]


def usage(db: sqlite3.Connection, uid: str, from_ms: int, to_ms: int | None) -> tuple[int, int, int]:
    """(input tokens, output tokens, replies) summed over the user's assistant messages with usage
    whose updated_at is in [from_ms, to_ms); to_ms None means no upper bound."""
    row = db.execute("SELECT COALESCE(SUM(m.input_tokens), 0), COALESCE(SUM(m.output_tokens), 0), COUNT(*)"
                     " FROM messages m JOIN sessions s ON s.id = m.session_id"
                     " WHERE s.uid=? AND m.role='assistant' AND m.input_tokens IS NOT NULL"
                     " AND m.updated_at >= ? AND (? IS NULL OR m.updated_at < ?)",
                     (uid, from_ms, to_ms, to_ms)).fetchone()
    return row[0], row[1], row[2]
