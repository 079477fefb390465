-- Providers, their keys and agent tokens (SPEC §5). Ids are UUIDs stored as 16-byte blobs,
-- timestamps as RFC 3339 text, lists as JSON text.
CREATE TABLE ai_providers (
    id              BLOB PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('openai', 'anthropic', 'openai-compatible')),
    base_url        TEXT NOT NULL,
    intercept_hosts TEXT NOT NULL DEFAULT '[]',
    enabled         BOOLEAN NOT NULL DEFAULT 1,
    enforce_models  BOOLEAN NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE ai_provider_keys (
    id          BLOB PRIMARY KEY NOT NULL,
    provider_id BLOB NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    api_key     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX ai_provider_keys_provider_id ON ai_provider_keys (provider_id);

CREATE TABLE agent_tokens (
    id           BLOB PRIMARY KEY NOT NULL,
    user_label   TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);

-- One row whose counter every mutation bumps in its own transaction: the cross-process change
-- signal for SQLite, where there is no NOTIFY (another process, such as the CLI, polls it).
CREATE TABLE aibridge_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    counter INTEGER NOT NULL
);
INSERT INTO aibridge_changes (id, counter) VALUES (1, 0);
