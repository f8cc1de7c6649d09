"""SQL for sessions, messages, grants and the outbox on PostgreSQL: async functions on an asyncpg connection.

The same rules as rows.py. PostgreSQL text cannot hold U+0000, so client-chosen text is stored through
`pack` (U+0000 → U+FFFF "0", U+FFFF → U+FFFF "F") and read back through `unpack`.
"""

from __future__ import annotations

import hashlib

import msgspec
from asyncpg import Connection

from contracts.models import Message, Session

from . import rows
from .base import NewSend, OutboxItem, SessionState

ESC = "\uffff"
SESSION_COLS = rows.SESSION_COLS
MESSAGE_COLS = rows.MESSAGE_COLS


def pack(text: str | None) -> str | None:
    """Text PostgreSQL can store, reversibly (see the module docstring)."""
    if text is None or ("\x00" not in text and ESC not in text):
        return text
    return text.replace(ESC, ESC + "F").replace("\x00", ESC + "0")


def unpack(text: str) -> str:
    """The text `pack` was given."""
    if ESC not in text:
        return text
    return text.replace(ESC + "0", "\x00").replace(ESC + "F", ESC)


def count(status: str) -> int:
    """Rows touched, from a command status such as "UPDATE 1"."""
    return int(status.rsplit(" ", 1)[-1])


def session_of(row) -> Session:
    """A Session from a row of SESSION_COLS, its client-chosen text unpacked."""
    s = rows.session_of(row)
    if ESC in s.document_id or ESC in s.user_id:
        s = msgspec.structs.replace(s, document_id=unpack(s.document_id), user_id=unpack(s.user_id))
    return s


def message_of(row) -> Message:
    """A Message from a row of MESSAGE_COLS, its content and error text unpacked."""
    m = rows.message_of(row)
    if ESC in m.content or (m.error is not None and ESC in m.error.message):
        error = m.error and msgspec.structs.replace(m.error, message=unpack(m.error.message))
        m = msgspec.structs.replace(m, content=unpack(m.content), error=error)
    return m


async def find_session(db: Connection, uid: str, document_id: str) -> Session | None:
    row = await db.fetchrow(f"SELECT {SESSION_COLS} FROM sessions WHERE uid=$1 AND document_id=$2",
                            uid, pack(document_id))
    return session_of(row) if row else None


async def user_sub(db: Connection, uid: str) -> str:
    """The user's sub: learned from a grant or the auth callout, else the uid."""
    sub = await db.fetchval("SELECT sub FROM users WHERE uid=$1", uid)
    return unpack(sub) if sub is not None else uid


async def remember_user(db: Connection, uid: str, sub: str) -> None:
    await db.execute("INSERT INTO users (uid, sub) VALUES ($1, $2) ON CONFLICT (uid) DO NOTHING", uid, pack(sub))
    await db.execute("UPDATE sessions SET user_id=$2 WHERE uid=$1 AND user_id<>$2", uid, pack(sub))


async def get_or_create_session(db: Connection, uid: str, document_id: str, new_id: str,
                                now: int) -> tuple[Session, bool]:
    """Insert unless (uid, document) has a session, on any host: ON CONFLICT, then read the winner."""
    row = await db.fetchrow(
        "INSERT INTO sessions (id, user_id, uid, document_id, created_at, updated_at, message_count)"
        " VALUES ($1, COALESCE((SELECT sub FROM users WHERE uid=$2), $2), $2, $3, $4, $4, 0)"
        f" ON CONFLICT (uid, document_id) DO NOTHING RETURNING {SESSION_COLS}", new_id, uid, pack(document_id), now)
    if row:
        return session_of(row), True
    found = await find_session(db, uid, document_id)
    assert found is not None
    return found, False


async def load_session(db: Connection, session_id: str) -> SessionState | None:
    row = await db.fetchrow(f"SELECT {SESSION_COLS}, uid, (SELECT MAX(seq) FROM messages WHERE session_id=$1)"
                            " FROM sessions WHERE id=$1", session_id)
    if not row:
        return None
    return SessionState(session=session_of(row), uid=row[6], last_seq=row[7] or 0)


async def find_send(db: Connection, session_id: str, client_message_id: str) -> tuple[Message, Message] | None:
    user = await db.fetchrow(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=$1 AND client_message_id=$2",
                             session_id, pack(client_message_id))
    if not user:
        return None
    reply = await db.fetchrow(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=$1 AND reply_to=$2"
                              " ORDER BY seq LIMIT 1", session_id, user[0])
    return message_of(user), message_of(reply)


