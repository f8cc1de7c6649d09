-- docchat's SQLite schema. SQLite is the source of truth; JetStream only carries work.
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,          -- the JWT sub
    uid           TEXT NOT NULL,          -- user_token(sub), the subject token
    document_id   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (uid, document_id)
);

-- The sub behind a hashed uid, learned from grants and from the auth callout.
CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY,
    sub TEXT NOT NULL
);

-- Document snapshots sent with `send`, stored once per distinct content (by sha256).
CREATE TABLE IF NOT EXISTS documents (
    hash TEXT PRIMARY KEY,
    xml  TEXT NOT NULL
);

-- Messages are never deleted, so a rowid is never reused: page keys (rows.messages_page) name them by it.
CREATE TABLE IF NOT EXISTS messages (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    status            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    reply_to          TEXT,
    model             TEXT,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    client_message_id TEXT,               -- user messages only
    document_hash     TEXT,               -- user messages only: the send's documentXml
    turn              INTEGER,            -- assistant messages: queue position within the session
    claim_token       TEXT,               -- assistant messages: who generates it now
    claim_until       INTEGER,            -- ... and until when the claim holds (ms)
    attempts          INTEGER NOT NULL DEFAULT 0, -- claims taken since it was last scheduled
    rev               INTEGER NOT NULL DEFAULT 0, -- assistant messages: moves with every change a reader sees
    UNIQUE (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id
    ON messages (session_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_unfinished
    ON messages (status, claim_until) WHERE status IN ('pending', 'streaming');
-- Each session's queue of unfinished replies, in turn order (claims, the sweeper, the next reply).
CREATE INDEX IF NOT EXISTS messages_queue
    ON messages (session_id, turn) WHERE role = 'assistant' AND status IN ('pending', 'streaming');

CREATE TABLE IF NOT EXISTS grants (
    uid         TEXT NOT NULL,
    document_id TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (uid, document_id)
);

-- Work to publish to JetStream, written in the same transaction as the change that caused it.
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    subject    TEXT NOT NULL,
    payload    BLOB NOT NULL,
    dedup_id   TEXT NOT NULL,             -- Nats-Msg-Id: JetStream drops a second publish of it
    created_at INTEGER NOT NULL
);
