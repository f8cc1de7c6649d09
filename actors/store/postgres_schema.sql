-- docchat's PostgreSQL schema: the same tables as schema.sql. Free text a client chose is stored
-- through postgres_rows.pack (PostgreSQL text cannot hold U+0000).
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,          -- the JWT sub
    uid           TEXT NOT NULL,          -- user_token(sub), the subject token
    document_id   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (uid, document_id)
);

CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY,
    sub TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS documents (
    hash TEXT PRIMARY KEY,
    xml  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS messages (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    status            TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    reply_to          TEXT,
    model             TEXT,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    client_message_id TEXT,
    document_hash     TEXT,
    turn              BIGINT,
    claim_token       TEXT,
    claim_until       BIGINT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id
    ON messages (session_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_unfinished
    ON messages (status, claim_until) WHERE status IN ('pending', 'streaming');
CREATE INDEX IF NOT EXISTS messages_queue
    ON messages (session_id, turn) WHERE role = 'assistant' AND status IN ('pending', 'streaming');
CREATE INDEX IF NOT EXISTS messages_reply_to ON messages (reply_to) WHERE reply_to IS NOT NULL;

CREATE TABLE IF NOT EXISTS grants (
    uid         TEXT NOT NULL,
    document_id TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (uid, document_id)
);

CREATE TABLE IF NOT EXISTS outbox (
    id         BIGSERIAL PRIMARY KEY,
    subject    TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    dedup_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0  -- a host's relay is publishing it until then (ms)
);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_until BIGINT NOT NULL DEFAULT 0;

-- Scale-out: one lease per partition of users (contracts.subjects.PARTITIONS = 64, numbered 0..63).
-- Taking a lease bumps epoch and copies it to partition_fence, which every write of a partition's
-- actors share-locks and checks (postgres_leases.check). Renewals touch only partition_lease, so
-- they never wait for writes; taking a lease waits for the last owner's open write to end.
CREATE TABLE IF NOT EXISTS partition_lease (
    p          INTEGER PRIMARY KEY,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch'
);
INSERT INTO partition_lease (p) SELECT generate_series(0, 63) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS partition_fence (
    p     INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL DEFAULT 0
);
INSERT INTO partition_fence (p) SELECT generate_series(0, 63) ON CONFLICT DO NOTHING;

-- Live hosts (heartbeats): each takes about 64 / (live hosts) partitions.
CREATE TABLE IF NOT EXISTS hosts (
    id      TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