async def append_send(db: Connection, send: NewSend) -> None:
    user, reply = send.user, send.reply
    doc_hash = hashlib.sha256(send.document_xml.encode()).hexdigest()
    await db.execute("INSERT INTO documents (hash, xml) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                     doc_hash, pack(send.document_xml))
    outbox_id = await db.fetchval("INSERT INTO outbox (subject, payload, dedup_id, created_at)"
                                  " VALUES ($1, $2, $3, $4) RETURNING id",
                                  send.reply_subject, send.reply_payload, send.dedup_id, user.created_at)
    await db.execute(
        "INSERT INTO messages (id, session_id, seq, role, content, status, created_at, updated_at, reply_to,"
        " client_message_id, document_hash, turn) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, NULL),"
        " ($11, $2, $12, $13, $14, $15, $16, $17, $18, NULL, NULL, $19)",
        user.id, user.session_id, user.seq, user.role, pack(user.content), user.status, user.created_at,
        user.updated_at, pack(send.client_message_id), doc_hash,
        reply.id, reply.seq, reply.role, pack(reply.content), reply.status, reply.created_at, reply.updated_at,
        reply.reply_to, outbox_id)
    await db.execute("UPDATE sessions SET message_count = message_count + 2, updated_at=$2 WHERE id=$1",
                     user.session_id, reply.created_at)


async def list_messages(db: Connection, session_id: str, after_seq: int, limit: int) -> tuple[list[Message], bool]:
    found = await db.fetch(f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id=$1 AND seq>$2 ORDER BY seq"
                           " LIMIT $3", session_id, after_seq, limit + 1)
    return [message_of(r) for r in found[:limit]], len(found) > limit


# One message as PROTOCOL.md's JSON, made by PostgreSQL; jsonb_strip_nulls drops the null members.
MESSAGE_JSON = """jsonb_strip_nulls(jsonb_build_object(
    'id', id, 'sessionId', session_id, 'seq', seq, 'role', role, 'content', content, 'status', status,
    'createdAt', created_at, 'updatedAt', updated_at,
    'error', CASE WHEN error_code IS NULL THEN NULL
                  ELSE jsonb_build_object('code', error_code, 'message', COALESCE(error_message, '')) END,
    'replyTo', reply_to, 'model', model,
    'usage', CASE WHEN input_tokens IS NULL THEN NULL
                  ELSE jsonb_build_object('inputTokens', input_tokens, 'outputTokens', output_tokens) END))"""
# Packed text unpacked inside the JSON text: U+FFFF "0" becomes the escape \u0000, U+FFFF "F" U+FFFF.
PAGE_SQL = f"""SELECT replace(replace(COALESCE(json_agg(j ORDER BY seq), '[]'::json)::text, $4, '\\u0000'), $5, $6),
    EXISTS (SELECT 1 FROM messages WHERE session_id=$1 AND seq>$2 ORDER BY seq OFFSET $3 LIMIT 1),
    COALESCE(bool_and(status = 'complete'), true)
    FROM (SELECT seq, status, {MESSAGE_JSON} AS j FROM messages WHERE session_id=$1 AND seq>$2 ORDER BY seq LIMIT $3) t"""


async def messages_page(db: Connection, session_id: str, after_seq: int,
                        limit: int) -> tuple[bytes, bool, bool, None]:
    """The `messages` reply's list as ready JSON (no Python objects per message), hasMore, and whether
    every message on it is complete; no key (a page with unfinished replies is read again every time)."""
    row = await db.fetchrow(PAGE_SQL, session_id, after_seq, limit, ESC + "0", ESC + "F", ESC)
    return row[0].encode(), row[1], row[2], None


async def get_message(db: Connection, message_id: str) -> Message | None:
    row = await db.fetchrow(f"SELECT {MESSAGE_COLS} FROM messages WHERE id=$1", message_id)
    return message_of(row) if row else None


async def grant(db: Connection, uid: str, sub: str, document_id: str, role: str, now: int) -> None:
    await remember_user(db, uid, sub)
    await db.execute("INSERT INTO grants (uid, document_id, role, created_at) VALUES ($1, $2, $3, $4)"
                     " ON CONFLICT (uid, document_id) DO UPDATE SET role=excluded.role",
                     uid, pack(document_id), role, now)


async def revoke(db: Connection, uid: str, document_id: str) -> None:
    await db.execute("DELETE FROM grants WHERE uid=$1 AND document_id=$2", uid, pack(document_id))


async def has_grant(db: Connection, uid: str, document_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM grants WHERE uid=$1 AND document_id=$2)",
                             uid, pack(document_id))


NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
RELAY_CLAIM_MS = 10_000  # a host that took rows and vanished leaves them to another after this


async def outbox_pending(db: Connection, limit: int) -> list[OutboxItem]:
    """Claim the oldest rows no other host's relay is publishing, so each row is published once."""
    found = await db.fetch(
        f"UPDATE outbox SET claimed_until = {NOW_MS} + $2 WHERE id IN (SELECT id FROM outbox"
        f" WHERE claimed_until < {NOW_MS} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, subject, payload, dedup_id", limit, RELAY_CLAIM_MS)
    return sorted((OutboxItem(r[0], r[1], bytes(r[2]), r[3]) for r in found), key=lambda i: i.id)


async def outbox_done(db: Connection, ids: list[int]) -> None:
    await db.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)


async def unfinished_replies(db: Connection, uid: str) -> int:
    """How many of the user's assistant messages are pending or streaming, over all their sessions."""
    return await db.fetchval("SELECT COUNT(*) FROM messages m JOIN sessions s ON s.id = m.session_id"
                             " WHERE s.uid=$1 AND m.role='assistant' AND m.status IN ('pending', 'streaming')", uid)


async def usage(db: Connection, uid: str, from_ms: int, to_ms: int | None) -> tuple[int, int, int]:
    """(input tokens, output tokens, replies) of the user's replies with usage, updated_at in [from_ms, to_ms)."""
    row = await db.fetchrow("SELECT COALESCE(SUM(m.input_tokens), 0)::bigint, COALESCE(SUM(m.output_tokens), 0)::bigint,"
                            " COUNT(*) FROM messages m JOIN sessions s ON s.id = m.session_id"
                            " WHERE s.uid=$1 AND m.role='assistant' AND m.input_tokens IS NOT NULL"
                            " AND m.updated_at >= $2 AND ($3::bigint IS NULL OR m.updated_at < $3)",
                            uid, from_ms, to_ms)
    return row[0], row[1], row[2]
